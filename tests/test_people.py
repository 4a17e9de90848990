"""People on the dashboard (issue 15, item 6): server-side sessions, security headers on every
response, snapshots that are JPEGs. Against the real server process and the real broker; the
browser parts in Debian's Chromium."""

from __future__ import annotations

import base64
import http.client
import io
import json
import logging
import ssl
import threading
import time
import urllib.parse
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import pytest
from cryptography import x509
from paho.mqtt.enums import CallbackAPIVersion
from PIL import Image

from agent.identity import est_client
from common import privacy
from common.settings import load_settings
from firmware import contract
from fleet_server.config import ServerSettings
from fleet_server.db import make_engine, make_sessionmaker
from fleet_server.identity.ca import CertificateAuthority, DeviceCredentials
from fleet_server.identity.ca_ops import read_crl
from fleet_server.identity.revocation import Revoker
from fleet_server.ingest.jpeg import checked_snapshot, jpeg_problem
from hil_tests.identity import IdentityServer
from hil_tests.procs import Broker, wait_for
from tests.mqtt_helpers import Client

COOKIE = "camfleet_session"
GRACE_S = 2.0  # a superseded certificate's grace in these tests (default: an hour)


def _jpeg(size: tuple[int, int] = (32, 24), **opts: Any) -> bytes:
    out = io.BytesIO()
    Image.new("RGB", size, (200, 30, 30)).save(out, "JPEG", **opts)
    return out.getvalue()


def test_jpeg_check_passes_real_jpegs_and_refuses_everything_else() -> None:
    assert jpeg_problem(_jpeg()) is None
    assert jpeg_problem(_jpeg(progressive=True)) is None
    gray = io.BytesIO()
    Image.new("L", (8, 8)).save(gray, "JPEG")
    assert jpeg_problem(gray.getvalue()) is None
    real = _jpeg()
    hostile = {
        b"<html><script>alert(document.cookie)</script></html>": "not_jpeg_magic",
        b"\x89PNG\r\n\x1a\n" + real: "not_jpeg_magic",
        real[:-2]: "no_end_marker",  # cut off
        b"\xff\xd8\xff\xe0\x00\x10JFIF<script>\xff\xd9": "bad_marker",  # no frame after
        b"\xff\xd8\xff\xe0\xff\xff" + b"A" * 64 + b"\xff\xd9": "bad_segment_length",
        b"\xff\xd8\xff\xd9": "no_frame_header",  # magic and end, nothing between
        b"\xff\xd8\xff\xda\x00\x02\xff\xd9": "no_frame_header",  # a scan before any frame
        # a frame of 0 x 0 pixels, and one of 7 components
        b"\xff\xd8\xff\xc0\x00\x0b\x08\x00\x00\x00\x00\x01\x01\x11\x00\xff\xd9": "bad_frame_header",
        b"\xff\xd8\xff\xc0\x00\x0b\x08\x00\x10\x00\x10\x07\x01\x11\x00\xff\xd9": "bad_frame_header",
        b"\xff\xd8\xff" + b"\xff" * 40: "no_end_marker",
        b"\xff\xd8\xff" + b"\xfe\x00\x02" * 300 + b"\xff\xd9": "bad_marker",
    }
    for raw, reason in hostile.items():
        assert jpeg_problem(raw) == reason, raw[:40]
    many = b"\xff\xd8" + b"\xff\xfe\x00\x02" * 300 + b"\xff\xd9"  # comments, no frame
    assert jpeg_problem(many) == "too_many_segments"
    assert jpeg_problem(b"\xff\xd8\xff" + b"\x00" * (3 << 20)) == "too_large"
    html = base64.b64encode(b"<html>hi</html>").decode()
    assert checked_snapshot({"jpeg": html, "label": "car"}) == {
        "label": "car", "snapshot_refused": "not_jpeg_magic"}  # fmt: skip
    assert checked_snapshot({"jpeg": "not base64!"})["snapshot_refused"] == "not_base64"
    assert checked_snapshot({"jpeg": 5})["snapshot_refused"] == "not_base64"
    good = {"jpeg": base64.b64encode(real).decode()}
    assert checked_snapshot(good) == good


# ---------------------------------------------------------------- the real server


@pytest.fixture(scope="module")
def pbroker(ca: CertificateAuthority, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Broker]:
    broker = Broker(ca, tmp_path_factory.mktemp("people-broker")).start()
    yield broker
    broker.stop()


