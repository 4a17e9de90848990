"""Settings of the detection pipeline: detector, motion gate, tracker, zones and lines,
scene health, outbox. Part of the agent's TOML file (``[pipeline]`` and its tables).

Coordinates of zones and lines are fractions of the frame (0..1, x to the right, y down),
so one config fits any resolution; a point outside the frame is refused at start.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from agent.vision.modelcard import DEFAULT_CARD

Point = tuple[float, float]


def _inside(points: list[Point], what: str) -> list[Point]:
    for x, y in points:
        if not (0.0 <= x <= 1.0 and 0.0 <= y <= 1.0):
            raise ValueError(
                f"{what} point ({x}, {y}) is outside the frame: coordinates are fractions "
                "of the frame width and height, 0..1"
            )
    return points


class DetectorSettings(BaseModel):
    model_config = ConfigDict(extra="forbid")

    backend: Literal["litert", "tflite"] = Field(
        "litert", description="Runtime: ai-edge-litert (default) or tflite-runtime 2.14."
    )
    threads: int = Field(2, ge=1, le=16, description="Interpreter threads.")
    card: Path = Field(DEFAULT_CARD, description="Model card TOML (files, format, labels).")
    model_dir: Path | None = Field(
        None,
        description="Folder holding the card's model and label files "
        "(default: $CAMFLEET_MODEL_DIR or ~/.cache/camfleet/models).",
    )
    score_threshold: float | None = Field(
        None, gt=0, lt=1, description="Overrides the card's lowest reported score."
    )
    classes: list[str] = Field(
        default_factory=list, description="Labels to track; empty tracks every label."
    )


class MotionSettings(BaseModel):
    model_config = ConfigDict(extra="forbid")

    width: int = Field(160, ge=32, le=640, description="Width of the small grey frame.")
    threshold: int = Field(25, ge=1, le=255, description="Grey-level change that is motion.")
    min_area: float = Field(
        0.002, ge=0, le=1, description="Smallest moving region, as a fraction of the frame."
    )
    background_alpha: float = Field(
        0.1, gt=0, le=1, description="Weight of a new frame in the running background."
    )
    pad: float = Field(0.08, ge=0, le=0.5, description="Margin added around motion (fraction).")
    min_roi: float = Field(
        0.35, gt=0, le=1, description="Smallest detector region side, as a fraction of the frame."
    )
    full_frame_above: float = Field(
        0.6, gt=0, le=1, description="Region area above which the whole frame is detected."
    )
    keyframe_s: float = Field(
        10.0, gt=0, le=3600, description="The detector sees the whole frame at least this often."
    )
    always_detect: bool = Field(
        False, description="Detect every frame over the whole frame (no gating)."
    )
    max_shift: float = Field(
        0.08,
        gt=0,
        le=0.5,
        description="Largest camera shift (fraction of the width) taken out as sway; larger "
        "is a global change.",
    )
    shift_min_response: float = Field(
        0.05, ge=0, le=1, description="Least phase-correlation peak for a shift to be trusted."
    )
    rain_specks: int = Field(
        8,
        ge=1,
        description="Separate moving specks per frame (averaged) that mean rain or snow: then "
        "specks "
        "up to 4 pixels of the small frame wide are not motion, and the heartbeat says rain.",
    )
    global_change_above: float = Field(
        0.5,
        gt=0,
        le=1,
        description="Fraction of the frame changing at once that is a global change (bump, "
        "exposure jump, infrared switch): the background restarts, no motion storm.",
    )


class TrackerSettings(BaseModel):
    model_config = ConfigDict(extra="forbid")

    iou_match: float = Field(0.2, gt=0, le=1, description="Least overlap to continue a track.")
    min_hits: int = Field(2, ge=1, le=100, description="Detections before a track is reported.")
    max_missed: int = Field(
        3, ge=1, le=1000, description="Detector runs over a track without it before it ends."
    )
    max_age_s: float = Field(
        15.0, gt=0, le=3600, description="A track not detected for this long ends."
    )
    update_every_s: float = Field(
        5.0, ge=0, le=3600, description="Least time between two track.update events of a track."
    )
    snapshot_side: int = Field(
        320, ge=32, le=1920, description="Longest side of a snapshot JPEG in pixels."
    )
    snapshots: bool = Field(True, description="Send the best snapshot when a track ends.")


class LineSettings(BaseModel):
    """A counting line from ``a`` to ``b``: crossing it from its left-hand side to its
    right (on the screen, looking from a to b) counts ``directions[0]``, the other way
    ``directions[1]``. For a = (0, 0.5), b = (1, 0.5): top to bottom is ``directions[0]``."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field(min_length=1, max_length=64, description="Line name in the counts.")
    a: Point = Field(description="First end (x, y) as frame fractions.")
    b: Point = Field(description="Second end (x, y) as frame fractions.")
    directions: tuple[str, str] = Field(
        ("in", "out"), description="Names of the two crossing directions."
    )

    @model_validator(mode="after")
    def _check(self) -> LineSettings:
        _inside([self.a, self.b], f"line {self.name!r}")
        if self.a == self.b:
            raise ValueError(f"line {self.name!r} has both ends at the same point")
        return self


