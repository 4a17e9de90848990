"""Model bundles and the model accuracy gate, with the real detector on real photos.

The evaluation set is real photos scikit-image ships (and street frames made from them,
hil_tests/scenes.py), with the fetched model's own detections as the expected results. A
"worse model" is the real .tflite with a fixed, seeded share of its weight buffers
perturbed (found by reading the flatbuffer): it still loads and runs, and detects worse.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import struct
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pytest

from agent.config import AgentSettings, FilesCameraSettings
from agent.health.metrics import AgentMetrics
from agent.link.backoff import Backoff
from agent.link.outbox import Outbox
from agent.ota.eval_set import main as bundle_cli
from agent.ota.eval_set import make_eval_set
from agent.ota.model_gate import (
    BAD_HASH,
    BAD_MODEL,
    GATE,
    REFUSED,
    TOO_SLOW,
    bundle_detector,
    evaluate,
    judge,
)
from agent.ota.model_gate_settings import GateLimits, ShadowLimits
from agent.ota.shadow import SHADOW, ShadowJudge, ShadowRun, gate_and_promote, gate_with_shadow
from agent.ota.wiring import AgentOta
from agent.vision.camera import Capture, FrameQueue, make_source
from agent.vision.detector import Detector
from agent.vision.eval_metrics import Agreement, Labelled, Score, iou, match
from agent.vision.model_fetch import ModelFiles
from agent.vision.modelcard import DEFAULT_CARD, load_card
from agent.vision.pipeline import decode_image
from agent.vision.runner import PipelineThread
from agent.vision.settings import DetectorSettings, PipelineSettings
from common.model_bundle import (
    BundleError,
    BundleHashError,
    build_model_bundle,
    card_toml,
    read_model_bundle,
)
from hil_tests import scenes
from tests.detection_helpers import detector, model_files, photo, write_card, write_png

__all__ = ["detector", "model_files"]  # fixtures

# Timing on a test box shared with other jobs is noisy: the gate's speed limit is judged
# here only on figures (test_judge_*); the real runs allow any plausible ratio.
LIMITS = GateLimits(max_slowdown=5.0)


# ---------------------------------------------------------------- a worse model, honestly made


def _buffers(model: bytes) -> list[tuple[int, int]]:
    """(offset, length) of every inline data buffer of a .tflite flatbuffer."""

    def u32(o: int) -> int:
        return int(struct.unpack_from("<I", model, o)[0])

    def field(table: int, index: int) -> int | None:
        vtable = table - int(struct.unpack_from("<i", model, table)[0])
        if 4 + 2 * index >= struct.unpack_from("<H", model, vtable)[0]:
            return None
        off = int(struct.unpack_from("<H", model, vtable + 4 + 2 * index)[0])
        return table + off if off else None

    assert model[4:8] == b"TFL3"
    root = u32(0)
    buffers = field(root, 4)  # Model.buffers
    assert buffers is not None
    vec = buffers + u32(buffers)
    out = []
    for k in range(u32(vec)):
        entry = vec + 4 + 4 * k
        table = entry + u32(entry)
        data = field(table, 0)  # Buffer.data
        if data is not None:
            start = data + u32(data)
            out.append((start + 4, u32(start)))
    return out


def degrade(model: bytes, share: float, noise: float, seed: int = 1) -> bytes:
    """The model with ``share`` of its float16 weight buffers (8 KiB and more) given
    Gaussian noise of ``noise`` times each buffer's standard deviation."""
    out = bytearray(model)
    rng = np.random.default_rng(seed)
    big = [(o, n) for o, n in _buffers(model) if n >= 8192 and n % 2 == 0]
    for j in rng.choice(len(big), int(len(big) * share), replace=False):
        o, n = big[j]
        w = np.frombuffer(bytes(out[o : o + n]), np.float16).astype(np.float32)
        noisy = w + rng.normal(0.0, noise * float(np.std(w)), w.shape)
        out[o : o + n] = noisy.astype(np.float16).tobytes()
    return bytes(out)


# ---------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def work(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("model_gate")


