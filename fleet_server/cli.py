"""camfleet-server: set up the CA and broker, issue device certificates, run the server."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from common.logs import setup_logging
from common.settings import ConfigError, load_settings
from fleet_server.broker.conf import BrokerLayout, broker_binary, write_broker_config
from fleet_server.config import ServerSettings
from fleet_server.identity.ca import CAError, CertificateAuthority


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="camfleet-server", description=__doc__)
    p.add_argument("--config", type=Path, help="TOML settings file")
    sub = p.add_subparsers(dest="command", required=True)
    sub.add_parser("init", help="create the CA and the broker config (idempotent)")
    sub.add_parser("broker-config", help="rewrite mosquitto.conf and the ACL from state")
    sub.add_parser("broker", help="run Mosquitto with the generated config (foreground)")
    sub.add_parser("migrate", help="upgrade the database schema")
    sub.add_parser("run", help="run ingest, health monitor and the REST API")
    user = sub.add_parser("add-user", help="add a person with a role; prints their API token")
    user.add_argument("name")
    user.add_argument("--role", required=True, help="admin, operator or technician")
    issue = sub.add_parser("issue-device", help="issue a device key and certificate")
    issue.add_argument("device_id")
    issue.add_argument("--out", type=Path, required=True, help="directory for the files")
    issue.add_argument("--days", type=int, default=30, help="certificate lifetime, days")
    from fleet_server.ota.cli import add_release_parser

    add_release_parser(sub)  # issue 6: camfleet-server release ... (docs/ota.md)
    return p


def _write_broker(ca: CertificateAuthority, settings: ServerSettings) -> BrokerLayout:
    b = settings.broker
    return write_broker_config(ca, settings.broker_dir, b.listen_port, b.bind, pairs=b.pairs)


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        settings = load_settings(ServerSettings, args.config)
    except ConfigError as exc:
        print(f"camfleet-server: {exc}", file=sys.stderr)
        return 2
    setup_logging(settings.log_level)
    ca = CertificateAuthority(settings.pki_dir)
    try:
        if args.command == "init":
            ca.init(settings.broker.hosts)
            layout = _write_broker(ca, settings)
            print(f"CA in {settings.pki_dir}; broker config {layout.conf}")
        elif args.command == "broker-config":
            layout = _write_broker(ca, settings)
            print(f"wrote {layout.conf} and {layout.acl}")
        elif args.command == "broker":
            layout = _write_broker(ca, settings)
            if layout.pid_file is not None:  # exec keeps this pid: the server SIGHUPs it
                layout.pid_file.write_text(f"{os.getpid()}\n")
            mosquitto = broker_binary()
            os.execv(mosquitto, [mosquitto, "-c", str(layout.conf)])  # noqa: S606
        elif args.command == "migrate":
            from fleet_server.migrate import upgrade

            upgrade(settings.db_url())
        elif args.command == "run":
            from fleet_server.app import serve

            serve(settings)
        elif args.command == "add-user":
            from fleet_server.identity.cli import add_user

            return add_user(settings, args.name, args.role)
        elif args.command == "release":
            from fleet_server.ota.cli import run_release

            return run_release(args, settings)
        elif args.command == "issue-device":
            creds = ca.issue_device(args.device_id, args.out, args.days)
            print(f"issued {creds.device_id}: {creds.directory}")
    except (CAError, FileNotFoundError) as exc:
        print(f"camfleet-server: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
