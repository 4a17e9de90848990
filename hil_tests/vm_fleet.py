"""What a province's IT and a field crew do on booted camfleet VMs, as docs/deploy.md says,
step by step through the guest agent: install the packages from the media disk with no
network, bring the server up over HTTPS, provision a box against it, read the fleet's API.

Each step runs inside the guest with the guest's own tools (apt, systemctl, curl,
camfleet-server, camfleet-provision); the rig only carries the commands in and reads the
answers (``vm_qemu.Vm.must``).
"""

from __future__ import annotations

import json
import shlex
import time
from dataclasses import dataclass
from typing import Any

from hil_tests import vm_layout as lay
from hil_tests.vm_qemu import Vm, VmError

ROOT_PEM = "/var/lib/camfleet/pki/root.pem"
MEDIA = "/media/camfleet"


def mount_media(vm: Vm) -> list[str]:
    """The media disk mounted read-only; the .deb files on it."""
    vm.must(f"mkdir -p {MEDIA} && (mountpoint -q {MEDIA} || "
            f"mount -o ro LABEL={lay.MEDIA_LABEL} {MEDIA})")  # fmt: skip
    return vm.must(f"ls {MEDIA}").split()


def no_network(vm: Vm) -> str:
    """The guest's routes (none but loopback when the rig gave it no network card)."""
    return vm.must("ip -o route show; ip -o -6 route show | grep -v '^fe80\\|^::1' || true")


def install(vm: Vm, debs: list[str], timeout: float = 7200.0) -> float:
    """``apt-get install ./<deb>...`` from the media, no Recommends (nothing to get them from:
    the VM has no Debian mirror, a city box would have one); seconds it took."""
    paths = " ".join(shlex.quote(f"{MEDIA}/{d}") for d in debs)
    t0 = time.monotonic()
    vm.must(f"DEBIAN_FRONTEND=noninteractive apt-get install -y "
            f"--no-install-recommends {paths} >/var/log/camfleet-install.log 2>&1 || "
            f"(tail -50 /var/log/camfleet-install.log; exit 1)", timeout)  # fmt: skip
    return time.monotonic() - t0


@dataclass
class Server:
    vm: Vm
    name: str  # the server's DNS name, in its certificates
    admin_token: str = ""

    def api(self, method: str, path: str, body: object = None) -> tuple[int, Any]:
        """The REST API over HTTPS, from inside the server VM (curl, the fleet root)."""
        data = f"-H 'Content-Type: application/json' --data {shlex.quote(json.dumps(body))}" if (
            body is not None) else ""  # fmt: skip
        out = self.vm.must(
            f"curl -sS --cacert {ROOT_PEM} -X {method} -H 'Authorization: Bearer "
            f"{self.admin_token}' {data} -w '\\n%{{http_code}}' https://{self.name}{path}"
        )
        text, _, code = out.rstrip("\n").rpartition("\n")
        try:
            return int(code), json.loads(text) if text else None
        except ValueError:
            return int(code), text


def server_setup(vm: Vm, name: str = "camfleet-vm", timeout: float = 900.0) -> Server:
    """docs/deploy.md section 1 on the booted VM: name, init, release init, start, admin."""
    conf = "/etc/camfleet/server.toml"
    vm.must(f"sed -i 's/fleet.example.org/{name}/' {conf}")
    vm.must("systemctl disable --now mosquitto >/dev/null 2>&1 || true")
    vm.must("camfleet-server init", timeout)
    vm.must("camfleet-server release init", timeout)
    vm.must("systemctl start camfleet.target", timeout)
    server = Server(vm, name)
    wait_https(vm, f"https://{name}/healthz", timeout)
    out = vm.must("camfleet-server add-user rig-admin --role admin", timeout)
    server.admin_token = _token(out)
    return server


def _token(text: str) -> str:
    """``add-user`` prints the token alone on its last line of stdout."""
    lines = text.strip().splitlines()
    if not lines or " " in lines[-1] or len(lines[-1]) < 20:
        raise VmError("add-user printed no token")
    return lines[-1]


def wait_https(vm: Vm, url: str, timeout: float) -> float:
    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout:
        if vm.sh(f"curl -sf --max-time 5 --cacert {ROOT_PEM} {url} >/dev/null").exitcode == 0:
            return time.monotonic() - t0
        time.sleep(2)
    logs = vm.sh("journalctl -u 'camfleet*' --no-pager -n 60").stdout
    raise VmError(f"{url} did not answer in {timeout:.0f}s:\n{logs}")


def provision_box(server: Server, box: Vm, device_id: str, frames_dir: str,
                  timeout: float = 900.0) -> float:  # fmt: skip
    """docs/deploy.md section 2: point the agent at the server, a one-time token, then
    camfleet-provision on the box (--transport local:/): PASS when its first heartbeat is
    stored. The seconds it took."""
    code, tok = server.api("POST", "/api/enrollment-tokens",
                           {"device_id": device_id, "kind": "agent"})  # fmt: skip
    if code != 201:
        raise VmError(f"enrollment token: {code} {tok}")
    root = server.vm.must(f"cat {ROOT_PEM}")
    box.write("/root/root.pem", root.encode())
    box.must(f"sed -i 's/fleet.example.org/{server.name}/g' /etc/camfleet-agent/agent.toml")
    cam = json.dumps({"type": "files", "path": frames_dir, "fps": 2})
    t0 = time.monotonic()
    box.must(
        f"cd /root && SSL_CERT_FILE=/root/root.pem CAMFLEET_API_TOKEN={server.admin_token} "
        f"camfleet-provision box --transport local:/ --device-id {device_id} "
        f"--token {tok['token']} --api https://{server.name} --est https://{server.name}:8443 "
        f"--ca /root/root.pem --mqtt-host {server.name} --mqtt-port 8883 --heartbeat-s 5 "
        f"--site-name 'VM rig' --lat 10.8 --lon 106.7 --height 6 --azimuth 90 "
        f"--technician rig --camera {shlex.quote(cam)} --timeout {timeout:.0f}",
        timeout + 60,
    )
    return time.monotonic() - t0


def device(server: Server, device_id: str) -> dict[str, Any]:
    code, body = server.api("GET", f"/api/devices/{device_id}")
    if code != 200 or not isinstance(body, dict):
        raise VmError(f"/api/devices/{device_id}: {code} {body}")
    return body


def unit_state(vm: Vm, unit: str) -> dict[str, str]:
    out = vm.must(f"systemctl show {unit} -p ActiveState -p SubState -p MainPID -p NRestarts "
                  f"-p Result -p WatchdogUSec")  # fmt: skip
    return dict(line.split("=", 1) for line in out.splitlines() if "=" in line)
