"""Model cards: what the detector must know about a model, in a small TOML file.

A card names the model file and its label map (both relative to the model folder), the
input size and how pixels are scaled, the output format and its decoder's parameters, and
the thresholds. The card is part of a model bundle's format (``common/model_bundle.py``), so
the agent and the fleet server both read it; ``agent/vision/cards/`` ships the card of the real
model the setup fetches.
"""

from __future__ import annotations

import tomllib
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator


class CardError(ValueError):
    """A model card or label map is missing, unreadable or does not fit."""


OutputFormat = Literal["ssd_anchors", "tflite_postprocess", "yolov8"]
OutputRole = Literal["boxes", "classes", "scores", "count"]


class SsdAnchorSettings(BaseModel):
    """SSD anchor generation (MediaPipe's SsdAnchorsCalculator, TF Object Detection API)."""

    model_config = ConfigDict(extra="forbid")

    num_layers: int = Field(6, ge=1, le=12, description="Feature map layers with anchors.")
    min_scale: float = Field(0.2, gt=0, le=1, description="Anchor scale of the first layer.")
    max_scale: float = Field(0.95, gt=0, le=1, description="Anchor scale of the last layer.")
    strides: list[int] = Field(
        [16, 32, 64, 128, 256, 512], min_length=1, description="Stride of each layer in pixels."
    )
    aspect_ratios: list[float] = Field(
        [1.0, 2.0, 0.5, 3.0, 0.3333], min_length=1, description="Width/height ratios per cell."
    )
    interpolated_scale_aspect_ratio: float = Field(
        1.0, ge=0, description="Extra anchor between two scales with this ratio (0 = none)."
    )
    reduce_boxes_in_lowest_layer: bool = Field(
        True, description="First layer gets 3 anchors (scale 0.1 and two ratios) only."
    )
    anchor_offset: float = Field(0.5, ge=0, le=1, description="Anchor centre within its cell.")
    box_scales: tuple[float, float, float, float] = Field(
        (10.0, 10.0, 5.0, 5.0), description="Box coder scales y, x, h, w."
    )

    @model_validator(mode="after")
    def _layers_match(self) -> SsdAnchorSettings:
        if len(self.strides) != self.num_layers:
            raise ValueError(f"{self.num_layers} layers need {self.num_layers} strides")
        return self


class ModelCard(BaseModel):
    """One detection model: files, input, output format, labels and thresholds."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field(min_length=1, description="Model name, reported with detections.")
    model_file: str = Field(min_length=1, description="The .tflite file, in the model folder.")
    labels_file: str = Field(min_length=1, description="Label map, one label per line.")
    format: OutputFormat = Field(
        description="Output format: raw SSD with anchors, the 4-output "
        "TFLite_Detection_PostProcess format, or YOLOv8 raw output."
    )
    input_width: int = Field(ge=16, le=4096, description="Model input width in pixels.")
    input_height: int = Field(ge=16, le=4096, description="Model input height in pixels.")
    input_range: tuple[float, float] = Field(
        (-1.0, 1.0), description="Float models: pixel 0 maps to the first, 255 to the second."
    )
    label_offset: int = Field(
        0,
        ge=0,
        le=1,
        description="Label of class index i is line i + this (1 when the map starts "
        "with a background line the model's class indices skip).",
    )
    ignore_classes: list[int] = Field(
        default_factory=list, description="Class indices never reported (e.g. 0, background)."
    )
    score_threshold: float = Field(0.5, gt=0, lt=1, description="Lowest score reported.")
    iou_threshold: float = Field(0.45, gt=0, le=1, description="NMS overlap threshold (IoU).")
    max_detections: int = Field(50, ge=1, le=1000, description="Most detections per frame.")
    outputs: list[OutputRole] | None = Field(
        None,
        description="tflite_postprocess only: the role of each output tensor in order "
        "(default: boxes, classes, scores, count).",
    )
    ssd: SsdAnchorSettings | None = Field(None, description="Anchors for format ssd_anchors.")

    @model_validator(mode="after")
    def _format_needs(self) -> ModelCard:
        if self.format == "ssd_anchors" and self.ssd is None:
            raise ValueError("format ssd_anchors needs an [ssd] table with the anchor settings")
        if self.outputs is not None and sorted(self.outputs) != sorted(
            ["boxes", "classes", "scores", "count"]
        ):
            raise ValueError("outputs must name boxes, classes, scores and count once each")
        return self


def load_card(path: Path) -> ModelCard:
    """Read and check a card; CardError with the reason when it does not fit."""
    try:
        data = tomllib.loads(Path(path).read_text(encoding="utf-8"))
    except FileNotFoundError as exc:
        raise CardError(f"model card {path} does not exist") from exc
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        raise CardError(f"model card {path} is unreadable: {exc}") from exc
    try:
        return ModelCard(**data)
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in e['loc']) or '(card)'}: {e['msg']}" for e in exc.errors()
        )
        raise CardError(f"model card {path}: {problems}") from exc


def load_labels(path: Path) -> list[str]:
    """The label map: one label per line, blank lines at the end ignored."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except FileNotFoundError as exc:
        raise CardError(f"label map {path} does not exist") from exc
    except (OSError, UnicodeDecodeError) as exc:
        raise CardError(f"label map {path} is unreadable: {exc}") from exc
    labels = [line.strip() for line in text.rstrip("\n").split("\n")]
    if not labels or labels == [""]:
        raise CardError(f"label map {path} is empty")
    return labels
