"""Render Mosquitto's config and access rules from the fleet server's state.

Nobody hand-edits the broker: ``camfleet-server broker-config`` writes ``mosquitto.conf``,
``acl`` and ``pairs`` next to the CA files, from the contract's topic table. TLS only, a
client certificate required, the certificate CN is the MQTT user name.

The rules are enforced by the ``camfleet_acl`` plugin (``camfleet_acl.c``, built by
``make setup`` into ``build/broker/``), loaded first and given the contract's topic table as
options: a device's client id must be its CN, it publishes and receives only its own topics,
and a SUBSCRIBE outside its own subtree is refused with a SUBACK failure code. Without the
plugin (not built) the ``%u`` ACL file is used instead, which Mosquitto 2.0 consults before
any plugin and which grants every SUBSCRIBE and any client id: ``render_conf`` logs that.
"""

from __future__ import annotations

import getpass
import glob
import json
import logging
import os
import shutil
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from common.files import atomic_write
from firmware import contract
from fleet_server.config import ServerSettings
from fleet_server.identity.ca import CertificateAuthority


@dataclass(frozen=True)
class BrokerLayout:
    conf: Path
    acl: Path
    persistence_dir: Path
    log_file: Path
    # who runs the broker writes its pid here; the server SIGHUPs it after a CRL change
    pid_file: Path | None = None
    # Mosquitto's dynamic-security plugin state (revocation kicks); None = plugin not used
    dynsec_file: Path | None = None


# Where Debian, Raspberry Pi OS and source builds put the dynamic-security plugin.
DYNSEC_PLUGIN_GLOBS = (
    "/usr/lib/*/mosquitto_dynamic_security.so",
    "/usr/lib/mosquitto_dynamic_security.so",
    "/usr/local/lib/mosquitto_dynamic_security.so",
)
# Role given to a revoked device: denies everything, and giving it kicks the client.
DENY_ROLE = "camfleet-revoked"
# The fleet's own ACL plugin: the repository's build, or where the server package puts it.
ACL_PLUGIN_NAME = "camfleet_acl.so"
ACL_PLUGIN_PLACES = (
    Path(__file__).resolve().parents[2] / "build" / "broker" / ACL_PLUGIN_NAME,
    Path("/usr/lib/camfleet") / ACL_PLUGIN_NAME,
)

log = logging.getLogger(__name__)


def acl_plugin() -> Path | None:
    """The camfleet_acl plugin to load (``CAMFLEET_ACL_PLUGIN`` overrides; empty = none)."""
    env = os.environ.get("CAMFLEET_ACL_PLUGIN")
    if env is not None:
        return Path(env) if env and Path(env).exists() else None
    return next((p for p in ACL_PLUGIN_PLACES if p.exists()), None)


def acl_plugin_lines(plugin: Path, pairs_file: Path, then_dynsec: bool) -> list[str]:
    """The plugin's config lines: its options are the contract's topic table."""
    up = [spec[0] for spec in contract.KINDS.values() if spec[1] == contract.UP]
    down = [spec[0] for spec in contract.KINDS.values() if spec[1] == contract.DOWN]
    return [
        f"plugin {plugin}",
        f"plugin_opt_root {contract.TOPIC_ROOT}",
        f"plugin_opt_server_identity {contract.SERVER_IDENTITY}",
        # every server worker's own identity starts with "_" (server_identity.py)
        "plugin_opt_server_prefix _",
        f"plugin_opt_up_kinds {','.join(up)}",
        f"plugin_opt_down_kinds {','.join(down)}",
        f"plugin_opt_pairs_file {pairs_file}",
        f"plugin_opt_then_dynsec {'true' if then_dynsec else 'false'}",
    ]


