"""The Debian packages of `make packages` (scripts/build-packages.sh, docs/deploy.md).

The sources (units, configs, maintainer scripts) are checked always. The built packages in
build/packages/ are checked when they are there: CI runs `make packages` first and sets
CAMFLEET_REQUIRE_PACKAGES=1, which makes their absence a failure; elsewhere the tests that
need them are skipped and say how to build them. The VM rig boots the same packages in
Debian 12 machines.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import tomllib
import zipfile
from pathlib import Path

import pytest

from agent.config import AgentSettings
from common.settings import load_settings
from fleet_server.config import ServerSettings
from fleet_server.ota.release import read_manifest

ROOT = Path(__file__).resolve().parent.parent
PKG = ROOT / "packaging"
BUILT = ROOT / "build" / "packages"
VERSION = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"]
GLIBC_MAX = 36  # Debian 12 / Raspberry Pi OS 12
ARCH = {"arm64": "aarch64", "amd64": "x86_64"}
SCRIPTS = sorted(PKG.glob("*/*.sh"))
# the agent's native dependencies: each must be a wheel for the box's architecture
AGENT_NATIVE = ["numpy", "opencv_python_headless", "ai_edge_litert", "psutil", "pydantic_core",
                "cryptography", "cffi", "bsdiff4"]  # fmt: skip
SERVER_NATIVE = ["pydantic_core", "cryptography", "cffi", "bsdiff4", "uvloop", "httptools",
                 "psycopg_binary", "sqlalchemy"]  # fmt: skip


def _sources_mtime() -> float:
    """When the packaging's sources last changed (what a built package must be newer than)."""
    paths = [*PKG.rglob("*"), ROOT / "scripts" / "build-packages.sh", ROOT / "pyproject.toml"]
    return max(p.stat().st_mtime for p in paths if p.is_file())


def _deb(name: str) -> Path:
    found = sorted(BUILT.glob(name))
    why = ""
    if not found:
        why = f"no {name} in {BUILT}"
    elif found[-1].stat().st_mtime < _sources_mtime():
        why = f"{found[-1].name} is older than packaging/ (stale)"
    if why:
        if os.environ.get("CAMFLEET_REQUIRE_PACKAGES") == "1":
            pytest.fail(f"{why}: `make packages` must run first")
        pytest.skip(f"{why}: run `make packages` (about a minute)")
    return found[-1]


def _field(deb: Path, name: str) -> str:
    return subprocess.run(["dpkg-deb", "-f", str(deb), name], capture_output=True, text=True,
                          check=True).stdout.strip()  # fmt: skip


def _extract(deb: Path, dest: Path) -> Path:
    subprocess.run(["dpkg-deb", "-x", str(deb), str(dest)], check=True)
    subprocess.run(["dpkg-deb", "-e", str(deb), str(dest / "DEBIAN")], check=True)
    return dest


# ------------------------------------------------------------------ sources, always


def test_packaged_configs_are_valid_settings(tmp_path: Path) -> None:
    agent = load_settings(AgentSettings, PKG / "agent" / "agent.toml")
    assert agent.ota is not None and agent.ota.model_slots_dir is not None
    assert agent.pipeline is not None and agent.pipeline.detector is not None
    # the detector reads the model slot the camfleet-model package seeds and OTA replaces
    assert agent.pipeline.detector.card.parent == agent.ota.model_slots_dir / "current"
    server = load_settings(ServerSettings, PKG / "server" / "server.toml")
    assert server.api.tls and server.api.port == 443
    assert server.broker.log_stderr
    assert server.identity.est_port and server.ota.enabled and server.ota.https_port


