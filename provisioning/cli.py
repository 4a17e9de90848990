"""camfleet-provision: the field technician's tool.

This first version proves a device reports before the technician leaves the pole:
``camfleet-provision check --api URL DEVICE_ID``. Enrollment, site records and labels
come with the certificates issue.
"""

from __future__ import annotations

import argparse
import sys

from firmware import contract
from provisioning.check import CheckError, wait_online


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="camfleet-provision", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    check = sub.add_parser("check", help="wait until the device is online in the fleet server")
    check.add_argument("device_id")
    check.add_argument("--api", required=True, help="fleet server address, http(s)://host:port")
    check.add_argument("--timeout", type=float, default=120.0, help="seconds to wait")
    args = parser.parse_args(argv)

    if not contract.valid_device_id(args.device_id):
        print(f"camfleet-provision: {args.device_id!r} is not a valid device id", file=sys.stderr)
        return 2
    try:
        result = wait_online(args.api, args.device_id, args.timeout)
    except CheckError as exc:
        print(f"camfleet-provision: cannot reach the fleet server: {exc}", file=sys.stderr)
        return 1
    if result.online and result.device is not None:
        hb = result.device.get("last_heartbeat") or {}
        print(
            f"{args.device_id} is online (after {result.waited_s:.1f}s); "
            f"last heartbeat seq {hb.get('seq')}, versions {result.device.get('versions')}"
        )
        return 0
    seen = "never seen" if result.device is None else f"state {result.device.get('state')}"
    print(f"{args.device_id} is NOT online after {args.timeout:.0f}s ({seen})", file=sys.stderr)
    return 1


if __name__ == "__main__":
    sys.exit(main())