@pytest.fixture(scope="module")
def photos(work: Path) -> list[Path]:
    """Real photos: people, a cat, a coffee cup, a book, an empty scene, street frames."""
    folder = work / "photos"
    folder.mkdir()
    out = [
        write_png(folder / f"{n}.png", photo(n))
        for n in ("astronaut", "camera", "chelsea", "coffee", "page", "rocket")
    ]
    street = scenes.crossing_scene(count=1, frames_each=30)
    out += [write_png(folder / f"street-{i:02d}.png", street.frame(i)) for i in (3, 15, 27)]
    return out


@pytest.fixture(scope="module")
def eval_dir(work: Path, photos: list[Path], detector: Detector) -> Path:
    return make_eval_set(detector, photos, work / "eval")


@pytest.fixture(scope="module")
def current(work: Path, model_files: ModelFiles, eval_dir: Path) -> Path:
    return build_model_bundle(
        model_files.model, model_files.labels, DEFAULT_CARD, eval_dir, "1.0.0", work / "m-1.0.0"
    )


@pytest.fixture(scope="module")
def worse_model(work: Path, model_files: ModelFiles) -> Path:
    path = work / "worse.tflite"
    path.write_bytes(degrade(model_files.model.read_bytes(), share=0.3, noise=0.3))
    return path


def _bundle(
    work: Path, model: Path, labels: Path, eval_dir: Path, release: str, card: Path = DEFAULT_CARD
) -> Path:
    out = work / f"m-{release}"
    shutil.rmtree(out, ignore_errors=True)
    return build_model_bundle(model, labels, card, eval_dir, release, out)


# ---------------------------------------------------------------- bundles


def test_eval_set_holds_the_current_models_detections_on_real_photos(eval_dir: Path) -> None:
    expected = json.loads((eval_dir / "expected.json").read_text())
    assert [e["label"] for e in expected["astronaut.png"]] == ["Person"]
    assert [e["label"] for e in expected["chelsea.png"]] == ["Cat"]
    assert expected["rocket.png"] == []  # nothing to find is part of the set too
    assert all(e["label"] == "Person" for i in (3, 15, 27) for e in expected[f"street-{i:02d}.png"])
    assert sum(len(v) for v in expected.values()) >= 7


def test_bundle_lists_every_file_with_its_hash_and_reads_back(current: Path) -> None:
    b = read_model_bundle(current)
    assert (b.name, b.release) == ("ssd_mobilenetv2_oidv4", "1.0.0")
    assert b.card.model_file == "model.tflite" and b.card.labels_file == "labels.txt"
    assert b.card == load_card(DEFAULT_CARD).model_copy(
        update={"model_file": "model.tflite", "labels_file": "labels.txt"}
    )
    assert set(b.files) >= {"model.tflite", "labels.txt", "card.toml", "eval/expected.json"}
    assert len(b.eval_set) == 9 and b.labels[4] == "Person"
    assert load_card(current / "card.toml") == b.card  # card_toml round-trips
    with pytest.raises(BundleError, match="never overwritten"):
        build_model_bundle(
            current / "model.tflite",
            current / "labels.txt",
            current / "card.toml",
            current / "eval",
            "1.0.0",
            current,
        )
    assert not list(current.parent.glob(".m-1.0.0.tmp-*"))  # no temp dir left behind


