"""Alert changes out of the server: on MQTT and to a webhook, after the commit.

The webhook runs in its own thread behind a bounded queue, so a slow or dead receiver
never holds up ingest; each change is tried a few times with backoff, and every delivery,
failure and drop is counted.
"""

from __future__ import annotations

import json
import logging
import queue
import threading
import urllib.error
import urllib.request
from collections.abc import Callable, Sequence

from fleet_server.health.alerts import AlertChange
from fleet_server.health.settings import AlertSettings
from fleet_server.metrics import Metrics

log = logging.getLogger(__name__)

Publish = Callable[[bytes], None]


class Notifier:
    def __init__(self, settings: AlertSettings, metrics: Metrics) -> None:
        self.settings = settings
        self.metrics = metrics
        self.publish: Publish | None = None  # set by ingest once it has a broker link
        self._queue: queue.Queue[AlertChange] = queue.Queue(maxsize=settings.webhook_queue)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        if settings.webhook_url:
            self._thread = threading.Thread(target=self._webhook_loop, name="webhook", daemon=True)
            self._thread.start()

    def send(self, changes: Sequence[AlertChange]) -> None:
        for change in changes:
            self.metrics.alert_changes.labels(state=change.state).inc()
            log.info(
                "alert %s %s on %s: %s", change.alert_id, change.state, change.device_id,
                change.message,
            )  # fmt: skip
            payload = json.dumps(change.as_dict()).encode()
            if self.settings.publish_mqtt and self.publish is not None:
                self.publish(payload)
            if self._thread is not None:
                try:
                    self._queue.put_nowait(change)
                except queue.Full:
                    self.metrics.webhook.labels(result="dropped").inc()

    def close(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=self.settings.webhook_timeout_s + 1)

    def _webhook_loop(self) -> None:
        while not self._stop.is_set():
            try:
                change = self._queue.get(timeout=0.2)
            except queue.Empty:
                continue
            self.metrics.webhook.labels(result=self._deliver(change)).inc()

    def _deliver(self, change: AlertChange) -> str:
        url = self.settings.webhook_url or ""
        body = json.dumps(change.as_dict()).encode()
        delay = 0.5
        for attempt in range(1, self.settings.webhook_attempts + 1):
            req = urllib.request.Request(  # noqa: S310 - scheme checked by the settings model
                url, data=body, headers={"Content-Type": "application/json"}, method="POST"
            )
            try:
                with urllib.request.urlopen(req, timeout=self.settings.webhook_timeout_s):  # noqa: S310
                    return "delivered"
            except (urllib.error.URLError, OSError) as exc:
                log.warning("webhook attempt %d for alert %s failed: %s", attempt,
                            change.alert_id, exc)  # fmt: skip
                if self._stop.wait(delay):
                    break
                delay *= 2
        return "failed"
