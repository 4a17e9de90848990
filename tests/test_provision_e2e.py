"""The technician's CLI end to end: a virtual Linux box (a directory through the local
transport; the agent started from the config the box wrote, as systemd would) and a virtual
MicroPython node (the unix-port firmware's filesystem directory, the same transport
interface mpremote implements) are provisioned; the fleet server shows both online with
their verified site records."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from fleet_server.identity.ca import CertificateAuthority
from hil_tests.identity import IdentityServer
from hil_tests.images import write_test_images
from hil_tests.node import HEAP
from hil_tests.procs import RIG_RECONNECT, Broker, Process, micropython_bin

SITE = ["--site-name", "Main St / 5th Ave", "--lat", "45.501", "--lon", "-73.567"]
MOUNT = ["--height", "6.5", "--azimuth", "215", "--technician", "tina"]


@pytest.fixture(scope="module")
def server(
    broker: Broker, ca: CertificateAuthority, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[IdentityServer]:
    srv = IdentityServer(tmp_path_factory.mktemp("prov-server"), ca, broker)
    srv.start_all()
    yield srv
    srv.stop()


class Supervisor:
    """Stands in for systemd on the box / the board's reset: starts the device's software
    once the provisioning tool has written its config."""

    def __init__(self, config: Path, make: Callable[[], Process]) -> None:
        self.config = config
        self.make = make
        self.proc: Process | None = None
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.stop_event = threading.Event()
        self.thread.start()

    def _run(self) -> None:
        for _ in range(1200):
            if self.config.exists():
                self.proc = self.make().start()
                return
            if self.stop_event.wait(0.05):
                return

    def close(self) -> None:
        self.stop_event.set()
        self.thread.join(5)
        if self.proc is not None:
            self.proc.stop()


def _cli(args: list[str], home: Path, token: str) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, CAMFLEET_API_TOKEN=token, CAMFLEET_PROVISION_HOME=str(home))
    return subprocess.run(
        [sys.executable, "-m", "provisioning.cli", *args],
        capture_output=True, text=True, timeout=120, env=env, check=False,
    )  # fmt: skip


def _common(server: IdentityServer, broker: Broker) -> list[str]:
    return [
        "--api", server.base_url, "--est", server.est_url, "--ca", str(server.ca.root_cert_path),
        "--mqtt-host", "localhost", "--mqtt-port", str(broker.port), "--heartbeat-s", "1",
        "--timeout", "40",
    ]  # fmt: skip


def test_box_and_node_provisioned_end_to_end(
    server: IdentityServer, broker: Broker, tmp_path: Path
) -> None:
    tech = server.add_user("tina-e2e", "technician")
    laptop = tmp_path / "laptop"
    box_root, node_root = tmp_path / "box", tmp_path / "node"
    images = write_test_images(tmp_path / "camera", count=3)
    zones = tmp_path / "zones.json"
    zones.write_text(
        json.dumps(
            {
                "zones": [{"name": "crosswalk", "polygon": [[0.1, 0.5], [0.9, 0.5], [0.9, 0.9]]}],
                "lines": [{"name": "stopline", "a": [0.0, 0.6], "b": [1.0, 0.6]}],
            }
        )
    )
    # the label the technician scans (tokens fetched in advance by the office)
    box_token = server.token("pv-box-01", site_id="main-5th")
    label = f"camfleet-enroll:v1?d=pv-box-01&t={box_token}&s=main-5th&k=agent"
    box_conf = box_root / "etc/camfleet-agent/agent.toml"
    agent = Supervisor(
        box_conf,
        lambda: Process(
            "agent-pv-box-01",
            [sys.executable, "-m", "agent.cli", "--config", str(box_conf)],
            tmp_path / "agent.log",
        ),
    )
    node_conf = node_root / "config.json"
    board = Supervisor(
        node_conf,
        lambda: Process(
            "node-pv-node-01",
            [micropython_bin(), "-X", f"heapsize={HEAP}", "main.py", "config.json"],
            tmp_path / "node.log",
            cwd=node_root,
        ),
    )
    try:
        camera = json.dumps({"type": "files", "path": str(images[0].parent), "fps": 5.0})
        res = _cli(
            ["box", "--transport", f"local:{box_root}", "--qr-text", label, "--camera", camera,
             "--zones", str(zones), "--notes", "pole 17, north side",
             *SITE, *MOUNT, *_common(server, broker)],
            laptop, tech,
        )  # fmt: skip
        assert res.returncode == 0, res.stdout + res.stderr + agent_log(tmp_path)
        assert "PASS" in res.stdout and "stored" in res.stdout

        node_token = server.token("pv-node-01", kind="node", site_id="main-5th")
        extra = json.dumps({"keepalive_s": 10, **RIG_RECONNECT})
        res = _cli(
            ["node", "--transport", f"local:{node_root}", "--device-id", "pv-node-01",
             "--token", node_token, "--site-id", "main-5th", "--config", extra, "--sim",
             *SITE, *MOUNT, *_common(server, broker)],
            laptop, tech,
        )  # fmt: skip
        node_log = (tmp_path / "node.log").read_text() if (tmp_path / "node.log").exists() else ""
        assert res.returncode == 0, res.stdout + res.stderr + node_log
        assert "PASS" in res.stdout

        # the server shows both online, with their verified site records
        for device, kind in (("pv-box-01", "agent"), ("pv-node-01", "node")):
            dev = server.device(device)
            assert dev is not None and dev["state"] == "online" and dev["kind"] == kind
            status, rec = server.call("GET", f"/api/devices/{device}/site", token=tech)
            assert status == 200, rec
            assert rec["site_id"] == "main-5th" and rec["record"]["kind"] == kind
            assert rec["record"]["site"]["azimuth_deg"] == 215
        status, site = server.call("GET", "/api/sites/main-5th", token=tech)
        assert status == 200 and site["devices"] == ["pv-box-01", "pv-node-01"]
        box_rec = next(r for r in site["records"] if r["device_id"] == "pv-box-01")
        assert box_rec["has_frame"] and box_rec["record"]["zones"][0]["name"] == "crosswalk"
        status, frame = server.call("GET", "/api/devices/pv-box-01/site/frame", token=tech)
        assert status == 200 and frame == images[0].read_bytes()

        # keys: the box's stayed on the box (private file); the node's is only on the node
        key = box_root / "etc/camfleet-agent/key.pem"
        assert key.stat().st_mode & 0o777 == 0o600
        assert (node_root / "key.der").exists()
        for path in laptop.rglob("*"):
            if path.is_file():
                assert b"PRIVATE KEY" not in path.read_bytes(), path
        assert not list((laptop / "queue").glob("*.json"))  # all records sent
    finally:
        agent.close()
        board.close()


def agent_log(tmp: Path) -> str:
    path = tmp / "agent.log"
    return path.read_text()[-3000:] if path.exists() else ""


def test_labels_from_csv_qr_tokens_enroll(server: IdentityServer, tmp_path: Path) -> None:
    """CSV of sites -> tokens (private file) + QR sheets (PNG, PDF); a scanned label enrolls."""
    import cv2

    from agent.identity import est_client
    from provisioning.labels import LABEL_H, LABEL_W, label_origin, parse_qr_text

    tech = server.add_user("tina-labels", "technician")
    csv_file = tmp_path / "sites.csv"
    csv_file.write_text(
        "site_id,name,device_id,kind\n"
        "gate-north,North gateway,lb-box-01,agent\n"
        "gate-north,North gateway cabinet,lb-node-01,node\n"
        "bridge-2,Bridge 2,lb-box-02,agent\n"
    )
    out = tmp_path / "labels"
    res = _cli(
        ["labels", str(csv_file), "--api", server.base_url, "--out", str(out)], tmp_path, tech
    )
    assert res.returncode == 0, res.stdout + res.stderr
    tokens = json.loads((out / "tokens.json").read_text())
    assert [t["device_id"] for t in tokens] == ["lb-box-01", "lb-node-01", "lb-box-02"]
    assert (out / "tokens.json").stat().st_mode & 0o777 == 0o600
    assert (out / "labels.pdf").read_bytes().startswith(b"%PDF")
    sheet = cv2.imread(str(out / "labels-1.png"))
    assert sheet is not None
    # read every QR of the sheet back, label by label, as a scanner held over each would
    # (OpenCV's many-codes-at-once detector misses one code in about ten sheets, and its
    # classic one about one label in a hundred: a second, independent decoder looks too)
    texts = []
    for i in range(3):
        x, y = label_origin(i)
        label = sheet[y : y + LABEL_H, x : x + LABEL_W]
        text = ""
        for scanner in (cv2.QRCodeDetector(), cv2.QRCodeDetectorAruco()):
            text, _points, _code = scanner.detectAndDecode(label)
            if text:
                break
        texts.append(text)
    scanned = {parse_qr_text(t)[0]: parse_qr_text(t) for t in texts if t}
    assert set(scanned) == {"lb-box-01", "lb-node-01", "lb-box-02"}
    device, token, site, kind = scanned["lb-node-01"]
    assert (site, kind) == ("gate-north", "node")
    key = est_client.new_key()
    cert = est_client.EstClient(server.est_url, server.ca.root_cert_path).simpleenroll(
        est_client.make_csr(key, device), token, device
    )
    assert cert.subject.rfc4514_string().startswith(f"CN={device}")


def test_offline_queue_survives_and_sends_later(server: IdentityServer, tmp_path: Path) -> None:
    """Records made while the server is unreachable wait in atomic files; queue-send delivers
    them once, a repeat is harmless, and a tampered record is refused and set aside."""
    from agent.identity import est_client
    from provisioning import record
    from provisioning.api import ApiClient
    from provisioning.flows import submit_or_queue
    from provisioning.queue import OfflineQueue

    tech = server.add_user("tina-offline", "technician")
    key = est_client.new_key()
    cert = est_client.EstClient(server.est_url, server.ca.root_cert_path).simpleenroll(
        est_client.make_csr(key, "oq-box-01"), server.token("oq-box-01"), "oq-box-01"
    )
    site = {"site_id": "oq-site", "name": "Offline corner", "lat": 1.0, "lon": 2.0,
            "mounting_height_m": 5.0, "azimuth_deg": 90.0, "notes": ""}  # fmt: skip
    body = record.build("oq-box-01", "agent", site, {}, "tina-offline")
    sub = record.submission(body, key, est_client.pem(cert).decode(), None)
    queue = OfflineQueue(tmp_path / "laptop")
    said: list[str] = []
    offline = ApiClient("http://127.0.0.1:9", tech, timeout=2)  # nothing listens there
    assert submit_or_queue(offline, queue, sub, said.append) is False
    assert len(queue.pending()) == 1 and "queued" in said[0]
    # tampered copy: the signature no longer matches
    bad = json.loads(json.dumps(sub))
    bad["record"]["record_id"] = "f" * 32
    bad["record"]["site"]["azimuth_deg"] = 91.0
    queue.put(bad)
    # "the laptop was closed": a new queue object on the same directory, then the network
    res = _cli(["queue-send", "--api", server.base_url], tmp_path / "laptop", tech)
    assert res.returncode == 0, res.stdout + res.stderr
    assert "sent 1, refused 1" in res.stdout
    assert queue.pending() == [] and len(list(queue.rejected_dir.glob("*.json"))) == 1
    status, rec = server.call("GET", "/api/devices/oq-box-01/site", token=tech)
    assert status == 200 and rec["record_id"] == body["record_id"]
    assert rec["record"]["site"]["azimuth_deg"] == 90.0
    # sending the same record again stores nothing new
    again = ApiClient(server.base_url, tech).submit_record(sub)
    assert again["stored"] is False


@pytest.mark.parametrize("sim", [False, True])
def test_node_config_names_the_hal_its_build_carries(sim: bool, tmp_path: Path) -> None:
    """A real board's config must name the machine HAL: its build has no hal_sim module
    (a board given ``hal: sim`` would fail to boot)."""
    from firmware.build import build
    from firmware.config import load_config
    from provisioning.flows import Job, node_config

    job = Job("node-0042", "tok", {}, {}, "tech", "https://est", tmp_path / "ca", "mqtt", 8883,
              60.0, 10.0)  # fmt: skip
    config = load_config(node_config(job, None, sim))
    assert config["hal"] == ("sim" if sim else "machine")
    build(tmp_path / "out", sim=sim)
    modules = {p.stem for p in (tmp_path / "out").iterdir()}
    assert (f"hal_{config['hal']}" in modules) is True
    assert ("hal_sim" in modules) is sim
