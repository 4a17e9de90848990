"""Drawing masks at the pole: ``camfleet-provision draw-masks`` serves, on the laptop's
loopback only, the reference frame with the mask editor the dashboard uses (masks.js), and
saves what the technician draws into the zones file as ``masks`` (checked as the server
checks them). The on-box step then blacks the privacy masks out of the reference frame,
signs them into the commissioning record and gives them to the box (docs/privacy.md).
"""

from __future__ import annotations

import json
import threading
from html import escape
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from common import privacy
from common.files import atomic_write
from provisioning.errors import ProvisionError
from provisioning.record import MEDIA

_CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; "
    "connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
)
_MAX_BODY = 256 * 1024
_BUTTONS = [("new-privacy", "new privacy mask"), ("new-motion", "new motion mask"),
            ("close", "close polygon"), ("undo", "undo"), ("save", "save masks")]  # fmt: skip


class MaskFile:
    """The zones file whose ``masks`` the editor edits (its zones and lines are kept)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.saves = 0
        self._lock = threading.Lock()

    def read(self) -> dict[str, Any]:
        if not self.path.exists():
            return {"zones": [], "lines": []}
        try:
            data = json.loads(self.path.read_text())
        except (OSError, ValueError) as exc:
            raise ProvisionError(f"cannot read {self.path}: {exc}", "check the JSON") from exc
        if not isinstance(data, dict):
            raise ProvisionError(f"{self.path}: expected an object with zones, lines, masks")
        return data

    def masks(self) -> privacy.Masks:
        try:
            return privacy.check_masks(self.read().get("masks"))
        except privacy.MaskError:
            return privacy.check_masks(None)  # start again rather than refuse to open

    def save(self, raw: object) -> int:
        """Check and write the masks (MaskError, nothing written); the saves so far."""
        masks = privacy.check_masks(raw)
        with self._lock:
            data = self.read()
            data["masks"] = masks
            atomic_write(self.path, (json.dumps(data, indent=1) + "\n").encode(), 0o644)
            self.saves += 1
            return self.saves


def page(masks: privacy.Masks) -> str:
    buttons = "".join(f'<button data-mask-action="{a}">{escape(t)}</button> '
                      for a, t in _BUTTONS)  # fmt: skip
    return (
        '<!doctype html><html lang="en"><head><meta charset="utf-8">'
        "<title>camfleet: masks</title>"
        '<link rel="stylesheet" href="/masks.css"></head><body>'
        '<div id="mask-editor" data-device="local" '
        f'data-masks="{escape(json.dumps(masks))}">'
        "<p>Privacy masks are black on the box before anything sees the frame; motion masks "
        "never open the motion gate. Click corners on the frame, then close the polygon.</p>"
        '<div class="mask-figure"><img class="mask-image" alt="reference frame" src="/frame">'
        '<svg class="mask-layer" viewBox="0 0 1 1" preserveAspectRatio="none" '
        'xmlns="http://www.w3.org/2000/svg"></svg></div>'
        f'<p>{buttons}</p><p id="mask-msg" class="muted"></p></div>'
        '<script src="/masks.js" defer></script></body></html>'
    )


def make_server(frame: Path, masks: MaskFile, port: int = 0) -> ThreadingHTTPServer:
    """The editor on 127.0.0.1:``port`` (0: any free port); call serve_forever()."""
    image = frame.read_bytes()
    media = MEDIA.get(frame.suffix.lower(), "application/octet-stream")

    class Handler(BaseHTTPRequestHandler):
        def log_message(self, format: str, *args: Any) -> None:
            return

        def _send(self, status: int, body: bytes, ctype: str) -> None:
            self.send_response(status)
            self.send_header("Content-Type", ctype)
            self.send_header("Content-Length", str(len(body)))
            self.send_header("Content-Security-Policy", _CSP)
            self.send_header("X-Content-Type-Options", "nosniff")
            self.send_header("Cache-Control", "no-store")
            self.end_headers()
            self.wfile.write(body)

        def do_GET(self) -> None:
            files = {
                "/masks.js": (privacy.STATIC / "masks.js", "text/javascript"),
                "/masks.css": (privacy.STATIC / "masks.css", "text/css"),
            }
            if self.path == "/":
                self._send(200, page(masks.masks()).encode(), "text/html; charset=utf-8")
            elif self.path == "/frame":
                self._send(200, image, media)
            elif self.path in files:
                path, ctype = files[self.path]
                self._send(200, path.read_bytes(), ctype)
            else:
                self._send(404, b"{}", "application/json")

        def do_PUT(self) -> None:
            parts = self.path.split("/")
            if len(parts) != 5 or parts[:3] != ["", "api", "devices"] or parts[4] != "masks":
                self._send(404, b"{}", "application/json")
                return
            if self.headers.get("Content-Type", "").split(";")[0] != "application/json":
                self._send(415, b'{"detail": "JSON only"}', "application/json")
                return
            n = int(self.headers.get("Content-Length") or 0)
            if not 0 < n <= _MAX_BODY:
                self._send(413, b'{"detail": "body too large"}', "application/json")
                return
            try:
                body = json.loads(self.rfile.read(n))
                version = masks.save(body.get("masks") if isinstance(body, dict) else None)
            except (ValueError, privacy.MaskError) as exc:
                out = json.dumps({"detail": str(exc)}).encode()
                self._send(HTTPStatus.BAD_REQUEST, out, "application/json")
                return
            self._send(200, json.dumps({"version": version}).encode(), "application/json")

    return ThreadingHTTPServer(("127.0.0.1", port), Handler)