@pytest.fixture(scope="module")
def srv(
    ca: CertificateAuthority, pbroker: Broker, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[IdentityServer]:
    server = IdentityServer(
        tmp_path_factory.mktemp("people"), ca, pbroker,
        # one EST worker process: a replacement enrollment there, the CRL by the server
        identity={"est_workers": 1, "supersede_grace_s": GRACE_S, "crl_check_s": 0.5},
    )  # fmt: skip
    server.start_all()
    yield server
    server.stop()


def _user(srv: IdentityServer, name: str, role: str) -> str:
    status, body = srv.call("POST", "/api/users", {"name": name, "role": role})
    assert status == 201, body
    return str(body["token"])


def _http(
    srv: IdentityServer,
    method: str,
    path: str,
    body: object = None,
    headers: dict[str, str] | None = None,
    raw: bytes | None = None,
) -> tuple[int, dict[str, str], bytes]:
    url = urllib.parse.urlsplit(srv.base_url)
    conn = http.client.HTTPConnection(url.hostname or "localhost", url.port, timeout=20)
    data = raw if raw is not None else (None if body is None else json.dumps(body).encode())
    hdrs = dict(headers or {})
    if data is not None and "Content-Type" not in hdrs:
        hdrs["Content-Type"] = "application/json"
    try:
        conn.request(method, path, body=data, headers=hdrs)
        resp = conn.getresponse()
        return resp.status, {k.lower(): v for k, v in resp.getheaders()}, resp.read()
    finally:
        conn.close()


def _cookie(sid: str) -> dict[str, str]:
    return {"Cookie": f"{COOKIE}={sid}"}


def _set_cookie_sid(headers: dict[str, str]) -> str:
    name, _, rest = headers.get("set-cookie", "").partition("=")
    assert name == COOKIE, headers
    return rest.split(";")[0]


def test_the_cookie_is_a_session_that_sign_out_ends(srv: IdentityServer) -> None:
    token = _user(srv, "ana-op", "operator")
    status, headers, _ = _http(srv, "POST", "/ui/login", {"token": token})
    assert status == 204
    sid = _set_cookie_sid(headers)
    flags = headers["set-cookie"].lower()
    assert "httponly" in flags and "samesite=strict" in flags and "max-age=43200" in flags
    assert sid.startswith("cfs_") and token not in headers["set-cookie"]
    assert _http(srv, "GET", "/ui/devices", headers=_cookie(sid))[0] == 200
    assert _http(srv, "GET", "/api/devices", headers=_cookie(sid))[0] == 200
    # the API token itself is no cookie any more, and no longer-lived key to the dashboard
    assert _http(srv, "GET", "/ui/devices", headers=_cookie(token))[0] == 303
    assert _http(srv, "GET", "/api/devices", headers=_cookie(token))[0] == 401

    status, headers, _ = _http(srv, "POST", "/ui/logout", {}, headers=_cookie(sid))
    assert status == 204 and "max-age=0" in headers["set-cookie"].lower()
    # the copied cookie, replayed after sign-out: dead on the server
    status, headers, _ = _http(srv, "GET", "/ui/devices", headers=_cookie(sid))
    assert (status, headers["location"]) == (303, "/ui/login")
    assert _http(srv, "GET", "/api/devices", headers=_cookie(sid))[0] == 401
    # the API token still works for scripts
    assert srv.call("GET", "/api/devices", token=token)[0] == 200
    closes = [e for e in srv.call("GET", "/api/audit?action=session.close")[1]]
    assert closes and closes[0]["actor"] == "ana-op"


def test_a_planted_session_id_is_never_adopted(srv: IdentityServer) -> None:
    """Session fixation: a cookie set before sign-in (the attacker's own live session, or an
    id the attacker made up) is replaced by a fresh one, and the planted one is ended."""
    attacker = srv.ui_session(_user(srv, "mallory", "viewer"))
    victim_token = _user(srv, "vic-op", "operator")
    for planted in (attacker, "cfs_" + "A" * 43):
        status, headers, _ = _http(
            srv, "POST", "/ui/login", {"token": victim_token}, headers=_cookie(planted)
        )
        assert status == 204
        fresh = _set_cookie_sid(headers)
        assert fresh != planted
        assert _http(srv, "GET", "/api/devices", headers=_cookie(fresh))[0] == 200
        assert _http(srv, "GET", "/ui/", headers=_cookie(planted))[0] == 303
    sessions = srv.call("GET", "/api/sessions")[1]
    assert "mallory" not in {s["user_name"] for s in sessions}  # ended by the sign-in


def test_admin_lists_and_revokes_sessions(srv: IdentityServer) -> None:
    token = _user(srv, "bo-tech", "technician")
    sid = srv.ui_session(token)
    live = srv.call("GET", "/api/sessions")[1]
    mine = [s for s in live if s["user_name"] == "bo-tech"]
    assert len(mine) == 1 and mine[0]["revoked_at"] is None
    assert set(mine[0]) >= {"id", "created_at", "expires_at", "last_seen", "source"}
    assert all("sid" not in k and "hash" not in k for k in mine[0])  # never the secret
    # only an admin: not the technician, not through the technician's own session
    assert srv.call("GET", "/api/sessions", token=token)[0] == 403
    assert _http(srv, "GET", "/api/sessions", headers=_cookie(sid))[0] == 403
    assert srv.call("POST", f"/api/sessions/{mine[0]['id']}/revoke", {}, token=token)[0] == 403
    status, body = srv.call("POST", f"/api/sessions/{mine[0]['id']}/revoke", {})
    assert status == 200 and body["revoked_by"] == "admin"
    assert _http(srv, "GET", "/ui/", headers=_cookie(sid))[0] == 303
    assert srv.call("POST", "/api/sessions/999999/revoke", {})[0] == 404
    ended = srv.call("GET", "/api/sessions?all=true")[1]
    assert any(s["id"] == mine[0]["id"] and s["revoked_at"] for s in ended)


def test_cookie_requests_from_elsewhere_are_refused(srv: IdentityServer) -> None:
    """CSRF: SameSite=Strict still sends the cookie from another port of this host; a
    state-changing request with the cookie must be the dashboard's own JSON fetch."""
    sid = srv.ui_session()
    evil = {**_cookie(sid), "Origin": "http://localhost:1"}
    body = {"device_id": "csrf-cam", "kind": "agent"}
    assert _http(srv, "POST", "/api/enrollment-tokens", body, headers=evil)[0] == 403
    form = {**_cookie(sid), "Content-Type": "text/plain"}
    raw = json.dumps(body).encode()
    assert _http(srv, "POST", "/api/enrollment-tokens", raw=raw, headers=form)[0] == 403
    login = {"Origin": "http://evil.example", "Content-Type": "application/json"}
    assert _http(srv, "POST", "/ui/login", {"token": srv.admin_token}, headers=login)[0] == 403
    # the same request from the dashboard's origin is served
    host = urllib.parse.urlsplit(srv.base_url).netloc
    ok = {**_cookie(sid), "Origin": f"http://{host}"}
    assert _http(srv, "POST", "/api/enrollment-tokens", body, headers=ok)[0] == 201
    refused = srv.call("GET", "/api/audit?limit=50")[1]
    assert any(e["outcome"] == "refused:cross_origin" for e in refused)


HEADERS = {
    "x-frame-options": "DENY",
    "x-content-type-options": "nosniff",
    "referrer-policy": "no-referrer",
}


def test_every_response_has_the_security_headers(srv: IdentityServer) -> None:
    sid = srv.ui_session()
    cases: list[tuple[str, str, dict[str, str], int]] = [
        ("GET", "/ui/login", {}, 200),
        ("GET", "/ui/", {}, 303),  # not signed in: the redirect
        ("GET", "/ui/", _cookie(sid), 200),
        ("GET", "/ui/devices/nope", _cookie(sid), 404),
        ("GET", "/ui/static/app.js", {}, 200),
        ("GET", "/ui/static/missing.js", {}, 404),
        ("GET", "/no/such/page", {}, 404),
        ("GET", "/api/devices", {}, 401),
        ("GET", "/api/devices?limit=0", {"Authorization": f"Bearer {srv.admin_token}"}, 422),
        (
            "GET",
            "/api/events/none/snapshot.jpg",
            {"Authorization": f"Bearer {srv.admin_token}"},
            404,
        ),
        ("GET", "/healthz", {}, 200),
        ("GET", "/metrics", {}, 200),
        ("GET", "/openapi.json", {}, 200),
        ("DELETE", "/healthz", {}, 405),
    ]
    for method, path, hdrs, want in cases:
        status, headers, _ = _http(srv, method, path, headers=hdrs)
        assert status == want, (path, status)
        for name, value in HEADERS.items():
            assert headers.get(name) == value, (path, name, headers)
        csp = headers["content-security-policy"]
        assert "frame-ancestors 'none'" in csp and "default-src 'none'" in csp, path
        assert "script-src 'self';" in csp and "unsafe" not in csp, path
        if not path.startswith("/ui/static/"):
            assert headers.get("cache-control") == "no-store", path


def _event(dev: str, seq: int, data: dict[str, Any]) -> tuple[str, bytes]:
    body = {"event_id": f"{dev}-ev-{seq}", "seq": seq, "type": "track.new", "data": data}
    topic, payload, _qos, _retain = contract.encode("event", dev, body, time.time())
    return topic, payload


def test_snapshots_must_be_jpegs_and_are_served_with_nosniff(
    srv: IdentityServer, pbroker: Broker, device_factory: Callable[[str], DeviceCredentials]
) -> None:
    dev = "snap-cam-1"
    creds = device_factory(dev)
    cl = Client(pbroker.port, creds.root_pem, creds.cert_pem, creds.key_pem, dev)
    html = b"<html><body><script>fetch('/api/users')</script></body></html>"
    real = _jpeg((12, 9))  # a thumbnail: what the default privacy policy lets through
    marked = privacy.marking("anonymised", 0, 0)  # (issue 20: the box says how it was made)
    try:
        for seq, raw in enumerate([html, b"\xff\xd8\xff\xe0" + html + b"\xff\xd9", real]):
            data = {"label": "car", "jpeg": base64.b64encode(raw).decode(), "privacy": marked}
            cl.publish(*_event(dev, seq, data))
    finally:
        cl.close()
    auth = {"Authorization": f"Bearer {srv.admin_token}"}

    def stored() -> list[dict[str, Any]]:
        return list(srv.call("GET", f"/api/events?device_id={dev}")[1]["items"])

    wait_for(lambda: len(stored()) == 3, 20, what="three events stored")
    by_id = {e["event_id"]: e for e in stored()}
    assert by_id[f"{dev}-ev-0"]["data"]["snapshot_refused"] == "not_jpeg_magic"
    assert by_id[f"{dev}-ev-1"]["data"]["snapshot_refused"] == "bad_segment_length"
    for bad in (0, 1):  # the event stays, its snapshot is gone: nothing to serve
        assert "jpeg" not in by_id[f"{dev}-ev-{bad}"]["data"]
        assert _http(srv, "GET", f"/api/events/{dev}-ev-{bad}/snapshot.jpg", headers=auth)[0] == 404
    status, headers, body = _http(srv, "GET", f"/api/events/{dev}-ev-2/snapshot.jpg", headers=auth)
    assert (status, body) == (200, real)
    assert headers["content-type"] == "image/jpeg"
    assert headers["x-content-type-options"] == "nosniff"
    assert headers["cross-origin-resource-policy"] == "same-origin"


# ---------------------------------------------------------------- in Chromium


class _OtherOrigin(BaseHTTPRequestHandler):
    """Another origin (another port): a page that frames the dashboard."""

    target = ""

    def do_GET(self) -> None:
        page = (
            "<!doctype html><title>evil</title><h1 id='evil'>evil</h1>"
            f"<iframe id='f' src='{self.target}' width='800' height='600'></iframe>"
        ).encode()
        self.send_response(200)
        self.send_header("Content-Type", "text/html")
        self.send_header("Content-Length", str(len(page)))
        self.end_headers()
        self.wfile.write(page)

    def log_message(self, *_args: object) -> None:
        pass


def test_in_chromium_a_framed_dashboard_does_not_render_and_sign_out_sticks(
    srv: IdentityServer,
    browser: Any,
) -> None:
    context = browser.new_context()
    page = context.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda e: errors.append(str(e)))
    base = srv.base_url
    page.goto(base + "/ui/login")
    page.fill("#login-token", _user(srv, "cam-viewer", "viewer"))
    page.click("#login")  # the button works through app.js alone (no inline handlers)
    page.wait_for_url("**/ui/")
    cookie = next(c for c in context.cookies() if c["name"] == COOKIE)
    assert cookie["httpOnly"] and cookie["sameSite"] == "Strict"
    assert page.evaluate("document.cookie") == ""  # not readable by scripts

    # an inline script injected into the page is refused by the CSP
    page.evaluate(
        "() => { const s = document.createElement('script');"
        " s.textContent = 'window.pwned = 1'; document.body.append(s); }"
    )
    assert page.evaluate("window.pwned") is None

    _OtherOrigin.target = base + "/ui/"
    evil = ThreadingHTTPServer(("127.0.0.1", 0), _OtherOrigin)
    threading.Thread(target=evil.serve_forever, daemon=True).start()
    try:
        framer = context.new_page()
        framer.goto(f"http://127.0.0.1:{evil.server_address[1]}/")
        framer.wait_for_selector("#evil")
        time.sleep(0.5)  # the frame's navigation has been refused by now
        frame = next(f for f in framer.frames if f != framer.main_frame)
        # the browser refused it: the dashboard did not render inside another site's page
        assert not frame.url.startswith(base), frame.url
        assert frame.query_selector("#n-total") is None and frame.query_selector("header") is None
    finally:
        evil.shutdown()
        evil.server_close()

    page.click("#logout")
    page.wait_for_url("**/ui/login")
    context.add_cookies([cookie])  # the old cookie put back, as a thief would
    page.goto(base + "/ui/")
    assert page.url.endswith("/ui/login")
    assert errors == []
    context.close()


