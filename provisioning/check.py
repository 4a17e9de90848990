"""Prove a device is reporting: ask the fleet server's API until it says online."""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any


class CheckError(Exception):
    """The fleet server could not be asked (unreachable, bad answer)."""


@dataclass(frozen=True)
class CheckResult:
    device_id: str
    online: bool
    waited_s: float
    device: dict[str, Any] | None


def fetch_device(
    api: str, device_id: str, token: str, timeout: float = 5.0
) -> dict[str, Any] | None:
    url = f"{api.rstrip('/')}/api/devices/{urllib.parse.quote(device_id)}"
    if not url.startswith(("http://", "https://")):
        raise CheckError(f"API address must be http:// or https://, not {api!r}")
    req = urllib.request.Request(url, headers={"Authorization": f"Bearer {token}"})  # noqa: S310
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:  # noqa: S310 - scheme checked
            data = json.loads(resp.read())
    except urllib.error.HTTPError as err:
        if err.code == 404:
            return None
        if err.code in (401, 403):
            raise CheckError(f"{url}: the API token was refused (HTTP {err.code})") from err
        raise CheckError(f"{url}: HTTP {err.code}") from err
    except (urllib.error.URLError, OSError, ValueError) as err:
        raise CheckError(f"{url}: {err}") from err
    if not isinstance(data, dict):
        raise CheckError(f"{url}: unexpected answer")
    return data


def wait_online(
    api: str,
    device_id: str,
    token: str,
    timeout_s: float,
    *,
    interval_s: float = 1.0,
    clock: Callable[[], float] = time.monotonic,
    sleep: Callable[[float], None] = time.sleep,
) -> CheckResult:
    start = clock()
    device: dict[str, Any] | None = None
    while True:
        try:
            device = fetch_device(api, device_id, token)
        except CheckError as exc:
            if clock() - start >= timeout_s or "token was refused" in str(exc):
                raise
            device = None
        if device is not None and device.get("state") == "online":
            return CheckResult(device_id, True, clock() - start, device)
        if clock() - start >= timeout_s:
            return CheckResult(device_id, False, clock() - start, device)
        sleep(interval_s)
