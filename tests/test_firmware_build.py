"""The node's build and deploy tooling (firmware/build.py, firmware/manifest.py): the
.mpy that mpy-cross makes is what this MicroPython loads, the manifest's tree runs on its
own, and the mpremote command line copies what a board needs."""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path

import pytest

from firmware import build
from hil_tests.procs import REPO, micropython_bin


def test_mpy_cross_emits_the_format_this_micropython_loads() -> None:
    m = re.search(r"mpy v(\d+)\.(\d+)", build.mpy_cross_version())
    assert m, build.mpy_cross_version()
    out = subprocess.run(
        [micropython_bin(), "-c", "import sys; print(sys.implementation._mpy)"],
        capture_output=True,
        text=True,
        check=True,
        timeout=30,
    )
    sys_mpy = int(out.stdout)
    assert (int(m.group(1)), int(m.group(2))) == (sys_mpy & 0xFF, (sys_mpy >> 8) & 3)


def test_manifest_lists_the_device_modules_and_the_sim_only_with_its_option() -> None:
    board = build.manifest_modules(sim=False)
    sim = build.manifest_modules(sim=True)
    assert "hal_sim.py" not in board and sim == [*board, "hal_sim.py"]
    assert {
        "node.py",
        "link.py",
        "inbox.py",
        "contract.py",
        "mqtt.py",
        "hal_machine.py",
        "ring.py",
    } <= set(board)
    assert not {"build.py", "manifest.py", "main.py", "boot.py"} & set(board)


def test_built_tree_runs_alone_within_128k(tmp_path: Path) -> None:
    """Only the built tree on the path: every module the node needs is in the manifest."""
    out = tmp_path / "app"
    files = build.build(out, sim=False)
    names = sorted(f.name for f in files)
    assert "node.mpy" in names and "main.py" in names and "boot.py" in names
    assert not [n for n in names if n.endswith(".py") and n not in ("main.py", "boot.py")]
    listing = json.loads((out / "files.json").read_text())
    assert sorted(listing) == names
    assert all(v["size"] == (out / k).stat().st_size for k, v in listing.items())
    probe = (
        "import sys\n"
        f"sys.path[:] = [{str(out)!r}]\n"
        "import gc, node, hal\n"
        "gc.collect()\n"
        "print('loaded', gc.mem_alloc(), node.version.VERSION)\n"
        "try:\n    hal.make_hal({'hal': 'sim'})\nexcept ImportError:\n    print('no sim')\n"
    )
    run = subprocess.run(
        [micropython_bin(), "-X", "heapsize=128k", "-c", probe],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
        cwd=tmp_path,
    )
    assert run.returncode == 0, run.stderr + run.stdout
    assert "loaded" in run.stdout and "no sim" in run.stdout  # a board carries no simulator


def test_main_from_the_tree_refuses_a_bad_config(tmp_path: Path) -> None:
    out = tmp_path / "app"
    build.build(out, sim=True)
    (tmp_path / "node.json").write_text(json.dumps({"device_id": "node-1", "colour": "red"}))
    run = subprocess.run(
        [micropython_bin(), "-X", "heapsize=128k", str(out / "main.py"), "node.json"],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
        cwd=tmp_path,
    )
    assert run.returncode == 2
    assert "cannot start: unknown config key 'colour'" in run.stdout


def test_deploy_command_line(tmp_path: Path) -> None:
    out = tmp_path / "app"
    build.build(out)
    creds = tmp_path / "creds"
    creds.mkdir()
    for name in build.CREDENTIALS:
        (creds / name).write_bytes(b"\x30\x00")
    config = tmp_path / "node.json"
    config.write_text("{}")
    argv = build.deploy_argv(out, "/dev/ttyACM0", config, creds)
    assert Path(argv[0]).name == "mpremote" and argv[1:3] == ["connect", "/dev/ttyACM0"]
    chunks = " ".join(argv[3:]).split(" + ")
    assert chunks[0].startswith("cp ") and chunks[0].endswith(" :")
    assert f"{out}/node.mpy" in chunks[0] and f"{out}/main.py" in chunks[0]
    assert "files.json" not in chunks[0]
    assert chunks[1] == f"cp {config} :config.json"
    assert chunks[2] == "cp " + " ".join(str(creds / n) for n in build.CREDENTIALS) + " :"
    assert chunks[3] == "reset"
    (creds / "key.der").unlink()
    with pytest.raises(build.BuildError, match=r"key\.der"):
        build.deploy_argv(out, "/dev/ttyACM0", config, creds)
    with pytest.raises(build.BuildError, match="nothing built"):
        build.deploy_argv(tmp_path / "creds", "/dev/ttyACM0", config)
    helped = subprocess.run(
        [build.tool("mpremote"), "--help"], capture_output=True, text=True, timeout=60, check=False
    )
    assert helped.returncode == 0 and "connect" in helped.stdout


def test_manifest_refusals(tmp_path: Path) -> None:
    (tmp_path / "a.py").write_text("x = 1\n")
    bad = {
        'include("$(MPY_DIR)/extmod")\n': "only metadata",
        'module("missing.py")\n': "missing files",
        'module("a.py")\nmodule("a.py")\n': "twice",
        'module("../a.py")\n': "not a firmware/ source file",
    }
    for text, reason in bad.items():
        (tmp_path / "manifest.py").write_text(text)
        with pytest.raises(build.BuildError, match=reason):
            build.manifest_modules(manifest=tmp_path / "manifest.py")


def test_make_firmware_target_runs_the_build() -> None:
    dry = subprocess.run(
        ["make", "-n", "firmware"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        cwd=REPO,
    )
    assert dry.returncode == 0 and "-m firmware.build --out build/firmware" in dry.stdout
