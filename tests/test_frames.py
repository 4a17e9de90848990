"""Where frames enter: decoding and normalisation refuse what they cannot use with the
documented ``BadFrame`` (a ValueError), never OpenCV's own error; the detector refuses any
input but its card's; the camera counts unusable frames, warns once a minute and reports
``bad_frames``. A corpus of bad files (tests/data/bad_frames) is replayed every run, and
the decoder and the frame path are fuzzed (hypothesis)."""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from agent.errors import DetectorError
from agent.health.metrics import AgentMetrics
from agent.link.backoff import Backoff
from agent.link.outbox import Outbox
from agent.vision import frames
from agent.vision.camera import CAM_BAD_FRAMES, CAM_OK, CameraSource, Capture, Frame, FrameQueue
from agent.vision.detector import Detector
from agent.vision.frames import BadFrame, BadFrameLog, decode_image, normalise
from agent.vision.pipeline import Pipeline
from agent.vision.runner import PipelineThread
from agent.vision.settings import PipelineSettings
from hil_tests import scenes
from tests.detection_helpers import detector, model_files

__all__ = ["detector", "model_files"]  # fixtures

CORPUS = Path(__file__).parent / "data" / "bad_frames"


def _png(rgb: np.ndarray) -> bytes:
    return scenes.png_bytes(rgb)


def _jpeg(rgb: np.ndarray) -> bytes:
    ok, buf = cv2.imencode(".jpg", cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))
    assert ok
    return bytes(buf)


SMALL = np.asarray(cv2.resize(scenes.background(), (48, 36)), np.uint8)
GOOD = {"png": _png(SMALL), "jpg": _jpeg(SMALL)}


def _usable(img: np.ndarray) -> None:
    assert img.dtype == np.uint8 and img.ndim == 3 and img.shape[2] == 3
    assert img.flags.c_contiguous and min(img.shape[:2]) >= frames.MIN_SIDE


# ---------------------------------------------------------------- decoding


@pytest.mark.parametrize("path", sorted(CORPUS.iterdir()), ids=lambda p: p.name)
def test_every_bad_file_of_the_corpus_is_a_bad_frame(path: Path) -> None:
    with pytest.raises(BadFrame) as err:
        decode_image(path.read_bytes())
    assert isinstance(err.value, ValueError)  # the documented error
    assert "cv2.error" not in type(err.value).__name__


def test_corpus_is_not_empty_and_names_the_cases() -> None:
    names = {p.name for p in CORPUS.iterdir()}
    assert {"empty.jpg", "jpeg-half.jpg", "ppm-huge-dimensions.ppm"} <= names
    with pytest.raises(BadFrame, match="0 bytes"):
        decode_image(b"")


def test_grey_rgba_and_16_bit_files_decode_to_rgb() -> None:
    grey = cv2.cvtColor(SMALL, cv2.COLOR_RGB2GRAY)
    ok, buf = cv2.imencode(".png", grey)
    assert ok
    out = decode_image(bytes(buf))
    _usable(out)
    assert np.array_equal(out[..., 0], grey) and np.array_equal(out[..., 2], grey)
    bgra = cv2.cvtColor(SMALL, cv2.COLOR_RGB2BGRA)
    out = decode_image(bytes(cv2.imencode(".png", bgra)[1]))
    assert np.array_equal(out, SMALL)  # channels in RGB order, alpha dropped
    deep = SMALL.astype(np.uint16) * 257
    out = decode_image(bytes(cv2.imencode(".png", cv2.cvtColor(deep, cv2.COLOR_RGB2BGR))[1]))
    assert np.array_equal(out, SMALL)  # 16-bit scaled to 8, explicitly


@settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    kind=st.sampled_from(sorted(GOOD)),
    cut=st.integers(0, 6000),
    flips=st.lists(st.tuples(st.integers(0, 6000), st.integers(1, 255)), max_size=8),
)
def test_fuzzed_image_files_decode_or_raise_bad_frame(
    kind: str, cut: int, flips: list[tuple[int, int]]
) -> None:
    data = bytearray(GOOD[kind][: max(0, len(GOOD[kind]) - cut)])
    for at, mask in flips:
        if data:
            data[at % len(data)] ^= mask
    try:
        out = decode_image(bytes(data))
    except BadFrame:
        return
    _usable(out)