def test_bundle_command_line_builds_and_checks(
    work: Path, current: Path, eval_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = work / "cli-bundle"
    args = ["--model", str(current / "model.tflite"), "--labels", str(current / "labels.txt")]
    args += ["--card", str(DEFAULT_CARD), "--eval", str(eval_dir), "--release", "1.0.1"]
    assert bundle_cli(["build", *args, "--out", str(out)]) == 0
    assert bundle_cli(["check", str(out)]) == 0
    assert "ssd_mobilenetv2_oidv4 1.0.1: 9 evaluation images" in capsys.readouterr().out
    (out / "labels.txt").write_text("???\nPerson\n")
    assert bundle_cli(["check", str(out)]) == 1
    assert "labels.txt has sha256" in capsys.readouterr().err


def _copy(src: Path, dst: Path) -> Path:
    shutil.rmtree(dst, ignore_errors=True)
    shutil.copytree(src, dst)
    return dst


def test_bundle_with_a_wrong_hash_is_refused(work: Path, current: Path) -> None:
    bad = _copy(current, work / "tampered")
    model = bytearray((bad / "model.tflite").read_bytes())
    model[len(model) // 2] ^= 0x01  # one bit of one weight
    (bad / "model.tflite").write_bytes(bytes(model))
    with pytest.raises(BundleHashError, match=r"model\.tflite has sha256"):
        read_model_bundle(bad)
    counted = REFUSED[BAD_HASH]
    result = evaluate(bad, current, LIMITS)
    assert not result.ok and result.reason == BAD_HASH and REFUSED[BAD_HASH] == counted + 1
    assert result.error.startswith("bad_hash: ") and "model.tflite" in result.error

    bad = _copy(current, work / "tampered-expected")
    exp = json.loads((bad / "eval/expected.json").read_text())
    exp["rocket.png"] = [{"label": "Person", "box": [0.1, 0.1, 0.5, 0.9]}]
    (bad / "eval/expected.json").write_text(json.dumps(exp))
    with pytest.raises(BundleHashError, match=r"expected\.json"):
        read_model_bundle(bad)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ("extra", "not in bundle.json"),
        ("missing", "labels.txt is missing"),
        ("escape", "bad path"),
        ("manifest", "bundle.json"),
        ("release", "release"),
        ("digest", "hex digits"),
        ("box", "box"),
    ],
)
def test_malformed_bundles_are_refused(
    work: Path, current: Path, change: str, message: str
) -> None:
    bad = _copy(current, work / f"bad-{change}")
    manifest = json.loads((bad / "bundle.json").read_text())
    if change == "extra":
        (bad / "eval/sneaked.png").write_bytes(b"x")
    elif change == "missing":
        (bad / "labels.txt").unlink()
    elif change == "escape":
        manifest["files"]["../outside"] = "0" * 64
    elif change == "manifest":
        (bad / "bundle.json").write_text("{not json")
    elif change == "release":
        manifest["release"] = "../1"
    elif change == "digest":
        manifest["files"]["labels.txt"] = "not-a-hash"
    else:
        exp = {"rocket.png": [{"label": "Car", "box": [0.5, 0.5, 0.4, 0.9]}]}
        data = json.dumps(exp).encode()
        (bad / "eval/expected.json").write_bytes(data)
        manifest["files"]["eval/expected.json"] = hashlib.sha256(data).hexdigest()
    if change != "manifest":
        (bad / "bundle.json").write_text(json.dumps(manifest))
    with pytest.raises(BundleError, match=message):
        read_model_bundle(bad)
    result = evaluate(bad, current, LIMITS)
    assert not result.ok and result.reason == BAD_MODEL and message in result.detail


# ---------------------------------------------------------------- the gate on real photos


def test_same_model_as_a_new_release_passes(work: Path, current: Path, eval_dir: Path) -> None:
    b = read_model_bundle(current)
    new = _bundle(work, current / "model.tflite", current / "labels.txt", eval_dir, "1.1.0")
    result = evaluate(new, current, LIMITS)
    assert result.ok, result
    assert result.reason == "" and result.error == ""
    cand, cur = result.figures["candidate"], result.figures["current"]
    assert isinstance(cand, dict) and isinstance(cur, dict)
    assert cand["precision"] == cand["recall"] == 1.0
    assert (cand["tp"], cand["fp"], cand["fn"]) == (cur["tp"], 0, 0)
    assert cand["tp"] == sum(len(i.expected) for i in b.eval_set)
    assert isinstance(cand["invoke_ms_median"], float) and cand["invoke_ms_median"] > 0
    assert result.figures["release"] == "1.1.0" and result.figures["images"] == 9


