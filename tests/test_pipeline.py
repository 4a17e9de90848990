"""The deciding parts of the pipeline (motion gate, tracker, counting, scene health) on
known inputs, and the whole pipeline with the real model on scenes made of real photos."""

from __future__ import annotations

import base64
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pytest

from agent.cli import EXIT_CONFIG, EXIT_FAILED, main
from agent.vision import scene as sc
from agent.vision.counting import Counter, crossing, inside
from agent.vision.detector import Detection, Detector
from agent.vision.motion import MotionGate, grow_roi
from agent.vision.pipeline import Pipeline, grey_of, jpeg_snapshot
from agent.vision.settings import (
    LineSettings,
    MotionSettings,
    PipelineSettings,
    SceneSettings,
    TrackerSettings,
    ZoneSettings,
)
from agent.vision.tracker import END, NEW, UPDATE, Tracker
from hil_tests import scenes
from tests.detection_helpers import detector, model_files, write_card

__all__ = ["detector", "model_files"]  # fixtures

# ---------------------------------------------------------------- motion gate


def _grey(h: int = 120, w: int = 160, value: int = 90) -> np.ndarray:
    rng = np.random.default_rng(1)
    return np.clip(rng.normal(value, 2, (h, w)), 0, 255).astype(np.uint8)


def test_gate_runs_on_keyframes_and_motion_only() -> None:
    gate = MotionGate(MotionSettings(keyframe_s=10))
    still = _grey()
    first = gate.decide(still, 0.0)
    assert first.run and first.keyframe  # the first frame is a keyframe
    for i in range(1, 20):
        assert not gate.decide(_grey(), i * 0.2).run  # noise is not motion
    moved = still.copy()
    moved[40:80, 100:130] = 250
    d = gate.decide(moved, 4.0)
    assert d.run and not d.keyframe and len(d.regions) == 1
    x0, y0, x1, y1 = d.regions[0]
    assert x0 < 100 / 160 < x1 and y0 < 60 / 120 < y1
    assert d.roi[0] <= x0 and d.roi[2] >= x1 and d.roi[1] <= y0 and d.roi[3] >= y1
    assert gate.decide(still, 10.5).keyframe  # 10 s after the last keyframe
    assert gate.runs == 3 and gate.frames == 22


def test_grow_roi_is_square_minimum_sized_and_inside() -> None:
    roi = grow_roi([(0.9, 0.9, 0.95, 0.95)], 640, 480, 0.0, 0.5)
    x0, y0, x1, y1 = roi
    assert (x1 - x0) * 640 == pytest.approx((y1 - y0) * 480)  # square in pixels
    assert (y1 - y0) * 480 == pytest.approx(240)  # half the shorter side
    assert x1 == pytest.approx(1.0) and y1 == pytest.approx(1.0)  # moved inside, not cut


# ---------------------------------------------------------------- tracker


def _det(x: float, label: str = "Car", score: float = 0.8) -> Detection:
    return Detection(0, label, score, (x, 0.4, x + 0.1, 0.6))


