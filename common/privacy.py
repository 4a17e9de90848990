"""Privacy by policy (issue 20), the parts the box, the server and the technician's tool share:
the snapshot policies, mask polygons and their checks, the privacy section of a desired
config, and the test that an image is anonymised (read from its JPEG header, no decoding).

Policies: ``none`` (no image leaves the box), ``anonymised`` (the default: every image that
leaves is a thumbnail at most ``ANON_MAX_SIDE`` pixels on its longer side, where no face,
person or plate can be recognised), ``full`` (images as the camera saw them, privacy masks
blacked out; only by an audited operator decision naming its legal basis).

Masks are polygons in frame fractions (x right, y down, 0..1): ``privacy`` masks are
blacked out in every frame before anything looks at it, ``motion`` masks never open the
motion gate. Every check raises ``MaskError`` with what was wrong and the counts.
"""

from __future__ import annotations

import hashlib
import json
import math
from pathlib import Path
from typing import Any

# the mask editor (masks.js, masks.css): the dashboard's device page and the technician's tool
STATIC = Path(__file__).resolve().parent / "static"

NONE = "none"
ANONYMISED = "anonymised"
FULL = "full"
POLICIES = (NONE, ANONYMISED, FULL)
DEFAULT_POLICY = ANONYMISED

PRIVACY = "privacy"
MOTION = "motion"
MASK_KINDS = (PRIVACY, MOTION)

# limits of a camera's masks (the desired config that carries them is at most 16 KiB)
MAX_POLYGONS = 32  # of each kind
MAX_POINTS = 64  # corners of one polygon
MAX_TOTAL_POINTS = 600  # corners of all a camera's polygons
MIN_AREA = 1e-5  # a smaller polygon (a line, a point) is degenerate
DIGITS = 4  # coordinates are kept to 1/10,000 of the frame

# an anonymised image: its longer side at most this (the detector finds nobody in a 12-pixel
# thumbnail of a person however it is scaled up; at 16 pixels it found one, at 0.42, in a
# snapshot crop: tests/test_privacy_box.py), and this small
ANON_MAX_SIDE = 12
ANON_MAX_BYTES = 2048

Polygon = list[list[float]]
Masks = dict[str, list[Polygon]]


class MaskError(ValueError):
    """Masks, a policy or a privacy section that cannot be used; says what and how many."""


