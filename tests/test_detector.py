"""The detector: the real model on real photos, each decoder on known tensors, anchors,
the model fetch's hash check, and cards that must be refused."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pytest

from agent.errors import DetectorError, ModelError
from agent.vision import decoders
from agent.vision.detector import Detector, make_backend
from agent.vision.model_fetch import LABELS_NAME, MODEL_SHA256, ModelFiles, split_assets
from agent.vision.modelcard import DEFAULT_CARD, load_card
from common.modelcard import SsdAnchorSettings
from hil_tests import scenes
from tests.detection_helpers import detector, model_files, write_card

__all__ = ["detector", "model_files"]  # fixtures


# ---------------------------------------------------------------- the real model, real photos


def test_model_is_cached_outside_the_repo_with_the_right_hash(model_files: ModelFiles) -> None:
    assert hashlib.sha256(model_files.model.read_bytes()).hexdigest() == MODEL_SHA256
    assert not model_files.model.resolve().is_relative_to(Path(__file__).resolve().parent.parent)
    labels = model_files.labels.read_text().splitlines()
    assert len(labels) == 24 and labels[0] == "???" and "Person" in labels and "Cat" in labels


def test_split_assets_checks_the_hash(model_files: ModelFiles) -> None:
    model = model_files.model.read_bytes()
    labels = model_files.labels.read_bytes()
    got_model, got_labels = split_assets(labels + model)
    assert got_model == model and got_labels == labels
    tampered = bytearray(labels + model)
    tampered[5000] ^= 0xFF
    with pytest.raises(ModelError, match="sha256"):
        split_assets(bytes(tampered))
    with pytest.raises(ModelError, match="expected"):
        split_assets(labels + model[:1000])


def test_astronaut_is_a_person_boxed_around_her(detector: Detector) -> None:
    found = detector.detect(scenes.person())
    people = [d for d in found if d.label == "Person"]
    assert people, found
    x0, y0, x1, y1 = max(people, key=lambda d: d.score).box
    # she fills the left two thirds of the photo, from the top edge to the bottom edge
    assert x0 < 0.15 and 0.55 < x1 < 0.85 and y0 < 0.12 and y1 > 0.9, (x0, y0, x1, y1)
    assert {d.label for d in found} == {"Person"}


def test_cameraman_is_a_person_on_the_left(detector: Detector) -> None:
    found = detector.detect(scenes.cameraman())
    assert [d.label for d in found] == ["Person"], found
    x0, y0, x1, y1 = found[0].box
    centre = ((x0 + x1) / 2, (y0 + y1) / 2)
    assert 0.15 < centre[0] < 0.45 and 0.4 < centre[1] < 0.7, found[0].box
    assert y1 > 0.9  # standing, down to the bottom of the photo


def test_chelsea_is_a_cat_and_nothing_else(detector: Detector) -> None:
    found = detector.detect(scenes.cat())
    assert [d.label for d in found] == ["Cat"], found
    assert found[0].score > 0.7
    x0, y0, x1, y1 = found[0].box
    assert (x1 - x0) * (y1 - y0) > 0.6  # the cat fills the photo


def test_background_photo_has_nothing(detector: Detector) -> None:
    assert detector.detect(scenes.background()) == []


def test_region_of_interest_maps_back_to_the_frame(detector: Detector) -> None:
    frame = scenes.background(640, 480)
    person = scenes.person()[:, :380]  # the astronaut herself, less the flag
    small = np.asarray(
        __import__("cv2").resize(person, (150, 200)), np.uint8
    )  # 150 x 200 px at (400, 200)
    frame[200:400, 400:550] = small
    roi = (0.55, 0.3, 0.95, 0.9)
    found = [d for d in detector.detect(frame, roi) if d.label == "Person"]
    assert found, "person in the region not found"
    x0, y0, x1, y1 = found[0].box
    assert x0 > 400 / 640 - 0.05 and x1 < 550 / 640 + 0.05, found[0].box
    assert y0 > 200 / 480 - 0.05 and y1 < 400 / 480 + 0.05, found[0].box
    assert detector.invocations >= 1 and detector.last_ms > 0


# ---------------------------------------------------------------- anchors and decoders


def test_ssd_anchors_match_the_model() -> None:
    anchors = decoders.ssd_anchors(SsdAnchorSettings(), 300, 300)
    # 19x19x3 + 10x10x6 + 5x5x6 + 3x3x6 + 2x2x6 + 1x1x6
    assert anchors.shape == (1917, 4)
    yc, xc, h, w = anchors[0]
    assert yc == pytest.approx(0.5 / 19) and xc == pytest.approx(0.5 / 19)
    assert h == pytest.approx(0.1) and w == pytest.approx(0.1)
    # second anchor of the first cell: scale 0.2, ratio 2 -> wider than tall
    assert anchors[1][3] == pytest.approx(0.2 * 2**0.5, rel=1e-4)
    assert anchors[1][2] == pytest.approx(0.2 / 2**0.5, rel=1e-4)
    # the last layer: one cell in the middle, the interpolated anchor sqrt(0.95 * 1.0)
    assert tuple(anchors[-1][:2]) == pytest.approx((0.5, 0.5))
    assert anchors[-1][2] == pytest.approx(0.95**0.5, rel=1e-4)


def test_ssd_decoder_on_known_tensors() -> None:
    anchors = np.array([[0.5, 0.5, 0.2, 0.4], [0.25, 0.25, 0.1, 0.1]], np.float32)
    enc = np.zeros((1, 2, 4), np.float32)
    enc[0, 1] = [1.0, -1.0, 5 * np.log(2.0), 0.0]  # move by a tenth of the anchor, h x2
    logits = np.full((1, 2, 3), -10.0, np.float32)
    logits[0, 0, 2] = 3.0  # class 2, sigmoid 0.9526
    logits[0, 1, 1] = 0.0  # class 1, sigmoid 0.5
    logits[0, 1, 0] = 8.0  # background, ignored
    raw = decoders.decode_ssd(enc, logits, anchors, (10, 10, 5, 5), 0.4, ignore=[0])
    assert raw.classes.tolist() == [2, 1]
    assert raw.scores[0] == pytest.approx(1 / (1 + np.exp(-3.0)))
    assert raw.boxes[0].tolist() == pytest.approx([0.3, 0.4, 0.7, 0.6])
    # yc = 0.25 + 0.1*0.1 = 0.26, xc = 0.25 - 0.1*0.1 = 0.24, h = 0.2, w = 0.1
    assert raw.boxes[1].tolist() == pytest.approx([0.19, 0.16, 0.29, 0.36], abs=1e-6)
    assert decoders.decode_ssd(enc, logits, anchors, (10, 10, 5, 5), 0.99, [0]).scores.size == 0
    # without ignoring it, the background class wins the second box
    assert decoders.decode_ssd(enc, logits, anchors, (10, 10, 5, 5), 0.4).classes.tolist() == [2, 0]


def test_postprocess_decoder_on_known_tensors() -> None:
    boxes = np.array([[[0.1, 0.2, 0.5, 0.6], [0.0, 0.0, 1.0, 1.0], [0.3, 0.3, 0.4, 0.4]]])
    classes = np.array([[3.0, 0.0, 7.0]], np.float32)
    scores = np.array([[0.9, 0.8, 0.3]], np.float32)
    count = np.array([2.0], np.float32)  # the third row is padding
    raw = decoders.decode_postprocess(boxes, classes, scores, count, 0.5)
    assert raw.classes.tolist() == [3, 0]
    assert raw.boxes[0].tolist() == pytest.approx([0.2, 0.1, 0.6, 0.5])  # x0 y0 x1 y1
    ignored = decoders.decode_postprocess(boxes, classes, scores, count, 0.5, ignore=[0])
    assert ignored.classes.tolist() == [3]


@pytest.mark.parametrize("layout", ["channels_first", "channels_last"])
def test_yolov8_decoder_on_known_tensors(layout: str) -> None:
    n, classes = 10, 3  # real heads have many more boxes than 4 + classes
    out = np.zeros((4 + classes, n), np.float32)
    out[:, 0] = [320, 320, 64, 128, 0.1, 0.95, 0.0]  # class 1, pixels
    out[:, 1] = [322, 318, 64, 128, 0.0, 0.90, 0.0]  # same object, suppressed by NMS
    out[:, 2] = [100, 100, 32, 32, 0.0, 0.0, 0.6]  # class 2
    tensor = out[None] if layout == "channels_first" else out.T[None]
    raw = decoders.nms(decoders.decode_yolov8(tensor, 640, 640, 0.5), 0.45, 10)
    assert raw.classes.tolist() == [1, 2]
    assert raw.boxes[0].tolist() == pytest.approx([0.45, 0.4, 0.55, 0.6])
    assert raw.scores.tolist() == pytest.approx([0.95, 0.6])


def test_nms_is_per_class_and_bounded() -> None:
    boxes = np.array(
        [[0, 0, 1, 1], [0, 0, 0.98, 1], [0, 0, 1, 1], [0.5, 0.5, 0.6, 0.6]], np.float32
    )
    raw = decoders.Raw(boxes, np.array([0.9, 0.8, 0.7, 0.6], np.float32), np.array([1, 1, 2, 1]))
    kept = decoders.nms(raw, 0.5, 10)
    assert kept.scores.tolist() == pytest.approx([0.9, 0.7, 0.6])
    assert decoders.nms(raw, 0.5, 2).scores.size == 2


# ---------------------------------------------------------------- refused cards and backends


def test_unknown_model_format_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ModelError, match="format"):
        load_card(write_card(tmp_path, format='"ssd_mystery"'))


def test_ssd_card_without_anchors_is_refused(tmp_path: Path) -> None:
    text = DEFAULT_CARD.read_text().split("[ssd]")[0]
    path = tmp_path / "card.toml"
    path.write_text(text)
    with pytest.raises(ModelError, match=r"\[ssd\]"):
        load_card(path)


def test_missing_labels_are_refused(tmp_path: Path, model_files: ModelFiles) -> None:
    (tmp_path / model_files.model.name).symlink_to(model_files.model)
    card = load_card(DEFAULT_CARD)
    with pytest.raises(ModelError, match=r"label map .* does not exist"):
        Detector(card, tmp_path, "litert", 1)
    (tmp_path / LABELS_NAME).write_text("???\nBicycle\nPerson\n")  # 3 labels, 24 classes
    with pytest.raises(ModelError, match="3 labels, the model 24 classes"):
        Detector(card, tmp_path, "litert", 1)


def test_missing_model_and_unknown_backend_are_refused(tmp_path: Path) -> None:
    with pytest.raises(ModelError, match="does not exist"):
        make_backend("litert", tmp_path / "none.tflite", 1)
    with pytest.raises(DetectorError, match="no detector backend 'onnx'"):
        make_backend("onnx", tmp_path / "none.tflite", 1)


def test_tflite_runtime_backend_says_when_it_is_not_installed(model_files: ModelFiles) -> None:
    try:
        import tflite_runtime  # noqa: F401
    except ImportError:
        with pytest.raises(DetectorError, match=r"tflite_runtime\.interpreter is not installed"):
            make_backend("tflite", model_files.model, 1)
    else:  # pragma: no cover - only where tflite-runtime shares the venv
        backend = make_backend("tflite", model_files.model, 1)
        assert backend.input_shape() == (1, 300, 300, 3)


def test_tflite_runtime_backend_finds_what_litert_finds(
    detector: Detector, model_files: ModelFiles, tmp_path: Path
) -> None:
    """The fallback backend, tflite-runtime 2.14 (numpy < 2), from its own venv (make setup
    makes .venv-tflite): the same model on the same photos gives the same detections."""
    import json
    import os
    import subprocess

    repo = Path(__file__).resolve().parent.parent
    python = repo / ".venv-tflite" / "bin" / "python"
    if not python.exists():
        pytest.fail("no .venv-tflite: run make setup (it installs tflite-runtime there)")
    photos = {"person": scenes.person(), "cat": scenes.cat()}
    paths = []
    for name, rgb in photos.items():
        np.save(tmp_path / f"{name}.npy", rgb)
        paths.append(str(tmp_path / f"{name}.npy"))
    run = subprocess.run(
        [str(python), str(repo / "scripts" / "tflite_detect.py"), str(model_files.folder),
         *paths],
        capture_output=True, text=True, timeout=120, check=False,
        env={**os.environ, "PYTHONPATH": str(repo)},
    )  # fmt: skip
    assert run.returncode == 0, run.stderr
    got = json.loads(run.stdout)
    for name, rgb in photos.items():
        ours = detector.detect(rgb)
        theirs = got[name]
        assert [d.label for d in ours] == [d["label"] for d in theirs]
        for a, b in zip(ours, theirs, strict=True):
            assert abs(a.score - b["score"]) < 0.02
            assert np.allclose(a.box, b["box"], atol=0.01)
    assert {d["label"] for d in got["cat"]} == {"Cat"}
