"""Agent parts without a broker: config, health body, camera sources and queue, backoff."""

from __future__ import annotations

import itertools
import random
import subprocess
import sys
import threading
import time
from collections import deque
from collections.abc import Callable
from pathlib import Path

import pytest

from agent.cli import main
from agent.config import AgentSettings, FilesCameraSettings, SyntheticCameraSettings
from agent.errors import CameraError, LinkError, PayloadError
from agent.health.heartbeat import HostReader, HostReadings, build_heartbeat, read_thermal_zones
from agent.link.backoff import Backoff
from agent.link.mqtt import Link, status_message
from agent.vision.camera import (
    CAM_ERROR,
    CAM_NO_FRAMES,
    CAM_OK,
    CameraSource,
    CameraStats,
    Capture,
    Frame,
    FrameQueue,
    camera_state,
    make_source,
    measured_fps,
)
from agent.vision.camera_sim import FileReplaySource, SyntheticSource
from common.settings import ConfigError, load_settings
from firmware import contract
from hil_tests.images import write_test_images
from hil_tests.procs import REPO

GOOD_TOML = """
device_id = "cam-0001"
heartbeat_s = 5
state_dir = "{state}"

[mqtt]
port = 8883
ca = "/etc/camfleet/root.pem"
cert = "/etc/camfleet/cert.pem"
key = "/etc/camfleet/key.pem"

[camera]
type = "files"
path = "/srv/images"
fps = 2
"""


def _write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "agent.toml"
    path.write_text(text.replace("{state}", str(tmp_path / "state")))
    return path


# ---------------------------------------------------------------- config


def test_config_loads_with_defaults_and_discriminated_camera(tmp_path: Path) -> None:
    s = load_settings(AgentSettings, _write(tmp_path, GOOD_TOML))
    assert s.device_id == "cam-0001"
    assert s.mqtt.keepalive_s == 30
    assert s.mqtt.host == "localhost"
    assert isinstance(s.camera, FilesCameraSettings)
    assert s.camera.path == Path("/srv/images")
    assert isinstance(make_source(s.camera), FileReplaySource)


@pytest.mark.parametrize(
    ("mutation", "where"),
    [
        (lambda t: t.replace("heartbeat_s = 5", "heartbeat_secs = 5"), "heartbeat_secs"),
        (lambda t: t.replace("port = 8883", "port = 8883\nhots = 'x'"), "mqtt.hots"),
        (lambda t: t.replace("fps = 2", "fps = 2\nwidth = 3"), "camera.files.width"),
    ],
)
def test_config_refuses_unknown_keys(
    tmp_path: Path, mutation: Callable[[str], str], where: str
) -> None:
    path = _write(tmp_path, mutation(GOOD_TOML))
    with pytest.raises(ConfigError) as err:
        load_settings(AgentSettings, path)
    msg = str(err.value)
    assert where in msg
    assert "Extra inputs are not permitted" in msg
    assert str(path) in msg


@pytest.mark.parametrize("bad_id", ["Cam-0001", "c", "cam_0001", "-cam", "cam-"])
def test_config_refuses_bad_device_id(tmp_path: Path, bad_id: str) -> None:
    path = _write(tmp_path, GOOD_TOML.replace('"cam-0001"', f'"{bad_id}"'))
    with pytest.raises(ConfigError, match=r"device_id: .*invalid device id"):
        load_settings(AgentSettings, path)


def test_config_refuses_unknown_camera_type_and_bad_backoff(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="camera"):
        load_settings(AgentSettings, _write(tmp_path, GOOD_TOML.replace('"files"', '"v4l3"')))
    bad = GOOD_TOML.replace("port = 8883", "port = 8883\nreconnect_cap_s = 0.5")
    with pytest.raises(ConfigError, match="reconnect_cap_s must not be smaller"):
        load_settings(AgentSettings, _write(tmp_path, bad))


