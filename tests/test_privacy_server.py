"""Privacy on the server (issue 20), through the running server, the real broker and devices
enrolled through EST and commissioned with signed records: the site's policy decides which
images are stored, whatever the box claims; masks are versioned into the desired config."""

from __future__ import annotations

import base64
import contextlib
import io
import json
import sqlite3
import subprocess
import sys
import tarfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import cv2
import httpx
import numpy as np
import pytest

from common import privacy
from fleet_server.identity.ca import CertificateAuthority
from hil_tests import scenes
from hil_tests.agent import agent_process
from hil_tests.identity import IdentityServer
from hil_tests.procs import Broker, wait_for
from tests.conftest import CHROMIUM
from tests.privacy_helpers import SiteDevice, commissioned, jpeg

RNG = np.random.default_rng(7)
THUMB = jpeg(RNG.integers(0, 256, (9, 12, 3), dtype=np.uint8))
PHOTO = jpeg(RNG.integers(0, 256, (120, 160, 3), dtype=np.uint8))
SQUARE = [[0.1, 0.1], [0.4, 0.1], [0.4, 0.4], [0.1, 0.4]]
PHOTO_THUMB = jpeg(np.full((9, 12, 3), 90, np.uint8))
TOP_BAND = [[0.0, 0.0], [1.0, 0.0], [1.0, 0.4], [0.0, 0.4]]
BASIS = "Decision 12/QD-UBND of the province, traffic police site (Decree 13/2023/ND-CP art. 17)"


