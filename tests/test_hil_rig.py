"""The rig's own parts: the fault-injecting TCP proxy, the clock shim, the recorder and its
HTML report, and the real rig as far as no hardware is needed (the rig file, and the
commands it runs, against fake ``ssh``/``mpremote`` executables and a PDU on 127.0.0.1)."""

from __future__ import annotations

import base64
import contextlib
import http.server
import json
import os
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import cv2
import numpy as np
import pytest

from hil_tests.clock_shim import format_offset, parse_offset
from hil_tests.images import covered_frames
from hil_tests.netproxy import RETRANSMIT_S, NetProxy
from hil_tests.real_rig import RealRig
from hil_tests.report import junit_outcomes, render, write_report
from hil_tests.rig import Recorder, RigFault, Unsupported
from hil_tests.rig_file import RigFileError, load_rig_file

# ------------------------------------------------------------------ the TCP proxy


@pytest.fixture
def echo() -> Iterator[int]:
    """A plain TCP echo server on 127.0.0.1 (the proxy's far end)."""
    listener = socket.create_server(("127.0.0.1", 0))
    stop = threading.Event()

    def serve(conn: socket.socket) -> None:
        with conn, contextlib.suppress(OSError):  # the proxy resets it when cut
            while data := conn.recv(65536):
                conn.sendall(data)

    def accept() -> None:
        listener.settimeout(0.2)
        while not stop.is_set():
            try:
                conn, _ = listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            threading.Thread(target=serve, args=(conn,), daemon=True).start()

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    yield listener.getsockname()[1]
    stop.set()
    listener.close()
    thread.join(5)


