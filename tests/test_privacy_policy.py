"""Privacy (issue 20), the pure parts: mask checks against hostile input, the anonymised-image
test read from a JPEG's header, the server's decisions on images."""

from __future__ import annotations

import json
import math
import threading
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np
import pytest

from common import privacy
from fleet_server.privacy import policy
from fleet_server.privacy.policy import CameraPolicy
from provisioning import draw, record
from tests.privacy_helpers import jpeg

SQUARE = [[0.1, 0.1], [0.4, 0.1], [0.4, 0.4], [0.1, 0.4]]
RNG = np.random.default_rng(20)


def _img(w: int, h: int) -> bytes:
    return jpeg(RNG.integers(0, 256, (h, w, 3), dtype=np.uint8))


@pytest.mark.parametrize(
    ("masks", "says"),
    [
        ({"privacy": [[[0.1, 0.1], [0.5, 0.5]]]}, "2 distinct corners"),
        ({"privacy": [[[0.1, 0.1], [0.1, 0.1], [0.1, 0.1], [0.1, 0.1]]]}, "1 distinct corners"),
        ({"privacy": [[[0.1, 0.1], [0.2, 0.2], [0.3, 0.3]]]}, "degenerate"),  # a line
        ({"privacy": [[[0, 0], [1, 1], [1, 0], [0, 1]]]}, "edges 0 and 2 cross"),  # a bow tie
        ({"privacy": [[[0, 0], [1.5, 0], [1, 1]]]}, "outside the frame"),
        ({"privacy": [[[0, 0], [math.nan, 0], [1, 1]]]}, "outside the frame"),
        ({"privacy": [[[0, 0], [True, 0], [1, 1]]]}, "must be numbers"),
        ({"privacy": [[[0, 0], "a", [1, 1]]]}, "corner 1 is not an [x, y] pair"),
        ({"privacy": [SQUARE] * 33}, "33 privacy masks; at most 32"),
        ({"motion": [[[i / 100, (i % 2) / 10] for i in range(100)]]}, "100 corners; at most 64"),
        ({"privacy": [[[0.0, 0.0]] * 10**6]}, "1000000 corners; at most 64"),
        ({"zones": []}, "unknown mask kinds ['zones']"),
        ({"privacy": "everything"}, "must be a list of polygons"),
        ([SQUARE], "must be an object"),
    ],
)
def test_hostile_masks_are_refused_with_what_and_how_many(masks: object, says: str) -> None:
    with pytest.raises(privacy.MaskError, match=None) as err:
        privacy.check_masks(masks)
    assert says in str(err.value), str(err.value)


def test_corner_budget_over_all_masks() -> None:
    poly = [[0.5 + 0.4 * math.cos(a / 30 * 6.283), 0.5 + 0.4 * math.sin(a / 30 * 6.283)]
            for a in range(30)]  # fmt: skip
    with pytest.raises(privacy.MaskError, match="at most 600"):
        privacy.check_masks({"privacy": [poly] * 21, "motion": [poly] * 0})
    assert len(privacy.check_masks({"privacy": [poly] * 20})["privacy"]) == 20


def test_masks_are_normalised_and_digested() -> None:
    raw = {"privacy": [[*SQUARE, SQUARE[0]], [[0, 0], [1, 0], [1, 1], [0, 1]]]}
    masks = privacy.check_masks(raw)
    assert masks["privacy"][0] == SQUARE  # the closing corner dropped
    assert masks["motion"] == []
    assert privacy.masks_digest(masks) == privacy.masks_digest(privacy.check_masks(raw))
    assert privacy.area(masks["privacy"][1]) == 1.0  # the whole frame is a valid mask


def test_privacy_section_checks_policy_and_versions() -> None:
    ok = privacy.check_section({"policy": "full", "policy_version": 3, "masks_version": 2,
                                "masks": {"privacy": [SQUARE]}})  # fmt: skip
    assert ok["masks"]["privacy"] == [SQUARE] and ok["policy_version"] == 3
    for bad, says in [
        ({"policy": "some"}, "snapshot policy 'some'"),
        ({"policy": "none", "policy_version": -1}, "policy_version"),
        ({"policy": "none", "masks_version": "1"}, "masks_version"),
        ({"policy": "none", "extra": 1}, "unknown privacy keys"),
    ]:
        with pytest.raises(privacy.MaskError, match=says):
            privacy.check_section(bad)


