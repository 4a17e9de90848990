# Cases for the node's update checks (canonjson, tufcheck, bundle, startup, updater), under
# CPython and MicroPython (tests/mp/run.py). They read real files that the pytest side
# made with python-tuf (fleet_server.ota.tufrepo) and firmware.bundle into
# $MP_CASES_TMP/fixtures: targets.json (signed targets metadata), canonical.bin (python-
# tuf's canonical bytes of its "signed"), node.bundle (a firmware bundle) and info.json
# (pinned keys, threshold, target path, release, bundle length and files).

import hashlib
import json
import os

from firmware import bundle, canonjson, install, startup, trial, tufcheck, updater
from tests.mp.checks import exists, raises, tmp_dir

T = tufcheck


def _fixture(name):
    return os.getenv("MP_CASES_TMP") + "/fixtures/" + name


def _info():
    with open(_fixture("info.json")) as f:
        return json.load(f)


def _meta():
    with open(_fixture("targets.json")) as f:
        return json.load(f)


def _now(info):
    return T.parse_time(info["expires"]) - 86400


def _refused(reason, fn, *args):
    exc = raises(T.CheckError, fn, *args)
    assert exc.reason == reason, str(exc)
    return exc


def _sha256_file(path):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while True:
            piece = f.read(512)
            if not piece:
                break
            h.update(piece)
    return bundle.hex_digest(h)


# ---------------------------------------------------------------- canonical JSON


def test_canonical_form_equals_python_tuf():
    with open(_fixture("canonical.bin"), "rb") as f:
        want = f.read()
    assert canonjson.encode(_meta()["signed"]) == want


def test_canonical_escapes_only_quote_and_backslash():
    value = {"b": ['q"s\\', "tab\there", "\u00e9\u2603"], "a": True, "c": None, "d": -3}
    want = '{"a":true,"b":["q\\"s\\\\","tab\there","\u00e9\u2603"],"c":null,"d":-3}'
    assert canonjson.encode(value) == want.encode()


def test_canonical_refuses_floats():
    raises(canonjson.CanonicalError, canonjson.encode, {"x": 1.5})


# ---------------------------------------------------------------- targets metadata


def test_good_metadata_passes():
    info = _info()
    signed = T.check_targets(_meta(), info["keys"], info["threshold"], 0, _now(info))
    length, digest = T.target(signed, info["path"], "firmware", info["release"], 1 << 20)
    assert length == info["length"]
    assert digest == _sha256_file(_fixture("node.bundle"))
    T.check_artifact(length, digest, length, _sha256_file(_fixture("node.bundle")))


def test_wrong_key_is_refused():
    info = _info()
    keys = {}
    for kid in info["keys"]:  # the same key ids, another public key
        keys[kid] = "3d4017c3e843895a92b70aa74d1b7ebc9c982ccf2ec4968cc0cd55f12af4660c"
    _refused(T.BAD_SIGNATURE, T.check_targets, _meta(), keys, 1, 0, _now(info))
    other = {"ab" * 32: "3d4017c3e843895a92b70aa74d1b7ebc9c982ccf2ec4968cc0cd55f12af4660c"}
    _refused(T.BAD_SIGNATURE, T.check_targets, _meta(), other, 1, 0, _now(info))


def test_tampered_metadata_is_refused():
    info = _info()
    meta = _meta()
    meta["signed"]["targets"][info["path"]]["length"] += 1
    _refused(T.BAD_SIGNATURE, T.check_targets, meta, info["keys"], 1, 0, _now(info))
    meta = _meta()
    sig = meta["signatures"][0]["sig"]
    meta["signatures"][0]["sig"] = ("0" if sig[0] != "0" else "1") + sig[1:]
    _refused(T.BAD_SIGNATURE, T.check_targets, meta, info["keys"], 1, 0, _now(info))


def test_unsigned_metadata_is_refused():
    info = _info()
    meta = _meta()
    meta["signatures"] = []
    _refused(T.BAD_SIGNATURE, T.check_targets, meta, info["keys"], 1, 0, _now(info))
    meta["signatures"] = [{"keyid": next(iter(info["keys"])), "sig": "zz" * 64}]  # not hex
    _refused(T.BAD_SIGNATURE, T.check_targets, meta, info["keys"], 1, 0, _now(info))


