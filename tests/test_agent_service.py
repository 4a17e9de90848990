"""The agent as a service: sd_notify to a real Unix datagram socket standing in for
systemd (READY, watchdog pings, STOPPING), the watchdog withheld when the pipeline hangs,
camera sources through OpenCV (a real video file), and picamera2's clear refusal where it
cannot run. The systemd unit and the Debian package: tests/test_packages.py."""

from __future__ import annotations

import os
import socket
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import cv2
import pytest

from agent.config import OpenCvCameraSettings, PiCameraSettings
from agent.errors import CameraError
from agent.link.backoff import Backoff
from agent.sdnotify import Notifier
from agent.vision.camera import Capture, FrameQueue, make_source
from fleet_server.identity.ca import DeviceCredentials
from hil_tests import scenes
from hil_tests.agent import agent_process
from hil_tests.procs import Broker, wait_for


class FakeSystemd:
    """A Unix datagram socket where systemd's would be, collecting notifications."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(str(path))
        self.sock.settimeout(0.2)
        self.messages: list[str] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self.messages.append(self.sock.recv(4096).decode())
            except TimeoutError:
                continue
            except OSError:
                return

    def lines(self) -> list[str]:
        return [line for m in list(self.messages) for line in m.split("\n")]

    def close(self) -> None:
        self._stop.set()
        self._thread.join(2)
        self.sock.close()


@pytest.fixture
def systemd(tmp_path: Path) -> Iterator[FakeSystemd]:
    fake = FakeSystemd(tmp_path / "notify.sock")
    yield fake
    fake.close()


def test_notifier_speaks_the_sd_notify_protocol(systemd: FakeSystemd) -> None:
    n = Notifier({"NOTIFY_SOCKET": str(systemd.path), "WATCHDOG_USEC": "2000000"})
    assert n.enabled and n.watchdog_s == 2.0
    assert n.ready("running") and n.watchdog() and n.stopping()
    wait_for(lambda: len(systemd.messages) == 3, 5, what="three datagrams")
    assert systemd.messages == ["READY=1\nSTATUS=running", "WATCHDOG=1", "STOPPING=1"]
    n.close()
    quiet = Notifier({})
    assert not quiet.enabled and not quiet.ready() and quiet.watchdog_s is None
    # the watchdog is for the process systemd named, not a child that inherited the env
    assert (
        Notifier({"NOTIFY_SOCKET": "@x", "WATCHDOG_USEC": "5", "WATCHDOG_PID": "1"}).watchdog_s
        is None
    )


def test_agent_process_notifies_ready_and_pings_the_watchdog(
    tmp_path: Path,
    systemd: FakeSystemd,
    broker: Broker,
    device_factory: Callable[[str], DeviceCredentials],
) -> None:
    creds = device_factory("cam-sdnotify-1")
    agent = agent_process(
        creds, broker.port, tmp_path / "agent", extra={"pipeline": {"detector": None}}
    )
    agent.env = {"NOTIFY_SOCKET": str(systemd.path), "WATCHDOG_USEC": "1000000"}
    try:
        agent.start()
        wait_for(lambda: "READY=1" in systemd.lines(), 30, what="READY=1")
        wait_for(lambda: systemd.lines().count("WATCHDOG=1") >= 3, 10, what="watchdog pings")
        assert agent.stop() == 0
        assert systemd.lines()[-1] == "STOPPING=1"
    finally:
        agent.stop()


def test_watchdog_is_withheld_while_the_pipeline_hangs(
    tmp_path: Path, systemd: FakeSystemd
) -> None:
    from agent.config import AgentSettings
    from agent.link.mqtt import Link
    from agent.supervisor import Supervisor

    settings = AgentSettings(
        device_id="cam-hang-1",
        mqtt={"ca": "/x", "cert": "/x", "key": "/x"},  # type: ignore[arg-type]
        state_dir=tmp_path / "state",
        pipeline={"detector": None},  # type: ignore[arg-type]
        watchdog_stall_s=1.0,
    )
    capture = Capture(lambda: make_source(settings.camera), FrameQueue(2), Backoff(1, 1, 0), fps=5)
    os.environ["NOTIFY_SOCKET"] = str(systemd.path)
    try:
        sup = Supervisor(settings, capture, Link(settings.device_id, settings.mqtt))
    finally:
        del os.environ["NOTIFY_SOCKET"]
    assert sup.detection is not None
    sup.start()  # the pipeline thread runs (no frames: it ticks and beats)
    try:
        sup.tick()
        wait_for(lambda: systemd.lines().count("WATCHDOG=1") == 1, 5, what="a ping")
        sup.tick(time.monotonic() + 5.0)  # five seconds on without a beat: a hang
        sup.detection.thread.stop()  # a dead pipeline thread is no better
        sup.tick()
        time.sleep(0.3)
        assert systemd.lines().count("WATCHDOG=1") == 1  # no ping: systemd restarts it
    finally:
        sup.stop()
        sup.close()


# The unit and the package: tests/test_packages.py.


# ---------------------------------------------------------------- camera sources


def _video(path: Path, frames: int = 12) -> Path:
    scene = scenes.crossing_scene(count=1, frames_each=frames, gap=0)
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), 10, (640, 480))
    assert writer.isOpened()
    for i in range(frames):
        writer.write(cv2.cvtColor(scene.frame(i), cv2.COLOR_RGB2BGR))
    writer.release()
    return path


def test_opencv_source_replays_a_video_file_as_rgb_frames(tmp_path: Path) -> None:
    video = _video(tmp_path / "clip.avi")
    src = make_source(OpenCvCameraSettings(type="opencv", url=str(video), fps=50, loop=True))
    src.open()
    try:
        frames = [src.read() for _ in range(20)]  # more than the file holds: it loops
    finally:
        src.close()
    assert all(f is not None for f in frames)
    f0 = frames[0]
    assert f0 is not None and f0.pixels.shape == (480, 640, 3) and f0.index == 0
    assert frames[-1] is not None and frames[-1].index == 19
    assert src.read() is None  # closed


def test_a_source_that_stops_is_reported_and_retried(tmp_path: Path) -> None:
    video = _video(tmp_path / "short.avi", frames=5)
    settings = OpenCvCameraSettings(type="opencv", url=str(video), fps=50, loop=False)
    capture = Capture(lambda: make_source(settings), FrameQueue(4), Backoff(0.2, 0.5, 0.2), fps=50)
    capture.start()
    try:
        wait_for(lambda: capture.stats().error is not None, 10, what="end reported as an error")
        assert "stopped delivering" in (capture.stats().error or "")
        first = capture.stats().frames
        wait_for(lambda: capture.stats().frames > first, 10, what="reopened with backoff")
    finally:
        capture.stop()
    with pytest.raises(CameraError, match="does not exist"):
        make_source(OpenCvCameraSettings(type="opencv", url=str(tmp_path / "none.avi"))).open()


def test_picamera2_refuses_clearly_where_it_cannot_run() -> None:
    try:
        import picamera2  # noqa: F401
    except ImportError:
        pass
    else:  # pragma: no cover - on a Raspberry Pi with a camera
        pytest.skip("picamera2 is importable here")
    src = make_source(PiCameraSettings(type="picamera2"))
    with pytest.raises(CameraError, match="picamera2 is not available"):
        src.open()
