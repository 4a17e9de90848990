"""The model accuracy gate: a new model bundle must hold up on its evaluation set before it
may replace the running model.

``evaluate(candidate_dir, current_dir, limits)`` checks the bundle (every sha256), loads the
candidate (it must load, fit its card and hold the labels the set and the pipeline need),
runs it and the current model on the bundle's evaluation images, and judges:

- precision and recall (IoU >= ``limits.iou``, same label, greedy by score; in total over
  the set and per label) against absolute floors, and against the current model's on the
  same images: neither may fall more than ``max_drop``, no label's recall more than
  ``max_label_recall_drop``;
- speed: the ratio of median invoke times, candidate over current, at most
  ``max_slowdown`` (and the candidate's median at most ``max_invoke_ms`` when set).

``judge`` is the decision alone, on figures; ``evaluate`` is the I/O around it. Every result
carries its figures; a refusal has a ``reason`` (``bad_hash``, ``bad_model``,
``accuracy_gate``, ``too_slow``) and a ``detail``; ``GateResult.error`` is the
``"<reason>: <detail>"`` text ``update_state`` carries. ``REFUSED`` counts refusals by
reason (the shadow run's too).
"""

from __future__ import annotations

import logging
import statistics
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from agent.errors import DetectorError, ModelError
from agent.ota.model_gate_settings import GateLimits, ModelGateSettings, ShadowLimits
from agent.vision.detector import Detection, Detector
from agent.vision.eval_metrics import Labelled, Score
from agent.vision.pipeline import Image, decode_image
from common.model_bundle import (
    EVAL,
    BundleError,
    BundleHashError,
    EvalImage,
    ModelBundle,
    read_model_bundle,
)

__all__ = [
    "BAD_HASH",
    "BAD_MODEL",
    "GATE",
    "REFUSED",
    "TOO_SLOW",
    "GateLimits",
    "GateResult",
    "ModelGateSettings",
    "ShadowLimits",
    "bundle_detector",
    "evaluate",
    "judge",
    "labelled",
    "refuse",
]

log = logging.getLogger(__name__)

BAD_HASH = "bad_hash"  # a file of the bundle does not match its manifest
BAD_MODEL = "bad_model"  # the bundle is malformed, the model does not load or fit its card
GATE = "accuracy_gate"  # precision or recall below a floor or too far below the current model
TOO_SLOW = "too_slow"  # median invoke time too far above the current model's

REFUSED: Counter[str] = Counter()  # refusals by reason since the agent started


@dataclass(frozen=True)
class GateResult:
    ok: bool
    reason: str  # "" when ok
    figures: dict[str, object] = field(default_factory=dict)
    detail: str = ""

    @property
    def error(self) -> str:
        """``"<reason>: <detail>"`` for update_state; empty when ok."""
        return "" if self.ok else f"{self.reason}: {self.detail}"


def refuse(reason: str, detail: str, figures: dict[str, object] | None = None) -> GateResult:
    log.warning("model refused: %s: %s", reason, detail)
    REFUSED[reason] += 1
    return GateResult(False, reason, figures or {}, detail)


def labelled(found: list[Detection]) -> list[Labelled]:
    return [Labelled(d.label, d.box, d.score) for d in found]


def bundle_detector(
    bundle: ModelBundle, backend: str = "litert", threads: int = 2, score: float | None = None
) -> Detector:
    """A detector on the bundle's model and card (``score`` overrides the card's threshold)."""
    card = bundle.card
    if score is not None:
        card = card.model_copy(update={"score_threshold": score})
    return Detector(card, bundle.path, backend, threads)


def judge(
    candidate: Score,
    current: Score | None,
    candidate_ms: float,
    current_ms: float | None,
    limits: GateLimits,
) -> tuple[str, str]:
    """(reason, detail) of a refusal, or ("", "") when the figures are within the limits."""
    c = candidate.total
    problems = []
    if c.precision < limits.min_precision:
        problems.append(f"precision {c.precision:.3f} < floor {limits.min_precision}")
    if c.recall < limits.min_recall:
        problems.append(f"recall {c.recall:.3f} < floor {limits.min_recall}")
    if current is not None:
        k = current.total
        if c.precision < k.precision - limits.max_drop:
            problems.append(
                f"precision {c.precision:.3f} is more than {limits.max_drop} below "
                f"the current model's {k.precision:.3f}"
            )
        if c.recall < k.recall - limits.max_drop:
            problems.append(
                f"recall {c.recall:.3f} is more than {limits.max_drop} below "
                f"the current model's {k.recall:.3f}"
            )
        for label, cur in sorted(current.labels.items()):
            if cur.tp + cur.fn == 0:
                continue  # not expected in the set: nothing to recall
            cand = candidate.labels.get(label)
            got = cand.recall if cand is not None else 0.0
            if got < cur.recall - limits.max_label_recall_drop:
                problems.append(
                    f"{label} recall {got:.3f} is more than {limits.max_label_recall_drop} "
                    f"below the current model's {cur.recall:.3f}"
                )
    if problems:
        return GATE, "; ".join(problems)
    if limits.max_invoke_ms is not None and candidate_ms > limits.max_invoke_ms:
        return TOO_SLOW, f"median invoke {candidate_ms:.1f} ms > {limits.max_invoke_ms} ms"
    if current_ms and candidate_ms / current_ms > limits.max_slowdown:
        return TOO_SLOW, (
            f"median invoke {candidate_ms:.1f} ms is {candidate_ms / current_ms:.2f} times "
            f"the current model's {current_ms:.1f} ms (limit {limits.max_slowdown})"
        )
    return "", ""


