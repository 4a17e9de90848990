"""The agent's answers to commands and desired config (pure parts and the state file)."""

from __future__ import annotations

import base64
import json
import logging
from pathlib import Path
from typing import Any

from agent.link.commands import Abilities, Commands, LogRing, check_config, decide_command
from firmware import contract


def _can(calls: list[str], allow_reboot: bool = False, frame: bytes | None = b"\xff\xd8jpeg"
         ) -> Abilities:  # fmt: skip
    return Abilities(
        allow_reboot=allow_reboot,
        reboot=lambda: calls.append("reboot"),
        restart=lambda: calls.append("restart"),
        snapshot=lambda: frame,
        uptime_s=lambda: 12.34,
        log_lines=lambda n: [f"line {i}" for i in range(n)],
    )


def _req(cmd: str, **args: Any) -> dict[str, Any]:
    return {"cid": "c-1", "cmd": cmd, "args": args, "deadline": 2000.0}


def test_commands_answer_or_refuse_with_a_reason() -> None:
    calls: list[str] = []
    can = _can(calls)
    assert decide_command(_req("ping"), 1000.0, can).result == {"pong": True, "uptime_s": 12.3}
    late = decide_command(_req("ping"), 2001.0, can)
    assert (late.ok, late.error) == (False, "the deadline passed before the command arrived")
    assert decide_command(_req("logs", lines=3), 1000.0, can).result == {
        "lines": ["line 0", "line 1", "line 2"]}  # fmt: skip
    for bad in (0, 10_000, "5", True):
        assert not decide_command(_req("logs", lines=bad), 1000.0, can).ok
    snap = decide_command(_req("snapshot"), 1000.0, can)
    assert snap.result is not None
    assert base64.b64decode(snap.result["jpeg_b64"]) == b"\xff\xd8jpeg"
    assert not decide_command(_req("snapshot"), 1000.0, _can(calls, frame=None)).ok
    assert not decide_command(_req("snapshot"), 1000.0, _can(calls, frame=b"x" * 50_000)).ok
    refused = decide_command(_req("reboot"), 1000.0, can)
    assert not refused.ok and "not permitted" in str(refused.error)
    assert calls == []  # nothing was done by a refused or read-only command
    assert decide_command(_req("reboot"), 1000.0, _can(calls, allow_reboot=True)).ok
    assert decide_command(_req("restart"), 1000.0, can).ok
    assert calls == ["reboot", "restart"]
    assert "node command" in str(decide_command(_req("relay"), 1000.0, can).error)
    assert not decide_command(_req("format"), 1000.0, can).ok


def test_every_answer_fits_the_contract() -> None:
    can = _can([])
    for cmd in ("ping", "logs", "snapshot", "reboot", "relay", "format"):
        body = decide_command(_req(cmd), 1000.0, can).body("c-1")
        contract.encode("cmd_res", "cam-0001", body, 1000.0)  # raises if it does not


def test_config_is_checked_whole_before_anything_applies() -> None:
    assert check_config({"heartbeat_s": 15}) == ({"heartbeat_s": 15.0}, None)
    assert check_config({"log_level": "DEBUG"}) == ({"log_level": "DEBUG"}, None)
    for bad in ({"heartbeat_s": 0}, {"heartbeat_s": "15"}, {"heartbeat_s": True},
                {"heartbeat_s": 15, "camera": {}}, {"log_level": "LOUD"}):  # fmt: skip
        settings, error = check_config(bad)
        assert settings == {} and error


def test_desired_config_applied_reported_and_kept(tmp_path: Path) -> None:
    sent: list[tuple[str, dict[str, Any]]] = []
    cmds = Commands(tmp_path, lambda k, b: sent.append((k, b)) is None, _can([]),
                    {"heartbeat_s": 30.0})  # fmt: skip
    cmds.handle("config_desired", {"version": 3, "config": {"heartbeat_s": 5}})
    assert cmds.applied["heartbeat_s"] == 5.0
    cmds.handle("config_desired", {"version": 4, "config": {"heartbeat_s": 5, "x": 1}})
    assert cmds.applied["heartbeat_s"] == 5.0  # refused whole: nothing changed
    assert sent == [
        ("config_reported", {"version": 3, "ok": True}),
        ("config_reported", {"version": 4, "ok": False,
                             "error": "unknown or not live-applicable key 'x'"}),
    ]  # fmt: skip
    saved = json.loads((tmp_path / "desired-config.json").read_text())
    assert saved == {"version": 3, "config": {"heartbeat_s": 5}}
    again = Commands(tmp_path, lambda k, b: True, _can([]), {"heartbeat_s": 30.0})
    assert (again.version, again.applied["heartbeat_s"]) == (3, 5.0)  # after a restart


def test_log_ring_keeps_the_last_lines() -> None:
    ring = LogRing(size=3)
    logger = logging.getLogger("camfleet-test-ring")
    logger.addHandler(ring)
    logger.setLevel(logging.INFO)
    try:
        for i in range(5):
            logger.info("event %d", i)
    finally:
        logger.removeHandler(ring)
    assert [line.split(": ", 1)[1] for line in ring.lines] == ["event 2", "event 3", "event 4"]
