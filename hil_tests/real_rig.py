"""The real rig: a lab's Pis over SSH, cabinet boards over USB serial (mpremote), power
through a relay or a switchable PDU, described by a rig file (TOML, docs/hil.md; read and
checked by ``hil_tests.rig_file``).

Every action is a command line: ``ssh`` to a box (or to the relay's controller),
``mpremote`` for a board, an HTTP request for a PDU. The commands are built by pure
functions (tested here against a fake ``ssh``/``mpremote`` on PATH); ``RealRig`` runs them
through a ``Runner`` (subprocess by default). What the hardware cannot do raises
``Unsupported`` and the scenario is skipped with the reason.

How each fault is made on real hardware (the box needs passwordless sudo for these):

- power: the box's ``power`` (relay line or PDU outlet); off = ``systemctl poweroff`` on
  the box, then the power; cut = the power only; on = the power back.
- network: ``iptables`` rejects the broker's port (cut, restore) so SSH keeps working;
  ``tc qdisc ... netem`` delays, loses, corrupts on ``iface``.
- storage: ``fallocate`` a filler file in the state dir's file system; restore deletes it.
- clock: ``timedatectl set-ntp false`` and ``date -s``; restore turns NTP on again.
- camera: a box whose agent replays ``camera_replay_dir`` gets clips, frozen and covered
  frames copied there (``scp``); a box with a real camera must be covered by hand.
- a hung box: ``systemctl kill -s SIGSTOP`` of the agent's service.
"""

from __future__ import annotations

import base64
import json
import os
import shlex
import ssl
import subprocess
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

from hil_tests.rig import CommandResult, FleetApi, Recorder, Rig, RigFault, Unsupported
from hil_tests.rig_file import BoxSpec, HttpPower, RelayPower, RigSpec, ServerSpec, load_rig_file

Runner = Callable[[list[str], float], CommandResult]

# -------------------------------------------------------------------- command builders


def ssh_argv(target: str, options: list[str], command: list[str]) -> list[str]:
    """``ssh`` running ``command`` on ``target``; the remote shell gets one quoted string."""
    return ["ssh", *options, target, "--", shlex.join(command)]


def sudo(*argv: str) -> list[str]:
    return ["sudo", "-n", *argv]


def relay_argv(power: RelayPower, on: bool) -> list[str]:
    level = int(on) ^ int(power.active_low)
    gpioset = ["gpioset", power.chip, f"{power.line}={level}"]
    return ssh_argv(power.ssh, ["-o", "BatchMode=yes"], gpioset)


def net_commands(box: BoxSpec, action: str, value: float) -> list[list[str]]:
    reject = ["OUTPUT", "-p", "tcp", "--dport", str(box.broker_port), "-j", "REJECT",
              "--reject-with", "tcp-reset"]  # fmt: skip
    netem = ["tc", "qdisc", "replace", "dev", box.iface, "root", "netem"]
    if action == "cut":
        return [sudo("iptables", "-I", *reject)]
    if action == "delay":
        return [sudo(*netem, "delay", f"{round(value * 1000)}ms")]
    if action == "loss":
        return [sudo(*netem, "loss", f"{value * 100:g}%")]
    if action == "corrupt":
        return [sudo(*netem, "corrupt", f"{value * 100:g}%")]
    if action == "restore":  # both may be absent: "|| true" lives in a shell
        return [
            ["sh", "-c", shlex.join(sudo("iptables", "-D", *reject)) + " || true"],
            ["sh", "-c", shlex.join(sudo("tc", "qdisc", "del", "dev", box.iface, "root"))
             + " || true"],
        ]  # fmt: skip
    raise RigFault(f"unknown network action {action!r}")


def disk_fill_command(box: BoxSpec, free_bytes: int) -> list[str]:
    filler = f"{box.state_dir}/.rig-filler"
    script = (
        f"avail=$(df --output=avail -B1 {shlex.quote(box.state_dir)} | tail -n 1); "
        f"size=$((avail - {int(free_bytes)})); "
        f'[ "$size" -gt 0 ] && fallocate -l "$size" {shlex.quote(filler)}; true'
    )
    return sudo("sh", "-c", script)


def clock_commands(offset_s: float, now: float) -> list[list[str]]:
    if offset_s == 0:
        return [sudo("timedatectl", "set-ntp", "true")]
    return [
        sudo("timedatectl", "set-ntp", "false"),
        sudo("date", "-u", "-s", f"@{now + offset_s:.0f}"),
    ]


def mpremote_argv(port: str, *command: str) -> list[str]:
    return ["mpremote", "connect", port, *command]


def node_clock_code(unix_time: float) -> str:
    """MicroPython code setting the board's RTC (``RTC().datetime`` order: weekday 4th)."""
    t = time.gmtime(unix_time)
    fields = (t.tm_year, t.tm_mon, t.tm_mday, t.tm_wday, t.tm_hour, t.tm_min, t.tm_sec, 0)
    return f"import machine; machine.RTC().datetime({fields!r})"


