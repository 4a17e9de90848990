"""Shadow run: a candidate model beside the current one on live frames, before promotion.

The pipeline thread hands each frame to ``ShadowRun.offer`` (a tap on
``runner.PipelineThread``); at most one frame every ``limits.every_s`` is copied into a
one-frame slot, and a sidecar thread runs both models on it (whole frame, each its own
interpreter: the live pipeline's detector is never touched from here). The live pipeline
keeps its frame rate and its model; a frame that arrives while the sidecar is busy is not
copied.

``ShadowJudge`` is the decision alone: agreement (detections matched by label and IoU over
the union of both models' detections, summed over the frames) and the difference in total
detection counts, judged once ``limits.frames`` frames were compared. ``shadow_on_pipeline``
runs it beside a ``PipelineThread``; ``gate_with_shadow`` is the evaluation set then the
shadow run, and ``gate_and_promote`` adds the swap of the pipeline's detector between two
frames.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from agent.errors import DetectorError, ModelError
from agent.ota.model_gate import (
    BAD_MODEL,
    GateResult,
    bundle_detector,
    evaluate,
    labelled,
    refuse,
)
from agent.ota.model_gate_settings import GateLimits, ShadowLimits
from agent.vision.detector import Detection, Detector
from agent.vision.eval_metrics import Agreement
from agent.vision.pipeline import Image
from common.model_bundle import BundleError, read_model_bundle

if TYPE_CHECKING:
    from agent.vision.runner import PipelineThread

log = logging.getLogger(__name__)

SHADOW = "shadow_gate"  # refusal reason: the candidate disagrees with the current model live


class ShadowJudge:
    """Collects per-frame detections of both models; judges after ``limits.frames``."""

    def __init__(self, limits: ShadowLimits) -> None:
        self.limits = limits
        self.agreement = Agreement()

    @property
    def done(self) -> bool:
        return self.agreement.frames >= self.limits.frames

    def add(self, current: list[Detection], candidate: list[Detection]) -> None:
        self.agreement.add(labelled(current), labelled(candidate), self.limits.iou)

    def verdict(self) -> GateResult:
        a, lim = self.agreement, self.limits
        figures = a.figures()
        problems = []
        if a.frames < lim.frames:
            problems.append(f"only {a.frames} of {lim.frames} frames compared")
        if a.ratio < lim.min_agreement:
            problems.append(f"agreement {a.ratio:.3f} < {lim.min_agreement}")
        delta = a.count_deltas()["*"]
        if delta > lim.max_count_delta:
            cur, cand = sum(a.current.values()), sum(a.candidate.values())
            problems.append(
                f"{cand} detections against the current model's {cur} "
                f"(difference {delta:.3f} > {lim.max_count_delta})"
            )
        if problems:
            return refuse(SHADOW, "; ".join(problems), figures)
        return GateResult(True, "", figures)


class ShadowRun:
    """The sidecar thread: both models on copies of live frames, at a low rate."""

    def __init__(
        self,
        current: Detector,
        candidate: Detector,
        limits: ShadowLimits,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if current is candidate:
            raise ValueError("the shadow run needs two detectors (one interpreter each)")
        self.current = current
        self.candidate = candidate
        self.judge = ShadowJudge(limits)
        self._clock = clock
        self._slot: queue.Queue[Image] = queue.Queue(maxsize=1)
        self._last_copy: float | None = None
        self._stop = threading.Event()
        self._done = threading.Event()
        self._thread: threading.Thread | None = None
        self.copied = 0
        self.skipped = 0
        self.failure: str | None = None

    def offer(self, rgb: Image, t: float) -> None:
        """From the pipeline thread: copy the frame when one is due and the slot is free."""
        if self._done.is_set():
            return
        every = self.judge.limits.every_s
        if self._last_copy is not None and t - self._last_copy < every:
            return
        if self._slot.full():
            self.skipped += 1
            return
        try:
            self._slot.put_nowait(rgb.copy())
        except queue.Full:
            self.skipped += 1
            return
        self._last_copy = t
        self.copied += 1

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="model-shadow", daemon=True)
        self._thread.start()

    def wait(self, timeout: float) -> GateResult:
        """The verdict once enough frames were compared, or after ``timeout`` seconds."""
        self._done.wait(timeout)
        if self.failure is not None:
            return refuse(SHADOW, self.failure, self.judge.agreement.figures())
        return self.judge.verdict()

    def stop(self, timeout: float = 10.0) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout)

    def _run(self) -> None:
        while not self._stop.is_set() and not self.judge.done:
            try:
                rgb = self._slot.get(timeout=0.2)
            except queue.Empty:
                continue
            try:
                current = self.current.detect(rgb)
                candidate = self.candidate.detect(rgb)
            except DetectorError as exc:
                self.failure = f"a model failed on a live frame: {exc}"
                break
            self.judge.add(current, candidate)
        self._done.set()


def shadow_on_pipeline(
    thread: PipelineThread, current: Detector, candidate: Detector, limits: ShadowLimits
) -> GateResult:
    """Run the shadow comparison on ``thread``'s live frames; blocks until the verdict."""
    run = ShadowRun(current, candidate, limits)
    run.start()
    thread.add_tap(run.offer)
    try:
        result = run.wait(limits.timeout_s)
    finally:
        thread.remove_tap(run.offer)
        run.stop()
    figures = dict(result.figures)
    figures.update(copied=run.copied, skipped=run.skipped)
    return GateResult(result.ok, result.reason, figures, result.detail)