def test_tracker_ids_new_update_end() -> None:
    tr = Tracker(TrackerSettings(min_hits=2, max_missed=2, update_every_s=1.0))
    full = (0.0, 0.0, 1.0, 1.0)
    assert tr.update([_det(0.1), _det(0.6, "Person")], full, 0.0, 100.0) == []
    changes = tr.update([_det(0.12), _det(0.62, "Person")], full, 0.2, 100.2)
    assert sorted((c.kind, c.track.label, c.track.id) for c in changes) == [
        (NEW, "Car", 1),
        (NEW, "Person", 2),
    ]
    # a fast step with no overlap still continues the track (centre within half a diagonal)
    assert tr.update([_det(0.17), _det(0.64, "Person")], full, 0.4, 100.4) == []
    changes = tr.update([_det(0.2), _det(0.66, "Person")], full, 1.3, 101.3)
    assert {(c.kind, c.track.id) for c in changes} == {(UPDATE, 1), (UPDATE, 2)}
    # the car is gone: two runs over it without it end the track; the person stays
    tr.update([_det(0.68, "Person")], full, 1.5, 101.5)
    changes = tr.update([_det(0.7, "Person")], full, 1.7, 101.7)
    assert [(c.kind, c.track.id) for c in changes] == [(END, 1)]
    ended = changes[0].track
    assert ended.hits == 4 and ended.first_wall == 100.0 and ended.last_wall == 101.3
    # a run over another region does not count as a miss for the person
    tr.update([], (0.0, 0.0, 0.3, 0.3), 1.9, 101.9)
    assert 2 in tr.tracks and tr.tracks[2].missed == 0
    assert [(c.kind, c.track.id) for c in tr.expire(1.7 + 15.0)] == [(END, 2)]


def test_tracker_keeps_only_the_best_snapshot() -> None:
    made: list[float] = []

    def snap(box: tuple[float, float, float, float]) -> bytes:
        made.append(box[0])
        return f"jpeg@{box[0]}".encode()

    tr = Tracker(TrackerSettings(min_hits=1))
    full = (0.0, 0.0, 1.0, 1.0)
    for t, (x, score) in enumerate([(0.1, 0.5), (0.11, 0.9), (0.12, 0.7)]):
        tr.update([_det(x, score=score)], full, float(t), float(t), snap)
    track = tr.tracks[1]
    assert track.best_score == 0.9 and track.snapshot == b"jpeg@0.11"
    assert made == [0.1, 0.11]  # encoded only when the score improved


def test_unconfirmed_track_ends_silently() -> None:
    tr = Tracker(TrackerSettings(min_hits=3, max_missed=1))
    full = (0.0, 0.0, 1.0, 1.0)
    tr.update([_det(0.1)], full, 0.0, 0.0)
    assert tr.update([], full, 0.2, 0.2) == []  # a one-frame false positive: no events
    assert tr.tracks == {}


# ---------------------------------------------------------------- counting


def test_line_crossing_directions_and_segment_ends() -> None:
    a, b = (0.0, 0.5), (1.0, 0.5)  # left to right across the middle
    assert crossing(a, b, (0.5, 0.4), (0.5, 0.6)) == -1  # top to bottom: from its left side
    assert crossing(a, b, (0.5, 0.6), (0.5, 0.4)) == 1
    assert crossing(a, b, (0.5, 0.4), (0.5, 0.45)) == 0
    assert crossing((0.0, 0.5), (0.3, 0.5), (0.5, 0.4), (0.5, 0.6)) == 0  # past the end
    assert crossing(a, b, (0.5, 0.4), (0.5, 0.5)) == 0  # touching is not crossing


def test_counter_counts_per_class_direction_and_zone_entries() -> None:
    line = LineSettings(name="gate", a=(0.0, 0.5), b=(1.0, 0.5), directions=("south", "north"))
    zone = ZoneSettings(name="box", points=[(0.6, 0.6), (0.9, 0.6), (0.9, 0.9), (0.6, 0.9)])
    c = Counter([line], [zone], 60.0, "bottom", start=1000.0)
    car_above = (0.65, 0.3, 0.75, 0.45)
    car_below = (0.65, 0.5, 0.75, 0.7)
    assert c.move("Car", car_above, car_below) == [("gate", "south"), ("box", "enter")]
    c.move("Car", car_below, car_above)
    c.move("Person", car_above, car_below)
    assert not c.due(1059.0) and c.due(1060.0)
    counts = c.flush(1060.0)
    assert counts["lines"] == {"gate": {"Car": {"south": 1, "north": 1}, "Person": {"south": 1}}}
    assert counts["zones"] == {"box": {"Car": 1, "Person": 1}}
    assert counts["start_ts"] == 1000.0 and counts["end_ts"] == 1060.0
    assert c.flush(1120.0)["lines"] == {}  # a new interval starts empty
    assert inside(zone.points, (0.7, 0.7)) and not inside(zone.points, (0.5, 0.7))