def _number(value: object, where: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise MaskError(f"{where}: coordinates must be numbers, got {type(value).__name__}")
    v = float(value)
    if not math.isfinite(v) or not 0.0 <= v <= 1.0:
        raise MaskError(f"{where}: coordinate {value!r} outside the frame (0..1)")
    return round(v, DIGITS)


def area(poly: Polygon) -> float:
    """The polygon's area (shoelace), in frame fractions."""
    s = 0.0
    for i, (x0, y0) in enumerate(poly):
        x1, y1 = poly[(i + 1) % len(poly)]
        s += x0 * y1 - x1 * y0
    return abs(s) / 2.0


def _orient(a: list[float], b: list[float], c: list[float]) -> float:
    return (b[0] - a[0]) * (c[1] - a[1]) - (b[1] - a[1]) * (c[0] - a[0])


def _cross(a: list[float], b: list[float], c: list[float], d: list[float]) -> bool:
    """Whether segments ab and cd cross at a point inside both (touching ends aside)."""
    d1, d2 = _orient(c, d, a), _orient(c, d, b)
    d3, d4 = _orient(a, b, c), _orient(a, b, d)
    return ((d1 > 0 > d2) or (d1 < 0 < d2)) and ((d3 > 0 > d4) or (d3 < 0 < d4))


def self_crossing(poly: Polygon) -> tuple[int, int] | None:
    """The first two edges of ``poly`` that cross each other, or None."""
    n = len(poly)
    for i in range(n):
        a, b = poly[i], poly[(i + 1) % n]
        for j in range(i + 2, n):
            if i == 0 and j == n - 1:
                continue  # neighbours through the closing corner
            if _cross(a, b, poly[j], poly[(j + 1) % n]):
                return i, j
    return None


def check_polygon(raw: object, where: str) -> Polygon:
    """One polygon: a list of [x, y] corners in 0..1, at least 3 distinct, not crossing
    itself, with an area. Repeated corners (and a closing copy of the first) are dropped."""
    if not isinstance(raw, list):
        raise MaskError(f"{where}: a polygon is a list of [x, y] corners")
    if len(raw) > MAX_POINTS + 1:
        raise MaskError(f"{where}: {len(raw)} corners; at most {MAX_POINTS}")
    poly: Polygon = []
    for k, point in enumerate(raw):
        if not isinstance(point, list | tuple) or len(point) != 2:
            raise MaskError(f"{where}: corner {k} is not an [x, y] pair")
        p = [_number(point[0], where), _number(point[1], where)]
        if not poly or poly[-1] != p:
            poly.append(p)
    if len(poly) > 1 and poly[0] == poly[-1]:
        poly.pop()
    if len(poly) < 3:
        raise MaskError(f"{where}: {len(poly)} distinct corners; a polygon needs at least 3")
    if len(poly) > MAX_POINTS:
        raise MaskError(f"{where}: {len(poly)} corners; at most {MAX_POINTS}")
    crossing = self_crossing(poly)
    if crossing is not None:
        raise MaskError(f"{where}: edges {crossing[0]} and {crossing[1]} cross each other")
    if area(poly) < MIN_AREA:
        raise MaskError(f"{where}: degenerate (area {area(poly):.2g} of the frame)")
    return poly


def check_masks(raw: object) -> Masks:
    """A camera's masks: {"privacy": [polygon, ...], "motion": [polygon, ...]} (either may be
    left out), checked and normalised, or MaskError."""
    if raw is None:
        return {PRIVACY: [], MOTION: []}
    if not isinstance(raw, dict):
        raise MaskError("masks must be an object with 'privacy' and 'motion' lists")
    unknown = sorted(set(raw) - set(MASK_KINDS))
    if unknown:
        raise MaskError(f"unknown mask kinds {unknown}; known: {', '.join(MASK_KINDS)}")
    out: Masks = {}
    for kind in MASK_KINDS:
        polys = raw.get(kind, [])
        if not isinstance(polys, list):
            raise MaskError(f"{kind} masks must be a list of polygons")
        if len(polys) > MAX_POLYGONS:
            raise MaskError(f"{len(polys)} {kind} masks; at most {MAX_POLYGONS}")
        out[kind] = [check_polygon(p, f"{kind} mask {i}") for i, p in enumerate(polys)]
    corners = sum(len(p) for polys in out.values() for p in polys)
    if corners > MAX_TOTAL_POINTS:
        raise MaskError(f"{corners} corners in all masks; at most {MAX_TOTAL_POINTS}")
    return out


def masks_digest(masks: Masks) -> str:
    """SHA-256 of the masks' canonical JSON (what the commissioning record and the audit
    log name)."""
    data = json.dumps(masks, sort_keys=True, separators=(",", ":")).encode()
    return hashlib.sha256(data).hexdigest()


def check_policy(policy: object) -> str:
    if policy not in POLICIES:
        raise MaskError(f"snapshot policy {policy!r}; one of {', '.join(POLICIES)}")
    return str(policy)


def section(policy: str, policy_version: int, masks: Masks, masks_version: int) -> dict[str, Any]:
    """The ``privacy`` section of a device's desired config."""
    return {
        "policy": policy,
        "policy_version": policy_version,
        "masks": masks,
        "masks_version": masks_version,
    }


def _version(value: object, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value < 2**31:
        raise MaskError(f"{name} must be an integer 0..2**31")
    return value


def check_section(raw: object) -> dict[str, Any]:
    """A desired config's ``privacy`` section, checked (the box refuses the whole config
    when it is wrong: it keeps the policy and masks it has)."""
    if not isinstance(raw, dict):
        raise MaskError("privacy must be an object")
    unknown = sorted(set(raw) - {"policy", "policy_version", "masks", "masks_version"})
    if unknown:
        raise MaskError(f"unknown privacy keys {unknown}")
    return section(
        check_policy(raw.get("policy")),
        _version(raw.get("policy_version", 0), "policy_version"),
        check_masks(raw.get("masks")),
        _version(raw.get("masks_version", 0), "masks_version"),
    )


def marking(policy: str, policy_version: int, masks_version: int) -> dict[str, Any]:
    """What the box says about an image it sends (``privacy`` in a snapshot's data)."""
    return {"policy": policy, "policy_version": policy_version, "masks_version": masks_version}


# ---------------------------------------------------------------- JPEG header
_SOF = {0xC0, 0xC1, 0xC2, 0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF}
_STANDALONE = {0x01, *range(0xD0, 0xD8)}


def jpeg_frames(data: bytes) -> list[tuple[int, int]]:
    """(width, height) of every frame header of a JPEG, and checks that it is one plain
    JPEG: APP0 (JFIF) but no other application segment (no EXIF thumbnail), nothing after
    the end marker. ValueError when it is not."""
    if data[:2] != b"\xff\xd8":
        raise ValueError("not a JPEG (no SOI)")
    frames: list[tuple[int, int]] = []
    pos, n = 2, len(data)
    while pos + 4 <= n:
        if data[pos] != 0xFF:
            raise ValueError(f"no marker at byte {pos}")
        marker = data[pos + 1]
        if marker == 0xFF:
            pos += 1
            continue
        if marker in _STANDALONE:
            pos += 2
            continue
        if marker == 0xD9:
            break
        length = (data[pos + 2] << 8) | data[pos + 3]
        if length < 2 or pos + 2 + length > n:
            raise ValueError("segment cut short")
        if 0xE1 <= marker <= 0xEF:
            raise ValueError(f"application segment APP{marker - 0xE0} (may carry an image)")
        if marker in _SOF:
            if length < 8:
                raise ValueError("frame header cut short")
            height = (data[pos + 5] << 8) | data[pos + 6]
            width = (data[pos + 7] << 8) | data[pos + 8]
            frames.append((width, height))
        pos += 2 + length
        if marker == 0xDA:  # entropy-coded data up to the next real marker
            while pos + 1 < n:
                if data[pos] == 0xFF and data[pos + 1] not in (0x00, *range(0xD0, 0xD8)):
                    break
                pos += 1
    if data[pos : pos + 2] != b"\xff\xd9" or pos + 2 != n:
        raise ValueError("no end marker, or bytes after it")
    return frames


def anonymised_problem(data: bytes) -> str:
    """Why ``data`` is not an anonymised image ("" when it is): one JPEG frame, its longer
    side at most ANON_MAX_SIDE pixels, at most ANON_MAX_BYTES bytes."""
    if len(data) > ANON_MAX_BYTES:
        return f"{len(data)} bytes, more than {ANON_MAX_BYTES}"
    try:
        frames = jpeg_frames(data)
    except ValueError as exc:
        return f"not a plain JPEG: {exc}"
    if len(frames) != 1:
        return f"{len(frames)} frame headers"
    w, h = frames[0]
    if max(w, h) > ANON_MAX_SIDE or min(w, h) < 1:
        return f"{w}x{h} pixels, larger than {ANON_MAX_SIDE}"
    return ""
