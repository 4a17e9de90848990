# The install boot: one firmware install, from the signed metadata to a complete
# inactive slot put on trial (updater.py says why it runs in a boot of its own). main.py
# calls ``main(config_path, root)`` instead of the node when state/update.json holds a
# "pending" install; it ends in a reset either way, with the outcome in update.json
# ("installed" with the slot on trial in slots.json, or "failed" and the reason) for the
# node that boots next to report. Nothing is written to the slot until the metadata and
# the whole bundle have passed every check; the download goes to the state folder, named
# by the bundle's sha256, so a later boot resumes it. Three boots without an outcome (a
# reset in the middle, each time) fail the install.
#
#   metadata   GET timestamp.json -> <s>.snapshot.json -> <t>.targets.json: the first two
#              only say which targets version is current (an old one is refused by its
#              version, a forged one by its signatures)
#   checks     tufcheck.check_targets (keys, threshold, version, expiry), target (artifact,
#              release, size)
#   download   targets/<dir>/<sha256>.<name>, Range resume after a dropped link, at most
#              the signed length (an endless body is cut and refused)
#   artifact   length and sha256 of the file, then bundle.unpack into the slot

import gc
import json
import os

try:
    import bundle
    import clock
    import config
    import fetch
    import hal
    import timecheck
    import tufcheck
except ImportError:  # CPython: the firmware is the package ``firmware``
    from firmware import bundle, clock, config, fetch, hal, timecheck, tufcheck

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

_RETRIES = 5  # dropped transfers resumed before giving up, in one boot
_BOOTS = 3  # install boots without an outcome before the install fails
_META_MAX = 65536  # largest metadata file read
_CHUNK = 512
MARKER = "node.mpy"  # startup.py takes a slot as complete when it holds this (written last)
log = clock.log


class Refused(Exception):
    """The install did not happen: "<reason>: <detail>" for update_state's error."""


class _Buffer:
    def __init__(self) -> None:
        self.parts: "list[bytes]" = []

    def begin(self, first: int) -> None:
        self.parts = []

    def write(self, piece: bytes) -> None:
        self.parts.append(piece)


class _File:
    """The download file: appended to, or started over when the server sends all."""

    def __init__(self, path: str) -> None:
        self.path = path
        self.f: "Any" = None

    def begin(self, first: int) -> None:
        self.f = open(self.path, "ab" if first else "wb")  # noqa: SIM115 - closed below

    def write(self, piece: bytes) -> None:
        self.f.write(piece)

    def close(self) -> None:
        if self.f is not None:
            bundle.sync_file(self.f)
            self.f.close()
            self.f = None


def _size(path: str) -> int:
    try:
        return os.stat(path)[6]
    except OSError:
        return 0


def _json(url: str, ctx: "Any", feed: "Any") -> "Any":
    buf = _Buffer()
    try:
        fetch.get(url, ctx, buf, _META_MAX, feed=feed)
    except fetch.FetchError as exc:
        raise Refused("download: %s" % (exc,))  # noqa: B904
    try:
        return json.loads(b"".join(buf.parts))
    except ValueError as exc:
        raise Refused("bad_metadata: %s is not JSON: %s" % (url, exc))  # noqa: B904


def _meta_version(meta: "Any", name: str) -> int:
    try:
        value = meta["signed"]["meta"][name]["version"]
    except (KeyError, TypeError):
        value = None
    if not isinstance(value, int) or value < 1:
        raise Refused("bad_metadata: no version of %s" % (name,))
    return value


def targets_metadata(base: str, ctx: "Any", feed: "Any") -> "Any":
    stamp = _json(base + "/metadata/timestamp.json", ctx, feed)
    snap_v = _meta_version(stamp, "snapshot.json")
    del stamp
    snap = _json(base + "/metadata/%d.snapshot.json" % snap_v, ctx, feed)
    targets_v = _meta_version(snap, "targets.json")
    del snap
    gc.collect()
    return _json(base + "/metadata/%d.targets.json" % targets_v, ctx, feed)


