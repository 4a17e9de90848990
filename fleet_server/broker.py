"""Render Mosquitto's config and ACL from the fleet server's state.

Nobody hand-edits the broker: ``camfleet-server broker-config`` writes ``mosquitto.conf`` and
``acl`` next to the CA files, from the contract's topic table. TLS only, a client
certificate required, the certificate CN is the MQTT user name, and the ACL uses ``%u``
(never ``%c``) so that a device reaches only its own subtree.
"""

from __future__ import annotations

import getpass
from dataclasses import dataclass
from pathlib import Path

from firmware import contract
from firmware.fsutil import atomic_write
from fleet_server.ca import CertificateAuthority


@dataclass(frozen=True)
class BrokerLayout:
    conf: Path
    acl: Path
    persistence_dir: Path
    log_file: Path


def render_acl() -> str:
    lines = [
        "# Written by camfleet-server broker-config from the protocol contract. Do not edit.",
        "# The fleet server identity reads and writes every device's subtree.",
        f"user {contract.SERVER_IDENTITY}",
        f"topic readwrite {contract.TOPIC_ROOT}/#",
        "",
        "# Every device (user = certificate CN): its own subtree only.",
    ]
    for access, pattern in contract.device_acl_patterns():
        lines.append(f"pattern {access} {pattern}")
    return "\n".join(lines) + "\n"


def render_conf(
    ca: CertificateAuthority,
    layout: BrokerLayout,
    port: int,
    bind: str = "127.0.0.1",
    persistence: bool = True,
    log_to_stderr: bool = False,
    run_as: str | None = None,
) -> str:
    # mosquitto started as root drops to this user; it must be able to read broker.key
    run_as = run_as or getpass.getuser()
    log_dest = "stderr" if log_to_stderr else f"file {layout.log_file}"
    return "\n".join(
        [
            "# Written by camfleet-server broker-config. Do not edit.",
            "per_listener_settings false",
            f"user {run_as}",
            "allow_anonymous false",
            f"persistence {'true' if persistence else 'false'}",
            f"persistence_location {layout.persistence_dir}/",
            f"log_dest {log_dest}",
            "log_type error",
            "log_type warning",
            "log_type notice",
            "log_type information",
            "connection_messages true",
            # whole packet: payload plus topic and headers
            f"max_packet_size {contract.MAX_MESSAGE + 1024}",
            # the server's own session must not drop under load (default 1000, silent drops)
            "max_queued_messages 100000",
            f"acl_file {layout.acl}",
            "",
            f"listener {port} {bind}",
            "protocol mqtt",
            f"cafile {ca.bundle_path}",
            f"certfile {ca.broker_cert_path}",
            f"keyfile {ca.broker_key_path}",
            "tls_version tlsv1.2",
            "require_certificate true",
            "use_identity_as_username true",
            "",
        ]
    )


def write_broker_config(
    ca: CertificateAuthority,
    broker_dir: Path,
    port: int,
    bind: str = "127.0.0.1",
    persistence: bool = True,
    log_to_stderr: bool = False,
) -> BrokerLayout:
    broker_dir = Path(broker_dir)
    layout = BrokerLayout(
        conf=broker_dir / "mosquitto.conf",
        acl=broker_dir / "acl",
        persistence_dir=broker_dir / "data",
        log_file=broker_dir / "mosquitto.log",
    )
    layout.persistence_dir.mkdir(parents=True, exist_ok=True)
    atomic_write(str(layout.acl), render_acl().encode(), 0o644)
    conf = render_conf(ca, layout, port, bind, persistence, log_to_stderr)
    atomic_write(str(layout.conf), conf.encode(), 0o644)
    return layout
