"""The detector: a runtime backend (found through a registry), a model card, a decoder.

Backends hold the TFLite interpreter and nothing else: ``litert`` (``ai-edge-litert``, the
default, numpy 2) and ``tflite`` (``tflite-runtime`` 2.14, numpy < 2). Both are the same
``Interpreter`` API, so one adapter serves both. ``Detector.detect`` takes an RGB frame and
an optional region of interest, runs one invocation on that region scaled to the model
input, and returns detections in fractions of the whole frame.
"""

from __future__ import annotations

import importlib
import logging
import time
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import numpy.typing as npt

from agent.errors import DetectorError, ModelError
from agent.vision import decoders
from agent.vision.modelcard import ModelCard, load_labels

log = logging.getLogger(__name__)

Box = tuple[float, float, float, float]  # x0, y0, x1, y1 as fractions of the frame
Image = npt.NDArray[np.uint8]


@dataclass(frozen=True)
class Detection:
    class_id: int
    label: str
    score: float
    box: Box


class Backend(ABC):
    """One loaded model in one runtime."""

    @abstractmethod
    def input_shape(self) -> tuple[int, ...]: ...

    @abstractmethod
    def input_dtype(self) -> Any: ...

    @abstractmethod
    def output_shapes(self) -> list[tuple[int, ...]]: ...

    @abstractmethod
    def invoke(self, tensor: npt.NDArray[Any]) -> list[npt.NDArray[Any]]: ...


BackendFactory = Callable[[Path, int], Backend]
_BACKENDS: dict[str, BackendFactory] = {}


def register_backend(name: str) -> Callable[[BackendFactory], BackendFactory]:
    def deco(factory: BackendFactory) -> BackendFactory:
        if name in _BACKENDS:
            raise ValueError(f"detector backend {name!r} registered twice")
        _BACKENDS[name] = factory
        return factory

    return deco


def backend_names() -> list[str]:
    return sorted(_BACKENDS)


def make_backend(name: str, model: Path, threads: int) -> Backend:
    factory = _BACKENDS.get(name)
    if factory is None:
        raise DetectorError(f"no detector backend {name!r}; known: {', '.join(backend_names())}")
    return factory(model, threads)


class InterpreterBackend(Backend):
    """The TFLite ``Interpreter`` API, from ``ai_edge_litert`` or ``tflite_runtime``."""

    def __init__(self, module: str, model: Path, threads: int) -> None:
        try:
            mod = importlib.import_module(module)
        except ImportError as exc:
            raise DetectorError(f"detector runtime {module} is not installed: {exc}") from exc
        if not Path(model).is_file():
            raise ModelError(f"model file {model} does not exist (run: make model)")
        try:
            self._it = mod.Interpreter(model_path=str(model), num_threads=threads)
            self._it.allocate_tensors()
        except (ValueError, RuntimeError) as exc:
            raise ModelError(f"{module} cannot load {model}: {exc}") from exc
        self._in = self._it.get_input_details()[0]
        self._outs = self._it.get_output_details()

    def input_shape(self) -> tuple[int, ...]:
        return tuple(int(v) for v in self._in["shape"])

    def input_dtype(self) -> Any:
        return self._in["dtype"]

    def output_shapes(self) -> list[tuple[int, ...]]:
        return [tuple(int(v) for v in o["shape"]) for o in self._outs]

    def invoke(self, tensor: npt.NDArray[Any]) -> list[npt.NDArray[Any]]:
        try:
            self._it.set_tensor(self._in["index"], tensor)
            self._it.invoke()
            return [self._it.get_tensor(o["index"]) for o in self._outs]
        except (ValueError, RuntimeError) as exc:
            raise DetectorError(f"inference failed: {exc}") from exc


@register_backend("litert")
def _litert(model: Path, threads: int) -> Backend:
    return InterpreterBackend("ai_edge_litert.interpreter", model, threads)


@register_backend("tflite")
def _tflite(model: Path, threads: int) -> Backend:
    return InterpreterBackend("tflite_runtime.interpreter", model, threads)


def _clip_roi(roi: Box | None) -> Box:
    if roi is None:
        return (0.0, 0.0, 1.0, 1.0)
    x0, y0, x1, y1 = (min(1.0, max(0.0, v)) for v in roi)
    if x1 - x0 <= 0 or y1 - y0 <= 0:
        return (0.0, 0.0, 1.0, 1.0)
    return (x0, y0, x1, y1)