# ---------------------------------------------------------------- certificates (item 7)


def _crl_serials(ca: CertificateAuthority) -> set[int]:
    crl = read_crl(ca)
    return {r.serial_number for r in crl} if crl is not None else set()


def _can_connect(broker: Broker, root: Path, cert: Path, key: Path, client_id: str) -> bool:
    """A real MQTT connection with this certificate: True when the broker's CONNACK
    accepts it (a refused certificate fails the TLS handshake or never gets one)."""
    accepted = threading.Event()
    c = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=client_id, protocol=mqtt.MQTTv5,
                    reconnect_on_failure=False)  # fmt: skip
    c.tls_set(ca_certs=str(root), certfile=str(cert), keyfile=str(key))
    c.on_connect = lambda _c, _u, _f, rc, _p: accepted.set() if not rc.is_failure else None
    try:
        c.connect("localhost", broker.port, keepalive=30)
    except (ssl.SSLError, OSError):
        return False
    c.loop_start()
    try:
        return accepted.wait(5.0)
    finally:
        c.disconnect()
        c.loop_stop()


class Box:
    """A device key and the certificates EST gave it, as files."""

    def __init__(self, srv: IdentityServer, device_id: str, tmp: Path) -> None:
        self.srv, self.id, self.tmp = srv, device_id, tmp
        tmp.mkdir(parents=True, exist_ok=True)
        self.key = est_client.new_key()
        self.key_path = tmp / f"{device_id}.key"
        self.key_path.write_bytes(est_client.key_pem(self.key))
        self.certs: list[Path] = []

    def _keep(self, cert: x509.Certificate) -> Path:
        path = self.tmp / f"{self.id}-{len(self.certs)}.pem"
        path.write_bytes(est_client.pem(cert))
        self.certs.append(path)
        return path

    def enroll(self, token: str) -> Path:
        est = est_client.EstClient(self.srv.est_url, self.srv.ca.root_cert_path)
        return self._keep(est.simpleenroll(est_client.make_csr(self.key, self.id), token, self.id))

    def renew(self, with_cert: Path) -> Path:
        est = est_client.EstClient(
            self.srv.est_url, self.srv.ca.root_cert_path, cert=with_cert, key=self.key_path
        )
        return self._keep(est.simplereenroll(est_client.make_csr(self.key, self.id)))

    def serial(self, i: int) -> int:
        return x509.load_pem_x509_certificate(self.certs[i].read_bytes()).serial_number

    def connects(self, broker: Broker, i: int) -> bool:
        return _can_connect(
            broker, self.srv.ca.root_cert_path, self.certs[i], self.key_path, self.id
        )