def test_cli_exits_2_on_unknown_key(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = _write(tmp_path, GOOD_TOML.replace("heartbeat_s", "heartbeat_sec"))
    assert main(["--config", str(path)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("camfleet-agent: invalid configuration")
    assert "heartbeat_sec" in err


def test_python_m_agent_cli_exits_2_on_bad_config(tmp_path: Path) -> None:
    path = _write(tmp_path, GOOD_TOML.replace('"cam-0001"', '"CAM!"'))
    done = subprocess.run(
        [sys.executable, "-m", "agent.cli", "--config", str(path)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert done.returncode == 2
    assert "invalid device id" in done.stderr


def test_cli_exits_1_when_tls_files_missing(tmp_path: Path) -> None:
    # a valid config whose key files do not exist: the agent refuses to start
    assert main(["--config", str(_write(tmp_path, GOOD_TOML))]) == 1


# ---------------------------------------------------------------- health

VERSIONS = {"agent": "0.1.0", "python": "3.11.9", "paho": "2.2.0"}
CAM = CameraStats(state=CAM_OK, frames=120, fps=4.9, dropped=3, error=None)


def _encode(body: dict[str, object]) -> dict[str, object]:
    _topic, payload, qos, retain = contract.encode("heartbeat", "cam-0001", body, 1.7e9)
    assert (qos, retain) == (1, False)
    _id, kind, decoded = contract.decode(_topic, payload)
    assert kind == "heartbeat"
    return dict(decoded)


def test_heartbeat_body_passes_contract() -> None:
    host = HostReadings(
        cpu_pct=12.34, load1=0.5, mem_used_pct=40.0, disk_used_pct=71.2, temp_c=48.25
    )
    body = _encode(build_heartbeat(7, 30.0, 12.345, host, CAM, VERSIONS))
    assert body["seq"] == 7 and body["kind"] == "agent" and body["interval_s"] == 30.0
    assert body["cpu_pct"] == 12.3 and body["temp_c"] == 48.2
    assert body["camera"] == "ok" and body["frames"] == 120 and body["fps"] == 4.9
    assert body["versions"] == VERSIONS


def test_heartbeat_omits_absent_and_implausible_readings() -> None:
    host = HostReadings(
        cpu_pct=100.4, load1=None, mem_used_pct=-0.1, disk_used_pct=None, temp_c=400.0
    )
    body = _encode(build_heartbeat(0, 1, 0.0, host, None, VERSIONS))
    assert body["cpu_pct"] == 100.0
    assert body["mem_used_pct"] == 0.0
    for absent in ("temp_c", "load1", "disk_used_pct", "camera", "fps", "frames"):
        assert absent not in body


def test_host_reader_on_this_machine(tmp_path: Path) -> None:
    readings = HostReader(tmp_path).read()
    assert readings.mem_used_pct is not None and 0 < readings.mem_used_pct <= 100
    assert readings.disk_used_pct is not None and 0 <= readings.disk_used_pct <= 100
    _encode(build_heartbeat(1, 5, 1.0, readings, CAM, VERSIONS))


def test_thermal_zones_hottest_readable(tmp_path: Path) -> None:
    for name, text in (
        ("thermal_zone0", "45000\n"),
        ("thermal_zone1", "garbage"),
        ("thermal_zone2", "52500"),
        ("thermal_zone3", "999999"),
    ):
        (tmp_path / name).mkdir()
        (tmp_path / name / "temp").write_text(text)
    assert read_thermal_zones(tmp_path) == 52.5
    assert read_thermal_zones(tmp_path / "nothing") is None


# ---------------------------------------------------------------- camera


def test_file_replay_cycles_paced_and_timestamped(tmp_path: Path) -> None:
    paths = write_test_images(tmp_path, 3, 32, 24)
    src = FileReplaySource(tmp_path, fps=50)
    src.open()
    t0_wall, t0 = time.time(), time.monotonic()
    frames = [src.read() for _ in range(7)]
    elapsed = time.monotonic() - t0
    src.close()
    got = [f for f in frames if f is not None]
    assert [f.origin for f in got] == [p.name for p in paths * 3][:7]
    assert got[4].data == paths[1].read_bytes()
    assert [f.index for f in got] == list(range(7))
    assert all(b.t_mono > a.t_mono for a, b in itertools.pairwise(got))
    assert all(t0_wall - 1 < f.t_wall < time.time() + 1 for f in got)
    assert 6 / 50 * 0.8 <= elapsed < 2.0  # paced at ~50 fps, not as fast as possible


def test_file_replay_without_images_fails_clearly(tmp_path: Path) -> None:
    (tmp_path / "notes.txt").write_text("x")
    with pytest.raises(CameraError, match="no image files"):
        FileReplaySource(tmp_path, fps=5).open()
    with pytest.raises(CameraError, match="cannot list"):
        FileReplaySource(tmp_path / "missing", fps=5).open()


def test_synthetic_frames_are_valid_and_differ() -> None:
    src = make_source(SyntheticCameraSettings(type="synthetic", fps=100, width=40, height=30))
    assert isinstance(src, SyntheticSource)
    src.open()
    a, b = src.read(), src.read()
    assert a is not None and b is not None
    header = b"P6\n40 30\n255\n"
    assert a.data.startswith(header) and len(a.data) == len(header) + 40 * 30 * 3
    assert a.data != b.data and a.origin == "synthetic"


def test_close_unblocks_a_waiting_read() -> None:
    src = SyntheticSource(16, 16, fps=0.2)  # one frame every 5 s
    src.open()
    assert src.read() is not None
    threading.Timer(0.1, src.close).start()
    t0 = time.monotonic()
    assert src.read() is None
    assert time.monotonic() - t0 < 1.0


def _frame(i: int) -> Frame:
    return Frame(i, float(i), 1.7e9 + i, b"x", "test")


def test_frame_queue_drops_oldest() -> None:
    q = FrameQueue(3)
    dropped = [q.put(_frame(i)) for i in range(5)]
    assert dropped == [False, False, False, True, True]
    assert q.dropped == 2 and len(q) == 3
    assert [f.index for f in (q.get(0), q.get(0), q.get(0)) if f] == [2, 3, 4]
    assert q.get(timeout=0.05) is None


def test_camera_state_and_fps_rules() -> None:
    assert camera_state(True, 10.0, 10.1, 2.0) == CAM_ERROR
    assert camera_state(False, None, 10.0, 2.0) == CAM_NO_FRAMES
    assert camera_state(False, 7.0, 10.0, 2.0) == CAM_NO_FRAMES
    assert camera_state(False, 9.5, 10.0, 2.0) == CAM_OK
    times = deque(float(t) / 10 for t in range(100))  # 10 fps for 10 s
    assert measured_fps(times, 9.9, 5.0, 0.0) == pytest.approx(10.0, rel=0.05)
    assert measured_fps(times, 30.0, 5.0, 0.0) == 0.0  # stalled long ago
    assert measured_fps(deque([0.5, 0.6]), 1.0, 5.0, 0.0) == pytest.approx(2.0)


def test_capture_measures_and_bounds_queue() -> None:
    cap = Capture(
        lambda: SyntheticSource(16, 16, fps=50), FrameQueue(2), Backoff(0.05, 0.1, 0.05), fps=50
    )
    cap.start()
    time.sleep(0.6)
    stats = cap.stats()
    cap.stop()
    assert stats.state == CAM_OK and stats.error is None
    assert 15 <= stats.frames <= 40
    assert 25 <= stats.fps <= 70
    assert len(cap.queue) == 2 and stats.dropped >= stats.frames - 3


class _FlakySource(CameraSource):
    """A camera that fails to open the first ``failures`` times (hardware seam fake)."""

    opens = 0

    def __init__(self, failures: int) -> None:
        self.failures = failures
        self.inner = SyntheticSource(16, 16, fps=50)

    def open(self) -> None:
        type(self).opens += 1
        if type(self).opens <= self.failures:
            raise CameraError("device busy")
        self.inner.open()

    def read(self) -> Frame | None:
        return self.inner.read()

    def close(self) -> None:
        self.inner.close()


def test_failed_source_reported_and_retried() -> None:
    _FlakySource.opens = 0
    cap = Capture(lambda: _FlakySource(3), FrameQueue(2), Backoff(0.1, 0.2, 0.1), fps=50)
    cap.start()
    time.sleep(0.05)
    failing = cap.stats()
    deadline = time.monotonic() + 5
    while cap.stats().state != CAM_OK and time.monotonic() < deadline:
        time.sleep(0.02)
    recovered = cap.stats()
    cap.stop()
    assert failing.state == CAM_ERROR and failing.error == "device busy"
    assert recovered.state == CAM_OK and recovered.error is None and recovered.frames > 0
    assert _FlakySource.opens == 4


def test_write_test_images_distinct(tmp_path: Path) -> None:
    paths = write_test_images(tmp_path / "imgs", 4, 24, 16)
    blobs = {p.read_bytes() for p in paths}
    assert len(blobs) == 4 and all(b.startswith(b"P6\n24 16\n255\n") for b in blobs)


# ---------------------------------------------------------------- backoff and link


@pytest.mark.parametrize("attempt", [0, 1, 2, 3, 5, 10, 40])
def test_reconnect_delay_bounds(attempt: int) -> None:
    base, cap, spread = 0.5, 30.0, 20.0
    ceiling = spread if attempt == 0 else min(cap, base * 2 ** min(attempt, 30))
    rng = random.Random(attempt)
    delays = []
    for _ in range(500):
        b = Backoff(base, cap, spread, rng.random)
        b.attempt = attempt
        delays.append(b.next_delay())
    assert all(0 <= d < ceiling for d in delays)
    assert max(delays) > 0.9 * ceiling  # full jitter uses the whole range
    assert min(delays) < 0.1 * ceiling


def test_backoff_grows_and_resets() -> None:
    b = Backoff(1.0, 8.0, 20.0, rnd=lambda: 0.999)
    delays = [b.next_delay() for _ in range(6)]
    assert delays == pytest.approx([19.98, 1.998, 3.996, 7.992, 7.992, 7.992])
    b.reset()
    assert b.next_delay() == pytest.approx(19.98)
    with pytest.raises(ValueError):
        Backoff(2.0, 1.0, 0.0)


def test_status_payload_and_link_guards(tmp_path: Path) -> None:
    topic, payload = status_message("cam-0001", "offline", "shutdown")
    assert topic == "camfleet/v1/cam-0001/status"
    _id, kind, body = contract.decode(topic, payload)
    assert (kind, body["state"], body["kind"], body["reason"]) == (
        "status",
        "offline",
        "agent",
        "shutdown",
    )
    s = load_settings(AgentSettings, _write(tmp_path, GOOD_TOML))
    link = Link("cam-0001", s.mqtt)
    assert (
        link.publish("heartbeat", {"seq": 1, "kind": "agent", "interval_s": 5, "uptime_s": 1})
        is False
    )  # not connected
    with pytest.raises(PayloadError, match="seq"):
        link.publish("heartbeat", {"kind": "agent", "interval_s": 5, "uptime_s": 1})
    with pytest.raises(LinkError, match="cannot load TLS files"):
        link.start()
