"""Security headers on every HTTP response of the API and the dashboard.

A pure ASGI wrapper put outside everything else (``fleet_server.api.create_app`` wraps the
whole middleware stack), so error pages, 404s, static files and the 500 page get them too:

- ``Content-Security-Policy``: only the dashboard's own scripts, styles, images and API
  calls (no inline script or style, nothing remote, no plugins, no ``<base>``), forms post
  only here, and ``frame-ancestors 'none'``: no other page may frame this one;
- ``X-Frame-Options: DENY`` for browsers that predate ``frame-ancestors``;
- ``X-Content-Type-Options: nosniff``: a response is what its Content-Type says (a snapshot
  is an image, never a page);
- ``Referrer-Policy: no-referrer``, ``Cross-Origin-Opener-Policy: same-origin``,
  ``Cross-Origin-Resource-Policy: same-origin`` (another site cannot embed a snapshot);
- ``Cache-Control: no-store`` on everything but the static assets (a page seen before
  sign-out is not shown again from the cache), unless the route set its own;
- ``Strict-Transport-Security`` when the request came over HTTPS.

``img_src`` adds image sources to the policy (a map's tile server, ``[api] csp_img_src``).
"""

from __future__ import annotations

from collections.abc import Sequence

from starlette.types import ASGIApp, Message, Receive, Scope, Send


def content_security_policy(img_src: Sequence[str] = ()) -> str:
    images = " ".join(["'self'", "data:", *img_src])
    return (
        "default-src 'none'; script-src 'self'; style-src 'self'; "
        f"img-src {images}; connect-src 'self'; font-src 'self'; form-action 'self'; "
        "base-uri 'none'; frame-ancestors 'none'"
    )


def security_headers(img_src: Sequence[str] = ()) -> list[tuple[bytes, bytes]]:
    return [
        (b"content-security-policy", content_security_policy(img_src).encode()),
        (b"x-frame-options", b"DENY"),
        (b"x-content-type-options", b"nosniff"),
        (b"referrer-policy", b"no-referrer"),
        (b"cross-origin-opener-policy", b"same-origin"),
        (b"cross-origin-resource-policy", b"same-origin"),
    ]


STATIC_PREFIX = "/ui/static/"
_OURS = {name for name, _value in security_headers()}


class SecurityHeaders:
    def __init__(self, app: ASGIApp, img_src: Sequence[str] = ()) -> None:
        self.app = app
        self.headers = security_headers(img_src)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        static = str(scope.get("path", "")).startswith(STATIC_PREFIX)
        https = scope.get("scheme") == "https"

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                old = [(k, v) for k, v in message.get("headers", []) if k.lower() not in _OURS]
                extra = list(self.headers)
                if not static and not any(k.lower() == b"cache-control" for k, _v in old):
                    extra.append((b"cache-control", b"no-store"))
                if https:
                    extra.append((b"strict-transport-security", b"max-age=31536000"))
                message = {**message, "headers": old + extra}
            await send(message)

        await self.app(scope, receive, send_with_headers)
