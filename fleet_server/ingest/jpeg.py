"""Is a snapshot a JPEG? Checked at ingest, before it is stored and ever served.

``jpeg_problem`` reads the bytes as a JPEG decoder reads its header: the SOI magic
(``FF D8 FF``), then marker segments, each inside the data, up to a start-of-frame whose
precision, size and components are sane, before any scan; and the image must end with EOI
(``FF D9``). It decodes no pixels (no decompression bombs) and returns the reason for a
refusal, or None. A snapshot that fails is dropped from its event (the event is kept, with
``snapshot_refused`` saying why); what is served as ``image/jpeg`` has passed this check,
and every response carries ``nosniff`` (fleet_server/access/headers.py).
"""

from __future__ import annotations

import base64
import binascii
from typing import Any

MAX_SNAPSHOT_BYTES = 2 * 1024 * 1024
# start-of-frame markers (baseline, extended, progressive, lossless; Huffman and arithmetic)
_SOF = {0xC0, 0xC1, 0xC2, 0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF}
_STANDALONE = {0x01, *range(0xD0, 0xD8)}  # TEM, RSTn: no length
_MAX_SEGMENTS = 256


def jpeg_problem(raw: bytes) -> str | None:
    """None when ``raw`` has a JPEG's header and end; else why not."""
    if len(raw) > MAX_SNAPSHOT_BYTES:
        return "too_large"
    if not raw.startswith(b"\xff\xd8\xff"):
        return "not_jpeg_magic"
    if not raw.rstrip(b"\x00").endswith(b"\xff\xd9"):
        return "no_end_marker"
    pos = 2
    for _ in range(_MAX_SEGMENTS):
        if pos >= len(raw) or raw[pos] != 0xFF:
            return "bad_marker"
        while pos < len(raw) and raw[pos] == 0xFF:  # fill bytes
            pos += 1
        if pos >= len(raw):
            return "truncated"
        marker = raw[pos]
        pos += 1
        if marker in _STANDALONE:
            continue
        if marker in (0xD8, 0xD9, 0xDA, 0x00):
            return "no_frame_header"  # a second SOI, the end or a scan before any frame
        if pos + 2 > len(raw):
            return "truncated"
        length = int.from_bytes(raw[pos : pos + 2], "big")
        if length < 2 or pos + length > len(raw):
            return "bad_segment_length"
        if marker in _SOF:
            return _frame_problem(raw[pos + 2 : pos + length])
        pos += length
    return "too_many_segments"


def _frame_problem(frame: bytes) -> str | None:
    if len(frame) < 6:
        return "bad_frame_header"
    precision, height, width, comps = (
        frame[0], int.from_bytes(frame[1:3], "big"), int.from_bytes(frame[3:5], "big"), frame[5],
    )  # fmt: skip
    if precision not in (8, 12, 16) or height == 0 or width == 0:
        return "bad_frame_header"
    if comps not in (1, 3, 4) or len(frame) != 6 + 3 * comps:
        return "bad_frame_header"
    return None


def checked_snapshot(data: dict[str, Any]) -> dict[str, Any]:
    """An event's data with its ``jpeg`` (base64) kept only if it is a JPEG; a refused one
    is replaced by ``snapshot_refused: <reason>``."""
    jpeg = data.get("jpeg")
    if jpeg is None:
        return data
    problem: str | None
    if not isinstance(jpeg, str):
        problem = "not_base64"
    else:
        try:
            problem = jpeg_problem(base64.b64decode(jpeg, validate=True))
        except (binascii.Error, ValueError):
            problem = "not_base64"
    if problem is None:
        return data
    kept = {k: v for k, v in data.items() if k != "jpeg"}
    kept["snapshot_refused"] = problem
    return kept
