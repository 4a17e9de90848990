"""docs/protocol.md and firmware/contract.py describe the same contract."""

from __future__ import annotations

import re
from pathlib import Path

from firmware import contract

DOC = (Path(__file__).resolve().parent.parent / "docs" / "protocol.md").read_text()


def _topic_table() -> dict[str, tuple[str, str, int, bool, int]]:
    rows = {}
    for line in DOC.splitlines():
        m = re.match(
            r"\| (\w+) \| `camfleet/v1/<id>/([\w/]+)` \| (up|down) \| (\d) \| (yes|no) \| (\d+) \|",
            line,
        )
        if m:
            kind, suffix, direction, qos, retain, size = m.groups()
            rows[kind] = (suffix, direction, int(qos), retain == "yes", int(size))
    return rows


def test_every_topic_documented_exactly() -> None:
    assert _topic_table() == contract.KINDS


def test_every_field_and_reason_documented() -> None:
    for kind, fields in contract.SCHEMAS.items():
        for field in fields:
            assert f"`{field}`" in DOC, f"{kind}.{field} missing from docs/protocol.md"
    for reason in contract.REASONS:
        assert f"| `{reason}` |" in DOC
    assert f"PROTOCOL_VERSION = {contract.PROTOCOL_VERSION}" in DOC
    assert f"`{contract.SERVER_IDENTITY}`" in DOC
    assert f"$share/{contract.SERVER_SHARE_GROUP}/" in DOC


def test_examples_in_the_doc_pass_the_contract() -> None:
    examples = re.findall(r"```json\n(.*?)```", DOC, re.S)
    assert examples
    import json

    covered: set[str] = set()
    for block in examples:
        # one JSON object per example; an object may run over several lines
        for chunk in re.split(r"\n(?=\{)", block.strip()):
            body = json.loads(chunk)
            kinds = [k for k in contract.SCHEMAS if _fits(k, body)]
            assert kinds, f"example fits no kind: {chunk}"
            covered.update(kinds)
    assert covered == set(contract.SCHEMAS)  # an example for every kind


def _fits(kind: str, body: dict[str, object]) -> bool:
    try:
        contract.validate(kind, body)
    except contract.ProtocolError:
        return False
    return all(f in body for f, (_t, req) in contract.SCHEMAS[kind].items() if req)