def _roundtrip(port: int, data: bytes, timeout: float = 5.0) -> bytes:
    """What comes back; b"" when the connection is closed or reset."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
        got = b""
        try:
            s.sendall(data)
            while len(got) < len(data):
                chunk = s.recv(65536)
                if not chunk:
                    break
                got += chunk
        except ConnectionResetError:
            return b""
        return got


def test_proxy_forwards_cuts_and_restores(echo: int) -> None:
    proxy = NetProxy(echo)
    try:
        assert _roundtrip(proxy.port, b"hello") == b"hello"
        live = socket.create_connection(("127.0.0.1", proxy.port), timeout=5)
        live.sendall(b"x")
        assert live.recv(1) == b"x"
        proxy.cut()
        # the open connection is reset, a new one is closed at once
        with pytest.raises(OSError):
            live.sendall(b"y" * 100000)
            if not live.recv(1):
                raise ConnectionResetError("closed")
        live.close()
        assert _roundtrip(proxy.port, b"lost") == b""
        assert proxy.stats.resets >= 1 and proxy.stats.refused >= 1
        proxy.restore()
        assert _roundtrip(proxy.port, b"again") == b"again"
    finally:
        proxy.close()


def test_proxy_delay_loss_and_corruption(echo: int) -> None:
    proxy = NetProxy(echo, seed=3)
    try:
        proxy.delay(0.3)
        t0 = time.monotonic()
        assert _roundtrip(proxy.port, b"slow") == b"slow"
        assert time.monotonic() - t0 >= 0.6  # both ways
        proxy.restore()
        proxy.loss(1.0)  # every chunk waits a retransmission timeout; none is lost
        t0 = time.monotonic()
        assert _roundtrip(proxy.port, b"held") == b"held"
        assert time.monotonic() - t0 >= 2 * RETRANSMIT_S and proxy.stats.held >= 2
        proxy.restore()
        proxy.corrupt(1.0)
        got = _roundtrip(proxy.port, b"\x00" * 32)
        assert got != b"\x00" * 32 and len(got) == 32 and proxy.stats.corrupted >= 1
        with pytest.raises(ValueError, match="fraction"):
            proxy.loss(1.5)
        with pytest.raises(ValueError, match="negative"):
            proxy.delay(-1)
    finally:
        proxy.close()


# ------------------------------------------------------------------ the clock shim


def test_offset_file_format() -> None:
    assert parse_offset("+86400\n") == 86400 and parse_offset("-3600") == -3600
    assert parse_offset("") == 0 and format_offset(-86400.4) == "-86400\n"
    for bad in ("soon", "nan", "+9e12"):
        with pytest.raises(ValueError):
            parse_offset(bad)


def test_shim_moves_the_clock_the_agent_reads(tmp_path: Path) -> None:
    """The agent's ClockGuard, imported under the shim, sees the wrong time and refuses it;
    corrected, the same process trusts it again. The monotonic clock is left alone."""
    probe = tmp_path / "probe_clock.py"
    probe.write_text(
        "import json, time\n"
        "from agent.identity.clock_guard import ClockGuard\n"
        "g = ClockGuard('.')\n"
        "first = (time.time(), g.state().ok, time.monotonic())\n"
        "open('offset', 'w').write('+0')\n"
        "time.sleep(0.5)\n"
        "print(json.dumps([first, (time.time(), g.state().ok, time.monotonic())]))\n"
    )
    (tmp_path / "offset").write_text(format_offset(-400 * 86400))
    env = dict(os.environ, PYTHONPATH=f"{tmp_path}{os.pathsep}{Path.cwd()}")
    out = subprocess.run(
        [sys.executable, "-m", "hil_tests.clock_shim", "offset", "-m", "probe_clock"],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=60, check=True,
    )  # fmt: skip
    (t1, ok1, m1), (t2, ok2, m2) = json.loads(out.stdout)
    now = time.time()
    assert abs(t1 - (now - 400 * 86400)) < 120 and not ok1
    assert abs(t2 - now) < 120 and ok2
    assert 0.4 <= m2 - m1 < 30
    usage = subprocess.run(
        [sys.executable, "-m", "hil_tests.clock_shim", "offset"],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert usage.returncode == 2 and "usage" in usage.stdout


# ------------------------------------------------------------------ recorder and report


def test_recorder_and_report(tmp_path: Path) -> None:
    rec = Recorder()
    rec.start("test_one[virtual]", "virtual", "nothing lost")
    rec.fault("box-1", "network cut")
    rec.restore("box-1", "network restored")
    rec.figures(events_produced=10, events_stored=10, duplicates=0, recover_s=1.5)
    rec.check("exactly once")
    rec.end("passed")
    rec.start("test_two[virtual]", "virtual", "nobody let in")
    rec.fault("box-2", "certificate <revoked>")
    with pytest.raises(KeyError):
        rec.figures(bogus=1)
    rec.end("failed")
    assert [s.faults for s in rec.scenarios] == [1, 1]
    rec.save(tmp_path / "timeline.json")
    junit = tmp_path / "junit.xml"
    junit.write_text(
        '<testsuites><testsuite name="pytest">'
        '<testcase classname="x" name="test_one[virtual]" time="1"/>'
        '<testcase classname="x" name="test_two[virtual]" time="1">'
        '<failure message="assert 9 == 10">trace</failure></testcase>'
        '<testcase classname="x" name="test_three[virtual]" time="0">'
        '<skipped message="issue #6: OTA"/></testcase>'
        "</testsuite></testsuites>"
    )
    assert junit_outcomes(junit)["test_two[virtual]"] == ("failed", "assert 9 == 10")
    page = write_report(tmp_path / "timeline.json", tmp_path / "report.html", junit).read_text()
    assert "1 passed, 1 failed, 1 skipped" in page
    assert "certificate &lt;revoked&gt;" in page  # escaped
    assert "<td class=num>10</td>" in page and "1.5 s" in page
    assert page.index("network cut") < page.index("network restored")
    bare = render(json.loads((tmp_path / "timeline.json").read_text()))
    assert "1 passed, 1 failed" in bare


def test_covered_frames_are_dark_and_differ() -> None:
    frames = covered_frames(3)
    imgs = [cv2.imdecode(np.frombuffer(f, np.uint8), cv2.IMREAD_COLOR) for f in frames]
    assert all(i is not None and float(i.mean()) < 15 for i in imgs)
    assert frames[0] != frames[1]


# ------------------------------------------------------------------ the real rig, no hardware

RIG_FILE = """
name = "lab-1"