def test_units_pass_systemd_analyze_verify(tmp_path: Path) -> None:
    """Every unit, in a root holding the system's units and stand-ins for our programs;
    any warning (an unknown key, say) counts as a failure, not only the exit status."""
    analyze = shutil.which("systemd-analyze")
    if analyze is None or not Path("/lib/systemd/system/sysinit.target").exists():
        pytest.skip("systemd-analyze and the system's units are needed")
    units = tmp_path / "lib" / "systemd" / "system"
    shutil.copytree("/lib/systemd/system", units, symlinks=True)
    ours = [*PKG.glob("*/*.service"), *PKG.glob("*/*.target"), *PKG.glob("*/*.timer")]
    for unit in ours:
        shutil.copy(unit, units / unit.name)
    for prog in ("opt/camfleet-server/venv/bin/camfleet-server",
                 "opt/camfleet-agent/venv/bin/camfleet-agent-launch", "bin/kill"):  # fmt: skip
        (tmp_path / prog).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / prog).write_text("#!/bin/sh\n")
        (tmp_path / prog).chmod(0o755)
    names = [u.name.replace("@.service", "@1.service") for u in ours]
    out = subprocess.run([analyze, "verify", f"--root={tmp_path}", *names], cwd=units,
                         capture_output=True, text=True, timeout=120, check=False)  # fmt: skip
    assert out.returncode == 0 and not (out.stdout + out.stderr).strip(), out.stdout + out.stderr
    assert len(names) == 8


def test_agent_unit_keeps_notify_watchdog_and_directories() -> None:
    unit = (PKG / "agent" / "camfleet-agent.service").read_text()
    for line in ("Type=notify", "NotifyAccess=all", "WatchdogSec=60", "Restart=always",
                 "StateDirectory=camfleet-agent", "ConfigurationDirectory=camfleet-agent",
                 "User=camfleet", "ReadWritePaths=/etc/camfleet-agent",
                 "ExecStart=/opt/camfleet-agent/venv/bin/camfleet-agent-launch"
                 " --config /etc/camfleet-agent/agent.toml"):  # fmt: skip
        assert f"\n{line}\n" in unit, line


def test_the_broker_plugin_goes_into_the_server_package_when_the_tree_has_one(
    tmp_path: Path,
) -> None:
    template = PKG / "server" / "nfpm.yaml"
    env = {"PATH": os.environ["PATH"], "CAMFLEET_VERSION": "9.9", "DEB_ARCH": "amd64"}
    for plugin in ("", "/work/plugin/camfleet_acl.so"):
        out = tmp_path / "server.yaml"
        subprocess.run([sys.executable, str(ROOT / "scripts/nfpm_config.py"), str(template),
                        str(out)], env={**env, "CAMFLEET_BROKER_PLUGIN_SO": plugin},
                       check=True)  # fmt: skip
        text = out.read_text()
        assert "version: 9.9" in text and "@BROKER_PLUGIN@" not in text
        entry = f"  - src: {plugin}\n    dst: /usr/lib/camfleet/camfleet_acl.so\n"
        assert (entry in text) == bool(plugin), text


@pytest.mark.parametrize("script", SCRIPTS, ids=lambda p: f"{p.parent.name}/{p.name}")
def test_maintainer_scripts_run_nothing_from_the_network(script: Path) -> None:
    text = script.read_text()
    subprocess.run(["sh", "-n", str(script)], check=True)
    lines = text.replace("\\\n", " ").splitlines()  # continuation lines joined
    code = "\n".join(line for line in lines if not line.lstrip().startswith("#"))
    for tool in ("curl", "wget", "npm", "apt-get", "apt ", "git ", "model_fetch", "http://",
                 "https://"):  # fmt: skip
        assert tool not in code, f"{script.name} runs {tool!r}"
    for install in re.findall(r"pip install[^\n]*", code):
        assert "--no-index" in install and "--find-links" in install, install


# ------------------------------------------------------------------ built packages


@pytest.mark.parametrize("arch", ["arm64", "amd64"])
def test_agent_package_holds_wheels_for_its_architecture(arch: str, tmp_path: Path) -> None:
    deb = _deb(f"camfleet-agent_{VERSION}_{arch}.deb")
    assert _field(deb, "Architecture") == arch
    depends = _field(deb, "Depends")
    assert "python3 (>= 3.11)" in depends and "python3 (<< 3.12)" in depends
    assert "python3-venv" in depends and "camfleet-model" in _field(deb, "Recommends")
    assert "camfleet" not in depends  # only Debian's own packages (the VM rig installs them)
    root = _extract(deb, tmp_path / "x")
    wheels = sorted((root / "opt/camfleet-agent/wheels").glob("*.whl"))
    _check_wheels(wheels, ARCH[arch], AGENT_NATIVE)
    factory = root / f"opt/camfleet-agent/factory/camfleet-agent-{VERSION}.tar.gz"
    assert read_manifest(factory)["release"] == VERSION  # the launcher's first release
    assert (root / "lib/systemd/system/camfleet-agent.service").read_bytes() == (
        PKG / "agent" / "camfleet-agent.service"
    ).read_bytes()
    assert "/etc/camfleet-agent/agent.toml" in (root / "DEBIAN/conffiles").read_text()
    for script in ("postinst", "prerm", "postrm"):
        assert (root / "DEBIAN" / script).read_bytes() == (
            PKG / "agent" / f"{script}.sh"
        ).read_bytes()