# ---------------------------------------------------------------- scene health


def _frames(kind: str, n: int, seed: int = 3) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    base = grey_of(scenes.background(), 320)
    out = []
    for _ in range(n):
        if kind == "frozen":
            out.append(base)
        elif kind == "covered":
            out.append(np.clip(rng.normal(8, 1, base.shape), 0, 255).astype(np.uint8))
        elif kind == "blur":  # out of focus, with the sensor's noise
            blurred = cv2.GaussianBlur(base, (0, 0), 4) + rng.normal(0, 1.5, base.shape)
            out.append(np.clip(blurred, 0, 255).astype(np.uint8))
        elif kind == "moved":
            out.append(np.roll(base, 60, axis=1))
        else:
            out.append(np.clip(base + rng.normal(0, 2, base.shape), 0, 255).astype(np.uint8))
    return out


@pytest.mark.parametrize(
    ("kind", "expect"),
    [("covered", {"covered"}), ("frozen", {"frozen"}), ("blur", {"blur"})],
)
def test_condition_reported_after_its_time_and_cleared(kind: str, expect: set[str]) -> None:
    s = SceneSettings(report_after_s=3.0, frozen_after_s=3.0, clear_after_s=1.0)
    health = sc.SceneHealth(s)
    ref = sc.Reference(_frames("ok", 1)[0])
    prev = None
    reported_at = None
    for i, grey in enumerate(_frames(kind, 40)):
        t = i * 0.25
        m = sc.measure(grey, prev, ref)
        prev = grey
        for ch in health.update(sc.conditions_now(m, s), t):
            assert ch.active and ch.condition in expect
            reported_at = t if reported_at is None else reported_at
    assert set(health.problems()) == expect
    assert reported_at is not None and 3.0 <= reported_at <= 3.5  # within the configured time
    cleared: list[str] = []
    for i, grey in enumerate(_frames("ok", 8)):
        m = sc.measure(grey, prev, ref)
        prev = grey
        cleared += [c.condition for c in health.update(sc.conditions_now(m, s), 10.0 + i * 0.25)]
    assert set(cleared) == expect and health.problems() == []


def test_healthy_scene_has_no_problem_and_moved_view_is_seen() -> None:
    s = SceneSettings()
    ok = _frames("ok", 2)
    ref = sc.Reference(ok[0])
    m = sc.measure(ok[1], ok[0], ref)
    assert sc.conditions_now(m, s) == set(), m
    moved = sc.measure(_frames("moved", 1)[0], ok[1], ref)
    assert sc.MOVED in sc.conditions_now(moved, s), moved


# ---------------------------------------------------------------- the whole pipeline


def _run(settings: PipelineSettings, det: Detector | None, frames: list[np.ndarray]) -> Any:
    events: list[tuple[str, dict[str, Any], str]] = []

    def emit(kind: str, data: dict[str, Any], _ts: float, cls: str) -> str:
        events.append((kind, data, cls))
        return f"ev-{len(events)}"

    p = Pipeline(settings, det, emit, 1000.0)
    for i, frame in enumerate(frames):
        p.process(frame, i * 0.2, 1000.0 + i * 0.2)
    p.close(1000.0 + len(frames) * 0.2)
    return p, events