[server]
api = "http://127.0.0.1:{pdu}"

[[box]]
id = "cam-lab-01"
ssh = "pi@box1"
state_dir = "/var/lib/camfleet-agent"
iface = "eth0"
broker_port = 8883
power = {{ type = "relay", ssh = "ctl@relay", chip = "gpiochip0", line = 17, active_low = true }}

[[box]]
id = "cam-lab-02"
ssh = "pi@box2"
camera_replay_dir = "/srv/replay"
[box.power]
type = "http"
on_url = "http://127.0.0.1:{pdu}/outlet/2/on"
off_url = "http://127.0.0.1:{pdu}/outlet/2/off"

[[node]]
id = "node-lab-01"
port = "/dev/ttyACM0"
box = "cam-lab-01"
"""


@pytest.fixture
def fake_tools(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """``ssh``, ``scp`` and ``mpremote`` on PATH that log their argv and answer cannedly."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    log = tmp_path / "calls.jsonl"
    payload = base64.b64encode(b"\x00binary\xff").decode()
    script = f"""#!{sys.executable}
import json, os, sys
with open({str(log)!r}, "a") as f:
    f.write(json.dumps([os.path.basename(sys.argv[0]), *sys.argv[1:]]) + "\\n")
cmd = " ".join(sys.argv[1:])
if "base64" in cmd and "missing" in cmd:
    sys.exit(1)
if "base64" in cmd:
    print({payload!r}, end="")
if "fs cat" in cmd:
    print("1795000000", end="")
"""
    for name in ("ssh", "scp", "mpremote"):
        path = bin_dir / name
        path.write_text(script)
        path.chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    return log


class _Pdu(http.server.BaseHTTPRequestHandler):
    calls: list[str] = []

    def do_POST(self) -> None:
        _Pdu.calls.append(self.path)
        self.send_response(204)
        self.end_headers()

    def log_message(self, *_args: object) -> None:
        return


@pytest.fixture
def pdu() -> Iterator[int]:
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Pdu)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    _Pdu.calls = []
    yield server.server_address[1]
    server.shutdown()
    thread.join(5)


def _calls(log: Path) -> list[list[str]]:
    return [json.loads(line) for line in log.read_text().splitlines()] if log.exists() else []


def test_rig_file_is_parsed_and_checked(tmp_path: Path) -> None:
    path = tmp_path / "rig.toml"
    path.write_text(RIG_FILE.format(pdu=8080))
    spec = load_rig_file(path)
    assert [b.id for b in spec.box] == ["cam-lab-01", "cam-lab-02"]
    assert spec.node[0].box == "cam-lab-01" and spec.box[0].power is not None
    bad = {
        "unknown key": RIG_FILE.format(pdu=1).replace(
            'iface = "eth0"', 'iface = "eth0"\ncolour = 1'
        ),
        "not TOML": "name = ",
        "bad id": RIG_FILE.format(pdu=1).replace('"cam-lab-02"', '"Cam_02"'),
        "twice": RIG_FILE.format(pdu=1).replace('"cam-lab-02"', '"cam-lab-01"'),
        "unknown box": RIG_FILE.format(pdu=1).replace('box = "cam-lab-01"', 'box = "cam-x"'),
        "bad power": RIG_FILE.format(pdu=1).replace('type = "relay"', 'type = "smoke"'),
    }
    messages = {}
    for what, text in bad.items():
        path.write_text(text)
        with pytest.raises(RigFileError) as info:
            load_rig_file(path)
        messages[what] = str(info.value)
    assert "colour" in messages["unknown key"] and "not TOML" in messages["not TOML"]
    assert "Cam_02" in messages["bad id"] and "twice" in messages["twice"]
    assert "cam-x" in messages["unknown box"] and "power" in messages["bad power"]
    with pytest.raises(RigFileError, match="cannot read"):
        load_rig_file(tmp_path / "absent.toml")