def test_renewal_supersedes_the_previous_certificate(
    srv: IdentityServer, pbroker: Broker, tmp_path: Path
) -> None:
    box = Box(srv, "renew-cam-1", tmp_path)
    box.enroll(srv.token(box.id))
    box.renew(box.certs[0])
    # within the grace the old one still connects (the device reconnects with the new one)
    assert box.connects(pbroker, 1)
    # a copy of the old certificate cannot renew, not even within the grace
    with pytest.raises(est_client.EstError) as refused:
        box.renew(box.certs[0])
    assert (refused.value.status, refused.value.reason) == (403, "cert_superseded")
    wait_for(
        lambda: box.serial(0) in _crl_serials(srv.ca), GRACE_S + 10, what="old cert on the CRL"
    )
    assert box.serial(1) not in _crl_serials(srv.ca)
    # the broker reloaded the CRL: the stolen copy is dead
    wait_for(lambda: not box.connects(pbroker, 0), 10, what="old cert refused by the broker")
    assert box.connects(pbroker, 1)
    box.renew(box.certs[1])  # the current one renews as before
    entries = srv.call("GET", "/api/audit?action=cert.superseded")[1]
    assert [e["target"] for e in entries].count(box.id) == 1


def test_a_token_for_an_enrolled_device_is_a_replacement_for_operators_only(
    srv: IdentityServer, pbroker: Broker, tmp_path: Path
) -> None:
    box = Box(srv, "swap-cam-1", tmp_path)
    spare = srv.token(box.id)  # a second plain token, minted before the device enrolled
    box.enroll(srv.token(box.id))
    box.renew(box.certs[0])
    tech = _user(srv, "tina-tech", "technician")
    op = _user(srv, "otto-op", "operator")
    body = {"device_id": box.id, "kind": "agent"}
    status, refused = srv.call("POST", "/api/enrollment-tokens", body, token=tech)
    assert status == 403 and "needs_operator" in refused["detail"]
    # the plain token left over cannot give the enrolled device a second certificate
    with pytest.raises(est_client.EstError) as spent:
        Box(srv, box.id, tmp_path / "spare").enroll(spare)
    assert (spent.value.status, spent.value.reason) == (409, "already_enrolled")
    status, made = srv.call("POST", "/api/enrollment-tokens", body, token=op)
    assert status == 201 and made["replacement"] is True
    audit_rows = srv.call("GET", "/api/audit?action=token.replace")[1]
    assert [(a["actor"], a["outcome"]) for a in audit_rows if a["target"] == box.id] == [
        ("otto-op", "ok"), ("tina-tech", "refused:needs_operator")]  # fmt: skip
    # the box was replaced: a new key enrolls with the replacement token ...
    new_box = Box(srv, box.id, tmp_path / "new")
    new_box.enroll(made["token"])
    # ... and every earlier certificate is revoked at once, on the CRL within crl_check_s
    old = {box.serial(0), box.serial(1)}
    wait_for(lambda: old <= _crl_serials(srv.ca), 10, what="old certificates on the CRL")
    wait_for(lambda: not box.connects(pbroker, 1), 10, what="old cert refused by the broker")
    assert new_box.connects(pbroker, 0)
    with pytest.raises(est_client.EstError) as dead:
        box.renew(box.certs[1])
    assert dead.value.status == 403
    # a plain token for a device without a valid certificate stays a technician's job
    status, fresh = srv.call(
        "POST", "/api/enrollment-tokens", {"device_id": "swap-cam-2"}, token=tech
    )
    assert status == 201 and fresh["replacement"] is False
    # no token, hence no certificate, can ever carry a server identity (issue 15, item 3)
    for server_like in ("_fleet-server-1", "_fleet-server", "fleet_server-1"):
        body = {"device_id": server_like, "kind": "agent"}
        assert srv.call("POST", "/api/enrollment-tokens", body, token=op)[0] == 422