def subprocess_runner(argv: list[str], timeout: float) -> CommandResult:
    try:
        out = subprocess.run(argv, capture_output=True, timeout=timeout, check=False)
    except FileNotFoundError as exc:
        raise RigFault(f"{argv[0]} is not installed on the rig host") from exc
    except subprocess.TimeoutExpired as exc:
        raise RigFault(f"{shlex.join(argv)[:200]} did not finish in {timeout:g} s") from exc
    return CommandResult(
        out.returncode, out.stdout.decode(errors="replace"), out.stderr.decode(errors="replace")
    )


class HttpApi:
    """The fleet server's API with the rig's tokens (from the environment)."""

    def __init__(self, spec: ServerSpec, env: dict[str, str]) -> None:
        self.base = spec.api.rstrip("/")
        self.reader = env.get(spec.reader_token_env, "")
        self.admin = env.get(spec.admin_token_env, "")
        self.ca = spec.ca

    def _request(self, method: str, path: str, body: object, token: str) -> tuple[int, Any]:
        data = None if body is None else json.dumps(body).encode()
        req = urllib.request.Request(self.base + path, data=data, method=method)
        if token:
            req.add_header("Authorization", f"Bearer {token}")
        if data is not None:
            req.add_header("Content-Type", "application/json")
        ctx = ssl.create_default_context(cafile=self.ca) if self.ca else None
        try:
            with urllib.request.urlopen(req, timeout=20, context=ctx) as resp:
                raw, status = resp.read(), resp.status
        except urllib.error.HTTPError as err:
            raw, status = err.read(), err.code
        try:
            return status, json.loads(raw or b"null")
        except ValueError:
            return status, raw.decode(errors="replace")

    def get(self, path: str, token: str | None = None) -> tuple[int, Any]:
        return self._request("GET", path, None, self.reader if token is None else token)

    def call(
        self, method: str, path: str, body: object = None, token: str | None = None
    ) -> tuple[int, Any]:
        return self._request(method, path, body, token or self.admin)