def target_url(base: str, path: str, digest: str) -> str:
    """Where a consistent-snapshot repository keeps the target: <dir>/<sha256>.<name>."""
    slash = path.rfind("/")
    return base + "/targets/" + path[: slash + 1] + digest + "." + path[slash + 1 :]


def _clear_parts(state_dir: str, keep: str) -> None:
    for name in os.listdir(state_dir):
        if name.endswith(".part") and state_dir + "/" + name != keep:
            os.remove(state_dir + "/" + name)


class Job:
    """What an install needs of the board: config, state folder, TLS, the watchdog."""

    def __init__(self, cfg: "dict[str, Any]", board: "Any", ctx: "Any") -> None:
        self.cfg = cfg
        self.board = board
        self.ctx = ctx
        self.state_dir = cfg["state_dir"]

    def state(self, name: str) -> str:
        return self.state_dir + "/" + name

    def feed(self) -> None:
        self.board.watchdog_feed()


def download(job: Job, url: str, part: str, length: int) -> None:
    """Fetch ``url`` into ``part`` up to ``length`` bytes, resuming what is there."""
    tries = 0
    while True:
        have = _size(part)
        if have > length:
            os.remove(part)
            have = 0
        if have == length:
            return
        if have:
            log("I", "download resumes at byte %d of %d", have, length)
        sink = _File(part)
        try:
            fetch.get(url, job.ctx, sink, length, start=have, feed=job.feed)
        except fetch.FetchError as exc:
            if exc.limit:
                raise Refused("too_large: %s" % (exc,))  # noqa: B904
            tries += 1
            if tries > _RETRIES:
                raise Refused("download: %s" % (exc,))  # noqa: B904
            log("W", "download: %s (retry %d)", exc, tries)
            clock.sleep_ms(200 * tries)
            job.feed()
        finally:
            sink.close()


def sha256_file(job: Job, path: str) -> str:
    import hashlib

    h = hashlib.sha256()
    with open(path, "rb") as f:
        while True:
            piece = f.read(_CHUNK)
            if not piece:
                break
            h.update(piece)
            job.feed()
    return bundle.hex_digest(h)


def slot_dir(root: str, slot: str) -> str:
    return (root + "/" + slot) if root else slot


def fetch_and_check(job: Job, rec: "dict[str, Any]") -> "tuple[str, int]":
    """The verified bundle in the state folder: (its path, the targets version)."""
    cfg = job.cfg
    base = cfg["ota_url"].rstrip("/")
    if not job.board.network_up(cfg):  # a board joins Wi-Fi and sets its clock here
        raise Refused("download: network not up")
    now = clock.unix_time()
    last = timecheck.parse_last_good(config.read_json(job.state("last_good.json")))
    if not timecheck.clock_ok(now, timecheck.RELEASE_FLOOR, last):
        raise Refused("clock: not trusted, cannot judge expiry")
    saved = config.read_json(job.state("ota.json"))
    accepted = saved.get("targets_version", 0) if isinstance(saved, dict) else 0
    try:
        meta = targets_metadata(base, job.ctx, job.feed)
        signed = tufcheck.check_targets(
            meta, cfg["ota_keys"], cfg["ota_threshold"], accepted, now, job.feed
        )
        job.feed()
        meta_version = signed["version"]
        length, digest = tufcheck.target(
            signed, rec["target"], "firmware", rec["release"], cfg["ota_max_kb"] * 1024
        )
        del meta, signed
        gc.collect()
        part = job.state(digest[:16] + ".part")
        _clear_parts(job.state_dir, part)
        download(job, target_url(base, rec["target"], digest), part, length)
        tufcheck.check_artifact(length, digest, _size(part), sha256_file(job, part))
    except tufcheck.CheckError as exc:
        if exc.reason in (tufcheck.BAD_HASH, tufcheck.TOO_LARGE):
            _clear_parts(job.state_dir, "")  # a bad artifact is not kept for resuming
        raise Refused(str(exc))  # noqa: B904
    return part, meta_version