def _check_wheels(wheels: list[Path], machine: str, native: list[str]) -> None:
    """Every wheel runs on CPython 3.11 of that machine under glibc <= 2.36."""
    names = {w.name.split("-")[0].lower() for w in wheels}
    assert "camfleet" in names
    for want in native:
        assert want.lower() in names, f"no {want} wheel"
    for wheel in wheels:
        _dist, _ver, py, abi, plat = wheel.name[: -len(".whl")].split("-")[-5:]
        if plat == "any":
            assert abi == "none" and py.startswith("py"), wheel.name
            continue
        cpython = py in ("cp36", "cp37", "cp38", "cp39", "cp310", "cp311") and abi in (
            "cp311",
            "abi3",
        )
        tool = abi == "none" and "py3" in py.split(".")  # a program, not an extension module
        assert cpython or tool, wheel.name
        tags = plat.split(".")
        assert all(t.endswith(f"_{machine}") for t in tags), wheel.name
        glibc = [int(m) for t in tags for m in re.findall(r"manylinux_2_(\d+)_", t)]
        assert not glibc or min(glibc) <= GLIBC_MAX, wheel.name
        with zipfile.ZipFile(wheel) as z:  # a real wheel, not an HTML error page
            assert any(n.endswith(".dist-info/WHEEL") for n in z.namelist()), wheel.name


def test_arm64_wheels_resolve_offline_for_a_pi(tmp_path: Path) -> None:
    """pip resolves camfleet[agent] for aarch64 / CPython 3.11 from the package's wheels
    alone (--no-index), as the postinst on a Pi does."""
    root = _extract(_deb(f"camfleet-agent_{VERSION}_arm64.deb"), tmp_path / "x")
    platforms = ["--platform=manylinux2014_aarch64"] + [
        f"--platform=manylinux_2_{m}_aarch64" for m in range(17, GLIBC_MAX + 1)
    ]
    report = tmp_path / "report.json"
    subprocess.run(
        [sys.executable, "-m", "pip", "install", "--dry-run", "--no-index", "--quiet",
         "--find-links", str(root / "opt/camfleet-agent/wheels"), "--only-binary=:all:",
         *platforms, "--python-version=3.11", "--implementation=cp", "--abi=cp311",
         "--target", str(tmp_path / "t"), "--report", str(report), f"camfleet[agent]=={VERSION}"],
        check=True, env={**os.environ, "PIP_CONFIG_FILE": os.devnull}, timeout=120,
    )  # fmt: skip
    got = {i["metadata"]["name"].lower() for i in json.loads(report.read_text())["install"]}
    assert {"camfleet", "numpy", "opencv-python-headless", "ai-edge-litert", "tuf"} <= got


def _unshare() -> list[str]:
    """``unshare --net`` when this machine allows it: a network namespace with no network,
    so an install that tried to download would fail here."""
    probe = subprocess.run(["unshare", "--net", "true"], capture_output=True, check=False)
    return ["unshare", "--net"] if probe.returncode == 0 else []


