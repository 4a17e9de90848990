"""camfleet-provision: the field technician's tool.

- `camfleet-provision labels sites.csv --out labels/`: tokens and a QR sheet (PNG, PDF)
- `camfleet-provision box --transport ssh:pi@10.0.0.5 --qr-text ... --site-id ...`: a box
- `camfleet-provision node --transport mpremote:/dev/ttyACM0 --qr-text ...`: a node
- `camfleet-provision queue-send`: send the records queued offline
- `camfleet-provision check DEVICE_ID --api URL`: is it reporting?

The API token of the technician comes from `--api-token` or `CAMFLEET_API_TOKEN`.
Exit codes (common.cli, as for camfleet-server and camfleet-agent): 0 PASS, 1 FAIL (with what
to check), 2 wrong command line.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console

from common.cli import EXIT_USAGE, err, fail, make_app, run_app
from firmware import contract
from provisioning import flows, labels, onbox
from provisioning.api import ApiClient
from provisioning.check import CheckError, wait_online
from provisioning.errors import ProvisionError
from provisioning.queue import OfflineQueue, default_home
from provisioning.record import load_layout
from provisioning.transport import (
    LocalDirTransport,
    MpremoteTransport,
    SshTransport,
    Transport,
)

PROG = "camfleet-provision"
app = make_app(__doc__)
out = Console()

ApiOpt = Annotated[str, typer.Option("--api", help="fleet server API, http(s)://host:port")]
TokenOpt = Annotated[
    str, typer.Option("--api-token", envvar="CAMFLEET_API_TOKEN", help="your API token")
]


def _fail(exc: ProvisionError) -> None:
    err.print(f"[bold red]FAIL[/]: {exc}")
    if exc.hint:
        err.print(f"  next: {exc.hint}")
    raise typer.Exit(1)


def _transport(spec: str) -> Transport:
    kind, _, where = spec.partition(":")
    if kind == "local" and where:
        return LocalDirTransport(Path(where))
    if kind == "ssh" and where:
        return SshTransport(where)
    if kind == "mpremote" and where:
        return MpremoteTransport(where)
    raise typer.BadParameter(
        "use local:DIR, ssh:[user@]host or mpremote:PORT", param_hint="--transport"
    )


@app.command()
def check(
    device_id: str,
    api: ApiOpt,
    api_token: TokenOpt,
    timeout: Annotated[float, typer.Option(help="seconds to wait")] = 120.0,
) -> None:
    """Wait until the device is online in the fleet server."""
    if not contract.valid_device_id(device_id):
        fail(PROG, f"{device_id!r} is not a valid device id", EXIT_USAGE)
    try:
        result = wait_online(api, device_id, api_token, timeout)
    except CheckError as exc:
        fail(PROG, f"cannot reach the fleet server: {exc}")
    if result.online and result.device is not None:
        hb = result.device.get("last_heartbeat") or {}
        out.print(
            f"{device_id} is online (after {result.waited_s:.1f}s); "
            f"last heartbeat seq {hb.get('seq')}, versions {result.device.get('versions')}"
        )
        return
    seen = "never seen" if result.device is None else f"state {result.device.get('state')}"
    err.print(f"{device_id} is NOT online after {timeout:.0f}s ({seen})")
    raise typer.Exit(1)


@app.command()
def token(
    device_id: str,
    api: ApiOpt,
    api_token: TokenOpt,
    kind: Annotated[str, typer.Option(help="agent or node")] = "agent",
    site: Annotated[str | None, typer.Option(help="site id")] = None,
) -> None:
    """Get a one-time enrollment token for a device (printed once)."""
    try:
        answer = ApiClient(api, api_token).enrollment_token(device_id, kind, site)
    except ProvisionError as exc:
        _fail(exc)
    out.print(answer["token"], soft_wrap=True)


@app.command("labels")
def labels_cmd(
    csv_file: Path,
    api: ApiOpt,
    api_token: TokenOpt,
    out_dir: Annotated[Path, typer.Option("--out", help="where the sheets go")] = Path("labels"),
    ttl: Annotated[int | None, typer.Option(help="token lifetime, seconds")] = None,
) -> None:
    """Tokens for every site of a CSV, a tokens file for offline work, QR sheets."""
    try:
        rows = labels.read_sites(csv_file)
        with out.status(f"getting {len(rows)} enrollment tokens"):
            got = labels.fetch_tokens(ApiClient(api, api_token), rows, ttl)
        labels.save_tokens(got, out_dir / "tokens.json")
        pngs, pdf = labels.write_sheets(got, out_dir)
    except ProvisionError as exc:
        _fail(exc)
    out.print(f"[green]{len(got)} labels[/]: {', '.join(str(p) for p in pngs)} and {pdf}")
    out.print(f"tokens for offline work: {out_dir / 'tokens.json'} (keep it private)")


def _job(
    device_id: str | None, token_text: str | None, qr_text: str | None, site: dict[str, Any],
    layout: Path | None, technician: str, est: str, ca: Path, mqtt_host: str, mqtt_port: int,
    heartbeat_s: float, timeout: float,
) -> flows.Job:  # fmt: skip
    if qr_text:
        device_id, token_text, site_from_label, _kind = labels.parse_qr_text(qr_text)
        site.setdefault("site_id", site_from_label)
        if not site.get("site_id"):
            site["site_id"] = site_from_label
    if not device_id or not token_text:
        raise ProvisionError("a device id and token are needed", "use --qr-text or both options")
    return flows.Job(
        device_id, token_text, site, load_layout(layout), technician, est, ca, mqtt_host,
        mqtt_port, heartbeat_s, timeout,
    )  # fmt: skip


def _site(
    site_id: str | None, name: str, lat: float, lon: float, height: float, azimuth: float,
    notes: str,
) -> dict[str, Any]:  # fmt: skip
    site: dict[str, Any] = {
        "name": name, "lat": lat, "lon": lon, "mounting_height_m": height,
        "azimuth_deg": azimuth, "notes": notes,
    }  # fmt: skip
    if site_id:
        site["site_id"] = site_id
    return site


def _report(outcome: flows.Outcome, what: str) -> None:
    if outcome.passed and outcome.heartbeat is not None:
        hb = outcome.heartbeat.get("last_heartbeat") or {}
        out.print(
            f"[bold green]PASS[/]: {outcome.device_id} online, heartbeat seq {hb.get('seq')}; "
            f"record {outcome.record_id} {'stored' if outcome.record_sent else 'queued'}"
        )
        return
    err.print(f"[bold red]FAIL[/]: {outcome.device_id} sent no heartbeat")
    err.print(f"  next: check the {what}'s power and network, the broker address and port,")
    err.print("        and its log; then run 'camfleet-provision check' again")
    raise typer.Exit(1)


SiteId = Annotated[str | None, typer.Option("--site-id", help="site id (or from the label)")]
SiteName = Annotated[str, typer.Option("--site-name", help="site name")]
Lat = Annotated[float, typer.Option(help="latitude, degrees")]
Lon = Annotated[float, typer.Option(help="longitude, degrees")]
Height = Annotated[float, typer.Option("--height", help="mounting height, m")]
Azimuth = Annotated[float, typer.Option("--azimuth", help="camera aim, degrees from north")]
Notes = Annotated[str, typer.Option(help="notes")]
Layout = Annotated[
    Path | None, typer.Option("--zones", help="JSON file with zones, lines and masks")
]
Est = Annotated[str, typer.Option("--est", help="EST server, https://host:port")]
Ca = Annotated[Path, typer.Option("--ca", help="fleet root CA (PEM)")]
Spec = Annotated[str, typer.Option("--transport", help="local:DIR | ssh:host | mpremote:PORT")]
Qr = Annotated[str | None, typer.Option("--qr-text", help="text of the scanned QR label")]
Dev = Annotated[str | None, typer.Option("--device-id", help="device id (or from the label)")]
Tok = Annotated[str | None, typer.Option("--token", help="enrollment token (or from label)")]
Tech = Annotated[str, typer.Option("--technician", help="your name, for the record")]
MqttHost = Annotated[str, typer.Option("--mqtt-host", help="broker host the device uses")]
MqttPort = Annotated[int, typer.Option("--mqtt-port", help="broker TLS port")]
Beat = Annotated[float, typer.Option("--heartbeat-s", help="device heartbeat period, s")]
Wait = Annotated[float, typer.Option("--timeout", help="seconds to wait for a heartbeat")]


@app.command()
def box(
    api: ApiOpt, api_token: TokenOpt, est: Est, ca: Ca, transport: Spec, site_name: SiteName,
    lat: Lat, lon: Lon, height: Height, azimuth: Azimuth, technician: Tech,
    qr_text: Qr = None, device_id: Dev = None, token_text: Tok = None, site_id: SiteId = None,
    notes: Notes = "", zones: Layout = None, mqtt_host: MqttHost = "localhost",
    mqtt_port: MqttPort = 8883, heartbeat_s: Beat = 30.0, timeout: Wait = 120.0,
    camera: Annotated[str | None, typer.Option(help="camera config as JSON")] = None,
) -> None:  # fmt: skip
    """Provision a Linux box: it makes its key, enrolls, records the site, reports."""
    try:
        site = _site(site_id, site_name, lat, lon, height, azimuth, notes)
        job = _job(
            device_id, token_text, qr_text, site, zones, technician, est, ca,
            mqtt_host, mqtt_port, heartbeat_s, timeout,
        )  # fmt: skip
        cam = json.loads(camera) if camera else {"type": "synthetic", "fps": 5.0}
        outcome = flows.provision_box(
            _transport(transport), ApiClient(api, api_token), OfflineQueue(default_home()), job,
            cam, lambda m: out.print(f"[cyan]…[/] {m}"),
        )  # fmt: skip
    except ProvisionError as exc:
        _fail(exc)
    except ValueError as exc:
        _fail(ProvisionError(f"--camera is not JSON: {exc}"))
    _report(outcome, "box")


@app.command("draw-masks")
def draw_masks(
    frame: Annotated[Path, typer.Option("--frame", help="the reference frame (PNG, JPEG)")],
    zones: Annotated[Path, typer.Option("--zones", help="zones file the masks are saved in")],
    port: Annotated[int, typer.Option("--port", help="local port (0: any)")] = 0,
) -> None:
    """Draw privacy and motion masks on the reference frame in a browser on this laptop;
    they are saved in the zones file, which `box --zones` then signs into the record."""
    from provisioning.draw import MaskFile, make_server

    try:
        server = make_server(frame, MaskFile(zones), port)
    except (OSError, ProvisionError) as exc:
        _fail(exc if isinstance(exc, ProvisionError) else ProvisionError(str(exc)))
    out.print(f"open http://127.0.0.1:{server.server_address[1]}/ ; Ctrl-C when done")
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()


@app.command()
def node(
    api: ApiOpt, api_token: TokenOpt, est: Est, ca: Ca, transport: Spec, site_name: SiteName,
    lat: Lat, lon: Lon, height: Height, azimuth: Azimuth, technician: Tech,
    qr_text: Qr = None, device_id: Dev = None, token_text: Tok = None, site_id: SiteId = None,
    notes: Notes = "", zones: Layout = None, mqtt_host: MqttHost = "localhost",
    mqtt_port: MqttPort = 8883, heartbeat_s: Beat = 60.0, timeout: Wait = 120.0,
    config: Annotated[str | None, typer.Option(help="extra node config keys, JSON")] = None,
    sim: Annotated[bool, typer.Option(help="simulated board (unix-port virtual node)")] = False,
) -> None:  # fmt: skip
    """Provision a MicroPython node over USB (mpremote): key made here, firmware copied."""
    try:
        site = _site(site_id, site_name, lat, lon, height, azimuth, notes)
        job = _job(
            device_id, token_text, qr_text, site, zones, technician, est, ca,
            mqtt_host, mqtt_port, heartbeat_s, timeout,
        )  # fmt: skip
        extra = json.loads(config) if config else None
        outcome = flows.provision_node(
            _transport(transport), ApiClient(api, api_token), OfflineQueue(default_home()), job,
            extra, lambda m: out.print(f"[cyan]…[/] {m}"), sim,
        )  # fmt: skip
    except ProvisionError as exc:
        _fail(exc)
    except ValueError as exc:
        _fail(ProvisionError(f"--config is not JSON: {exc}"))
    _report(outcome, "node")


@app.command("queue-send")
def queue_send(api: ApiOpt, api_token: TokenOpt) -> None:
    """Send the commissioning records queued while offline."""
    queue = OfflineQueue(default_home())
    report = queue.send_all(ApiClient(api, api_token))
    out.print(f"sent {len(report.sent)}, refused {len(report.rejected)}, waiting {report.left}")
    for rid, reason in report.rejected:
        err.print(f"[red]refused[/] {rid}: {reason}")
    if report.offline:
        err.print(f"[yellow]still offline[/]: {report.offline}")
        raise typer.Exit(1)


@app.command("on-box", hidden=True)
def on_box(
    root: Annotated[Path, typer.Option(help="the box's filesystem root")] = Path("/"),
) -> None:
    """Runs on the box: key, enrollment, agent config, signed record (stdin -> stdout)."""
    try:
        line = onbox.main(root, sys.stdin.read())
    except ProvisionError as exc:
        err.print(f"on-box: {exc}")
        raise typer.Exit(1) from exc
    except Exception as exc:  # the laptop side shows this line to the technician
        err.print(f"on-box: {type(exc).__name__}: {exc}")
        raise typer.Exit(1) from exc
    print(line)


def main(argv: list[str] | None = None) -> int:
    return run_app(app, argv, PROG)


if __name__ == "__main__":
    sys.exit(main())
