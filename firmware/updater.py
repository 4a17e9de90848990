# The node's own updates (OTA of its firmware): what happens to update/desired.
#
# The install does not fit beside the running node in a microcontroller's heap (the
# checks, ed25519, the download and the unpacker are about as big as the node), so it
# runs in a boot of its own, and even this module is loaded only while a desired release
# is looked at (trial.py hands it over and drops it again):
#
#   1. update/desired (retained) arrives; ``handle`` answers what the node already knows
#      (this release is committed; this campaign's release failed or rolled back:
#      answered again, not retried), refuses what needs no download (not configured,
#      downgrade), else saves it "pending" in state/update.json, reports "downloading"
#      and resets;
#   2. main.py sees the pending install and runs install.main instead of the node: signed
#      metadata, download (Range resume), checks, unpack into the inactive slot, the slot
#      on trial in slots.json (or "failed" with the reason), reset;
#   3. startup.py boots the trial slot; the new release reports "installing" and "trial",
#      and commits (good = trial) after ``ota_commit_heartbeats`` heartbeats on a
#      connected link (trial.py); past its trial time it resets, and startup.py rolls back
#      once the attempts are used up; the release booted then reports "rolled_back".

try:
    import clock
    import version
except ImportError:  # CPython: the firmware is the package ``firmware``
    from firmware import clock, version

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

log = clock.log


def release_key(release: str) -> "list[int]":
    """A release string as numbers for ordering: "0.10.2" > "0.9.7" (non-digits are 0)."""
    out = []
    for part in release.replace("-", ".").replace("+", ".").split("."):
        digits = ""
        for ch in part:
            if "0" <= ch <= "9":
                digits += ch
            else:
                break
        out.append(int(digits) if digits else 0)
    return out


def handle(ota: "Any", body: "dict[str, Any]") -> None:
    """A desired release (not during a trial: trial.py answers those); ``ota`` is the
    node's trial.Trial."""
    node = ota.node
    release = body["release"]
    if body["artifact"] != "firmware":
        log("W", "update of %s ignored: a node installs firmware only", body["artifact"])
        return
    rec = ota.rec
    same = rec.get("campaign") == body["campaign"] and rec.get("release") == release
    if release == version.VERSION:
        if same and rec.get("state") == "committed":
            ota.report("committed")  # nothing new to save
            return
        ota.rec = {"campaign": body["campaign"], "release": release}
        ota.save("committed")
        return
    if same and rec.get("state") in ("failed", "rolled_back"):
        ota.report(rec["state"], rec.get("error"))  # answered again, not retried
        return
    cfg = node.cfg
    ota.rec = {
        "campaign": body["campaign"],
        "release": release,
        "target": body["target"],
        "trial_s": body.get("trial_s", cfg["ota_trial_s"]),
    }
    if not cfg["ota_url"] or not cfg["ota_keys"]:
        ota.save("failed", "not_configured: no ota_url or ota_keys in the config")
    elif not body.get("allow_downgrade") and release_key(release) < release_key(version.VERSION):
        ota.save("failed", "downgrade: %s is older than %s" % (release, version.VERSION))
    else:
        ota.rec["tries"] = 0
        ota.save("pending")
        ota.report("downloading", progress=0)
        node.reset_note = {"note": "update to " + release}
        node._reset_by = clock.ticks_add(clock.ticks_ms(), 30000)
