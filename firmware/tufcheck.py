# Partial verification of TUF targets metadata on the node (Uptane's "partial
# verification"): the node pins the targets role's ed25519 key ids and public keys and its
# threshold (from the repository's root, at provisioning) and checks, in this order:
#
#   1. form: a JSON object with "signed" and "signatures", "_type" "targets", spec
#      version 1.x, an int version, an expiry, a "targets" object;
#   2. signatures: at least ``threshold`` distinct pinned key ids with a good signature
#      over the canonical form of "signed" (canonjson, streamed into SHA-512);
#   3. version: never lower than the last version the node accepted (saved by the
#      caller once it has installed from it);
#   4. expiry: "expires" later than the node's trusted time;
#   5. the target: present, for this artifact and release, within the size limit;
#
# and, once the artifact is downloaded, its length and sha256 (``check_artifact``).
# Plain functions on dicts and bytes; each refusal is a CheckError "<reason>: <detail>".

try:
    import canonjson
    import ed25519
except ImportError:  # CPython: the firmware is the package ``firmware``
    from firmware import canonjson, ed25519

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

# reasons (update_state error "<reason>: <detail>")
BAD_METADATA = "bad_metadata"
BAD_SIGNATURE = "bad_signature"
OLD_METADATA = "old_metadata"
EXPIRED = "expired"
NO_TARGET = "no_target"
TOO_LARGE = "too_large"
BAD_HASH = "bad_hash"