def test_revoking_an_unknown_device_is_404_and_restarts_log_no_false_kicks(
    srv: IdentityServer, caplog: pytest.LogCaptureFixture
) -> None:
    status, body = srv.call("POST", "/api/devices/never-heard-of/revoke", {"reason": "typo"})
    assert status == 404, body
    refused = srv.call("GET", "/api/audit?action=device.revoke")[1]
    assert any(e["outcome"] == "refused:unknown_device" for e in refused)
    srv.token("pending-cam-1")  # known by its token only: revocable (the token dies)
    status, body = srv.call("POST", "/api/devices/pending-cam-1/revoke", {"reason": "lost"})
    assert status == 200 and body["disconnected"], body
    # a second revocation finds the deny role in place: no "Internal error" from the plugin
    status, body = srv.call("POST", "/api/devices/pending-cam-1/revoke", {"reason": "again"})
    assert status == 200 and body["already_revoked"] and body["disconnected"], body
    # what the server does at every start (the CRL keeper's first round), with the deny
    # roles already in the broker: nothing to re-apply, and no false "not kicked" line
    settings = load_settings(ServerSettings, srv.config_path)
    engine = make_engine(settings.db_url())
    revoker = Revoker(make_sessionmaker(engine), srv.ca, settings)
    with caplog.at_level(logging.INFO, logger="fleet_server.identity.revocation"):
        assert revoker.reapply() == 0
        assert revoker.denied(["pending-cam-1", "renew-cam-1"]) == {"pending-cam-1"}
    engine.dispose()
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]
    assert "not kicked" not in srv.log_text()
