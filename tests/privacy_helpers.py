"""Helpers of the privacy tests (issue 20): a device enrolled through the real EST listener,
commissioned at a site with a signed record, that speaks MQTT as the contract says."""

from __future__ import annotations

import base64
import time
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from agent.identity import est_client
from firmware import contract
from fleet_server.identity.ca import DeviceCredentials
from hil_tests.identity import IdentityServer
from hil_tests.procs import wait_for
from provisioning import record
from tests.mqtt_helpers import Client

SITE = {"name": "Test site", "lat": 21.0, "lon": 105.8, "mounting_height_m": 6.0,
        "azimuth_deg": 90.0}  # fmt: skip


def jpeg(rgb: np.ndarray[Any, np.dtype[np.uint8]], quality: int = 80) -> bytes:
    ok, buf = cv2.imencode(".jpg", cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR),
                           [cv2.IMWRITE_JPEG_QUALITY, quality])  # fmt: skip
    assert ok
    return bytes(buf)


def commissioned(
    server: IdentityServer, device_id: str, site_id: str, tmp: Path,
    masks: dict[str, Any] | None = None,
) -> tuple[DeviceCredentials, tuple[int, Any]]:  # fmt: skip
    """Enrolled through EST (key and certificate in ``tmp``), its signed record sent: the
    credentials and the server's answer to the record."""
    key = est_client.new_key()
    cert = est_client.EstClient(server.est_url, server.ca.root_cert_path).simpleenroll(
        est_client.make_csr(key, device_id), server.token(device_id), device_id
    )
    creds = DeviceCredentials(device_id, tmp, tmp / f"{device_id}.key", tmp / f"{device_id}.pem",
                              server.ca.root_cert_path)  # fmt: skip
    creds.key_pem.write_bytes(est_client.key_pem(key))
    creds.cert_pem.write_bytes(est_client.pem(cert))
    body = record.build(device_id, "agent", {"site_id": site_id, **SITE},
                        {"zones": [], "lines": []}, "tech-1")  # fmt: skip
    if masks is not None:
        body["masks"] = masks
    sub = record.submission(body, key, est_client.pem(cert).decode(), None)
    return creds, server.call("POST", "/api/commissioning", sub)


class SiteDevice:
    """Enrolled, commissioned at ``site_id`` (with ``masks`` in its signed record), online."""

    def __init__(self, server: IdentityServer, broker_port: int, device_id: str, site_id: str,
                 tmp: Path, masks: dict[str, Any] | None = None) -> None:  # fmt: skip
        self.id = device_id
        self.server = server
        _creds, self.commissioning = commissioned(server, device_id, site_id, tmp, masks)
        self.mqtt = Client(broker_port, server.ca.root_cert_path, tmp / f"{device_id}.pem",
                           tmp / f"{device_id}.key", client_id=device_id)  # fmt: skip
        self.seq = 0
        self.send("heartbeat", {"seq": 0, "kind": "agent", "interval_s": 30, "uptime_s": 1.0})

    def send(self, kind: str, body: dict[str, Any], ts: float | None = None) -> None:
        when = time.time() if ts is None else ts
        topic, payload, qos, retain = contract.encode(kind, self.id, body, when)
        self.mqtt.client.publish(topic, payload, qos=qos, retain=retain).wait_for_publish(5)

    def event(self, type_: str, data: dict[str, Any], ts: float | None = None) -> str:
        self.seq += 1
        event_id = f"{self.id}-{self.seq}-{time.monotonic_ns()}"
        body = {"seq": self.seq, "event_id": event_id, "type": type_, "data": data}
        self.send("event", body, ts)
        return event_id

    def snapshot(
        self, image: bytes, marking: dict[str, Any] | None, ts: float | None = None
    ) -> dict[str, Any]:
        """Send a snapshot event; the event as the server stored it."""
        data: dict[str, Any] = {"track": self.seq, "label": "Person", "score": 0.9,
                                "box": [0.1, 0.1, 0.5, 0.9], "of": "",
                                "jpeg": base64.b64encode(image).decode()}  # fmt: skip
        if marking is not None:
            data["privacy"] = marking
        event_id = self.event("snapshot", data, ts)
        return self.stored(event_id)

    def stored(self, event_id: str, timeout: float = 10.0) -> dict[str, Any]:
        found: dict[str, Any] = {}

        def seen() -> bool:
            _s, page = self.server.call("GET", f"/api/events?device_id={self.id}&limit=1000")
            for item in page["items"]:
                if item["event_id"] == event_id:
                    found.update(item)
                    return True
            return False

        wait_for(seen, timeout, interval=0.1, what=f"event {event_id} stored")
        return found

    def close(self) -> None:
        self.mqtt.client.loop_stop()
        self.mqtt.client.disconnect()
