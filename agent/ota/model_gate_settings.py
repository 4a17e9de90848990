"""Limits of the model accuracy gate: the ``[ota.model_gate]`` table of the agent's config.

Kept apart from the gate itself so the config module loads without the detector runtime.
docs/ota.md ("Model updates and the accuracy gate") explains each figure.
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field


class ShadowLimits(BaseModel):
    """The candidate beside the current model on live frames, before it is promoted."""

    model_config = ConfigDict(extra="forbid")

    frames: int = Field(
        30, ge=1, le=10_000, description="Live frames both models must see before a verdict."
    )
    every_s: float = Field(
        1.0,
        ge=0,
        le=3600,
        description="Least time between two frames copied for the shadow run (seconds); "
        "keeps the live pipeline at its frame rate.",
    )
    min_agreement: float = Field(
        0.7,
        ge=0,
        le=1,
        description="Least agreement: detections matched (same label, IoU at least `iou`) "
        "over the union of both models' detections, summed over the frames.",
    )
    max_count_delta: float = Field(
        0.25,
        ge=0,
        description="Largest difference in the total number of detections, as a fraction of "
        "the current model's total (per-label differences are reported, not judged).",
    )
    iou: float = Field(0.5, gt=0, le=1, description="Least overlap for two boxes to match.")
    timeout_s: float = Field(
        900.0,
        gt=0,
        le=86400,
        description="Seconds allowed to collect the frames; fewer frames by then: refused.",
    )


class ModelGateSettings(BaseModel):
    """Limits a new model must stay within on its evaluation set (and in shadow)."""

    model_config = ConfigDict(extra="forbid")

    iou: float = Field(
        0.5, gt=0, le=1, description="Least overlap (IoU) of a detection with an expected box."
    )
    min_precision: float = Field(
        0.6, ge=0, le=1, description="Floor of the candidate's precision over the whole set."
    )
    min_recall: float = Field(
        0.6, ge=0, le=1, description="Floor of the candidate's recall over the whole set."
    )
    max_drop: float = Field(
        0.1,
        ge=0,
        le=1,
        description="Largest fall of precision or recall below the current model's "
        "(absolute, on the same set).",
    )
    max_label_recall_drop: float = Field(
        0.5,
        ge=0,
        le=1,
        description="Largest fall of one label's recall below the current model's.",
    )
    max_slowdown: float = Field(
        1.5,
        gt=0,
        description="Largest ratio of median invoke times, candidate over current.",
    )
    max_invoke_ms: float | None = Field(
        None, gt=0, description="Largest median invoke time of the candidate (ms); none: no cap."
    )
    timing_rounds: int = Field(
        2, ge=1, le=20, description="Invocations per image and model for the timing figures."
    )
    current_eval_set: bool = Field(
        True,
        description="Also judge on the current bundle's evaluation set (its images the "
        "candidate's set lacks): a release cannot pass on a set made to fit it alone.",
    )
    required_labels: list[str] = Field(
        default_factory=list,
        description="Labels the candidate's label map must hold (e.g. the pipeline's classes).",
    )
    shadow: ShadowLimits = Field(
        default_factory=ShadowLimits, description="The shadow run on live frames."
    )


GateLimits = ModelGateSettings