def test_worse_model_is_refused_by_the_accuracy_gate(
    work: Path, current: Path, eval_dir: Path, worse_model: Path
) -> None:
    worse = _bundle(work, worse_model, current / "labels.txt", eval_dir, "2.0.0")
    before = {p: p.read_bytes() for p in (*current.rglob("*"), *worse.rglob("*")) if p.is_file()}
    result = evaluate(worse, current, LIMITS)
    after = {p: p.read_bytes() for p in (*current.rglob("*"), *worse.rglob("*")) if p.is_file()}
    assert after == before  # judging reads only: neither bundle changed
    assert not result.ok and result.reason == GATE, result
    cand, cur = result.figures["candidate"], result.figures["current"]
    assert isinstance(cand, dict) and isinstance(cur, dict)
    # the current model scores 1.0 on its own reviewed results; the worse one measurably not
    assert cur["precision"] == cur["recall"] == 1.0
    assert min(cand["precision"], cand["recall"]) < 0.9, cand
    assert "below the current model's" in result.detail
    print("worse model:", json.dumps(cand))


def test_a_set_made_to_fit_the_candidate_does_not_let_it_pass(
    work: Path, current: Path, eval_dir: Path, worse_model: Path
) -> None:
    tailored = work / "eval-tailored"  # only the empty street: the worse model sees nothing
    tailored.mkdir(exist_ok=True)
    shutil.copy(eval_dir / "rocket.png", tailored / "rocket.png")
    (tailored / "expected.json").write_text(json.dumps({"rocket.png": []}))
    worse = _bundle(work, worse_model, current / "labels.txt", tailored, "2.0.2")
    own_set_only = evaluate(worse, current, LIMITS.model_copy(update={"current_eval_set": False}))
    assert own_set_only.ok and own_set_only.figures["images"] == 1  # what the check is for
    result = evaluate(worse, current, LIMITS)
    assert not result.ok and result.reason == GATE
    assert result.figures["images"] == 9  # rocket.png once: the same image is not counted twice


def test_wrong_label_map_is_refused_by_the_accuracy_gate(
    work: Path, current: Path, eval_dir: Path
) -> None:
    labels = (current / "labels.txt").read_text().splitlines()
    shifted = work / "shifted-labels.txt"  # every class one label off: Person is called Laptop
    shifted.write_text("\n".join([labels[0], *labels[2:], labels[1]]) + "\n")
    wrong = _bundle(work, current / "model.tflite", shifted, eval_dir, "2.0.1")
    result = evaluate(wrong, current, LIMITS)
    assert not result.ok and result.reason == GATE, result
    cand = result.figures["candidate"]
    assert isinstance(cand, dict) and cand["tp"] == 0 and cand["recall"] == 0.0


def test_model_that_does_not_load_is_refused(work: Path, current: Path, eval_dir: Path) -> None:
    broken = work / "broken.tflite"
    broken.write_bytes((current / "model.tflite").read_bytes()[:200_000])  # a cut download
    result = evaluate(
        _bundle(work, broken, current / "labels.txt", eval_dir, "3.0.0"), current, LIMITS
    )
    assert not result.ok and result.reason == BAD_MODEL
    assert "does not load" in result.detail


def test_card_that_does_not_fit_the_model_is_refused(
    work: Path, current: Path, eval_dir: Path
) -> None:
    folder = work / "card-320"
    folder.mkdir(exist_ok=True)
    card = write_card(folder, input_width=320, input_height=320)
    bundle = _bundle(
        work, current / "model.tflite", current / "labels.txt", eval_dir, "3.0.1", card
    )
    result = evaluate(bundle, current, LIMITS)
    assert not result.ok and result.reason == BAD_MODEL and "320x320" in result.detail

    result = evaluate(
        current, None, LIMITS.model_copy(update={"required_labels": ["Person", "Bus"]})
    )
    assert not result.ok and result.reason == BAD_MODEL
    assert "card mismatch" in result.detail and "Bus" in result.detail


def test_first_model_without_a_current_one_is_judged_on_floors(current: Path) -> None:
    result = evaluate(current, None, LIMITS)
    assert result.ok and "current" not in result.figures
    strict = LIMITS.model_copy(update={"min_recall": 1.0, "min_precision": 1.0})
    assert evaluate(current, None, strict).ok  # its own reviewed results: exactly 1.0


# ---------------------------------------------------------------- the decision and the figures


def _score(tp: int, fp: int, fn: int, label: str = "Person") -> Score:
    s = Score()
    s.total.tp, s.total.fp, s.total.fn = tp, fp, fn
    s.labels[label] = type(s.total)(tp, fp, fn)
    return s