def _offline_venv(venv: Path, wheels: Path, spec: str) -> Path:
    """What the postinst does: a venv, then pip from the package's wheels only."""
    base = getattr(sys, "_base_executable", sys.executable)
    isolate = _unshare()
    subprocess.run([*isolate, base, "-m", "venv", str(venv)], check=True, timeout=120)
    env = {"PATH": os.environ["PATH"], "HOME": str(venv.parent), "PIP_CONFIG_FILE": os.devnull,
           "PIP_DISABLE_PIP_VERSION_CHECK": "1"}  # fmt: skip
    subprocess.run(
        # --no-compile: the postinst compiles (the venv is read-only to the services); a
        # test need not wait for it
        [*isolate, str(venv / "bin/python"), "-m", "pip", "install", "--quiet", "--no-index",
         "--no-compile",
         "--no-cache-dir", "--find-links", str(wheels), spec],
        check=True, env=env, timeout=600,
    )  # fmt: skip
    return venv


def _moved(text: str, moves: dict[str, Path]) -> str:
    for old, new in moves.items():
        text = text.replace(old, str(new))
    return text


def test_amd64_box_installs_offline_and_detects_with_the_model_package(tmp_path: Path) -> None:
    """The amd64 agent package's wheels in a fresh venv with no network, its own agent
    release and the model package's bundle installed by the launcher as the postinst
    does, then the factory release's code loads the model from the slot and finds the
    astronaut in the model's own evaluation photo."""
    agent = _extract(_deb(f"camfleet-agent_{VERSION}_amd64.deb"), tmp_path / "agent")
    model_deb = _deb("camfleet-model-*_all.deb")
    assert _field(model_deb, "Architecture") == "all"
    assert _field(model_deb, "Provides") == "camfleet-model"
    model = _extract(model_deb, tmp_path / "model")
    (bundle,) = (model / "usr/share/camfleet/models").glob("*.tar.gz")
    venv = _offline_venv(tmp_path / "venv", agent / "opt/camfleet-agent/wheels",
                         f"camfleet[agent]=={VERSION}")  # fmt: skip
    config = tmp_path / "agent.toml"
    config.write_text(_moved((agent / "etc/camfleet-agent/agent.toml").read_text(), {
        "/var/lib/camfleet-agent": tmp_path / "state", "/etc/camfleet-agent": tmp_path / "etc",
    }))  # fmt: skip
    launch = [str(venv / "bin/camfleet-agent-launch"), "--config", str(config)]
    env = {"PATH": os.environ["PATH"], "HOME": str(tmp_path)}
    factory = agent / f"opt/camfleet-agent/factory/camfleet-agent-{VERSION}.tar.gz"
    for args in (["init", "--bundle", str(factory), "--release", VERSION],
                 ["init-model", "--bundle", str(bundle), "--if-none"],
                 ["init-model", "--bundle", str(bundle), "--if-none"]):  # fmt: skip
        done = subprocess.run([*launch, *args], cwd=tmp_path, env=env, capture_output=True,
                              text=True, timeout=120, check=False)  # fmt: skip
        assert done.returncode == 0, done.stderr
    assert "has a model already" in done.stdout
    slot = tmp_path / "state/models/current"
    assert slot.resolve().name == _field(model_deb, "Version")
    probe = (
        "import json, sys\n"
        "from pathlib import Path\n"
        "import agent\n"
        "from agent.config import AgentSettings\n"
        "from agent.vision.pipeline import decode_image\n"
        "from agent.vision.runner import make_detector\n"
        "from common.settings import load_settings\n"
        "s = load_settings(AgentSettings, Path(sys.argv[1]))\n"
        "image = decode_image(Path(sys.argv[2]).read_bytes())\n"
        "found = make_detector(s.pipeline).detect(image)\n"
        "print(json.dumps({'code': agent.__file__, 'labels': [d.label for d in found]}))\n"
    )
    release = (tmp_path / "state/ota/current").resolve()
    done = subprocess.run(
        [str(venv / "bin/python"), "-c", probe, str(config), str(slot / "eval/astronaut.png")],
        cwd=tmp_path, env={**env, "PYTHONPATH": str(release)}, capture_output=True, text=True,
        timeout=120, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    got = json.loads(done.stdout.strip().splitlines()[-1])
    assert got["code"].startswith(str(release))  # the factory release's code ran
    assert "Person" in got["labels"]


def test_server_package_holds_units_config_and_amd64_wheels(tmp_path: Path) -> None:
    deb = _deb(f"camfleet-server_{VERSION}_amd64.deb")
    assert _field(deb, "Architecture") == "amd64"
    depends = _field(deb, "Depends")
    assert "mosquitto" in depends and "python3-venv" in depends and "camfleet" not in depends
    root = _extract(deb, tmp_path / "x")
    for unit in ("camfleet.target", "camfleet-broker.service", "camfleet-server.service",
                 "camfleet-ingest@.service", "camfleet-est.service",
                 "camfleet-backup.timer"):  # fmt: skip
        assert (root / "lib/systemd/system" / unit).read_bytes() == (
            PKG / "server" / unit
        ).read_bytes()
    assert "/etc/camfleet/server.toml" in (root / "DEBIAN/conffiles").read_text()
    plugin = root / "usr/lib/camfleet/camfleet_broker.so"  # the broker loads it (issue 15)
    assert plugin.is_file() == (ROOT / "fleet_server/broker/plugin/camfleet_broker.c").is_file()
    _check_wheels(sorted((root / "opt/camfleet-server/wheels").glob("*.whl")), "x86_64",
                  SERVER_NATIVE)  # fmt: skip
    for script in ("postinst", "prerm", "postrm"):
        assert (root / "DEBIAN" / script).read_bytes() == (
            PKG / "server" / f"{script}.sh"
        ).read_bytes()


@pytest.mark.hil_long  # make hil (the roles over HTTPS from the source tree: make test)
def test_server_package_installs_offline_and_serves_https_only(tmp_path: Path) -> None:
    root = _extract(_deb(f"camfleet-server_{VERSION}_amd64.deb"), tmp_path / "x")
    venv = _offline_venv(tmp_path / "venv", root / "opt/camfleet-server/wheels",
                         f"camfleet[server,provision]=={VERSION}")  # fmt: skip
    import socket
    import ssl
    import tomllib
    import urllib.request

    import tomli_w

    from hil_tests.procs import Process, free_port, wait_for

    cfg = tomllib.loads((root / "etc/camfleet/server.toml").read_text())
    cfg["data_dir"] = str(tmp_path / "state")
    cfg["api"].update(host="127.0.0.1", port=free_port())
    cfg["broker"].update(hosts=["localhost", "127.0.0.1"], listen_port=free_port())
    cfg["mqtt"]["port"] = cfg["broker"]["listen_port"]
    cfg["identity"].update(est_host="127.0.0.1", est_port=free_port())
    cfg["ota"].update(https_host="127.0.0.1", https_port=free_port(),
                      keys_dir=str(tmp_path / "keys"))  # fmt: skip
    config = tmp_path / "server.toml"
    config.write_text(tomli_w.dumps(cfg))
    server = [str(venv / "bin/camfleet-server"), "--config", str(config)]
    env = {"PATH": os.environ["PATH"], "HOME": str(tmp_path)}
    done = subprocess.run([*server, "init"], cwd=tmp_path, env=env, capture_output=True,
                          text=True, timeout=120, check=False)  # fmt: skip
    assert done.returncode == 0, done.stderr
    # the packaged code only: nothing of this checkout on the path (PYTHONPATH emptied)
    api = Process("api", [*server, "run", "--role", "api"], tmp_path / "api.log",
                  env={**env, "PYTHONPATH": ""}, cwd=tmp_path)  # fmt: skip
    api.start()
    try:
        tls = ssl.create_default_context(cafile=str(tmp_path / "state/pki/root.pem"))
        url = f"https://localhost:{cfg['api']['port']}/healthz"

        def healthy() -> bool:
            try:
                with urllib.request.urlopen(url, context=tls, timeout=2) as resp:
                    return bool(resp.status == 200)
            except OSError:
                return False

        wait_for(lambda: healthy() or not api.alive(), 60, interval=0.2, what="HTTPS /healthz")
        assert api.alive() and healthy(), api.log_text()[-2000:]
        # plain HTTP on the same port gets no answer in clear
        with socket.create_connection(("127.0.0.1", cfg["api"]["port"]), timeout=5) as s:
            s.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
            s.settimeout(5)
            try:
                answer = s.recv(200)
            except (TimeoutError, ConnectionResetError):
                answer = b""
        assert b"200 OK" not in answer
    finally:
        assert api.stop() is not None