def test_below_threshold_is_refused():
    info = _info()
    exc = _refused(T.BAD_SIGNATURE, T.check_targets, _meta(), info["keys"], 2, 0, _now(info))
    assert "1 of 2" in str(exc)
    meta = _meta()
    meta["signatures"].append(meta["signatures"][0])  # one key twice is still one
    _refused(T.BAD_SIGNATURE, T.check_targets, meta, info["keys"], 2, 0, _now(info))


def test_older_version_is_refused():
    info = _info()
    version = _meta()["signed"]["version"]
    T.check_targets(_meta(), info["keys"], 1, version, _now(info))  # the same again: fine
    exc = _refused(T.OLD_METADATA, T.check_targets, _meta(), info["keys"], 1, version + 1, 0)
    assert str(version) in str(exc)


def test_expired_is_refused():
    info = _info()
    later = T.parse_time(info["expires"]) + 1
    _refused(T.EXPIRED, T.check_targets, _meta(), info["keys"], 1, 0, later)


def test_not_targets_metadata_is_refused():
    info = _info()
    meta = _meta()
    meta["signed"]["_type"] = "root"
    _refused(T.BAD_METADATA, T.check_targets, meta, info["keys"], 1, 0, _now(info))
    meta = _meta()
    meta["signed"]["spec_version"] = "2.0.0"
    _refused(T.BAD_METADATA, T.check_targets, meta, info["keys"], 1, 0, _now(info))
    _refused(T.BAD_METADATA, T.check_targets, [], info["keys"], 1, 0, _now(info))
    _refused(T.BAD_SIGNATURE, T.check_targets, _meta(), {}, 1, 0, _now(info))


def test_target_checks():
    info = _info()
    signed = T.check_targets(_meta(), info["keys"], 1, 0, _now(info))
    path, release = info["path"], info["release"]
    _refused(T.NO_TARGET, T.target, signed, path + "x", "firmware", release, 1 << 20)
    _refused(T.BAD_METADATA, T.target, signed, path, "agent", release, 1 << 20)
    _refused(T.BAD_METADATA, T.target, signed, path, "firmware", "9.9.9", 1 << 20)
    _refused(T.TOO_LARGE, T.target, signed, path, "firmware", release, info["length"] - 1)


def test_wrong_length_or_sha256_is_refused():
    info = _info()
    n = info["length"]
    good = _sha256_file(_fixture("node.bundle"))
    _refused(T.BAD_HASH, T.check_artifact, n, good, n - 1, good)
    _refused(T.TOO_LARGE, T.check_artifact, n, good, n + 1, good)
    _refused(T.BAD_HASH, T.check_artifact, n, good, n, "0" * 64)


def test_times_and_releases():
    assert T.parse_time("1970-01-01T00:00:00Z") == 0
    assert T.parse_time("2026-11-28T20:45:00Z") == 1795898700  # calendar.timegm
    assert T.parse_time("2000-02-29T12:00:00Z") == 951825600
    _refused(T.BAD_METADATA, T.parse_time, "2026-11-28 20:45:00")
    assert updater.release_key("0.10.0") > updater.release_key("0.9.9")
    assert updater.release_key("0.1.9") < updater.release_key("0.2.0")
    assert updater.release_key("1.2.0-rc1") == [1, 2, 0, 0]


# ---------------------------------------------------------------- the bundle


def test_bundle_unpacks_every_file_with_its_hash():
    info = _info()
    out = tmp_dir() + "/slot"
    header = bundle.unpack(_fixture("node.bundle"), out)
    assert header["release"] == info["release"]
    names = sorted(os.listdir(out))
    assert names == sorted(e[0] for e in info["files"])
    assert "node.mpy" in names and "updater.mpy" in names
    for name, size, digest in info["files"]:
        assert _sha256_file(out + "/" + name) == digest, name
        assert os.stat(out + "/" + name)[6] == size
    assert info["files"][-1][0] == startup.MARKER  # written last: present means complete