def test_judge_applies_floors_margins_and_the_speed_limit() -> None:
    lim = GateLimits(min_precision=0.5, min_recall=0.5, max_drop=0.1, max_slowdown=1.5)
    good = _score(9, 1, 1)
    assert judge(good, good, 10.0, 10.0, lim) == ("", "")
    reason, detail = judge(_score(8, 2, 2), good, 10.0, 10.0, lim)  # 0.8 vs 0.9: within 0.1
    assert reason == ""
    reason, detail = judge(_score(7, 3, 3), good, 10.0, 10.0, lim)  # 0.7 vs 0.9
    assert reason == GATE and "precision 0.700" in detail and "recall 0.700" in detail
    reason, detail = judge(_score(2, 8, 8), None, 10.0, None, lim)
    assert reason == GATE and "< floor 0.5" in detail
    reason, detail = judge(good, good, 16.0, 10.0, lim)
    assert reason == TOO_SLOW and "1.60 times" in detail
    assert judge(good, good, 14.0, 10.0, lim) == ("", "")
    capped = lim.model_copy(update={"max_invoke_ms": 12.0})
    assert judge(good, None, 13.0, None, capped)[0] == TOO_SLOW
    per_label = _score(9, 1, 1)
    per_label.labels["Cat"] = type(per_label.total)(0, 0, 2)
    cur = _score(9, 1, 1)
    cur.labels["Cat"] = type(cur.total)(2, 0, 0)
    lim2 = lim.model_copy(update={"max_drop": 1.0})
    reason, detail = judge(per_label, cur, 10.0, 10.0, lim2)
    assert reason == GATE and detail.startswith("Cat recall 0.000")


def test_matching_counts_each_expected_box_once() -> None:
    a = (0.1, 0.1, 0.5, 0.5)
    assert iou(a, a) == 1.0 and iou(a, (0.5, 0.5, 0.9, 0.9)) == 0.0
    assert iou(a, (0.1, 0.1, 0.5, 0.3)) == pytest.approx(0.5)
    expected = [Labelled("Person", a)]
    found = [Labelled("Person", a, 0.6), Labelled("Person", a, 0.9), Labelled("Cat", a, 0.99)]
    assert match(found, expected, 0.5) == [(1, 0)]  # the best score takes it
    s = Score()
    s.add(found, expected, 0.5)
    assert (s.total.tp, s.total.fp, s.total.fn) == (1, 2, 0)
    assert s.total.precision == pytest.approx(1 / 3) and s.total.recall == 1.0
    assert s.labels["Cat"].fp == 1
    ag = Agreement()
    ag.add(expected, found, 0.5)
    ag.add([], [], 0.5)
    assert (ag.matched, ag.union, ag.frames) == (1, 3, 2)
    assert ag.count_deltas() == {"Cat": 1.0, "Person": 1.0, "*": 2.0}


# ---------------------------------------------------------------- shadow on live frames


@pytest.fixture(scope="module")
def replay(work: Path) -> Path:
    """Replayed camera frames: people crossing a real street photo, then the real photos."""
    folder = work / "replay"
    folder.mkdir()
    street = scenes.crossing_scene(count=2, frames_each=8, gap=1)
    for i in range(0, 17, 2):
        write_png(folder / f"a-{i:03d}.png", street.frame(i))
    for name in ("astronaut", "chelsea", "coffee", "camera"):
        small = cv2.resize(photo(name), (640, 480), interpolation=cv2.INTER_AREA)
        write_png(folder / f"b-{name}.png", np.asarray(small, np.uint8))
    return folder


def _frames(folder: Path) -> list[np.ndarray[Any, np.dtype[np.uint8]]]:
    return [decode_image(p.read_bytes()) for p in sorted(folder.glob("*.png"))]


def _shadow(current: Detector, candidate: Detector, frames: list[Any]) -> Any:
    limits = ShadowLimits(frames=len(frames), every_s=0.0, timeout_s=120)
    run = ShadowRun(current, candidate, limits)
    run.start()
    try:
        for i, rgb in enumerate(frames):
            deadline = time.monotonic() + 30
            while run.copied == i and time.monotonic() < deadline:  # the slot frees per frame
                run.offer(rgb, float(i))
                time.sleep(0.005)
        return run.wait(120)
    finally:
        run.stop()


