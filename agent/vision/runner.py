"""The detection side of a running agent: the pipeline thread between the capture queue
and the outbox, and what it needs at start (detector, reference frame, outbox).

``build`` checks everything at start and raises AgentError with a clear message (model
card, labels, backend, reference frame); nothing half-starts.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2

from agent.config import AgentSettings
from agent.errors import AgentError, ModelError, OutboxError, PayloadError
from agent.health.metrics import AgentMetrics
from agent.link.mqtt import Link
from agent.link.outbox import Outbox
from agent.link.sender import Sender
from agent.vision.camera import CAM_OK, Capture, Frame
from agent.vision.detector import Detector
from agent.vision.frames import BadFrame, decode_image, normalise
from agent.vision.modelcard import load_card
from agent.vision.pipeline import Image, Pipeline, grey_of
from agent.vision.privacy import PrivacyState
from agent.vision.scene import CONDITIONS
from agent.vision.settings import PipelineSettings
from common.files import atomic_write

log = logging.getLogger(__name__)

REFERENCE_NAME = "reference.png"


def make_detector(settings: PipelineSettings) -> Detector | None:
    d = settings.detector
    if d is None:
        return None
    # imported here: ``python -m agent.vision.model_fetch`` must not find it imported already
    from agent.vision import model_fetch

    card = load_card(d.card)
    if d.score_threshold is not None:
        card = card.model_copy(update={"score_threshold": d.score_threshold})
    model_dir = d.model_dir or model_fetch.cache_dir()
    detector = Detector(card, model_dir, d.backend, d.threads)
    unknown = sorted(set(d.classes) - set(detector.labels))
    if unknown:
        raise ModelError(f"classes {unknown} are not labels of model {card.name}")
    log.info("detector %s on %s with %d threads", card.name, d.backend, d.threads)
    return detector


def load_reference(settings: PipelineSettings, state_dir: Path) -> Image | None:
    """The configured reference frame, else the one saved at the first start, else None."""
    path = settings.scene.reference or state_dir / REFERENCE_NAME
    if not path.exists():
        if settings.scene.reference is not None:
            raise AgentError(f"reference frame {path} does not exist")
        return None
    try:
        rgb = decode_image(path.read_bytes())
    except (OSError, ValueError) as exc:
        raise AgentError(f"reference frame {path} is not a readable image: {exc}") from exc
    return grey_of(rgb, settings.scene.width)


def save_reference(grey: Image, state_dir: Path) -> None:
    ok, buf = cv2.imencode(".png", grey)
    if ok:
        atomic_write(str(state_dir / REFERENCE_NAME), bytes(buf), 0o644)


class PipelineThread:
    """Takes frames from the capture queue, runs the pipeline, fills the outbox."""

    def __init__(
        self,
        settings: PipelineSettings,
        capture: Capture,
        outbox: Outbox,
        detector: Detector | None,
        metrics: AgentMetrics,
        state_dir: Path,
        kick: Any = None,
        guard: PrivacyState | None = None,
    ) -> None:
        self.settings = settings
        self.capture = capture
        self.outbox = outbox
        self.metrics = metrics
        self.state_dir = state_dir
        self._kick = kick
        self.refused = 0
        self.errors = 0
        reference = load_reference(settings, state_dir)
        self.pipeline = Pipeline(settings, detector, self.emit, time.time(), reference, guard)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.last_beat = time.monotonic()
        self._dropped_seen = 0
        self._invoked = 0
        # frame taps (the model gate's shadow run) and a detector swap applied between frames
        self._taps: list[Callable[[Image, float], None]] = []
        self._next_detector: Detector | None = None
        self._swap_lock = threading.Lock()

    def emit(self, event_type: str, data: dict[str, Any], ts: float, cls: str) -> str | None:
        try:
            event_id = self.outbox.add(event_type, data, ts, cls)
        except PayloadError as exc:
            self.refused += 1
            self.metrics.events_refused.inc()
            log.error("%s", exc)
            return None
        except OutboxError as exc:
            self.refused += 1
            self.metrics.events_refused.inc()
            log.error("event %s lost: %s", event_type, exc)
            return None
        if event_id is not None:
            self.metrics.events.labels(type=event_type).inc()
        if self._kick is not None:
            self._kick()
        return event_id

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="pipeline", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 10.0) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout)
        self.pipeline.close(time.time())

    def alive(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def add_tap(self, tap: Callable[[Image, float], None]) -> None:
        """``tap(rgb, t_mono)`` is called in the pipeline thread after each frame; it must
        return at once (copy the frame and hand it to another thread)."""
        with self._swap_lock:
            self._taps = [*self._taps, tap]

    def remove_tap(self, tap: Callable[[Image, float], None]) -> None:
        with self._swap_lock:
            self._taps = [t for t in self._taps if t is not tap]

    def swap_detector(self, detector: Detector) -> None:
        """Replace the detector between two frames (in the pipeline thread): no frame sees
        half of a swap. Immediate when the thread is not running."""
        with self._swap_lock:
            self._next_detector = detector
        if not self.alive():
            self._apply_swap()

    def _apply_swap(self) -> None:
        with self._swap_lock:
            detector, self._next_detector = self._next_detector, None
        if detector is not None:
            self.pipeline.detector = detector
            self._invoked = detector.invocations
            log.info("detector swapped: now %s", detector.card.name)

    def _run(self) -> None:
        while not self._stop.is_set():
            self._apply_swap()
            self.last_beat = time.monotonic()
            frame = self.capture.queue.get(timeout=0.25)
            try:
                if frame is None:
                    ok = self.capture.stats().state == CAM_OK
                    self.pipeline.tick(time.monotonic(), time.time(), ok)
                else:
                    self._frame(frame)
            except AgentError as exc:
                log.error("pipeline: %s", exc)
                self._stop.wait(1.0)
            except Exception:  # a bad frame must not end detection; a hang is the watchdog's
                self.errors += 1
                log.exception("pipeline failed on a frame; going on")
            self._update_metrics()

    def _frame(self, frame: Frame) -> None:
        try:
            rgb = normalise(frame.pixels) if frame.pixels is not None else decode_image(frame.data)
        except BadFrame as exc:  # counted, one warning a minute, camera state bad_frames
            self.metrics.frames_bad.inc()
            self.capture.frame_unusable(f"frame {frame.index} from {frame.origin}: {exc}")
            # no usable frame: like no frame for scene health (no_frames) and track expiry
            self.pipeline.tick(frame.t_mono, frame.t_wall, camera_ok=False)
            return
        self.capture.frame_used()
        self.pipeline.process(rgb, frame.t_mono, frame.t_wall)
        for tap in self._taps:
            tap(rgb, frame.t_mono)
        self.metrics.frames.inc()
        if self.pipeline.new_reference and self.pipeline.reference is not None:
            save_reference(self.pipeline.reference.image.astype("uint8"), self.state_dir)
            self.pipeline.new_reference = False
        det = self.pipeline.detector
        if det is not None and det.invocations != self._invoked:
            self.metrics.invocations.inc(det.invocations - self._invoked)
            self.metrics.inference.observe(det.last_ms / 1000.0)
            self._invoked = det.invocations

    def _update_metrics(self) -> None:
        dropped = self.capture.queue.dropped
        if dropped > self._dropped_seen:
            self.metrics.frames_dropped.inc(dropped - self._dropped_seen)
            self._dropped_seen = dropped
        active = set(self.pipeline.problems())
        for cond in CONDITIONS:
            self.metrics.scene_problem.labels(condition=cond).set(1 if cond in active else 0)


@dataclass
class Detection:
    """The detection side, when the config has a [pipeline]."""

    outbox: Outbox
    sender: Sender
    thread: PipelineThread

    def start(self) -> None:
        self.sender.start()
        self.thread.start()

    def stop(self, link: Link, timeout: float = 3.0) -> None:
        """End tracks and send the last counts, then give the sender a moment to empty the
        outbox (what is left stays on disk and goes after the next start)."""
        self.thread.stop()
        deadline = time.monotonic() + timeout
        while self.outbox.depth() and link.is_connected() and time.monotonic() < deadline:
            self.sender.kick()
            time.sleep(0.05)
        self.sender.stop()

    def heartbeat_fields(self, metrics: AgentMetrics) -> dict[str, object]:
        p = self.thread.pipeline
        dropped = self.outbox.dropped()
        fields: dict[str, object] = {
            "outbox": self.outbox.depth(),
            "outbox_dropped": dropped.total,
            "outbox_unreceipted": self.outbox.unreceipted(),
            "outbox_refused": self.outbox.refused(),
            "scene": p.problems(),
            "invokes": p.invokes,
            "privacy": p.privacy.report(),  # issue 20: policy in force, masks, withheld
        }
        fields["light"] = p.light.mode
        fields["unreliable"] = p.unreliable()
        m = p.measures
        if m is not None:
            fields["brightness"] = round(min(255.0, max(0.0, m.brightness)), 1)
            fields["sharpness"] = round(max(0.0, m.sharpness), 1)
        infer = p.infer_ms()
        if infer is not None:
            fields["infer_ms"] = round(infer, 2)
        metrics.mqtt_connected.set(1 if self.sender.link.is_connected() else 0)
        metrics.outbox_depth.set(self.outbox.depth())
        metrics.outbox_bytes.set(self.outbox.size())
        metrics.outbox_dropped.labels(cls="snapshot").set(dropped.snapshots)
        metrics.outbox_dropped.labels(cls="event").set(dropped.events)
        return fields

    def stalled(self, now: float, limit: float) -> bool:
        return (
            not self.sender.alive()
            or not self.thread.alive()
            or (now - self.thread.last_beat > limit)
        )


def awaiting_model(settings: AgentSettings) -> Path | None:
    """The model slot's ``current`` when the detector reads its model from there and no
    model has reached the slot yet (a box installed without a model package, before its
    first OTA model release); None otherwise."""
    d = settings.pipeline.detector if settings.pipeline is not None else None
    slots = settings.ota.model_slots_dir if settings.ota is not None else None
    if d is None or slots is None:
        return None
    current = slots / "current"
    if current.exists() or not d.card.is_relative_to(current):
        return None
    return current


def start_detection(
    settings: AgentSettings, capture: Capture, link: Link, metrics: AgentMetrics,
    guard: PrivacyState | None = None,
) -> Detection | None:  # fmt: skip
    ps = settings.pipeline
    if ps is None:
        return None
    waiting = awaiting_model(settings)
    if waiting is not None:  # it reports and takes updates; detects once a model is there
        log.warning("no model in %s yet: detection is off until a model release is "
                    "installed there (docs/ota.md)", waiting)  # fmt: skip
    # otherwise it raises with the reason: card, labels, backend
    detector = None if waiting is not None else make_detector(ps)
    outbox = Outbox(
        settings.state_dir / "outbox.sqlite",
        settings.device_id,
        ps.outbox.max_bytes,
        ps.outbox.max_rows,
    )
    sender = Sender(
        outbox, link, ps.outbox.window, on_acked=lambda ids: metrics.acked.inc(len(ids)),
        receipt_timeout_s=ps.outbox.receipt_timeout_s,
        receipt_timeout_cap_s=ps.outbox.receipt_timeout_cap_s,
    )  # fmt: skip
    thread = PipelineThread(
        ps, capture, outbox, detector, metrics, settings.state_dir, kick=sender.kick, guard=guard
    )
    log.info("pipeline ready; %d messages waiting in the outbox", outbox.depth())
    return Detection(outbox, sender, thread)