def test_pipeline_tracks_counts_and_snapshots_people_crossing(detector: Detector) -> None:
    scene = scenes.crossing_scene(count=2, frames_each=24, gap=8)
    frames = [scene.frame(i) for i in range(64)]
    line = LineSettings(name="mid", a=(0.5, 0.0), b=(0.5, 1.0), directions=("west", "east"))
    settings = PipelineSettings(lines=[line], counts_every_s=600)
    p, events = _run(settings, detector, frames)
    kinds = [k for k, _d, _c in events]
    assert kinds.count("track.new") == 2 and kinds.count("track.end") == 2, kinds
    new = [d for k, d, _c in events if k == "track.new"]
    assert {d["label"] for d in new} == {"Person"} and new[0]["track"] != new[1]["track"]
    counts = [d for k, d, _c in events if k == "counts"]
    # the first walks left to right (from the line's right-hand side: east), then back
    assert counts[-1]["lines"] == {"mid": {"Person": {"east": 1, "west": 1}}}, counts
    snaps = [(d, c) for k, d, c in events if k == "snapshot"]
    assert len(snaps) == 2 and all(c == "snapshot" for _d, c in snaps)
    jpeg = base64.b64decode(snaps[0][0]["jpeg"])
    img = cv2.imdecode(np.frombuffer(jpeg, np.uint8), cv2.IMREAD_COLOR)
    assert img is not None and max(img.shape[:2]) <= 320
    assert snaps[0][0]["of"].startswith("ev-")  # points at its track.end event
    assert p.invokes < len(frames)  # the empty gap between the two walkers is skipped


def test_static_scene_runs_the_detector_on_keyframes_only(detector: Detector) -> None:
    scene = scenes.Scene([], noise=2.0)
    frames = [scene.frame(i) for i in range(60)]  # 12 s at 5 fps
    p, events = _run(PipelineSettings(), detector, frames)
    assert p.invokes == 2  # t=0 and t=10 s
    assert [k for k, _d, _c in events if k.startswith("track")] == []


def test_snapshot_is_shrunk_to_fit_the_event_limit() -> None:
    rng = np.random.default_rng(5)
    noisy = rng.integers(0, 256, (1080, 1920, 3), dtype=np.uint8)  # incompressible
    jpeg = jpeg_snapshot(noisy, (0.0, 0.0, 1.0, 1.0), 1920, limit=40_000)
    assert jpeg is not None and len(jpeg) <= 40_000
    assert cv2.imdecode(np.frombuffer(jpeg, np.uint8), cv2.IMREAD_COLOR) is not None


# ---------------------------------------------------------------- bad config refused at start

AGENT = """
device_id = "cam-0001"
state_dir = "{state}"

[mqtt]
ca = "/nonexistent/root.pem"
cert = "/nonexistent/cert.pem"
key = "/nonexistent/key.pem"

[camera]
type = "synthetic"

[pipeline]
{pipeline}
"""


def _agent(tmp_path: Path, pipeline: str) -> list[str]:
    path = tmp_path / "agent.toml"
    path.write_text(
        AGENT.replace("{state}", str(tmp_path / "state")).replace("{pipeline}", pipeline)
    )
    return ["--config", str(path)]