def _eval_items(bundle: ModelBundle, current: ModelBundle | None) -> list[EvalImage]:
    """The candidate's evaluation set, plus the current bundle's images it lacks (by hash):
    a new release is judged on what was reviewed before too, not only on its own set."""
    items = list(bundle.eval_set)
    if current is None:
        return items
    seen = {bundle.files[f"{EVAL}/{i.path.name}"] for i in items}
    for item in current.eval_set:
        digest = current.files[f"{EVAL}/{item.path.name}"]
        if digest not in seen:
            seen.add(digest)
            items.append(item)
    return items


def _card_problems(items: list[EvalImage], det: Detector, limits: GateLimits) -> list[str]:
    have = set(det.labels)
    problems = []
    wanted = {e.label for img in items for e in img.expected}
    missing = sorted(wanted - have)
    if missing:
        problems.append(f"labels {missing} of the evaluation set are not in its label map")
    missing = sorted(set(limits.required_labels) - have)
    if missing:
        problems.append(f"required labels {missing} are not in its label map")
    return problems


def _load_images(items: list[EvalImage]) -> list[Image]:
    images = []
    for item in items:
        try:
            images.append(decode_image(item.path.read_bytes()))
        except (OSError, ValueError) as exc:
            raise BundleError(f"evaluation image {item.path.name}: {exc}") from exc
    return images


@dataclass
class _Run:
    detector: Detector
    score: Score = field(default_factory=Score)
    times: list[float] = field(default_factory=list)

    def figures(self) -> dict[str, object]:
        out = self.score.figures()
        out["invoke_ms_median"] = round(statistics.median(self.times), 3) if self.times else None
        return out


def _run_set(
    items: list[EvalImage], images: list[Image], runs: list[_Run], rounds: int, iou: float
) -> None:
    """Every model on every image, interleaved (fair timing on a busy box); the first
    round's detections are scored, every round's invoke time is kept."""
    for run in runs:  # warm-up: the first invocation sets up the delegate
        run.detector.detect(images[0])
    for item, rgb in zip(items, images, strict=True):
        for r in range(rounds):
            for run in runs:
                found = run.detector.detect(rgb)
                run.times.append(run.detector.last_ms)
                if r == 0:
                    run.score.add(labelled(found), item.expected, iou)


@dataclass
class _Current:
    bundle: ModelBundle | None = None
    detector: Detector | None = None
    figures: dict[str, object] = field(default_factory=dict)


def _current(
    current_dir: Path | None, detector: Detector | None, backend: str, threads: int
) -> _Current:
    if current_dir is None:
        if detector is None:
            return _Current()
        return _Current(None, detector, {"name": detector.card.name})
    try:
        bundle = read_model_bundle(current_dir)
        if detector is None:
            detector = bundle_detector(bundle, backend, threads)
        return _Current(bundle, detector, {"name": bundle.name, "release": bundle.release})
    except (BundleError, ModelError, DetectorError) as exc:
        # a broken installed model must not block its replacement: judged on floors only
        log.warning("current model %s cannot be compared: %s", current_dir, exc)
        return _Current(None, detector, {"error": str(exc)})


def evaluate(
    candidate_dir: Path,
    current_dir: Path | None,
    limits: GateLimits,
    *,
    backend: str = "litert",
    threads: int = 2,
    current_detector: Detector | None = None,
) -> GateResult:
    """Judge the bundle in ``candidate_dir`` against the current model: the bundle in
    ``current_dir`` (its evaluation set is used too), run by ``current_detector`` when
    given (the running model, e.g. when it was installed without a bundle); neither:
    floors only."""
    try:
        bundle = read_model_bundle(candidate_dir)
    except BundleHashError as exc:
        return refuse(BAD_HASH, str(exc))
    except BundleError as exc:
        return refuse(BAD_MODEL, str(exc))
    current = _current(current_dir, current_detector, backend, threads)
    items = _eval_items(bundle, current.bundle if limits.current_eval_set else None)
    figures: dict[str, object] = {
        "name": bundle.name,
        "release": bundle.release,
        "images": len(items),
        "expected": sum(len(i.expected) for i in items),
        "current_model": current.figures,
    }
    try:
        cand = bundle_detector(bundle, backend, threads)
    except (ModelError, DetectorError) as exc:
        return refuse(BAD_MODEL, f"model does not load: {exc}", figures)
    problems = _card_problems(items, cand, limits)
    if problems:
        return refuse(BAD_MODEL, "card mismatch: " + "; ".join(problems), figures)
    try:
        images = _load_images(items)
    except BundleError as exc:
        return refuse(BAD_MODEL, str(exc), figures)
    cur = current.detector
    runs = [_Run(cand)] + ([_Run(cur)] if cur is not None else [])
    try:
        _run_set(items, images, runs, limits.timing_rounds, limits.iou)
    except DetectorError as exc:
        return refuse(BAD_MODEL, f"a model fails to run: {exc}", figures)
    figures["candidate"] = runs[0].figures()
    cand_ms = statistics.median(runs[0].times)
    cur_ms = statistics.median(runs[1].times) if cur is not None else None
    if cur_ms is not None:
        figures["current"] = runs[1].figures()
        figures["slowdown"] = round(cand_ms / cur_ms, 3) if cur_ms > 0 else None
    reason, detail = judge(
        runs[0].score, runs[1].score if cur is not None else None, cand_ms, cur_ms, limits
    )
    if reason:
        return refuse(reason, detail, figures)
    log.info("model %s %s passed its evaluation set", bundle.name, bundle.release)
    return GateResult(True, "", figures)