def test_anonymised_is_read_from_the_jpeg_header() -> None:
    assert privacy.anonymised_problem(_img(12, 9)) == ""
    assert "320x180 pixels" in privacy.anonymised_problem(_img(320, 180)) or (
        "bytes" in privacy.anonymised_problem(_img(320, 180))
    )
    # a 13-pixel image of flat colour is small in bytes but too large in pixels
    flat = jpeg(np.full((13, 4, 3), 128, np.uint8))
    assert "4x13 pixels" in privacy.anonymised_problem(flat)
    small = _img(12, 12)
    exif = small[:2] + b"\xff\xe1\x00\x10" + b"Exif\x00\x00" + bytes(8) + small[2:]
    assert "APP1" in privacy.anonymised_problem(exif)
    assert "after it" in privacy.anonymised_problem(small + small)  # a second image behind
    assert "not a plain JPEG" in privacy.anonymised_problem(b"\x89PNG\r\n\x1a\n" + bytes(30))
    assert "not a plain JPEG" in privacy.anonymised_problem(small[:-40])  # cut short


def _cam(pol: str, masks: int = 0, stale: bool = False) -> CameraPolicy:
    return CameraPolicy("s1", pol, 1, masks, stale)


def test_screen_decisions() -> None:
    thumb, big = _img(12, 9), _img(64, 48)
    anon = privacy.marking("anonymised", 1, 0)
    full = privacy.marking("full", 1, 0)
    assert policy.screen(_cam("none"), thumb, anon) == policy.POLICY_NONE
    assert policy.screen(_cam("anonymised"), thumb, anon) == ""
    assert policy.screen(_cam("anonymised"), thumb, None) == policy.NOT_ANONYMISED
    assert policy.screen(_cam("anonymised"), thumb, full) == policy.NOT_ANONYMISED
    # a box that says anonymised and sends a real image
    assert policy.screen(_cam("anonymised"), big, anon) == policy.FAILED_CHECK
    assert policy.screen(_cam("full"), big, full) == ""
    assert policy.screen(_cam("full"), big, anon) == ""
    assert policy.screen(_cam("full"), b"GIF89a", full) == policy.NOT_JPEG
    # taken under masks older than the camera's: refused whatever the policy
    assert policy.screen(_cam("full", masks=2), big, full) == policy.OLD_MASKS
    assert policy.screen(_cam("full", masks=2), big, privacy.marking("full", 1, 2)) == ""
    assert policy.screen(_cam("full", stale=True), big, full) == policy.MASKS_STALE


def _http(method: str, url: str, body: object = None) -> tuple[int, bytes, dict[str, str]]:
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(url, data=data, method=method)
    if data is not None:
        req.add_header("Content-Type", "application/json")
    try:
        with urllib.request.urlopen(req, timeout=10) as resp:
            return resp.status, resp.read(), dict(resp.headers)
    except urllib.error.HTTPError as err:
        return err.code, err.read(), dict(err.headers)


def test_technicians_tool_draws_masks_into_the_zones_file(tmp_path: Path) -> None:
    """camfleet-provision draw-masks: the dashboard's editor on the laptop's loopback; what
    it saves is checked as the server checks it and lands in the zones file."""
    frame = tmp_path / "reference.png"
    frame.write_bytes(jpeg(np.full((48, 64, 3), 100, np.uint8)))
    zones = tmp_path / "zones.json"
    zones.write_text(json.dumps({"zones": [{"name": "z", "polygon": SQUARE}], "lines": []}))
    server = draw.make_server(frame, draw.MaskFile(zones))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    base = f"http://127.0.0.1:{server.server_address[1]}"
    try:
        status, html, headers = _http("GET", base + "/")
        assert status == 200 and b'<script src="/masks.js" defer></script>' in html
        assert b"<script>" not in html and "script-src 'self'" in headers["Content-Security-Policy"]
        status, js, _h = _http("GET", base + "/masks.js")
        assert status == 200 and b"/api/devices/" in js
        assert _http("GET", base + "/frame")[1] == frame.read_bytes()
        bowtie = {"privacy": [[[0, 0], [1, 1], [1, 0], [0, 1]]]}
        status, err, _h = _http("PUT", base + "/api/devices/local/masks", {"masks": bowtie})
        assert status == 400 and b"cross" in err
        assert "masks" not in json.loads(zones.read_text())  # nothing written
        good = {"privacy": [SQUARE], "motion": []}
        status, ok, _h = _http("PUT", base + "/api/devices/local/masks", {"masks": good})
        assert status == 200 and json.loads(ok) == {"version": 1}
    finally:
        server.shutdown()
        server.server_close()
    saved = json.loads(zones.read_text())
    assert saved["masks"]["privacy"] == [SQUARE] and saved["zones"][0]["name"] == "z"
    assert record.load_layout(zones)["masks"]["privacy"] == [SQUARE]  # what `box` signs
