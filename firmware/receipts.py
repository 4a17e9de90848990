# Receipts the fleet server builds (issue 14): the sender's side of the contract's
# ``receipt`` kind. Kept apart from contract.py so that the node, which only checks
# receipts (contract.receipt_ranges), does not carry this code in its heap; it is not in
# firmware/manifest.py. Same subset of Python as the contract (tested under both
# interpreters in tests/mp/contract_cases.py).

TYPE_CHECKING = False
if TYPE_CHECKING:
    from firmware import contract
else:
    try:
        import contract
    except ImportError:  # CPython: the firmware is the package ``firmware``
        from firmware import contract

try:  # only for type checkers; MicroPython never evaluates annotations
    from typing import Any
except ImportError:
    pass
# pyright: reportPossiblyUnboundVariable=false


def seq_ranges(seqs: list[int]) -> list[list[int]]:
    """Sorted, merged inclusive ranges [lo, hi] covering the sequence numbers ``seqs``."""
    out = []  # type: list[list[int]]
    for s in sorted(seqs):
        if out and s <= out[-1][1] + 1:
            out[-1][1] = max(out[-1][1], s)
        else:
            out.append([s, s])
    return out


def receipt_bodies(epoch: str, seqs: list[int]) -> list[dict[str, Any]]:
    """Receipt payload bodies (without v/id/ts) naming ``seqs`` of the stream ``epoch``:
    ranges, at most contract.RECEIPT_MAX_RANGES per message."""
    ranges = seq_ranges(seqs)
    out = []
    i = 0
    while i < len(ranges):
        out.append({"epoch": epoch, "ranges": ranges[i : i + contract.RECEIPT_MAX_RANGES]})
        i += contract.RECEIPT_MAX_RANGES
    return out