class RealRig(Rig):
    kind = "real"
    features = frozenset({"hang"})

    def __init__(
        self,
        spec: RigSpec,
        recorder: Recorder | None = None,
        runner: Runner = subprocess_runner,
        env: dict[str, str] | None = None,
    ) -> None:
        super().__init__(recorder)
        self.spec = spec
        self.runner = runner
        self.env = dict(os.environ if env is None else env)
        self._api = HttpApi(spec.server, self.env)
        self.boxes = {b.id: b for b in spec.box}
        self.nodes = {n.id: n for n in spec.node}
        self._given: set[str] = set()

    @classmethod
    def from_file(cls, path: Path, recorder: Recorder | None = None) -> RealRig:
        return cls(load_rig_file(path), recorder)

    @property
    def api(self) -> FleetApi:
        return self._api

    # ---------------------------------------------------------------- devices

    def box(
        self,
        label: str,
        *,
        frames: Path | None = None,
        extra: dict[str, object] | None = None,
        disk_bytes: int | None = None,
    ) -> str:
        free = [b for b in self.spec.box if b.id not in self._given]
        if frames is not None:
            free = [b for b in free if b.camera_replay_dir]
        if not free:
            raise Unsupported(f"no free box for {label} in rig {self.spec.name}")
        spec = free[0]
        if frames is not None:
            self.camera_clip(spec.id, frames)
        if extra:
            self.recorder.note(f"{spec.id} runs its own config (docs/hil.md), not the virtual one")
        del disk_bytes  # a real box's disk is filled as it is
        self._given.add(spec.id)
        return spec.id

    def node(
        self,
        label: str,
        *,
        box: str | None = None,
        extra: dict[str, object] | None = None,
        wrong_clock: bool = False,
    ) -> str:
        for n in self.spec.node:
            if n.id not in self._given and (box is None or n.box == box):
                self._given.add(n.id)
                del extra, wrong_clock  # the board's config is its own; its RTC can be set
                return n.id
        raise Unsupported(f"no free node for {label} (supervising {box}) in {self.spec.name}")

    def close(self) -> None:
        for box in self.boxes.values():  # leave the network whole and the clock on NTP
            for argv in net_commands(box, "restore", 0):
                self._ssh(box, argv, check=False)
            self._ssh(box, clock_commands(0, 0)[0], check=False)

    # ---------------------------------------------------------------- helpers

    def _run(self, argv: list[str], timeout: float = 60.0, check: bool = True) -> CommandResult:
        result = self.runner(argv, timeout)
        if check and result.returncode != 0:
            raise RigFault(f"{shlex.join(argv)[:200]} failed ({result.returncode}): "
                           f"{result.stderr.strip()[:300]}")  # fmt: skip
        return result

    def _ssh(self, box: BoxSpec, command: list[str], check: bool = True) -> CommandResult:
        return self._run(ssh_argv(box.ssh, box.ssh_options, command), check=check)

    def _box(self, device: str) -> BoxSpec:
        if device not in self.boxes:
            raise Unsupported(f"{device} is not a box of rig {self.spec.name}")
        return self.boxes[device]

    def _switch(self, power: RelayPower | HttpPower | None, device: str, on: bool) -> None:
        if power is None:
            raise Unsupported(f"{device} has no switchable power in the rig file")
        if isinstance(power, RelayPower):
            self._run(relay_argv(power, on))
            return
        req = urllib.request.Request(power.on_url if on else power.off_url, method=power.method)
        if power.token_env:
            req.add_header("Authorization", f"Bearer {self.env.get(power.token_env, '')}")
        try:
            with urllib.request.urlopen(req, timeout=20) as resp:
                if resp.status >= 300:
                    raise RigFault(f"PDU answered {resp.status} switching {device}")
        except (urllib.error.URLError, OSError) as exc:
            raise RigFault(f"PDU unreachable switching {device}: {exc}") from exc

    # ---------------------------------------------------------------- the interface

    def _do_power(self, device: str, action: str) -> None:
        if device in self.nodes:
            self._switch(self.nodes[device].power, device, action == "on")
            return
        box = self._box(device)
        if action == "off":
            self._ssh(box, sudo("systemctl", "poweroff"), check=False)
            time.sleep(box.shutdown_s)
        self._switch(box.power, device, action == "on")

    def _do_run(self, device: str, argv: list[str], timeout: float) -> CommandResult:
        if device in self.nodes:
            code = " ".join(argv)
            return self._run(mpremote_argv(self.nodes[device].port, "exec", code), timeout, False)
        box = self._box(device)
        return self._run(ssh_argv(box.ssh, box.ssh_options, argv), timeout, check=False)

    def _do_logs(self, device: str) -> str:
        box = self._box(device)
        cmd = ["journalctl", "-u", box.service, "--no-pager", "-n", "2000"]
        return self._ssh(box, cmd, check=False).stdout

    def _do_net(self, device: str, action: str, value: float) -> None:
        box = self._box(device)
        for argv in net_commands(box, action, value):
            self._ssh(box, argv)

    def _do_disk(self, device: str, free_bytes: int | None) -> None:
        box = self._box(device)
        if free_bytes is None:
            self._ssh(box, sudo("rm", "-f", f"{box.state_dir}/.rig-filler"))
        else:
            self._ssh(box, disk_fill_command(box, free_bytes))

    def _do_clock(self, device: str, offset_s: float) -> None:
        now = time.time()
        if device in self.nodes:
            code = node_clock_code(now + offset_s)
            self._run(mpremote_argv(self.nodes[device].port, "exec", code))
            return
        box = self._box(device)
        for argv in clock_commands(offset_s, now):
            self._ssh(box, argv)

    def _do_camera(self, device: str, action: str, frames: Path | None) -> None:
        box = self._box(device)
        if not box.camera_replay_dir:
            raise Unsupported(f"{device} has a real camera: freeze and cover it by hand")
        from hil_tests.images import covered_frames  # loads the agent: only here

        with tempfile.TemporaryDirectory(prefix="rig-camera-") as tmp:
            folder = Path(tmp)
            if action == "clip" and frames is not None:
                folder = frames
            elif action == "cover":
                for i, data in enumerate(covered_frames(20)):
                    (folder / f"covered-{i:03d}.png").write_bytes(data)
            elif action in ("freeze", "restore"):
                raise Unsupported("freeze/restore on a real box: clip a still or the clip again")
            files = sorted(str(p) for p in folder.iterdir() if p.is_file())
            self._ssh(box, ["sh", "-c", f"rm -f {shlex.quote(box.camera_replay_dir)}/*"])
            self._run(["scp", "-q", *box.ssh_options, *files,
                       f"{box.ssh}:{box.camera_replay_dir}/"])  # fmt: skip

    def _do_read(self, device: str, relpath: str) -> bytes | None:
        if ".." in Path(relpath).parts:
            raise RigFault(f"{relpath} leaves the state dir")
        if device in self.nodes:
            node = self.nodes[device]
            out = self._run(
                mpremote_argv(node.port, "fs", "cat", f":{node.state_dir}/{relpath}"), check=False
            )
            return out.stdout.encode() if out.returncode == 0 else None
        box = self._box(device)
        path = f"{box.state_dir}/{relpath}"
        # base64 keeps binary files (SQLite) whole through the text runner
        out = self._ssh(box, ["sh", "-c", f"sudo -n base64 -w0 {shlex.quote(path)}"], check=False)
        if out.returncode != 0:
            return None
        return base64.b64decode(out.stdout)

    def _do_hang(self, device: str) -> None:
        box = self._box(device)
        self._ssh(box, sudo("systemctl", "kill", "-s", "SIGSTOP", box.service))
