"""The tracker: gives each object a track id across detector runs. Pure: detections and
times in, track changes out.

Matching is greedy per label, best overlap first: a detection continues a track when their
IoU reaches ``iou_match`` or their centres are closer than half the track box's diagonal (a
fast object between two runs). A track is reported (``new``) after ``min_hits``
detections, then ``update`` at most every ``update_every_s``; it ends after ``max_missed``
detector runs that covered it without finding it, or ``max_age_s`` without a detection.
Each track keeps only its best-scoring snapshot, so memory stays bounded.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field

from agent.vision.detector import Box, Detection
from agent.vision.eval_metrics import iou
from agent.vision.settings import TrackerSettings

NEW = "new"
UPDATE = "update"
END = "end"


@dataclass
class Track:
    id: int
    label: str
    box: Box
    score: float
    first_t: float
    last_t: float
    first_wall: float
    last_wall: float
    hits: int = 1
    missed: int = 0
    best_score: float = 0.0
    best_box: Box = (0.0, 0.0, 0.0, 0.0)
    snapshot: bytes | None = None
    reported: bool = False
    last_emit: float = 0.0
    prev_box: Box | None = None  # box before the last match (for line crossings)
    extra: dict[str, object] = field(default_factory=dict)


@dataclass(frozen=True)
class TrackChange:
    kind: str  # NEW, UPDATE or END
    track: Track


def _centre(b: Box) -> tuple[float, float]:
    return ((b[0] + b[2]) / 2, (b[1] + b[3]) / 2)


def _covers(roi: Box, box: Box) -> bool:
    cx, cy = _centre(box)
    return roi[0] <= cx <= roi[2] and roi[1] <= cy <= roi[3]


def _affinity(track: Track, det: Detection, iou_match: float) -> float | None:
    overlap = iou(track.box, det.box)
    if overlap >= iou_match:
        return 1.0 + overlap
    (tx, ty), (dx, dy) = _centre(track.box), _centre(det.box)
    diag = math.hypot(track.box[2] - track.box[0], track.box[3] - track.box[1])
    dist = math.hypot(tx - dx, ty - dy)
    if diag > 0 and dist < diag / 2:
        return 1.0 - dist / diag
    return None


Snapshotter = Callable[[Box], bytes | None]


class Tracker:
    def __init__(self, settings: TrackerSettings) -> None:
        self.s = settings
        self.tracks: dict[int, Track] = {}
        self._next_id = 1

    def update(
        self,
        detections: list[Detection],
        roi: Box,
        t: float,
        wall: float,
        snapshot: Snapshotter | None = None,
        partial: list[Detection] | None = None,
    ) -> list[TrackChange]:
        """Apply one detector run over ``roi``; ``snapshot(box)`` makes a JPEG on demand.
        ``partial``: detections the region cut (not used as detections); a track one of
        them matches was seen in part, which is not a miss."""
        pairs: list[tuple[float, int, int]] = []
        for tid, track in self.tracks.items():
            for di, det in enumerate(detections):
                if det.label != track.label:
                    continue
                aff = _affinity(track, det, self.s.iou_match)
                if aff is not None:
                    pairs.append((aff, tid, di))
        pairs.sort(key=lambda p: -p[0])
        used_t: set[int] = set()
        used_d: set[int] = set()
        changes: list[TrackChange] = []
        for _aff, tid, di in pairs:
            if tid in used_t or di in used_d:
                continue
            used_t.add(tid)
            used_d.add(di)
            changes += self._hit(self.tracks[tid], detections[di], t, wall, snapshot)
        for tid, track in list(self.tracks.items()):
            seen_in_part = any(
                d.label == track.label and _affinity(track, d, self.s.iou_match) is not None
                for d in partial or []
            )
            if tid not in used_t and _covers(roi, track.box) and not seen_in_part:
                track.missed += 1
                if track.missed >= self.s.max_missed:
                    changes += self._end(tid)
        for di, det in enumerate(detections):
            if di not in used_d:
                changes += self._start(det, t, wall, snapshot)
        return changes

    def expire(self, t: float) -> list[TrackChange]:
        """End the tracks not detected for ``max_age_s``."""
        old = [tid for tid, tr in self.tracks.items() if t - tr.last_t >= self.s.max_age_s]
        out: list[TrackChange] = []
        for tid in old:
            out += self._end(tid)
        return out

    def end_all(self) -> list[TrackChange]:
        out: list[TrackChange] = []
        for tid in list(self.tracks):
            out += self._end(tid)
        return out

    # ---------------------------------------------------------------- internals
    def _start(
        self, det: Detection, t: float, wall: float, snapshot: Snapshotter | None
    ) -> list[TrackChange]:
        track = Track(self._next_id, det.label, det.box, det.score, t, t, wall, wall)
        self._next_id += 1
        self.tracks[track.id] = track
        self._keep_best(track, det, snapshot)
        return self._maybe_report(track, t)

    def _hit(
        self, track: Track, det: Detection, t: float, wall: float, snapshot: Snapshotter | None
    ) -> list[TrackChange]:
        track.prev_box = track.box
        track.box = det.box
        track.score = det.score
        track.last_t = t
        track.last_wall = wall
        track.hits += 1
        track.missed = 0
        self._keep_best(track, det, snapshot)
        return self._maybe_report(track, t)

    def _keep_best(self, track: Track, det: Detection, snapshot: Snapshotter | None) -> None:
        if det.score > track.best_score:
            track.best_score = det.score
            track.best_box = det.box
            if snapshot is not None and self.s.snapshots:
                track.snapshot = snapshot(det.box)

    def _maybe_report(self, track: Track, t: float) -> list[TrackChange]:
        if not track.reported:
            if track.hits >= self.s.min_hits:
                track.reported = True
                track.last_emit = t
                return [TrackChange(NEW, track)]
            return []
        if t - track.last_emit >= self.s.update_every_s:
            track.last_emit = t
            return [TrackChange(UPDATE, track)]
        return []

    def _end(self, tid: int) -> list[TrackChange]:
        track = self.tracks.pop(tid)
        return [TrackChange(END, track)] if track.reported else []