def render_pairs(pairs: Mapping[str, str] | None = None) -> str:
    """The plugin's pairs file: ``<node> <box>`` per line (``paired_box_acl`` checks)."""
    paired_box_acl(pairs or {})  # the same checks as the ACL file's lines
    lines = ["# node box: the node may read the box's heartbeats. Written by broker-config."]
    lines += [f"{node} {box}" for node, box in sorted((pairs or {}).items())]
    return "\n".join(lines) + "\n"


def dynsec_plugin() -> Path | None:
    for pattern in DYNSEC_PLUGIN_GLOBS:
        found = sorted(glob.glob(pattern))
        if found:
            return Path(found[0])
    return None


def initial_dynsec() -> dict[str, object]:
    """Starting state of the plugin: it allows what the %u ACL file allows (dynsec ACLs do
    not expand %u in 2.0.11) and holds one role, the deny-all one for revoked devices."""
    deny = [
        {"acltype": t, "topic": "#", "allow": False, "priority": 0}
        for t in ("publishClientSend", "publishClientReceive", "subscribePattern")
    ]
    return {
        "defaultACLAccess": {
            "publishClientSend": True,
            "publishClientReceive": True,
            "subscribe": True,
            "unsubscribe": True,
        },
        "clients": [],
        "groups": [],
        "roles": [{"rolename": DENY_ROLE, "acls": deny}],
    }


# Without the plugin the ACL file names each server identity (it has no prefix match): the
# workers ``server_client_ids`` derives from ``[mqtt] client_id`` (fleet_server/roles.py).
MAX_INGEST_WORKERS = 16


def server_client_ids(client_id: str) -> list[str]:
    """Every broker identity a server with this ``[mqtt] client_id`` uses: the process,
    the API and ingest worker processes, and each one's dynamic-security administration."""
    base = [client_id, f"{client_id}-api"]
    base += [f"{client_id}-ingest-{n}" for n in range(1, MAX_INGEST_WORKERS + 1)]
    cns = [contract.SERVER_IDENTITY]
    for cid in base:
        cns += [_server_cn(cid), _server_cn(f"{cid}-admin")]
    return cns


def _server_cn(client_id: str) -> str:
    return client_id if client_id.startswith("_") else "_" + client_id


def render_acl(
    pairs: Mapping[str, str] | None = None, server_client_id: str = "fleet-server-1"
) -> str:
    lines = [
        "# Written by camfleet-server broker-config from the protocol contract. Do not edit.",
        "# Used only when the camfleet_acl plugin is not built (see docs/protocol.md).",
    ]
    lines.append("# Each fleet server identity: every device's subtree, and revocation.")
    for cn in server_client_ids(server_client_id):
        lines += [f"user {cn}", f"topic readwrite {contract.TOPIC_ROOT}/#",
                  "topic readwrite $CONTROL/dynamic-security/#"]  # fmt: skip
    lines += ["", "# Every device (user = certificate CN): its own subtree only."]
    for access, pattern in contract.device_acl_patterns():
        lines.append(f"pattern {access} {pattern}")
    lines.extend(paired_box_acl(pairs or {}))
    return "\n".join(lines) + "\n"