def _copy(src, dst, flip_at=-1, stop_at=-1):
    """Copy in pieces (a 128 KiB heap holds no whole bundle), a byte flipped or cut."""
    at = 0
    with open(src, "rb") as f, open(dst, "wb") as out:
        while True:
            piece = f.read(512)
            if not piece or (0 <= stop_at <= at):
                break
            if at <= flip_at < at + len(piece):
                piece = bytearray(piece)
                piece[flip_at - at] ^= 0xFF
            out.write(piece)
            at += len(piece)


def test_corrupt_bundle_is_refused():
    size = _info()["length"]
    base = tmp_dir()
    _copy(_fixture("node.bundle"), base + "/bad.bundle", flip_at=size // 2)
    raises(bundle.BundleError, bundle.unpack, base + "/bad.bundle", base + "/slot")
    assert not exists(base + "/slot/" + startup.MARKER)
    _copy(_fixture("node.bundle"), base + "/short.bundle", stop_at=size // 3)
    raises(bundle.BundleError, bundle.unpack, base + "/short.bundle", base + "/slot2")
    assert not exists(base + "/slot2/" + startup.MARKER)
    with open(base + "/other.bundle", "wb") as f:
        f.write(b"PK\x03\x04 not a bundle")
    raises(bundle.BundleError, bundle.unpack, base + "/other.bundle", base + "/slot3")


def test_bundle_header_names_are_checked():
    good = {"format": 1, "release": "1", "files": [["node.mpy", 1, "0" * 64]]}
    bundle.check_header(good)
    for name in ("../startup.py", "a/b.mpy", "main", "Node.mpy", ""):
        bad = {"format": 1, "release": "1", "files": [[name, 1, "0" * 64]]}
        raises(bundle.BundleError, bundle.check_header, bad)


# ---------------------------------------------------------------- A/B selection


def _ok(slots):
    return lambda s: s == "factory" or s in slots


def test_no_or_corrupt_selection_boots_factory():
    for saved in (None, [], {"good": "zz"}, {"good": "a"}):  # "a" not complete here
        new = startup.decide(saved, _ok(()))
        assert new["booted"] == "factory" and new["trial"] is None, saved


def test_trial_boots_and_counts_then_rolls_back():
    state = install.put_on_trial({"good": "factory"}, "a", "9.1.0", 3)
    for attempt in (1, 2, 3):
        state = startup.decide(state, _ok(("a",)))
        assert state["booted"] == "a" and state["attempts"] == attempt
    state = startup.decide(state, _ok(("a",)))
    assert state["booted"] == "factory" and state["trial"] is None
    assert state["rolled_back"]["slot"] == "a"


def test_commit_makes_the_trial_good():
    state = startup.decide(install.put_on_trial(None, "a", "9.1.0", 3), _ok(("a",)))
    state = trial.committed(state)
    assert startup.decide(state, _ok(("a",)))["booted"] == "a"
    nxt = install.put_on_trial(state, "b", "9.2.0", 2)
    assert nxt["trial"] == "b" and nxt["good"] == "a"
    assert startup.decide(nxt, _ok(("a",)))["booted"] == "a"  # "b" incomplete: dropped
    assert startup.decide(nxt, _ok(("a",)))["rolled_back"]["why"] == "slot incomplete"


def test_start_writes_selection_and_picks_the_slot():
    root = tmp_dir()
    assert startup.start(root) == "factory"
    assert not exists(root + "/slots.json")  # nothing to record: the tree stays as is
    os.mkdir(root + "/a")
    with open(root + "/a/" + startup.MARKER, "wb") as f:
        f.write(b"x")
    startup.write(root, install.put_on_trial(None, "a", "9.1.0", 2))
    import sys

    saved = list(sys.path)
    try:
        assert startup.start(root) == "a"
        assert sys.path[0] == root + "/a"
    finally:
        sys.path[:] = saved
    assert startup.read(root)["attempts"] == 1
    with open(root + "/slots.json", "w") as f:
        f.write("{not json")
    assert startup.start(root) == "factory"
