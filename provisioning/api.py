"""The fleet server's REST API as the technician's tool uses it (API token of a person)."""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from typing import Any

from provisioning.errors import ApiError, Unreachable


class ApiClient:
    def __init__(self, base_url: str, token: str, timeout: float = 15.0) -> None:
        if not base_url.startswith(("http://", "https://")):
            raise ApiError(f"API address must be http(s)://, not {base_url!r}", 0)
        self.base = base_url.rstrip("/")
        self.token = token
        self.timeout = timeout

    def call(self, method: str, path: str, body: object = None) -> Any:
        data = None if body is None else json.dumps(body).encode()
        req = urllib.request.Request(self.base + path, data=data, method=method)  # noqa: S310
        req.add_header("Authorization", f"Bearer {self.token}")
        if data is not None:
            req.add_header("Content-Type", "application/json")
        try:
            with urllib.request.urlopen(req, timeout=self.timeout) as resp:  # noqa: S310
                raw = resp.read()
        except urllib.error.HTTPError as err:
            detail = err.read().decode(errors="replace")[:400]
            hint = {
                401: "check your API token (camfleet-server add-user gives one)",
                403: "your role may not do this; ask an operator",
            }.get(err.code, "")
            raise ApiError(f"{method} {path}: HTTP {err.code}: {detail}", err.code, hint) from err
        except (urllib.error.URLError, OSError) as err:
            raise Unreachable(
                f"fleet server {self.base} not reachable: {err}",
                "check the network; records are kept in the offline queue",
            ) from err
        try:
            return json.loads(raw or b"null")
        except ValueError as err:
            raise ApiError(f"{method} {path}: answer is not JSON", 0) from err

    def enrollment_token(
        self, device_id: str, kind: str, site_id: str | None = None, ttl_s: int | None = None
    ) -> dict[str, Any]:
        body: dict[str, object] = {"device_id": device_id, "kind": kind}
        if site_id:
            body["site_id"] = site_id
        if ttl_s:
            body["ttl_s"] = ttl_s
        result = self.call("POST", "/api/enrollment-tokens", body)
        if not isinstance(result, dict):
            raise ApiError("unexpected answer to a token request", 0)
        return result

    def submit_record(self, submission: dict[str, Any]) -> dict[str, Any]:
        result = self.call("POST", "/api/commissioning", submission)
        if not isinstance(result, dict):
            raise ApiError("unexpected answer to a record submission", 0)
        return result