def unpack(root: str, slots: object, part: str, release: str) -> str:
    """The verified bundle into the inactive slot; returns the slot's name."""
    good = slots.get("good") if isinstance(slots, dict) else None
    slot = "b" if good == "a" else "a"
    directory = slot_dir(root, slot)
    try:
        header = bundle.unpack(part, directory)
        if header["release"] != release:
            raise bundle.BundleError("bundle is %s, wanted %s" % (header["release"], release))
    except (bundle.BundleError, OSError) as exc:
        _remove_marker(directory)
        raise Refused("bad_bundle: %s" % (exc,))  # noqa: B904
    finally:
        os.remove(part)
    return slot


def put_on_trial(state: object, slot: str, release: str, attempts: int) -> "dict[str, Any]":
    """slots.json after an install into ``slot``: on trial, no boots yet."""
    new: "dict[str, Any]" = dict(state) if isinstance(state, dict) else {}
    if new.get("good") not in ("a", "b"):
        new["good"] = "factory"
    releases = new.get("releases")
    releases = dict(releases) if isinstance(releases, dict) else {}
    releases[slot] = release
    new.update(releases=releases, trial=slot, attempts=0, max=attempts)
    new.pop("rolled_back", None)
    return new


def run(job: Job, root: str, rec: "dict[str, Any]") -> None:
    """The install of ``rec`` (state/update.json); records the outcome in ``rec``."""
    try:
        if rec.get("tries", 0) > _BOOTS:
            raise Refused("download: no outcome after %d install boots" % _BOOTS)
        part, meta_version = fetch_and_check(job, rec)
        slots_file = (root or ".") + "/slots.json"
        slots = config.read_json(slots_file)
        slot = unpack(root, slots, part, rec["release"])
        config.write_json(job.state("ota.json"), {"targets_version": meta_version})
        trial = put_on_trial(slots, slot, rec["release"], job.cfg["ota_attempts"])
        rec.update(state="installed", slot=slot)
        config.write_json(job.state("update.json"), rec)
        config.write_json(slots_file, trial)  # last: from here the next boot tries it
        log("I", "release %s written to slot %s, on trial", rec["release"], slot)
    except Refused as exc:
        rec.update(state="failed", error=str(exc))
    except (ValueError, TypeError, KeyError, IndexError, AttributeError) as exc:
        rec.update(state="failed", error="bad_metadata: %s: %s" % (type(exc).__name__, exc))
    if rec["state"] == "failed":
        log("W", "install of %s failed: %s", rec.get("release"), rec["error"])
        config.write_json(job.state("update.json"), rec)


def _tls(cfg: "dict[str, Any]") -> "Any":
    import ssl

    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.verify_mode = ssl.CERT_REQUIRED  # MicroPython does not verify unless told
    with open(cfg["ca"], "rb") as f:
        ctx.load_verify_locations(cadata=f.read())
    return ctx


def main(config_path: str, root: str = "") -> int:
    """The install boot (from main.py): install, record, reset."""
    cfg = config.load_config_file(config_path)
    board = hal.make_hal(cfg)
    board.watchdog_start(cfg["watchdog_ms"])
    job = Job(cfg, board, _tls(cfg))
    rec = config.read_json(job.state("update.json"))
    rec["tries"] = rec.get("tries", 0) + 1  # counted first: a reset mid-way counts
    config.write_json(job.state("update.json"), rec)
    log("I", "install boot %d for release %s", rec["tries"], rec.get("release"))
    gc.collect()
    run(job, root, rec)
    board.reset()
    return 0


def _remove_marker(directory: str) -> None:
    try:
        os.remove(directory + "/" + MARKER)
    except OSError:
        pass
