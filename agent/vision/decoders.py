"""Decoders from a detector's output tensors to boxes: pure numpy, no runtime, no I/O.

Three formats:

- ``ssd_anchors``: raw SSD output, box encodings ``[1, N, 4]`` (ty, tx, th, tw) against
  generated anchors and class logits ``[1, N, C]`` (sigmoid), then per-class NMS.
- ``tflite_postprocess``: the four outputs of ``TFLite_Detection_PostProcess`` (boxes
  ymin, xmin, ymax, xmax normalised; class indices; scores; count), already suppressed.
- ``yolov8``: raw ``[1, 4 + C, N]`` (or ``[1, N, 4 + C]``): centre x, centre y, width,
  height in input pixels and per-class scores, then per-class NMS.

Every decoder returns boxes as (x0, y0, x1, y1) fractions of the model input.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from agent.errors import DetectorError
from common.modelcard import SsdAnchorSettings

FloatArray = npt.NDArray[np.float32]


@dataclass(frozen=True)
class Raw:
    """Decoded candidates before labels: boxes [K, 4] (x0, y0, x1, y1), scores, classes."""

    boxes: FloatArray
    scores: FloatArray
    classes: npt.NDArray[np.int64]


def _empty() -> Raw:
    return Raw(np.zeros((0, 4), np.float32), np.zeros((0,), np.float32), np.zeros((0,), np.int64))


# ---------------------------------------------------------------- SSD anchors


def _scale(s: SsdAnchorSettings, index: int) -> float:
    n = len(s.strides)
    if n == 1:
        return (s.min_scale + s.max_scale) * 0.5
    return s.min_scale + (s.max_scale - s.min_scale) * index / (n - 1)


def ssd_anchors(s: SsdAnchorSettings, input_height: int, input_width: int) -> FloatArray:
    """Anchors [N, 4] as (y centre, x centre, height, width), fractions of the input.

    The order is MediaPipe's SsdAnchorsCalculator (the TF Object Detection API's
    multiple-grid generator): layer by layer, row by row, cell by cell, anchor by anchor.
    """
    out: list[tuple[float, float, float, float]] = []
    layer = 0
    n = len(s.strides)
    while layer < n:
        ratios: list[float] = []
        scales: list[float] = []
        last = layer
        while last < n and s.strides[last] == s.strides[layer]:
            scale = _scale(s, last)
            if last == 0 and s.reduce_boxes_in_lowest_layer:
                ratios += [1.0, 2.0, 0.5]
                scales += [0.1, scale, scale]
            else:
                ratios += list(s.aspect_ratios)
                scales += [scale] * len(s.aspect_ratios)
                if s.interpolated_scale_aspect_ratio > 0:
                    nxt = 1.0 if last == n - 1 else _scale(s, last + 1)
                    scales.append(math.sqrt(scale * nxt))
                    ratios.append(s.interpolated_scale_aspect_ratio)
            last += 1
        sizes = [
            (sc / math.sqrt(r), sc * math.sqrt(r)) for sc, r in zip(scales, ratios, strict=True)
        ]
        stride = s.strides[layer]
        rows = math.ceil(input_height / stride)
        cols = math.ceil(input_width / stride)
        for y in range(rows):
            for x in range(cols):
                yc = (y + s.anchor_offset) / rows
                xc = (x + s.anchor_offset) / cols
                for h, w in sizes:
                    out.append((yc, xc, h, w))
        layer = last
    return np.asarray(out, dtype=np.float32)


def _row_max(m: FloatArray) -> FloatArray:
    """Per-row maximum of an [N, C] array with few columns: column by column is about three
    times faster than ``max(axis=1)``, which reduces each short row on its own."""
    out = np.array(m[:, 0], np.float32)
    for c in range(1, m.shape[1]):
        np.maximum(out, m[:, c], out=out)
    return out


def _sigmoid(x: FloatArray) -> FloatArray:
    return (1.0 / (1.0 + np.exp(-np.clip(x, -60, 60)))).astype(np.float32)


def decode_ssd(
    raw_boxes: FloatArray,
    raw_logits: FloatArray,
    anchors: FloatArray,
    box_scales: Sequence[float],
    threshold: float,
    ignore: Sequence[int] = (),
) -> Raw:
    """Raw SSD output to candidates above ``threshold`` (before NMS)."""
    boxes = np.asarray(raw_boxes, np.float32).reshape(-1, 4)
    logits = np.asarray(raw_logits, np.float32)
    logits = logits.reshape(boxes.shape[0], -1)
    if boxes.shape[0] != anchors.shape[0]:
        raise DetectorError(f"model gives {boxes.shape[0]} boxes, anchors are {anchors.shape[0]}")
    first = 0
    skip = sorted(set(ignore))
    if skip == list(range(len(skip))):
        first = len(skip)  # ignored classes lead (background is 0): a view, no copy
    elif skip:
        logits = logits.copy()
        logits[:, skip] = -np.inf
    view = logits[:, first:]
    # the sigmoid is monotonic: threshold the best logit, then pick and squash only those kept
    keep = np.nonzero(_row_max(view) >= math.log(threshold / (1.0 - threshold)))[0]
    if keep.size == 0:
        return _empty()
    kept = view[keep]
    best = kept.argmax(axis=1)
    scores = _sigmoid(kept[np.arange(keep.size), best])
    enc = boxes[keep]
    anc = anchors[keep]
    sy, sx, sh, sw = box_scales
    yc = enc[:, 0] / sy * anc[:, 2] + anc[:, 0]
    xc = enc[:, 1] / sx * anc[:, 3] + anc[:, 1]
    h = np.exp(enc[:, 2] / sh) * anc[:, 2]
    w = np.exp(enc[:, 3] / sw) * anc[:, 3]
    out = np.stack([xc - w / 2, yc - h / 2, xc + w / 2, yc + h / 2], axis=1)
    return Raw(np.clip(out, 0.0, 1.0).astype(np.float32), scores, (best + first).astype(np.int64))


# ---------------------------------------------------------------- TFLite_Detection_PostProcess


def decode_postprocess(
    boxes: FloatArray,
    classes: FloatArray,
    scores: FloatArray,
    count: FloatArray,
    threshold: float,
    ignore: Sequence[int] = (),
) -> Raw:
    """The four post-processed outputs to candidates (already suppressed by the model)."""
    b = np.asarray(boxes, np.float32).reshape(-1, 4)
    c = np.asarray(classes, np.float32).reshape(-1)
    s = np.asarray(scores, np.float32).reshape(-1)
    n = int(np.asarray(count).reshape(-1)[0]) if np.asarray(count).size else 0
    n = max(0, min(n, b.shape[0], c.shape[0], s.shape[0]))
    b, cls, s = b[:n], c[:n].astype(np.int64), s[:n]
    keep = s >= threshold
    if ignore:
        keep &= ~np.isin(cls, list(ignore))
    b, cls, s = b[keep], cls[keep], s[keep]
    xyxy = np.stack([b[:, 1], b[:, 0], b[:, 3], b[:, 2]], axis=1) if b.size else b
    return Raw(np.clip(xyxy, 0.0, 1.0).astype(np.float32), s, cls)


# ---------------------------------------------------------------- YOLOv8


def decode_yolov8(
    output: FloatArray,
    input_width: int,
    input_height: int,
    threshold: float,
    ignore: Sequence[int] = (),
) -> Raw:
    """YOLOv8 raw head output to candidates (before NMS).

    Accepts ``[1, 4 + C, N]`` (the exporter's layout) or ``[1, N, 4 + C]``; the smaller of
    the two trailing dimensions is taken as ``4 + C``. Coordinates may be in input pixels or
    already normalised (values all <= 2 are taken as normalised).
    """
    arr = np.asarray(output, np.float32)
    if arr.ndim == 3:
        arr = arr[0]
    if arr.ndim != 2 or min(arr.shape) < 5:
        raise DetectorError(f"YOLOv8 output has shape {np.asarray(output).shape}")
    if arr.shape[0] < arr.shape[1]:
        arr = arr.T  # -> [N, 4 + C]
    xywh = arr[:, :4]
    scores = arr[:, 4:].copy()
    if ignore:
        scores[:, list(ignore)] = 0.0
    best = scores.argmax(axis=1)
    best_score = scores[np.arange(scores.shape[0]), best]
    keep = np.nonzero(best_score >= threshold)[0]
    if keep.size == 0:
        return _empty()
    xywh = xywh[keep]
    if float(np.abs(xywh).max()) > 2.0:
        scale = np.array([input_width, input_height, input_width, input_height], np.float32)
        xywh = np.asarray(xywh / scale, np.float32)
    x, y, w, h = xywh[:, 0], xywh[:, 1], xywh[:, 2], xywh[:, 3]
    out = np.stack([x - w / 2, y - h / 2, x + w / 2, y + h / 2], axis=1)
    return Raw(
        np.clip(out, 0.0, 1.0).astype(np.float32), best_score[keep], best[keep].astype(np.int64)
    )


# ---------------------------------------------------------------- NMS


def iou_matrix(a: FloatArray, b: FloatArray) -> FloatArray:
    """IoU of every box of ``a`` [n, 4] with every box of ``b`` [m, 4] (x0, y0, x1, y1)."""
    if a.size == 0 or b.size == 0:
        return np.zeros((a.shape[0], b.shape[0]), np.float32)
    x0 = np.maximum(a[:, None, 0], b[None, :, 0])
    y0 = np.maximum(a[:, None, 1], b[None, :, 1])
    x1 = np.minimum(a[:, None, 2], b[None, :, 2])
    y1 = np.minimum(a[:, None, 3], b[None, :, 3])
    inter = np.clip(x1 - x0, 0, None) * np.clip(y1 - y0, 0, None)
    area_a = (a[:, 2] - a[:, 0]) * (a[:, 3] - a[:, 1])
    area_b = (b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1])
    union = area_a[:, None] + area_b[None, :] - inter
    ratio = np.asarray(inter / np.maximum(union, 1e-12), np.float32)
    return np.asarray(np.where(union > 0, ratio, 0.0), np.float32)


def nms(raw: Raw, iou_threshold: float, max_out: int) -> Raw:
    """Per-class greedy non-maximum suppression, best first, at most ``max_out`` kept."""
    if raw.scores.size == 0:
        return raw
    order = np.argsort(-raw.scores, kind="stable")
    kept: list[int] = []
    suppressed = np.zeros(raw.scores.size, bool)
    ious = iou_matrix(raw.boxes, raw.boxes)
    for i in order:
        if suppressed[i]:
            continue
        kept.append(int(i))
        if len(kept) >= max_out:
            break
        same = raw.classes == raw.classes[i]
        suppressed |= same & (ious[i] > iou_threshold)
    idx = np.asarray(kept, np.int64)
    return Raw(raw.boxes[idx], raw.scores[idx], raw.classes[idx])