def test_real_rig_commands_against_fake_tools(tmp_path: Path, fake_tools: Path, pdu: int) -> None:
    path = tmp_path / "rig.toml"
    path.write_text(RIG_FILE.format(pdu=pdu))
    rig = RealRig(load_rig_file(path), env={"CAMFLEET_RIG_ADMIN_TOKEN": "t"})
    box = rig.box("any")
    assert box == "cam-lab-01"
    node = rig.node("any", box=box)
    assert node == "node-lab-01"

    rig.net_cut(box)
    rig.net_delay(box, 0.25)
    rig.net_loss(box, 0.1)
    rig.net_restore(box)
    rig.disk_fill(box, free_bytes=4096)
    rig.clock_skew(box, -86400)
    rig.power_cut(box)  # relay, active low: power off = line high
    rig.power_on(box)
    rig.hang(box)
    assert rig.read_file(box, "outbox.sqlite") == b"\x00binary\xff"
    assert rig.read_file(box, "missing") is None
    assert rig.read_file(node, "last_good.json") == b"1795000000"
    rig.clock_set(node, 1.0e9)
    with pytest.raises(RigFault, match="leaves"):
        rig.read_file(box, "../../etc/shadow")

    calls = _calls(fake_tools)
    remote = [c[-1] for c in calls if c[0] == "ssh"]
    assert calls[0][:2] == ["ssh", "-o"] and "pi@box1" in calls[0]
    assert remote[0] == (
        "sudo -n iptables -I OUTPUT -p tcp --dport 8883 -j REJECT --reject-with tcp-reset"
    )
    assert remote[1] == "sudo -n tc qdisc replace dev eth0 root netem delay 250ms"
    assert remote[2] == "sudo -n tc qdisc replace dev eth0 root netem loss 10%"
    assert "iptables -D OUTPUT" in remote[3] and "tc qdisc del dev eth0 root" in remote[4]
    assert "fallocate" in remote[5] and "avail - 4096" in remote[5]
    assert remote[6] == "sudo -n timedatectl set-ntp false" and "date -u -s @" in remote[7]
    skewed = float(remote[7].rsplit("@", 1)[1])
    assert abs(skewed - (time.time() - 86400)) < 60
    relay = [c for c in calls if "ctl@relay" in c]
    assert [c[-1] for c in relay] == ["gpioset gpiochip0 17=1", "gpioset gpiochip0 17=0"]
    assert remote[10] == "sudo -n systemctl kill -s SIGSTOP camfleet-agent"
    mp = [c for c in calls if c[0] == "mpremote"]
    assert mp[0] == ["mpremote", "connect", "/dev/ttyACM0", "fs", "cat", ":state/last_good.json"]
    assert "machine.RTC().datetime((2001, 9, 9," in mp[1][-1]

    # the second box: a PDU over HTTP, and a replayed camera
    other = rig.box("cam", frames=_frames(tmp_path))
    assert other == "cam-lab-02"
    rig.power_cut(other)
    rig.power_on(other)
    assert _Pdu.calls == ["/outlet/2/off", "/outlet/2/on"]
    rig.camera_cover(other)
    scp = [c for c in _calls(fake_tools) if c[0] == "scp"]
    assert len(scp) == 2 and scp[-1][-1] == "pi@box2:/srv/replay/"
    assert sum(a.endswith(".png") for a in scp[-1]) == 20
    with pytest.raises(Unsupported, match="by hand"):
        rig.camera_freeze(box)
    with pytest.raises(Unsupported, match="no free box"):
        rig.box("third")


def _frames(tmp_path: Path) -> Path:
    folder = tmp_path / "frames"
    folder.mkdir()
    for i, data in enumerate(covered_frames(2)):
        (folder / f"f{i}.png").write_bytes(data)
    return folder