def test_shadow_agrees_for_the_same_model_and_not_for_a_worse_one(
    work: Path, current: Path, eval_dir: Path, worse_model: Path, replay: Path
) -> None:
    frames = _frames(replay)
    base = bundle_detector(read_model_bundle(current), threads=1)
    same = bundle_detector(read_model_bundle(current), threads=1)
    ok = _shadow(base, same, frames)
    assert ok.ok, ok
    assert ok.figures["frames"] == len(frames) and ok.figures["agreement"] == 1.0
    assert ok.figures["matched"] >= 8  # people and the cat were seen, not an empty run

    worse = bundle_detector(
        read_model_bundle(_bundle(work, worse_model, current / "labels.txt", eval_dir, "2.1.0")),
        threads=1,
    )
    bad = _shadow(base, worse, frames)
    assert not bad.ok and bad.reason == SHADOW, bad
    agreement = bad.figures["agreement"]
    assert isinstance(agreement, float) and agreement < 0.7
    print("shadow, worse model:", json.dumps(bad.figures))


def test_shadow_copies_at_most_one_frame_per_interval_and_never_waits(
    current: Path, replay: Path
) -> None:
    b = read_model_bundle(current)
    run = ShadowRun(
        bundle_detector(b, threads=1), bundle_detector(b, threads=1), ShadowLimits(every_s=1.0)
    )  # not started: the slot stays full once a frame is in it
    frame = _frames(replay)[0]
    keep = frame.copy()
    for t in (0.0, 0.4, 0.9):
        run.offer(frame, t)
    assert (run.copied, run.skipped) == (1, 0)  # 0.4 and 0.9 are not due
    frame[:] = 0  # the pipeline goes on with its buffer: the copy is unaffected
    run.offer(frame, 1.0)
    assert (run.copied, run.skipped) == (1, 1)  # due, but the sidecar is busy: skipped
    assert np.array_equal(run._slot.get_nowait(), keep)


def test_shadow_refuses_when_too_few_frames_were_compared() -> None:
    judge = ShadowJudge(ShadowLimits(frames=3))
    judge.add([], [])
    verdict = judge.verdict()
    assert not verdict.ok and verdict.reason == SHADOW
    assert verdict.detail == "only 1 of 3 frames compared"


@pytest.fixture
def live(replay: Path, tmp_path: Path, current: Path) -> Iterator[PipelineThread]:
    """A running pipeline thread on a replayed camera with the current model."""
    cam = FilesCameraSettings(type="files", path=replay, fps=15)
    capture = Capture(lambda: make_source(cam), FrameQueue(2), Backoff(0.2, 0.5, 0.2), fps=15)
    settings = PipelineSettings(
        detector=DetectorSettings(card=current / "card.toml", model_dir=current, threads=1)
    )
    outbox = Outbox(tmp_path / "outbox.sqlite", "cam-gate", 1 << 22, 10_000)
    det = bundle_detector(read_model_bundle(current), threads=1)
    thread = PipelineThread(settings, capture, outbox, det, AgentMetrics(), tmp_path)
    capture.start()
    thread.start()
    try:
        yield thread
    finally:
        thread.stop()
        capture.stop()
        outbox.close()