class CheckError(Exception):
    """Refused: ``reason`` (one of the names above) and a ``detail`` for people."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(reason + ": " + detail)
        self.reason = reason
        self.detail = detail


def _days(year: int, month: int, day: int) -> int:
    """Days from 1970-01-01 to a proleptic Gregorian date."""
    y = year - (1 if month <= 2 else 0)
    era = y // 400
    yoe = y - era * 400
    doy = (153 * (month + (-3 if month > 2 else 9)) + 2) // 5 + day - 1
    doe = yoe * 365 + yoe // 4 - yoe // 100 + doy
    return era * 146097 + doe - 719468


def parse_time(text: object) -> int:
    """Unix seconds of a TUF time ``YYYY-MM-DDTHH:MM:SSZ``."""
    if not isinstance(text, str) or len(text) != 20 or text[10] != "T" or text[19] != "Z":
        raise CheckError(BAD_METADATA, "expires %r is not YYYY-MM-DDTHH:MM:SSZ" % (text,))
    try:
        year, month, day = int(text[0:4]), int(text[5:7]), int(text[8:10])
        hour, minute, second = int(text[11:13]), int(text[14:16]), int(text[17:19])
    except ValueError:
        raise CheckError(BAD_METADATA, "expires %r is not a time" % (text,))  # noqa: B904
    if not (1 <= month <= 12 and 1 <= day <= 31 and hour < 24 and minute < 60 and second < 61):
        raise CheckError(BAD_METADATA, "expires %r is out of range" % (text,))
    return _days(year, month, day) * 86400 + hour * 3600 + minute * 60 + second


def _signed_feed(signed: "Any") -> "Any":
    def feed(hasher: "Any") -> None:
        canonjson.write(signed, hasher.update)

    return feed


def check_signatures(
    meta: "dict[str, Any]", keys: "dict[str, str]", threshold: int, tick: "Any" = None
) -> int:
    """How many pinned keys signed ``meta["signed"]``; CheckError below ``threshold``."""
    sigs = meta.get("signatures")
    if not isinstance(sigs, list):
        raise CheckError(BAD_METADATA, "no signatures list")
    good: "list[str]" = []
    feed = _signed_feed(meta["signed"])
    for sig in sigs:
        if not isinstance(sig, dict):
            continue
        keyid = sig.get("keyid")
        value = sig.get("sig")
        if not isinstance(keyid, str) or keyid in good or keyid not in keys:
            continue
        if not isinstance(value, str) or len(value) != 128:
            continue
        try:
            ok = ed25519.verify(bytes.fromhex(keys[keyid]), bytes.fromhex(value), feed, tick)
        except ValueError:  # not hex
            ok = False
        if ok:
            good.append(keyid)
        if len(good) >= threshold:
            return len(good)
    raise CheckError(BAD_SIGNATURE, "%d of %d pinned targets keys signed" % (len(good), threshold))


def check_targets(
    meta: object,
    keys: "dict[str, str]",
    threshold: int,
    accepted: int,
    now: float,
    tick: "Any" = None,
) -> "dict[str, Any]":
    """Checks 1-4 above; returns the verified "signed" part. ``tick``: see ed25519."""
    if not isinstance(meta, dict) or not isinstance(meta.get("signed"), dict):
        raise CheckError(BAD_METADATA, "not TUF metadata")
    signed = meta["signed"]
    if signed.get("_type") != "targets":
        raise CheckError(BAD_METADATA, "_type %r, wanted targets" % (signed.get("_type"),))
    spec = signed.get("spec_version")
    if not isinstance(spec, str) or spec.split(".")[0] != "1":
        raise CheckError(BAD_METADATA, "spec_version %r not supported" % (spec,))
    version = signed.get("version")
    if not isinstance(version, int) or isinstance(version, bool) or version < 1:
        raise CheckError(BAD_METADATA, "version %r is not a positive int" % (version,))
    if not isinstance(signed.get("targets"), dict):
        raise CheckError(BAD_METADATA, "no targets object")
    expires = parse_time(signed.get("expires"))
    if threshold < 1 or not keys:
        raise CheckError(BAD_SIGNATURE, "no pinned targets keys")
    check_signatures(meta, keys, threshold, tick)
    if version < accepted:
        raise CheckError(
            OLD_METADATA, "targets version %d below the accepted %d" % (version, accepted)
        )
    if expires <= now:
        raise CheckError(EXPIRED, "targets metadata expired at %s" % (signed["expires"],))
    return signed


def target(
    signed: "dict[str, Any]", path: str, artifact: str, release: str, max_bytes: int
) -> "tuple[int, str]":
    """Check 5: the target's (length, sha256 hex) for this artifact and release."""
    info = signed["targets"].get(path)
    if not isinstance(info, dict):
        raise CheckError(NO_TARGET, "%s is not in the targets metadata" % (path,))
    length = info.get("length")
    hashes = info.get("hashes")
    digest = hashes.get("sha256") if isinstance(hashes, dict) else None
    if not isinstance(length, int) or isinstance(length, bool) or length < 0:
        raise CheckError(BAD_METADATA, "%s has no valid length" % (path,))
    if not isinstance(digest, str) or len(digest) != 64:
        raise CheckError(BAD_METADATA, "%s has no sha256" % (path,))
    custom = info.get("custom")
    ours = custom.get("camfleet") if isinstance(custom, dict) else None
    if not isinstance(ours, dict):
        raise CheckError(BAD_METADATA, "%s has no camfleet custom field" % (path,))
    if ours.get("artifact") != artifact or ours.get("release") != release:
        detail = "%s is %s %s, wanted %s %s" % (
            path,
            ours.get("artifact"),
            ours.get("release"),
            artifact,
            release,
        )
        raise CheckError(BAD_METADATA, detail)
    if length > max_bytes:
        raise CheckError(TOO_LARGE, "%s is %d bytes, limit %d" % (path, length, max_bytes))
    return length, digest.lower()


def check_artifact(length: int, digest: str, got_length: int, got_digest: str) -> None:
    """The downloaded artifact is exactly what the signed metadata says."""
    if got_length > length:
        raise CheckError(TOO_LARGE, "got more than the signed %d bytes" % (length,))
    if got_length != length:
        raise CheckError(BAD_HASH, "got %d bytes, signed length %d" % (got_length, length))
    if got_digest != digest:
        raise CheckError(BAD_HASH, "sha256 %s, signed %s" % (got_digest[:16], digest[:16]))
