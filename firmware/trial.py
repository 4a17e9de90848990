# The node's side of its own updates, loaded only while there is something to do (the
# node's heap has no room to keep it): report what the boot found (a release on trial, a
# rollback, a failed install) on update/state, commit the trial after a healthy run or
# reset it at its deadline, and hand update/desired to updater.py (loaded for that
# moment only). See updater.py for the whole flow.
#
#   state/update.json       the update in hand: campaign, release, target, trial_s, state
#                           (pending, installed, trial, committed, failed, rolled_back)
#   <app root>/slots.json   startup.py's selection: good, trial, attempts, booted

import sys

try:
    import clock
    import config
    import version
except ImportError:  # CPython: the firmware is the package ``firmware``
    from firmware import clock, config, version

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

log = clock.log


def committed(sel: "dict[str, Any]") -> "dict[str, Any]":
    """slots.json once the release on trial is healthy: its slot becomes the good one."""
    new = dict(sel)
    new.update(good=sel["trial"], trial=None, attempts=0)
    return new


class Trial:
    def __init__(self, node: "Any") -> None:
        self.node = node
        self.path = (node.app_root or ".") + "/slots.json"
        sel = config.read_json(self.path)
        rec = config.read_json(node._state("update.json"))
        self.slots: "dict[str, Any]" = sel if isinstance(sel, dict) else {}
        self.rec: "dict[str, Any]" = rec if isinstance(rec, dict) else {}
        self.trial_ms = 0  # > 0: a release on trial, reset when not committed by then
        sel, rec = self.slots, self.rec
        state = rec.get("state")
        if sel.get("trial") is not None and sel.get("booted") == sel.get("trial"):
            self.trial_ms = int((rec.get("trial_s") or node.cfg["ota_trial_s"]) * 1000)
            if state == "installed":
                self.report("installing", progress=100)
                self.save("trial")
            self.report("trial", attempt=sel.get("attempts"))
        elif isinstance(sel.get("rolled_back"), dict):
            self.save("rolled_back", "unhealthy: %s" % (sel["rolled_back"].get("why"),))
            sel.pop("rolled_back")
            config.write_json(self.path, sel)
        elif state == "failed" and not rec.get("reported"):
            self.save("failed", rec.get("error"))

    def save(self, state: str, error: "str | None" = None) -> None:
        """Record ``state`` in state/update.json; a final state is reported as well."""
        rec = self.rec
        rec["state"] = state
        if error:
            rec["error"] = error
        if state in ("committed", "failed", "rolled_back"):
            rec["reported"] = True
            self.report(state, error)
        config.write_json(self.node._state("update.json"), rec)

    def report(self, state: str, error: "str | None" = None, **extra: "Any") -> None:
        rec = self.rec
        body: "dict[str, Any]" = {
            "campaign": rec.get("campaign") or "unknown",
            "artifact": "firmware",
            "release": rec.get("release") or version.VERSION,
            "state": state,
            "running": version.VERSION,
        }
        for key, value in extra.items():
            if value is not None:
                body[key] = value
        if error:
            body["error"] = error[:200]
        log("I", "update %s: %s %s", body["release"], state, error or "")
        self.node.reply("update_state", body)

    def check(self, now: int) -> None:
        """Past the trial time without a commit: reset (startup.py counts the attempts)."""
        node = self.node
        if self.trial_ms and node.uptime.ms > self.trial_ms and node.reset_note is None:
            log("W", "release on trial not committed in %d ms: reset", self.trial_ms)
            node.reset_note = {"note": "update trial deadline"}
            node._reset_by = now  # not healthy: what waits to be sent need not hold it

    def step(self) -> None:
        """On a connected link: commit a healthy trial; hand a desired release over."""
        node = self.node
        if self.trial_ms and node.seq >= node.cfg["ota_commit_heartbeats"]:
            self.slots = committed(self.slots)
            config.write_json(self.path, self.slots)
            self.trial_ms = 0
            self.save("committed")
        body = node.ota_msg
        if body is None or node.reset_note is not None:
            return
        node.ota_msg = None
        if self.trial_ms:
            self.report("trial", attempt=self.slots.get("attempts"))
            return
        try:
            import updater
        except ImportError:
            from firmware import updater
        try:
            updater.handle(self, body)
        finally:
            sys.modules.pop("updater", None)  # its RAM back

    def idle(self) -> bool:
        """Nothing left to commit or answer: the node may drop this module."""
        return not self.trial_ms and self.node.ota_msg is None