class Detector:
    """A backend with its card's labels, preprocessing and decoder."""

    def __init__(self, card: ModelCard, model_dir: Path, backend: str, threads: int) -> None:
        self.card = card
        self.labels = load_labels(Path(model_dir) / card.labels_file)
        self.backend = make_backend(backend, Path(model_dir) / card.model_file, threads)
        shape = self.backend.input_shape()
        if shape[1:3] != (card.input_height, card.input_width):
            raise ModelError(
                f"model input is {shape}, card {card.name} says "
                f"{card.input_height}x{card.input_width}"
            )
        self._anchors: decoders.FloatArray | None = None
        self._ssd_io: tuple[int, int] | None = None  # (boxes, scores) output indices
        classes = self._class_count()
        if card.format == "ssd_anchors":
            assert card.ssd is not None  # the card's validator guarantees it
            self._anchors = decoders.ssd_anchors(card.ssd, card.input_height, card.input_width)
            boxes = self.backend.output_shapes()[self._ssd_outputs()[0]]
            if boxes[-2] != self._anchors.shape[0]:
                raise ModelError(
                    f"card {card.name}: anchors give {self._anchors.shape[0]} boxes, "
                    f"the model has {boxes[-2]}"
                )
        if classes is not None and classes + card.label_offset > len(self.labels):
            raise ModelError(
                f"label map {card.labels_file} has {len(self.labels)} labels, the model "
                f"{classes} classes (label offset {card.label_offset})"
            )
        self.invocations = 0
        self.last_ms = 0.0
        self._buf = np.empty((1, card.input_height, card.input_width, 3), np.float32)

    def _class_count(self) -> int | None:
        shapes = self.backend.output_shapes()
        if self.card.format == "ssd_anchors":
            return shapes[self._ssd_outputs()[1]][-1]
        if self.card.format == "yolov8":
            s = shapes[0]
            return min(s[-1], s[-2]) - 4
        return None  # post-processed: class indices, the count is not in the shapes

    def _ssd_outputs(self) -> tuple[int, int]:
        if self._ssd_io is not None:
            return self._ssd_io
        shapes = self.backend.output_shapes()
        boxes = [i for i, s in enumerate(shapes) if len(s) == 3 and s[-1] == 4]
        others = [i for i, s in enumerate(shapes) if len(s) == 3 and s[-1] != 4]
        if len(shapes) != 2 or not boxes or not others:
            raise ModelError(f"card {self.card.name}: ssd_anchors needs [1,N,4] and [1,N,C]")
        self._ssd_io = (boxes[0], others[0])
        return self._ssd_io

    def check_frame(self, rgb: Any) -> None:
        """Refuse (``DetectorError``) anything but the card's input: an ``H x W x 3``
        ``uint8`` RGB array. Grey and RGBA frames are converted where they enter the
        pipeline (``agent.vision.frames.normalise``), never guessed at here."""
        if not isinstance(rgb, np.ndarray):
            raise DetectorError(f"detector input must be a numpy array, not {type(rgb).__name__}")
        if rgb.dtype != np.uint8 or rgb.ndim != 3 or rgb.shape[2] != 3:
            raise DetectorError(
                f"detector input is {rgb.dtype} {tuple(rgb.shape)}; card {self.card.name} "
                "takes uint8 H x W x 3 RGB (convert grey/RGBA with frames.normalise)"
            )
        if rgb.shape[0] < 1 or rgb.shape[1] < 1:
            raise DetectorError(f"detector input is empty: {tuple(rgb.shape)}")

    def preprocess(self, rgb: Image, roi: Box | None = None) -> npt.NDArray[Any]:
        self.check_frame(rgb)
        h, w = rgb.shape[:2]
        x0, y0, x1, y1 = _clip_roi(roi)
        crop = rgb[
            int(y0 * h) : max(int(y0 * h) + 1, int(y1 * h)),
            int(x0 * w) : max(int(x0 * w) + 1, int(x1 * w)),
        ]
        size = (self.card.input_width, self.card.input_height)
        # INTER_LINEAR: a fraction of INTER_AREA's time, and the detections are the same
        resized = cv2.resize(crop, size, interpolation=cv2.INTER_LINEAR)
        if resized.shape != self._buf.shape[1:]:  # the buffer must be written, never reused
            raise DetectorError(f"resized input is {resized.shape}, not {self._buf.shape[1:]}")
        dtype = self.backend.input_dtype()
        if dtype != np.float32:
            return resized.astype(dtype)[None, ...]
        lo, hi = self.card.input_range
        buf = self._buf  # one input buffer, reused: no allocation per frame
        # one pass, uint8 -> float32 scaled and shifted (numpy takes two and half again)
        out = cv2.addWeighted(
            resized, (hi - lo) / 255.0, resized, 0.0, lo, dst=buf[0], dtype=cv2.CV_32F
        )
        if out.ctypes.data != buf.ctypes.data:  # OpenCV allocated instead of writing buf
            raise DetectorError("preprocessing did not write the input buffer")
        return buf

    def decode(self, outputs: list[npt.NDArray[Any]]) -> decoders.Raw:
        card = self.card
        if card.format == "ssd_anchors":
            assert card.ssd is not None and self._anchors is not None
            bi, ci = self._ssd_outputs()
            raw = decoders.decode_ssd(
                outputs[bi],
                outputs[ci],
                self._anchors,
                card.ssd.box_scales,
                card.score_threshold,
                card.ignore_classes,
            )
        elif card.format == "tflite_postprocess":
            roles = card.outputs or ["boxes", "classes", "scores", "count"]
            by = dict(zip(roles, outputs, strict=False))
            raw = decoders.decode_postprocess(
                by["boxes"],
                by["classes"],
                by["scores"],
                by["count"],
                card.score_threshold,
                card.ignore_classes,
            )
            return raw
        else:
            raw = decoders.decode_yolov8(
                outputs[0],
                card.input_width,
                card.input_height,
                card.score_threshold,
                card.ignore_classes,
            )
        return decoders.nms(raw, card.iou_threshold, card.max_detections)

    def detect(self, rgb: Image, roi: Box | None = None) -> list[Detection]:
        """One invocation over ``roi`` (whole frame when None); boxes in frame fractions."""
        tensor = self.preprocess(rgb, roi)
        t0 = time.perf_counter()
        outputs = self.backend.invoke(tensor)
        self.last_ms = (time.perf_counter() - t0) * 1000.0
        self.invocations += 1
        raw = self.decode(outputs)
        x0, y0, x1, y1 = _clip_roi(roi)
        sw, sh = x1 - x0, y1 - y0
        out = []
        for box, score, cls in zip(raw.boxes, raw.scores, raw.classes, strict=True):
            label_index = int(cls) + self.card.label_offset
            label = self.labels[label_index] if 0 <= label_index < len(self.labels) else str(cls)
            frame_box = (
                x0 + float(box[0]) * sw,
                y0 + float(box[1]) * sh,
                x0 + float(box[2]) * sw,
                y0 + float(box[3]) * sh,
            )
            out.append(Detection(int(cls), label, float(score), frame_box))
        return out