def _gate(
    thread: PipelineThread,
    candidate_dir: Path,
    current_dir: Path | None,
    limits: GateLimits,
    current_detector: Detector,
    backend: str,
    threads: int,
    score: float | None,
) -> tuple[GateResult, Detector | None]:
    d = thread.settings.detector
    needed = sorted(set(limits.required_labels) | set(d.classes if d is not None else []))
    limits = limits.model_copy(update={"required_labels": needed})
    result = evaluate(
        candidate_dir,
        current_dir,
        limits,
        backend=backend,
        threads=threads,
        current_detector=current_detector,
    )
    if not result.ok:
        return result, None
    try:
        bundle = read_model_bundle(candidate_dir)  # checked again: it is about to go live
        candidate = bundle_detector(bundle, backend, threads, score)
    except (BundleError, ModelError, DetectorError) as exc:
        return refuse(BAD_MODEL, str(exc), result.figures), None
    shadow = shadow_on_pipeline(thread, current_detector, candidate, limits.shadow)
    figures = dict(result.figures)
    figures["shadow"] = shadow.figures
    if not shadow.ok:
        return GateResult(False, shadow.reason, figures, shadow.detail), None
    log.info(
        "model %s %s passed its evaluation set and the shadow run", bundle.name, bundle.release
    )
    return GateResult(True, "", figures), candidate


def gate_with_shadow(
    thread: PipelineThread,
    candidate_dir: Path,
    current_dir: Path | None,
    limits: GateLimits,
    *,
    current_detector: Detector,
    backend: str = "litert",
    threads: int = 1,
) -> GateResult:
    """The evaluation set, then the shadow run on ``thread``'s frames; nothing is swapped
    (for an updater that promotes by switching the model slot and restarting).

    ``current_detector`` is a second instance of the running model (its own interpreter)
    for the evaluation and the shadow run."""
    result, _ = _gate(
        thread, candidate_dir, current_dir, limits, current_detector, backend, threads, None
    )
    return result


def gate_and_promote(
    thread: PipelineThread,
    candidate_dir: Path,
    current_dir: Path | None,
    limits: GateLimits,
    *,
    current_detector: Detector,
    backend: str = "litert",
    threads: int = 1,
    score: float | None = None,
) -> GateResult:
    """``gate_with_shadow``, then the pipeline's detector swapped between two frames (live,
    no restart). On any refusal the pipeline keeps its detector. The caller installs the
    bundle into the model slot so a restart keeps the new model."""
    result, candidate = _gate(
        thread, candidate_dir, current_dir, limits, current_detector, backend, threads, score
    )
    if candidate is not None:
        thread.swap_detector(candidate)  # the sidecar has stopped: the pipeline owns it now
        log.info("model promoted: the pipeline now runs %s", candidate_dir)
    return result