@pytest.fixture(scope="module")
def server(
    broker: Broker, ca: CertificateAuthority, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[IdentityServer]:
    srv = IdentityServer(tmp_path_factory.mktemp("privacy-server"), ca, broker,
                         identity={"est_workers": 0})  # fmt: skip
    srv.start_all()
    yield srv
    srv.stop()


def _audit(server: IdentityServer, action: str) -> list[dict[str, Any]]:
    _s, rows = server.call("GET", f"/api/audit?action={action}&limit=50")
    return list(rows)


@contextlib.contextmanager
def _ui(server: IdentityServer) -> Iterator[httpx.Client]:
    """A dashboard session (the sign-in sets its cookie)."""
    with httpx.Client(base_url=server.base_url, timeout=20) as ui:
        assert ui.post("/ui/login", json={"token": server.admin_token}).status_code == 204
        yield ui


def _refused(server: IdentityServer, site: str) -> dict[tuple[str, str], int]:
    _s, out = server.call("GET", f"/api/sites/{site}/privacy")
    return {(r["device_id"], r["reason"]): r["count"] for r in out["refused"]}


def test_site_policy_decides_what_is_stored(
    server: IdentityServer, broker: Broker, tmp_path: Path
) -> None:
    dev = SiteDevice(server, broker.port, "priv-cam-1", "priv-site-1", tmp_path)
    try:
        assert dev.commissioning[0] == 201, dev.commissioning
        anon = privacy.marking("anonymised", 0, 0)
        # the default policy, anonymised: a marked thumbnail is stored
        status, site = server.call("GET", "/api/sites/priv-site-1/privacy")
        assert (status, site["policy"], site["version"]) == (200, "anonymised", 0)
        assert site["devices"] == ["priv-cam-1"] and site["retention_days"] == 30
        ok = dev.snapshot(THUMB, anon)
        assert "/snapshot.jpg" in ok["data"]["jpeg"]
        # a box that says anonymised but sends a photo; one that says nothing
        lie = dev.snapshot(PHOTO, anon)
        assert "jpeg" not in lie["data"]
        assert lie["data"]["image_refused"] == "anonymised_check_failed"
        bare = dev.snapshot(THUMB, None)
        assert bare["data"]["image_refused"] == "not_anonymised"
        url = f"/api/events/{lie['event_id']}/snapshot.jpg?device_id=priv-cam-1"
        assert server.call("GET", url)[0] == 404
        url = f"/api/events/{ok['event_id']}/snapshot.jpg?device_id=priv-cam-1"
        assert server.call("GET", url)[1] == THUMB
        # full needs the legal basis of the decision; the refusal is audited
        status, err = server.call("PUT", "/api/sites/priv-site-1/privacy", {"policy": "full"})
        assert status == 400 and "legal basis" in err["detail"]
        assert _audit(server, "privacy.policy")[0]["outcome"] == "refused:invalid"
        status, site = server.call("PUT", "/api/sites/priv-site-1/privacy",
                                   {"policy": "full", "legal_basis": BASIS})  # fmt: skip
        assert (status, site["policy"], site["version"], site["legal_basis"]) == (
            200, "full", 1, BASIS)  # fmt: skip
        entry = _audit(server, "privacy.policy")[0]
        assert entry["outcome"] == "ok" and entry["detail"]["legal_basis"] == BASIS
        with _ui(server) as ui:  # the site's decision on the dashboard's privacy page
            page = ui.get("/ui/privacy").text
            row = page[page.index('id="privacy-priv-site-1"') :].split("</tr>")[0]
            assert "<b>full</b>" in row and "Decision 12/QD-UBND" in row and "admin" in row
        full = privacy.marking("full", 1, 0)
        assert "jpeg" in dev.snapshot(PHOTO, full)["data"]
        # mid-stream change to none: the next image is refused, whatever it says
        status, site = server.call("PUT", "/api/sites/priv-site-1/privacy", {"policy": "none"})
        assert (status, site["version"], site["legal_basis"]) == (200, 2, None)
        assert dev.snapshot(PHOTO, full)["data"]["image_refused"] == "policy_none"
        assert dev.snapshot(THUMB, anon)["data"]["image_refused"] == "policy_none"
        refused = _refused(server, "priv-site-1")
        assert refused == {("priv-cam-1", "anonymised_check_failed"): 1,
                           ("priv-cam-1", "not_anonymised"): 1,
                           ("priv-cam-1", "policy_none"): 2}, refused  # fmt: skip
        # a redelivered refused image is not counted twice
        status, page = server.call("GET", "/api/events?device_id=priv-cam-1&type=snapshot")
        assert page["total"] == 6
    finally:
        dev.close()


def test_masks_versioned_into_desired_config_and_stale_after_a_move(
    server: IdentityServer, broker: Broker, tmp_path: Path
) -> None:
    signed = {"privacy": [SQUARE], "motion": []}
    dev = SiteDevice(server, broker.port, "priv-cam-2", "priv-site-2", tmp_path, masks=signed)
    try:
        assert dev.commissioning[0] == 201, dev.commissioning
        status, masks = server.call("GET", "/api/devices/priv-cam-2/masks")
        assert (status, masks["version"], masks["masks"]["privacy"]) == (200, 1, [SQUARE])
        assert masks["source"].startswith("commissioning:")
        # hostile masks: refused, said why, audited, nothing changed
        bowtie = {"privacy": [[[0, 0], [1, 1], [1, 0], [0, 1]]]}
        status, err = server.call("PUT", "/api/devices/priv-cam-2/masks", {"masks": bowtie})
        assert status == 400 and "cross" in err["detail"]
        many = {"privacy": [SQUARE] * 40}
        status, err = server.call("PUT", "/api/devices/priv-cam-2/masks", {"masks": many})
        assert status == 400 and "40 privacy masks; at most 32" in err["detail"]
        assert server.call("GET", "/api/devices/priv-cam-2/masks")[1]["version"] == 1
        # new masks: version 2 in the desired config, with the site's policy
        new = {"privacy": [SQUARE], "motion": [[[0.6, 0.0], [1.0, 0.0], [1.0, 0.3]]]}
        status, masks = server.call("PUT", "/api/devices/priv-cam-2/masks", {"masks": new})
        assert (status, masks["version"]) == (200, 2)
        _s, cfg = server.call("GET", "/api/devices/priv-cam-2/config")
        section = cfg["config"]["privacy"]
        assert (section["policy"], section["masks_version"]) == ("anonymised", 2)
        assert section["masks"]["motion"] == new["motion"]
        # an operator's own config keeps the privacy section; it cannot set it
        status, cfg = server.call("PUT", "/api/devices/priv-cam-2/config",
                                  {"config": {"heartbeat_s": 5}})  # fmt: skip
        assert status == 200 and cfg["config"]["privacy"] == section
        status, err = server.call("PUT", "/api/devices/priv-cam-2/config",
                                  {"config": {"privacy": {"policy": "full"}}})  # fmt: skip
        assert status == 400 and "set by the server" in err["detail"]
        # an image taken under the old masks is refused; under the new ones stored
        old = dev.snapshot(THUMB, privacy.marking("anonymised", 0, 1))
        assert old["data"]["image_refused"] == "old_masks"
        assert "jpeg" in dev.snapshot(THUMB, privacy.marking("anonymised", 0, 2))["data"]
        # the view moved: stale, every image refused until someone confirms
        dev.event("scene.problem", {"condition": "moved", "shift": 0.2})
        wait_for(lambda: server.call("GET", "/api/devices/priv-cam-2/masks")[1]["stale"], 10,
                 what="masks stale")  # fmt: skip
        stale = dev.snapshot(THUMB, privacy.marking("anonymised", 0, 2))
        assert stale["data"]["image_refused"] == "masks_stale"
        _s, cfg = server.call("GET", "/api/devices/priv-cam-2/config")
        status, masks = server.call("POST", "/api/devices/priv-cam-2/masks/confirm")
        assert (status, masks["stale"], masks["version"], masks["confirmed_by"]) == (
            200, False, 3, "admin")  # fmt: skip
        _s, cfg = server.call("GET", "/api/devices/priv-cam-2/config")
        assert cfg["config"]["privacy"]["masks_version"] == 3
        assert "jpeg" in dev.snapshot(THUMB, privacy.marking("anonymised", 0, 3))["data"]
        actions = [e["detail"].get("version") for e in _audit(server, "privacy.masks")
                   if e["target"] == "priv-cam-2" and e["outcome"] == "ok"]  # fmt: skip
        assert actions == [2, 1]
        assert _audit(server, "privacy.confirm")[0]["target"] == "priv-cam-2"
        # the device page draws the masks over the last snapshot, and its editor is a file
        with _ui(server) as ui:
            page = ui.get("/ui/devices/priv-cam-2").text
            section = page[page.index('id="mask-editor"') :]
            assert section.count('class="mask mask-privacy"') == 1
            assert section.count('class="mask mask-motion"') == 1
            assert 'points="0.6000,0.0000 1.0000,0.0000 1.0000,0.3000"' in section
            assert "/snapshot.jpg?device_id=priv-cam-2" in section  # no reference frame here
            assert '<script src="/ui/privacy/masks.js" defer></script>' in section
            assert "<script>" not in page and " style=" not in section  # CSP: files only
            js = ui.get("/ui/privacy/masks.js")
            assert js.headers["content-type"].startswith("text/javascript")
            assert "script-src 'self'" in js.headers["content-security-policy"]
            assert "/masks/confirm" in js.text
    finally:
        dev.close()


def test_commissioning_refuses_bad_masks(
    server: IdentityServer, broker: Broker, tmp_path: Path
) -> None:
    bad = {"privacy": [[[0.1, 0.1], [0.1, 0.1], [0.2, 0.2]]]}
    dev = SiteDevice(server, broker.port, "priv-cam-3", "priv-site-3", tmp_path, masks=bad)
    try:
        status, err = dev.commissioning
        assert status == 400 and "bad_masks" in err["detail"], err
        assert server.call("GET", "/api/devices/priv-cam-3/masks")[0] == 404
    finally:
        dev.close()


def test_retention_deletes_exactly_what_is_older_and_subject_requests(
    server: IdentityServer, broker: Broker, tmp_path: Path
) -> None:
    short = SiteDevice(server, broker.port, "priv-cam-4", "priv-site-4", tmp_path)
    default = SiteDevice(server, broker.port, "priv-cam-5", "priv-site-5", tmp_path)
    try:
        status, _ = server.call("PUT", "/api/sites/priv-site-4/privacy",
                                {"policy": "anonymised", "retention_days": 10})  # fmt: skip
        assert status == 200
        now, day = time.time(), 86400.0
        kept: dict[str, set[str]] = {"priv-cam-4": set(), "priv-cam-5": set()}
        for dev, days_old, keep in [
            (short, 9.9, True), (short, 10.1, False), (short, 29, False),
            (default, 9.9, True), (default, 29.9, True), (default, 30.1, False),
        ]:  # fmt: skip
            stored = dev.snapshot(THUMB, privacy.marking("anonymised", 1 if dev is short else 0,
                                                         0), ts=now - days_old * day)  # fmt: skip
            assert "jpeg" in stored["data"], stored
            count = dev.event("counts", {"lines": {}}, ts=now - days_old * day)
            dev.stored(count)
            if keep:
                kept[dev.id] |= {stored["event_id"], count}
        status, out = server.call("POST", "/api/privacy/retention")
        assert status == 200
        assert (out["deleted"].get("priv-site-4"), out["deleted"].get("priv-site-5")) == (4, 2)
        for dev_id, ids in kept.items():
            _s, page = server.call("GET", f"/api/events?device_id={dev_id}&limit=1000")
            left = {e["event_id"] for e in page["items"] if e["type"] in ("snapshot", "counts")}
            assert left == ids, (dev_id, left, ids)
        entries = {e["target"]: e["detail"] for e in _audit(server, "privacy.retention")}
        assert entries["priv-site-4"]["deleted"] == 4
        assert entries["priv-site-4"]["snapshots"] == 2
        assert entries["priv-site-4"]["retention_days"] == 10
        assert entries["priv-site-5"]["deleted"] == 2
        assert server.call("POST", "/api/privacy/retention")[1]["deleted"] == {}  # nothing left
        # a data subject's request: the site's images of a time range, then their erasure
        since, until = now - 20 * day, now
        status, tar_bytes = server.call(
            "GET", f"/api/sites/priv-site-5/images.tar?since={since}&until={until}"
        )
        assert status == 200
        with tarfile.open(fileobj=io.BytesIO(tar_bytes)) as tar:
            names = tar.getnames()
            manifest = json.load(tar.extractfile("manifest.json"))  # type: ignore[arg-type]
            jpegs = [tar.extractfile(n).read() for n in names if n.endswith(".jpg")]  # type: ignore[union-attr]
        assert len(jpegs) == 1 and jpegs[0] == THUMB and len(manifest["images"]) == 1
        assert manifest["images"][0]["device_id"] == "priv-cam-5"
        assert _audit(server, "privacy.export")[0]["detail"]["images"] == 1
        status, gone = server.call(
            "DELETE", f"/api/sites/priv-site-5/images?since={since}&until={until}"
        )
        assert (status, gone["images"]) == (200, 1)
        status, tar_bytes = server.call(
            "GET", f"/api/sites/priv-site-5/images.tar?since=0&until={until}"
        )
        with tarfile.open(fileobj=io.BytesIO(tar_bytes)) as tar:  # the 29.9-day one is left
            assert len([n for n in tar.getnames() if n.endswith(".jpg")]) == 1
        assert _audit(server, "privacy.erase")[0]["detail"]["images"] == 1
    finally:
        short.close()
        default.close()


def test_real_agent_takes_the_policy_and_masks_from_the_server(
    server: IdentityServer, broker: Broker, tmp_path: Path
) -> None:
    """Server -> desired config -> the real agent -> its snapshot command's image -> the
    server's gate: the whole path, pixels checked where they are stored."""
    frames = tmp_path / "camera"
    frames.mkdir()
    photo = scenes.person()  # 512 x 512, a face in the top band
    (frames / "frame-0000.png").write_bytes(scenes.png_bytes(photo))
    creds, answer = commissioned(server, "priv-agent", "priv-site-6", tmp_path)
    assert answer[0] == 201, answer
    agent = agent_process(creds, broker.port, tmp_path / "agent", heartbeat_s=5,
                          camera_dir=frames).start()  # fmt: skip
    try:
        wait_for(lambda: (server.device("priv-agent") or {}).get("state") == "online", 20,
                 what="agent online")  # fmt: skip

        def snapshot() -> dict[str, Any]:
            status, res = server.call("POST", "/api/devices/priv-agent/commands?wait=true",
                                      {"cmd": "snapshot", "timeout_s": 8})  # fmt: skip
            assert status == 202
            return dict(res)

        def applied(version: int) -> None:
            wait_for(lambda: server.call("GET", "/api/devices/priv-agent/config")[1].get(
                "reported_version") == version, 15, what=f"config {version} applied")  # fmt: skip
            assert server.call("GET", "/api/devices/priv-agent/config")[1]["reported_ok"]

        # the default: an anonymised thumbnail, marked, stored
        snap = snapshot()
        assert snap["state"] == "succeeded", snap
        thumb = base64.b64decode(snap["result"]["jpeg_b64"])
        assert privacy.anonymised_problem(thumb) == ""
        assert snap["result"]["privacy"]["policy"] == "anonymised"
        # masks, then full with its legal basis: the box sends the frame, band black
        _s, masks = server.call("PUT", "/api/devices/priv-agent/masks",
                                {"masks": {"privacy": [TOP_BAND]}})  # fmt: skip
        _s, site = server.call("PUT", "/api/sites/priv-site-6/privacy",
                               {"policy": "full", "legal_basis": BASIS})  # fmt: skip
        applied(server.call("GET", "/api/devices/priv-agent/config")[1]["version"])
        snap = snapshot()
        assert snap["result"]["privacy"] == privacy.marking("full", site["version"],
                                                           masks["version"])  # fmt: skip
        img = cv2.imdecode(np.frombuffer(base64.b64decode(snap["result"]["jpeg_b64"]),
                                         np.uint8), cv2.IMREAD_GRAYSCALE)  # fmt: skip
        band = int(0.4 * img.shape[0])
        assert int(np.percentile(img[: band - 8], 99.9)) <= 3  # the face is not there
        assert float(img[band + 8 :].std()) > 20  # the rest is
        # none: nothing leaves; the answer says why
        server.call("PUT", "/api/sites/priv-site-6/privacy", {"policy": "none"})
        applied(server.call("GET", "/api/devices/priv-agent/config")[1]["version"])
        snap = snapshot()
        assert snap["state"] == "failed" and "policy none" in snap["error"], snap
    finally:
        agent.stop()
    # the images in command answers go with the site's retention too (aged here by 40 days)
    with sqlite3.connect(server.config_path.parent / "fleet.db") as db:
        db.execute("UPDATE commands SET created_at = created_at - 40 * 86400 "
                   "WHERE device_id = 'priv-agent'")  # fmt: skip
    assert server.call("POST", "/api/privacy/retention")[0] == 200
    _s, answers = server.call("GET", "/api/devices/priv-agent/commands")
    results = [c["result"] for c in answers if c["result"] is not None]
    assert len(results) == 2 and all("jpeg_b64" not in r for r in results)
    assert all(r["image_deleted"] == "retention" for r in results)
    entry = next(e for e in _audit(server, "privacy.retention") if e["target"] == "priv-site-6")
    assert entry["detail"]["command_images"] == 2


def test_masks_drawn_on_the_device_page_in_chromium(
    server: IdentityServer, broker: Broker, tmp_path: Path
) -> None:
    playwright = pytest.importorskip("playwright.sync_api")
    dev = SiteDevice(server, broker.port, "priv-cam-7", "priv-site-7", tmp_path)
    try:
        shot = dev.snapshot(PHOTO_THUMB, privacy.marking("anonymised", 0, 0))  # to draw on
        assert "jpeg" in shot["data"]
        with playwright.sync_playwright() as p:
            browser = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
            page = browser.new_page()
            problems: list[str] = []
            page.on("console", lambda m: problems.append(m.text) if "Policy" in m.text else None)
            page.goto(server.base_url + "/ui/login")
            page.fill("#login-token", server.admin_token)
            page.click("#login")
            page.wait_for_url("**/ui/")
            page.goto(server.base_url + "/ui/devices/priv-cam-7")
            page.click("[data-mask-action=new-privacy]")
            layer = page.locator(".mask-layer")
            layer.scroll_into_view_if_needed()
            box = layer.bounding_box()
            assert box is not None and box["width"] > 100 and box["height"] > 100
            for fx, fy in [(0.1, 0.1), (0.5, 0.1), (0.3, 0.5)]:
                layer.click(position={"x": fx * box["width"], "y": fy * box["height"]})
            page.click("[data-mask-action=save]")
            page.locator("#mask-msg", has_text="saved: masks version").wait_for(timeout=10_000)
            browser.close()
        assert problems == []  # no script or style refused by the Content-Security-Policy
        _s, masks = server.call("GET", "/api/devices/priv-cam-7/masks")
        (poly,) = masks["masks"]["privacy"]
        want = [(0.1, 0.1), (0.5, 0.1), (0.3, 0.5)]
        assert all(abs(x - wx) < 0.01 and abs(y - wy) < 0.01
                   for (x, y), (wx, wy) in zip(poly, want, strict=True)), poly  # fmt: skip
        assert _audit(server, "privacy.masks")[0]["target"] == "priv-cam-7"
    finally:
        dev.close()


def test_cli_exports_and_erases_a_sites_images(server: IdentityServer, tmp_path: Path) -> None:
    """camfleet-server privacy export and erase, on the server's own database
    (the images of priv-site-1 stored by the first test: a thumbnail and a full photo)."""

    def cli(*args: str) -> str:
        done = subprocess.run(
            [sys.executable, "-m", "fleet_server.cli", "--config", str(server.config_path),
             "privacy", *args], capture_output=True, text=True, timeout=60, check=False,
        )  # fmt: skip
        assert done.returncode == 0, done.stderr
        return done.stdout

    now = str(time.time() + 1)
    out = tmp_path / "request.tar"
    assert "2 images of priv-site-1" in cli("export", "--site", "priv-site-1", "--since", "0",
                                            "--until", now, "--out", str(out))  # fmt: skip
    with tarfile.open(out) as tar:
        assert len([n for n in tar.getnames() if n.endswith(".jpg")]) == 2
    assert "2 images of priv-site-1 erased" in cli("erase", "--site", "priv-site-1",
                                                   "--since", "0", "--until", now)  # fmt: skip
    _status, tar_bytes = server.call(
        "GET", f"/api/sites/priv-site-1/images.tar?since=0&until={now}")  # fmt: skip
    with tarfile.open(fileobj=io.BytesIO(tar_bytes)) as tar:
        assert [n for n in tar.getnames() if n.endswith(".jpg")] == []
    erased = _audit(server, "privacy.erase")[0]
    assert (erased["actor"], erased["target"], erased["detail"]["images"]) == (
        "system", "priv-site-1", 2)  # fmt: skip