class ZoneSettings(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str = Field(min_length=1, max_length=64, description="Zone name in the counts.")
    points: list[Point] = Field(min_length=3, description="Polygon corners as frame fractions.")

    @model_validator(mode="after")
    def _check(self) -> ZoneSettings:
        _inside(self.points, f"zone {self.name!r}")
        return self


class SceneSettings(BaseModel):
    model_config = ConfigDict(extra="forbid")

    width: int = Field(320, ge=64, le=1280, description="Width of the grey frame analysed.")
    report_after_s: float = Field(
        10.0, ge=0, le=86400, description="A condition is reported once it held this long."
    )
    frozen_after_s: float = Field(
        10.0, ge=0, le=86400, description="An unchanging image is reported after this long."
    )
    clear_after_s: float = Field(
        5.0, ge=0, le=86400, description="A reported condition clears after being gone this long."
    )
    dark_below: float = Field(
        25.0,
        ge=0,
        le=255,
        description="Mean grey below which the light is low (light: low_light); dark is a "
        "problem only when this hour of the day is usually brighter (dark_ratio_below).",
    )
    dark_ratio_below: float = Field(
        0.35, ge=0, le=1, description="Dark is a problem below this share of the hour's usual."
    )
    hour_samples: int = Field(
        200, ge=1, description="Analysed frames of an hour of the day before its usual counts."
    )
    bright_above: float = Field(235.0, ge=0, le=255, description="Mean grey that is too bright.")
    blur_below: float = Field(
        0.006,
        ge=0,
        description="Edges (variance of the Laplacian over the spread squared, which does not "
        "change with the light) below which the image is blurred in any light.",
    )
    blur_ratio_below: float = Field(
        0.3, ge=0, le=1, description="Blurred below this share of the learned edges."
    )
    covered_std_below: float = Field(
        1.0,
        ge=0,
        le=128,
        description="Structure (spread of an 80-pixel-wide copy: noise averaged out) below "
        "which the view is uniform, hence covered, in any light.",
    )
    covered_ratio_below: float = Field(
        0.35, ge=0, le=1, description="Covered below this share of the learned structure."
    )
    light_adapt_s: float = Field(
        120.0, gt=0, description="Time constant with which the baselines follow the light."
    )
    learn_ratio_above: float = Field(
        0.6,
        ge=0,
        le=1,
        description="A frame whose structure fell below this share of the "
        "baseline is not learned (a cover is fast, dusk is slow).",
    )
    relearn_after_s: float = Field(
        600.0, gt=0, description="A lasting drop that is not a cover is learned after this."
    )
    ir_colour_below: float = Field(
        0.1,
        ge=0,
        description="Colourfulness (mean |R-G| + |G-B| over the mean grey) below which the "
        "camera is in infrared (grey image).",
    )
    frozen_diff_below: float = Field(
        0.05, ge=0, le=255, description="Mean change per frame below which the image is frozen."
    )
    moved_shift_above: float = Field(
        0.06, gt=0, le=1, description="Shift from the reference frame (fraction) that is moved."
    )
    moved_corr_below: float = Field(
        0.35, ge=-1, le=1, description="Correlation with the reference below which it is moved."
    )
    reference: Path | None = Field(
        None, description="Commissioning reference frame (image file); none: the first frames."
    )


class OutboxSettings(BaseModel):
    model_config = ConfigDict(extra="forbid")

    max_bytes: int = Field(
        64 * 1024 * 1024, ge=65536, description="Disk budget for waiting messages, bytes."
    )
    max_rows: int = Field(200_000, ge=10, description="Most messages waiting.")
    window: int = Field(20, ge=1, le=1000, description="Messages in flight (unacknowledged).")
    receipt_timeout_s: float = Field(
        10.0,
        gt=0,
        le=3600,
        description="Sent events without the server's receipt for this long are sent again "
        "(from the oldest); each round without a receipt doubles it.",
    )
    receipt_timeout_cap_s: float = Field(
        300.0, gt=0, le=86400, description="Longest wait for a receipt before sending again."
    )


class PipelineSettings(BaseModel):
    """Detection, tracking, counting and scene health. Absent: the agent only reports."""

    model_config = ConfigDict(extra="forbid")

    detector: DetectorSettings | None = Field(
        default_factory=DetectorSettings, description="The detector; none for scene health only."
    )
    motion: MotionSettings = Field(default_factory=MotionSettings, description="Motion gate.")
    tracker: TrackerSettings = Field(default_factory=TrackerSettings, description="Tracker.")
    lines: list[LineSettings] = Field(default_factory=list, description="Counting lines.")
    zones: list[ZoneSettings] = Field(default_factory=list, description="Counting zones.")
    counts_every_s: float = Field(
        60.0, ge=1, le=86400, description="Counts are sent once per interval of this length."
    )
    anchor: Literal["bottom", "center"] = Field(
        "bottom", description="Point of a box that counts: bottom centre or centre."
    )
    scene: SceneSettings = Field(default_factory=SceneSettings, description="Scene health.")
    outbox: OutboxSettings = Field(default_factory=OutboxSettings, description="Outbox.")

    @field_validator("lines", "zones")
    @classmethod
    def _unique(cls, items: list[LineSettings] | list[ZoneSettings]) -> object:
        names = [i.name for i in items]
        if len(names) != len(set(names)):
            raise ValueError("names must be unique")
        return items