@settings(max_examples=60, deadline=None)
@given(st.binary(max_size=512))
def test_random_bytes_decode_or_raise_bad_frame(data: bytes) -> None:
    with contextlib.suppress(BadFrame):
        _usable(decode_image(data))


# ---------------------------------------------------------------- normalisation

DTYPES = [np.uint8, np.uint16, np.int8, np.int32, np.float32, np.float64, np.bool_]


@st.composite
def arrays(draw: Any) -> np.ndarray:
    dtype = draw(st.sampled_from(DTYPES))
    ndim = draw(st.integers(0, 4))
    shape = tuple(draw(st.lists(st.integers(0, 40), min_size=ndim, max_size=ndim)))
    value = draw(st.integers(0, 255))
    arr = np.full(shape, value).astype(dtype)
    if draw(st.booleans()) and arr.ndim >= 2 and arr.shape[1] > 1:
        arr = arr[:, ::2]  # not contiguous
    return arr


@settings(max_examples=150, deadline=None)
@given(arrays())
def test_normalise_converts_what_it_documents_and_refuses_the_rest(arr: np.ndarray) -> None:
    ok_dtype = arr.dtype == np.uint8
    chans = 1 if arr.ndim == 2 else (arr.shape[2] if arr.ndim == 3 else 0)
    ok_shape = arr.ndim in (2, 3) and chans in (1, 3, 4)
    big = arr.ndim in (2, 3) and min(arr.shape[:2]) >= frames.MIN_SIDE
    try:
        out = normalise(arr)
    except BadFrame:
        assert not (ok_dtype and ok_shape and big), arr.shape
        return
    assert ok_dtype and ok_shape and big
    _usable(out)
    assert out.shape[:2] == arr.shape[:2]


def test_normalise_refuses_uint16_and_lists_with_the_reason() -> None:
    with pytest.raises(BadFrame, match=r"uint16 \(480, 640\)"):
        normalise(np.zeros((480, 640), np.uint16))
    with pytest.raises(BadFrame, match="numpy array"):
        normalise([[1, 2], [3, 4]])
    rgb = scenes.background(64, 48)
    assert normalise(rgb) is rgb  # a frame that is right is not copied


# ---------------------------------------------------------------- the detector's input


def test_detector_refuses_anything_but_its_cards_input(detector: Detector) -> None:
    person = scenes.person()
    assert [d.label for d in detector.detect(person)] == ["Person"]
    grey = cv2.cvtColor(scenes.cat(), cv2.COLOR_RGB2GRAY)
    for bad in (
        grey,
        cv2.cvtColor(scenes.cat(), cv2.COLOR_RGB2RGBA),
        scenes.cat().astype(np.uint16) * 257,
        scenes.cat().astype(np.float32),
        np.zeros((0, 10, 3), np.uint8),
    ):
        before = detector.invocations
        with pytest.raises(DetectorError, match="detector input"):
            detector.detect(bad)
        assert detector.invocations == before  # nothing ran, nothing stale came back
    # converted where it enters the pipeline: the cat's own detections, not the person's
    assert [d.label for d in detector.detect(normalise(grey))] == ["Cat"]


def test_pipeline_converts_grey_and_rgba_and_refuses_uint16(detector: Detector) -> None:
    events: list[str] = []

    def emit(kind: str, _data: dict[str, Any], _ts: float, _cls: str) -> str:
        events.append(kind)
        return "e"

    from agent.vision.settings import MotionSettings

    p = Pipeline(PipelineSettings(motion=MotionSettings(always_detect=True)), detector, emit, 0)
    assert p.process(scenes.person(), 0.0, 0.0).detections == 1
    cat_grey = cv2.cvtColor(scenes.cat(), cv2.COLOR_RGB2GRAY)
    assert p.process(cat_grey, 0.2, 0.2).detections == 1
    assert p.process(cv2.cvtColor(scenes.cat(), cv2.COLOR_RGB2RGBA), 0.4, 0.4).detections == 1
    frames_before = p.frames
    with pytest.raises(BadFrame):
        p.process(scenes.cat().astype(np.uint16), 0.6, 0.6)
    assert p.frames == frames_before  # refused before any state changed


