# The board's fixed start-up logic (A/B updates), for boot.py and main.py.
#
# It ships as .mpy with the factory application and is never part of an update bundle
# (firmware/bundle_build.py leaves it out), so no update slot can shadow it: what picks,
# counts and rolls back slots is always the code the board was flashed with. boot.py and
# main.py stay a few lines of source (a board compiles them at every boot, and compiled
# source stays in RAM).
#
# The board's filesystem root holds the factory application (the modules the board was
# flashed with, never overwritten by an update), boot.py, main.py and this module (never
# updated), and two update slots, the folders "a" and "b". "slots.json" in the root says
# which slot is known good ("good", the factory one until an update is committed) and
# which one is on trial ("trial", with its boot "attempts" and their "max"). At each boot:
#
#   - a trial slot with attempts left is booted, its attempt counted (and saved) first;
#   - a trial slot out of attempts, or incomplete, is dropped: the good slot boots and
#     "rolled_back" records it for the application to report;
#   - otherwise the good slot boots. A missing or unreadable slots.json, or a good slot
#     that is not complete, boots the factory application.
#
# The chosen slot's folder goes first on sys.path, so its modules shadow the factory ones.
# The running application commits a trial (good = trial) after a healthy run (trial.py).
# Nothing here may stop the boot: any error boots the factory application. main.py also
# asks here whether an install boot is due (updater.py) and how to reset after a crash.

import json
import os
import sys

FACTORY = "factory"
SLOTS = ("a", "b")
SELECTION = "slots.json"
MAX_ATTEMPTS = 3
MARKER = "node.mpy"  # a slot is complete when its last-written module is there


def slot_dir(root: str, slot: str) -> str:
    if slot == FACTORY:
        return root or "."
    return (root + "/" + slot) if root else slot


def usable(root: str, slot: str) -> bool:
    if slot == FACTORY:
        return True
    try:
        os.stat(slot_dir(root, slot) + "/" + MARKER)
        return True
    except OSError:
        return False


def decide(state: object, ok: "object") -> "dict[str, object]":
    """This boot's selection from the saved one; ``ok(slot)`` says a slot is complete.
    ``booted`` names the slot to run."""
    if not isinstance(state, dict):
        state = {}
    good = state.get("good")
    if good not in SLOTS or not ok(good):  # type: ignore[operator]
        good = FACTORY
    new: "dict[str, object]" = {"good": good, "trial": None, "attempts": 0, "booted": good}
    releases = state.get("releases")
    new["releases"] = releases if isinstance(releases, dict) else {}
    if isinstance(state.get("rolled_back"), dict):
        new["rolled_back"] = state["rolled_back"]
    trial = state.get("trial")
    attempts = state.get("attempts")
    limit = state.get("max")
    if not isinstance(attempts, int) or attempts < 0:
        attempts = 0
    if not isinstance(limit, int) or not 1 <= limit <= 10:
        limit = MAX_ATTEMPTS
    if trial in SLOTS and trial != good:
        if not ok(trial):  # type: ignore[operator]
            new["rolled_back"] = {"slot": trial, "why": "slot incomplete"}
        elif attempts >= limit:
            new["rolled_back"] = {"slot": trial, "why": "%d boots without a commit" % attempts}
        else:
            new["trial"] = trial
            new["attempts"] = attempts + 1
            new["max"] = limit
            new["booted"] = trial
    return new


def read(root: str) -> object:
    try:
        with open(slot_dir(root, FACTORY) + "/" + SELECTION) as f:
            return json.load(f)
    except (OSError, ValueError):
        return None


def write(root: str, state: "dict[str, object]") -> None:
    """Atomically: temp file, flush (and fsync where the port has it), rename."""
    path = slot_dir(root, FACTORY) + "/" + SELECTION
    with open(path + ".tmp", "w") as f:
        f.write(json.dumps(state))
        f.flush()
        fsync = getattr(os, "fsync", None)
        if fsync is not None:
            fsync(f.fileno())
    os.rename(path + ".tmp", path)


def start(root: str) -> str:
    """Choose, save (the attempt is counted before the slot runs) and enter a slot."""
    slot = FACTORY
    try:
        saved = read(root)
        new = decide(saved, lambda s: usable(root, s))
        if saved is not None or new["booted"] != FACTORY or "rolled_back" in new:
            write(root, new)  # no file and nothing to record: the factory tree stays as is
        slot = str(new["booted"])
    except Exception as exc:  # nothing may stop the boot
        print("E boot: slot selection failed, factory application:", exc)
        slot = FACTORY
    if slot != FACTORY:
        sys.path.insert(0, slot_dir(root, slot))
    print("I boot: application slot", slot)
    return slot


def on_trial(root: str) -> bool:
    """Whether the application running now is on trial."""
    state = read(root)
    return (
        isinstance(state, dict)
        and state.get("trial") is not None
        and state.get("booted") == state.get("trial")
    )


def _config_dir(config_path: str, key: str, default: str) -> str:
    """The folder the config names under ``key``; a relative one is beside the config."""
    with open(config_path) as f:
        path = json.load(f).get(key, default)
    if not path.startswith("/") and "/" in config_path:
        path = config_path[: config_path.rfind("/")] + "/" + path
    return path


def install_pending(config_path: str) -> bool:
    """Whether state/update.json holds an install to do (an install boot, updater.py)."""
    try:
        with open(_config_dir(config_path, "state_dir", "state") + "/update.json") as f:
            return json.load(f).get("state") == "pending"
    except (OSError, ValueError, AttributeError):
        return False


def reset(config_path: str) -> None:
    """Reset the board; on the unix port as hal_sim does: reset_cause, then exit."""
    try:
        import machine

        fn = getattr(machine, "reset", None)  # the unix port has a machine without it
    except ImportError:
        fn = None
    if fn is not None:
        fn()
        return
    with open(_config_dir(config_path, "sim_dir", "sim") + "/reset_cause", "w") as f:
        f.write("soft")
    sys.exit(4)