def test_zone_outside_the_frame_is_refused(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    zone = '[[pipeline.zones]]\nname = "kerb"\npoints = [[0.1, 0.1], [1.2, 0.1], [0.5, 0.9]]\n'
    assert main(_agent(tmp_path, zone)) == EXIT_CONFIG
    err = capsys.readouterr().err
    assert "zone 'kerb' point (1.2, 0.1) is outside the frame" in err


def test_line_outside_the_frame_is_refused(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    line = '[[pipeline.lines]]\nname = "l"\na = [0.0, -0.5]\nb = [1.0, 0.5]\n'
    assert main(_agent(tmp_path, line)) == EXIT_CONFIG
    assert "line 'l' point (0.0, -0.5) is outside the frame" in capsys.readouterr().err


def test_unknown_model_format_is_refused_at_start(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    card = write_card(tmp_path, format='"detr"')
    argv = _agent(tmp_path, f'[pipeline.detector]\ncard = "{card}"\n')
    assert main(argv) == EXIT_FAILED
    assert "format: Input should be 'ssd_anchors', 'tflite_postprocess' or 'yolov8'" in caplog.text


def test_missing_labels_are_refused_at_start(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, model_files: Any
) -> None:
    card = write_card(tmp_path, labels_file='"no-such-labels.txt"')
    pipeline = f'[pipeline.detector]\ncard = "{card}"\nmodel_dir = "{model_files.folder}"\n'
    assert main(_agent(tmp_path, pipeline)) == EXIT_FAILED
    assert "no-such-labels.txt does not exist" in caplog.text
    assert not (tmp_path / "state" / "outbox.sqlite").exists()  # nothing half-started


def test_unknown_class_filter_is_refused_at_start(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    argv = _agent(tmp_path, '[pipeline.detector]\nclasses = ["Person", "Unicorn"]\n')
    assert main(argv) == EXIT_FAILED
    assert "['Unicorn'] are not labels of model" in caplog.text


def test_no_frames_is_reported_from_the_capture_state() -> None:
    events: list[tuple[str, dict[str, Any]]] = []

    def emit(kind: str, data: dict[str, Any], _ts: float, _cls: str) -> str:
        events.append((kind, data))
        return "e"

    s = PipelineSettings(detector=None, scene=SceneSettings(report_after_s=2.0))
    p = Pipeline(s, None, emit, 0.0)
    for i in range(12):  # the capture says no frames for 3 s
        p.tick(i * 0.25, 1000.0 + i * 0.25, camera_ok=False)
    assert ("scene.problem", "no_frames") in [(k, d["condition"]) for k, d in events]
    assert p.problems() == ["no_frames"]
    for i in range(30):
        p.tick(10.0 + i * 0.25, 1010.0 + i * 0.25, camera_ok=True)
    assert events[-1][0] == "scene.cleared" and p.problems() == []


def test_agent_metrics_are_served_for_prometheus() -> None:
    import urllib.request

    from agent.health.metrics import AgentMetrics
    from hil_tests.procs import free_port

    m = AgentMetrics()
    m.frames.inc(3)
    m.outbox_dropped.labels(cls="snapshot").set(2)
    port = free_port()
    m.serve(port)
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as resp:
        text = resp.read().decode()
    assert "camfleet_agent_frames_total 3.0" in text
    assert 'camfleet_agent_outbox_dropped{cls="snapshot"} 2.0' in text


def test_pipeline_takes_an_empty_reference_and_reports_a_moved_view() -> None:
    events: list[tuple[str, dict[str, Any]]] = []

    def emit(kind: str, data: dict[str, Any], _ts: float, _cls: str) -> str:
        events.append((kind, data))
        return "e"

    s = PipelineSettings(detector=None, scene=SceneSettings(report_after_s=2.0))
    p = Pipeline(s, None, emit, 0.0)
    walker = scenes.crossing_scene(count=1, frames_each=10, gap=0)
    for i in range(40):  # someone walks through first, then the street is empty
        p.process(walker.frame(i), i * 0.2, 1000.0 + i * 0.2)
    assert p.new_reference and p.reference is not None
    assert p.problems() == []  # the reference was taken once nobody moved, not before
    shifted = scenes.Scene([], noise=2.0)
    shifted.bg = np.roll(shifted.bg, 80, axis=1)  # the camera was knocked sideways
    for i in range(40, 75):
        p.process(shifted.frame(i), i * 0.2, 1000.0 + i * 0.2)
    assert ("scene.problem", "moved") in [(k, d["condition"]) for k, d in events], events


def test_reference_stays_unchanged_over_many_comparisons() -> None:
    ok = _frames("ok", 3)
    ref = sc.Reference(ok[0])
    before = ref.image.copy()
    for _ in range(20):
        shift, corr = ref.compare(ok[1])
    assert np.array_equal(ref.image, before)  # OpenCV 5.0 windows phaseCorrelate's inputs
    assert corr > 0.9 and shift < 0.01