def test_random_frames_at_random_moments_never_break_the_pipeline() -> None:
    rng = np.random.default_rng(11)
    p = Pipeline(PipelineSettings(detector=None), None, lambda *a: "e", 0.0)
    good = scenes.background(160, 120)
    refused = used = 0
    for i in range(120):
        roll = rng.random()
        frame: Any = good
        if roll < 0.3:
            h, w = int(rng.integers(0, 300)), int(rng.integers(0, 300))
            shape = [(h, w), (h, w, 1), (h, w, 2), (h, w, 3), (h, w, 4), (h,)][i % 6]
            dtype = [np.uint8, np.uint16, np.float32][int(rng.integers(0, 3))]
            frame = rng.integers(0, 255, shape).astype(dtype)
        try:
            p.process(frame, i * 0.2, 1000.0 + i * 0.2)
            used += 1
        except BadFrame:
            refused += 1
    assert used + refused == 120 and refused > 10 and p.frames == used


# ---------------------------------------------------------------- the camera's health


def test_bad_frame_log_warns_once_per_interval() -> None:
    log = BadFrameLog(every_s=60.0)
    said = [log.bad("x", t) for t in range(0, 130)]
    warnings = [s for s in said if s is not None]
    assert len(warnings) == 3  # t = 0, 60, 120
    assert warnings[1] is not None and warnings[1].startswith("60 unusable frame(s) (61 in all)")
    assert log.total == 130 and log.streak == 130
    log.good()
    assert log.streak == 0


class _Script(CameraSource):
    """The hardware seam: a camera that delivers the given encoded frames, then stops."""

    def __init__(self, items: list[bytes], fps: float = 100.0) -> None:
        self.items = items
        self.index = 0
        self.period = 1.0 / fps
        self._closed = threading.Event()

    def open(self) -> None:
        self._closed.clear()

    def read(self) -> Frame | None:
        if self._closed.wait(self.period) or self.index >= len(self.items):
            self._closed.wait(5.0)
            return None
        data = self.items[self.index]
        self.index += 1
        return Frame(self.index - 1, time.monotonic(), time.time(), data, "script")

    def close(self) -> None:
        self._closed.set()


def test_undecodable_frames_are_counted_warned_once_and_the_camera_says_so(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    bad = [p.read_bytes() for p in sorted(CORPUS.iterdir())] * 3
    good = _png(scenes.background(160, 120))
    source = _Script([good] * 5 + bad + [good] * 10)
    capture = Capture(lambda: source, FrameQueue(64), Backoff(1.0, 2.0, 0.0), fps=100.0)
    outbox = Outbox(tmp_path / "outbox.sqlite", "cam-frames", 1 << 20, 1000)
    metrics = AgentMetrics()
    thread = PipelineThread(
        PipelineSettings(detector=None), capture, outbox, None, metrics, tmp_path
    )
    states: list[str] = []
    caplog.set_level(logging.WARNING)
    try:
        capture.start()
        thread.start()
        deadline = time.monotonic() + 20
        while source.index < len(source.items) and time.monotonic() < deadline:
            states.append(capture.stats().state)
            time.sleep(0.005)
        deadline = time.monotonic() + 5
        while len(capture.queue) and time.monotonic() < deadline:
            time.sleep(0.01)
        time.sleep(0.1)
    finally:
        thread.stop()
        capture.stop()
        outbox.close()
    stats = capture.stats()
    assert stats.bad_frames == len(bad)
    assert metrics.frames_bad._value.get() == len(bad)
    assert thread.errors == 0  # no traceback per frame
    assert CAM_BAD_FRAMES in states and stats.state == CAM_OK  # good frames again: ok
    warned = [r for r in caplog.records if "unusable frame" in r.getMessage()]
    assert len(warned) == 1, [r.getMessage() for r in warned]
    assert "cv2" not in caplog.text and "Traceback" not in caplog.text