def paired_box_acl(pairs: Mapping[str, str]) -> list[str]:
    """ACL lines that let each cabinet node read its paired edge box's heartbeats.

    ``pairs`` maps node id -> box id, from the fleet's own records (never from what a node
    claims). A node gets read access to one more topic, ``camfleet/v1/<box>/heartbeat``:
    whether its box is alive, nothing of any other device, no new write. Both ids must be
    device ids (so no pair can widen a filter or name the server); see docs/firmware.md.
    """
    lines: list[str] = []
    for node_id, box_id in sorted(pairs.items()):
        if node_id == box_id:
            raise contract.ProtocolError(contract.R_IDENTITY, f"{node_id} paired with itself")
        heartbeat = contract.topic(contract.check_device_id(box_id), "heartbeat")
        lines += ["", f"user {contract.check_device_id(node_id)}", f"topic read {heartbeat}"]
    if lines:
        lines[0] = "# Cabinet nodes: each may also read its paired edge box's heartbeats."
    return lines


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
    plugin: list[str] = []
    plugin_path = dynsec_plugin()
    dynsec = layout.dynsec_file is not None and plugin_path is not None
    guard = acl_plugin()
    if dynsec:  # first: it decides for the clients it knows (the deny role), defers the rest
        plugin += [f"plugin {plugin_path}", f"plugin_opt_config_file {layout.dynsec_file}"]
    if guard is not None:
        plugin += acl_plugin_lines(guard, layout.acl.with_name("pairs"), False)
    else:
        log.warning(
            "camfleet_acl plugin not built (make setup): the ACL file does not refuse "
            "foreign subscriptions or tie client ids to certificates"
        )
    acl = [] if guard is not None else [f"acl_file {layout.acl}"]
    crl = [f"crlfile {ca.dir / 'crl.pem'}"] if (ca.dir / "crl.pem").exists() else []
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
            # QoS 1 messages sent and not yet acknowledged, per client (default 20): the
            # server acknowledges a batch only after its commit, so this bounds its batches
            "max_inflight_messages 2000",
            *acl,
            *plugin,
            "",
            f"listener {port} {bind}",
            "protocol mqtt",
            f"cafile {ca.bundle_path}",
            f"certfile {ca.broker_cert_path}",
            f"keyfile {ca.broker_key_path}",
            "tls_version tlsv1.2",
            "require_certificate true",
            "use_identity_as_username true",
            # the client id is the certificate's CN, whatever the client asked for: no
            # connection can take another's id (and its session) or kick it off
            "use_username_as_clientid true",
            *crl,
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
    pairs: Mapping[str, str] | None = None,
    server_client_id: str = "fleet-server-1",
) -> BrokerLayout:
    broker_dir = Path(broker_dir)
    layout = BrokerLayout(
        conf=broker_dir / "mosquitto.conf",
        acl=broker_dir / "acl",
        persistence_dir=broker_dir / "data",
        log_file=broker_dir / "mosquitto.log",
        pid_file=broker_dir / "mosquitto.pid",
        dynsec_file=broker_dir / "dynamic-security.json",
    )
    layout.persistence_dir.mkdir(parents=True, exist_ok=True)
    if ca.exists() and not (ca.dir / "crl.pem").exists():
        from fleet_server.identity.ca_ops import write_crl

        write_crl(ca, [], days=7)  # the server keeps it fresh from then on
    atomic_write(str(layout.acl), render_acl(pairs, server_client_id).encode(), 0o644)
    atomic_write(str(layout.acl.with_name("pairs")), render_pairs(pairs).encode(), 0o644)
    if layout.dynsec_file is not None and not layout.dynsec_file.exists():
        # the plugin owns this file afterwards; the server re-applies revocations at start
        atomic_write(str(layout.dynsec_file), json.dumps(initial_dynsec()).encode(), 0o600)
    conf = render_conf(ca, layout, port, bind, persistence, log_to_stderr)
    atomic_write(str(layout.conf), conf.encode(), 0o644)
    return layout


def write_from_settings(ca: CertificateAuthority, settings: ServerSettings) -> BrokerLayout:
    """The broker's config and ACL as the server's settings say (``init``, ``broker``,
    ``broker-config`` and a restore all write them this way)."""
    b = settings.broker
    return write_broker_config(
        ca, settings.broker_dir, b.listen_port, b.bind, log_to_stderr=b.log_stderr, pairs=b.pairs,
        server_client_id=settings.mqtt.client_id,
    )  # fmt: skip


def broker_binary() -> str:
    """The mosquitto executable (Debian's package puts it in /usr/sbin)."""
    for cand in (shutil.which("mosquitto"), "/usr/sbin/mosquitto"):
        if cand and Path(cand).exists():
            return cand
    raise FileNotFoundError("mosquitto not found: apt-get install mosquitto (make setup does)")