def _wait(cond: Any, timeout: float = 60.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if cond():
            return True
        time.sleep(0.05)
    return False


@pytest.mark.slow  # a camera thread, the pipeline thread and the shadow sidecar, live
def test_refused_model_leaves_the_live_pipeline_alone_and_a_good_one_is_swapped_in(
    live: PipelineThread, work: Path, current: Path, eval_dir: Path, worse_model: Path
) -> None:
    running = live.pipeline.detector
    assert running is not None and _wait(lambda: live.pipeline.frames >= 3)
    limits = LIMITS.model_copy(
        update={"shadow": ShadowLimits(frames=6, every_s=0.05, timeout_s=120)}
    )
    cur = bundle_detector(read_model_bundle(current), threads=1)

    worse = _bundle(work, worse_model, current / "labels.txt", eval_dir, "2.2.0")
    refused = gate_and_promote(live, worse, current, limits, current_detector=cur, threads=1)
    assert not refused.ok and refused.reason == GATE
    frames = live.pipeline.frames
    assert _wait(lambda: live.pipeline.frames > frames + 3)  # still running...
    assert live.pipeline.detector is running  # ...on the old model

    # evaluation limits opened wide: the worse model passes its set and is caught live
    loose = limits.model_copy(
        update={
            "min_precision": 0.0,
            "min_recall": 0.0,
            "max_drop": 1.0,
            "max_label_recall_drop": 1.0,
            "shadow": ShadowLimits(frames=13, every_s=0.05, timeout_s=120),
        }
    )
    caught = gate_with_shadow(live, worse, current, loose, current_detector=cur, threads=1)
    assert not caught.ok and caught.reason == SHADOW, caught
    shadow = caught.figures["shadow"]
    assert isinstance(shadow, dict) and shadow["frames"] == 13 and shadow["agreement"] < 0.7
    assert live.pipeline.detector is running and live.alive()

    good = _bundle(work, current / "model.tflite", current / "labels.txt", eval_dir, "1.2.0")
    promoted = gate_and_promote(live, good, current, limits, current_detector=cur, threads=1)
    assert promoted.ok, promoted
    shadow = promoted.figures["shadow"]
    assert isinstance(shadow, dict) and shadow["frames"] == 6 and shadow["agreement"] == 1.0
    assert _wait(lambda: live.pipeline.detector is not running)  # swapped between frames
    new = live.pipeline.detector
    assert new is not None and new is not cur
    calls = new.invocations
    assert _wait(lambda: new.invocations > calls)  # the new model is the one detecting now
    assert live.alive() and live.errors == 0


def test_card_toml_round_trips_a_card(tmp_path: Path) -> None:
    card = load_card(DEFAULT_CARD)
    path = tmp_path / "c.toml"
    path.write_text(card_toml(card))
    assert load_card(path) == card


@pytest.mark.slow  # the live pipeline and a shadow sidecar
def test_the_agent_judges_a_model_update_in_shadow_on_its_live_pipeline(
    live: PipelineThread,
    work: Path,
    current: Path,
    eval_dir: Path,
    worse_model: Path,
    tmp_path: Path,
) -> None:
    """AgentOta.use_pipeline (what agent.service does when a pipeline runs): the updater's
    gate is the evaluation set and then the shadow run on the live frames."""
    loose = {  # the worse model passes its evaluation set: only the shadow run can stop it
        "min_precision": 0.0,
        "min_recall": 0.0,
        "max_drop": 1.0,
        "max_label_recall_drop": 1.0,
        "max_slowdown": LIMITS.max_slowdown,
        "shadow": {"frames": 26, "every_s": 0.05, "timeout_s": 180},  # the replay twice over
    }
    agent = AgentSettings.model_validate(
        {
            "device_id": "cam-gate-wiring",
            "state_dir": str(tmp_path / "state"),
            "mqtt": {"ca": "/x", "cert": "/x", "key": "/x"},
            "ota": {
                "metadata_url": "https://127.0.0.1:9/metadata/",
                "targets_url": "https://127.0.0.1:9/targets/",
                "trusted_root": str(tmp_path / "root.json"),
                "slots_dir": str(tmp_path / "slots"),
                "model_gate": loose,
            },
        }
    )
    ota = AgentOta(agent, threading.Event())
    assert ota.updater is not None
    assert ota.updater.gate == ota.updater.evaluation_gate  # no pipeline: the set alone
    ota.use_pipeline(live)
    worse = _bundle(work, worse_model, current / "labels.txt", eval_dir, "2.3.0")
    verdict = ota.updater.gate(worse, current)
    assert not verdict.ok and verdict.reason == SHADOW, verdict
    shadow = verdict.figures["shadow"]
    assert isinstance(shadow, dict) and shadow["frames"] == 26 and shadow["agreement"] < 0.7
    assert _wait(lambda: live.pipeline.frames > 0) and live.alive()
