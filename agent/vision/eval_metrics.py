"""Detection quality figures, pure functions on labelled boxes: IoU, greedy matching,
precision and recall per label, agreement between two models.

Boxes are ``(x0, y0, x1, y1)`` fractions of the frame. A detection matches a reference box
of the same label with IoU at least the threshold; detections are taken by descending
score and each reference box is matched at most once (the PASCAL VOC rule).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

from common.model_bundle import Box, Labelled

__all__ = ["Box", "Labelled", "iou"]


def iou(a: Box, b: Box) -> float:
    ix = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    iy = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = ix * iy
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0


def match(
    found: Sequence[Labelled], reference: Sequence[Labelled], threshold: float
) -> list[tuple[int, int]]:
    """Pairs (index in found, index in reference): same label, IoU >= threshold, greedy
    by descending score of ``found``, best-overlapping free reference box first."""
    taken: set[int] = set()
    pairs = []
    for i in sorted(range(len(found)), key=lambda k: -found[k].score):
        d = found[i]
        best, best_iou = -1, threshold
        for j, r in enumerate(reference):
            if j in taken or r.label != d.label:
                continue
            o = iou(d.box, r.box)
            if o >= best_iou:
                best, best_iou = j, o
        if best >= 0:
            taken.add(best)
            pairs.append((i, best))
    return pairs


@dataclass
class Tally:
    tp: int = 0
    fp: int = 0
    fn: int = 0

    @property
    def precision(self) -> float:
        """Matched detections over detections (1.0 when there were none)."""
        return self.tp / (self.tp + self.fp) if self.tp + self.fp else 1.0

    @property
    def recall(self) -> float:
        """Matched expected boxes over expected boxes (1.0 when none were expected)."""
        return self.tp / (self.tp + self.fn) if self.tp + self.fn else 1.0

    def figures(self) -> dict[str, float | int]:
        return {
            "precision": round(self.precision, 4),
            "recall": round(self.recall, 4),
            "tp": self.tp,
            "fp": self.fp,
            "fn": self.fn,
        }


@dataclass
class Score:
    """Precision and recall over a set of images, in total (micro) and per label."""

    total: Tally = field(default_factory=Tally)
    labels: dict[str, Tally] = field(default_factory=dict)

    def add(
        self, found: Sequence[Labelled], expected: Sequence[Labelled], threshold: float
    ) -> None:
        pairs = match(found, expected, threshold)
        hit_found = {i for i, _ in pairs}
        hit_expected = {j for _, j in pairs}
        for i, d in enumerate(found):
            t = self.labels.setdefault(d.label, Tally())
            if i in hit_found:
                t.tp += 1
                self.total.tp += 1
            else:
                t.fp += 1
                self.total.fp += 1
        for j, e in enumerate(expected):
            if j not in hit_expected:
                self.labels.setdefault(e.label, Tally()).fn += 1
                self.total.fn += 1

    def figures(self) -> dict[str, object]:
        out: dict[str, object] = dict(self.total.figures())
        out["labels"] = {k: self.labels[k].figures() for k in sorted(self.labels)}
        return out


@dataclass
class Agreement:
    """How two models agree on the same frames: matched over union, and counts."""

    frames: int = 0
    matched: int = 0
    union: int = 0
    current: dict[str, int] = field(default_factory=dict)
    candidate: dict[str, int] = field(default_factory=dict)

    def add(
        self, current: Sequence[Labelled], candidate: Sequence[Labelled], threshold: float
    ) -> None:
        m = len(match(candidate, current, threshold))
        self.frames += 1
        self.matched += m
        self.union += len(current) + len(candidate) - m
        for d in current:
            self.current[d.label] = self.current.get(d.label, 0) + 1
        for d in candidate:
            self.candidate[d.label] = self.candidate.get(d.label, 0) + 1

    @property
    def ratio(self) -> float:
        """Matched over union (1.0 when neither model saw anything)."""
        return self.matched / self.union if self.union else 1.0

    def count_deltas(self) -> dict[str, float]:
        """Per label and ``"*"`` (all): |candidate - current| / max(1, current)."""
        out = {}
        for label in sorted(set(self.current) | set(self.candidate)):
            cur, cand = self.current.get(label, 0), self.candidate.get(label, 0)
            out[label] = abs(cand - cur) / max(1, cur)
        cur_all, cand_all = sum(self.current.values()), sum(self.candidate.values())
        out["*"] = abs(cand_all - cur_all) / max(1, cur_all)
        return out

    def figures(self) -> dict[str, object]:
        return {
            "frames": self.frames,
            "agreement": round(self.ratio, 4),
            "matched": self.matched,
            "union": self.union,
            "current_counts": dict(sorted(self.current.items())),
            "candidate_counts": dict(sorted(self.candidate.items())),
            "count_deltas": {k: round(v, 4) for k, v in self.count_deltas().items()},
        }
