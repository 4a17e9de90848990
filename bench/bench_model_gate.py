"""The model accuracy gate with the real model (SSD MobileNetV2, LiteRT, 2 threads) on real
photos (scikit-image's astronaut, camera, chelsea, rocket, and street frames).

- model_gate_over_invokes: wall time of ``evaluate`` (bundle hashes, two interpreters
  loaded, every image decoded, both models run and scored) over the bare interpreter's
  median invoke time times the number of invocations it makes.
- shadow_pipeline_fps_ratio: pipeline frames/s (every frame detected) with a shadow run
  beside it (one frame copied per second, two models on it in a sidecar thread) over the
  same without; how much the live pipeline pays for a shadow run.
"""

from __future__ import annotations

import statistics
import time
from pathlib import Path

import numpy as np

from agent.ota.eval_set import make_eval_set
from agent.ota.model_gate import bundle_detector, evaluate
from agent.ota.model_gate_settings import GateLimits, ShadowLimits
from agent.ota.shadow import ShadowRun
from agent.vision.detector import Detector
from agent.vision.model_fetch import ensure_model
from agent.vision.modelcard import DEFAULT_CARD, load_card
from agent.vision.pipeline import Pipeline
from agent.vision.settings import MotionSettings, PipelineSettings
from bench.results import Figure
from common.model_bundle import build_model_bundle, read_model_bundle
from hil_tests import scenes

THREADS = 2
PIPELINE_FRAMES = 60  # per run; at ~30 ms a frame, two seconds
PIPELINE_MAX_S = 30.0
PAIRS = 3  # runs with and without a shadow, alternated (the median ratio is kept)


def _photos(folder: Path, street: scenes.Scene) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    images = {
        "astronaut": scenes.person(),
        "camera": scenes.cameraman(),
        "chelsea": scenes.cat(),
        "rocket": scenes.background(),
    }
    for i in (3, 15, 27):
        images[f"street-{i:02d}"] = street.frame(i)
    out = []
    for name, rgb in images.items():
        path = folder / f"{name}.png"
        path.write_bytes(scenes.png_bytes(rgb))
        out.append(path)
    return out


def _bare_invoke_ms(det: Detector, rgb: np.ndarray, n: int = 30) -> float:
    tensor = det.preprocess(rgb).copy()
    det.backend.invoke(tensor)
    times = []
    for _ in range(n):
        t0 = time.perf_counter()
        det.backend.invoke(tensor)
        times.append((time.perf_counter() - t0) * 1000.0)
    return statistics.median(times)


def _pipeline_fps(
    det: Detector, frames: list[np.ndarray], shadow: ShadowRun | None, count: int
) -> float:
    settings = PipelineSettings(motion=MotionSettings(always_detect=True))
    pipe = Pipeline(settings, det, lambda *_: None, time.time())
    t0 = time.perf_counter()
    n = 0
    while n < count and time.perf_counter() - t0 < PIPELINE_MAX_S:
        t = time.perf_counter()
        pipe.process(frames[n % len(frames)], t, time.time())
        if shadow is not None:
            shadow.offer(frames[n % len(frames)], t)
        n += 1
    return n / (time.perf_counter() - t0)


def run(work: Path) -> list[Figure]:
    files = ensure_model()
    card = load_card(DEFAULT_CARD)
    det = Detector(card, files.folder, "litert", THREADS)
    street = scenes.crossing_scene(count=1, frames_each=30)
    photos = _photos(work / "photos", street)
    eval_dir = make_eval_set(det, photos, work / "eval")
    current = build_model_bundle(
        files.model, files.labels, DEFAULT_CARD, eval_dir, "1.0.0", work / "m-1.0.0"
    )
    candidate = build_model_bundle(
        files.model, files.labels, DEFAULT_CARD, eval_dir, "1.1.0", work / "m-1.1.0"
    )
    limits = GateLimits(max_slowdown=100.0)  # a bench measures; it does not judge
    t0 = time.perf_counter()
    result = evaluate(candidate, current, limits, threads=THREADS)
    eval_s = time.perf_counter() - t0
    if not result.ok:
        raise RuntimeError(f"the same model was refused: {result.error}")
    invokes = 2 * (len(photos) * limits.timing_rounds + 1)
    bare = _bare_invoke_ms(det, scenes.person())
    frames = [street.frame(i) for i in range(0, 30, 3)]
    _pipeline_fps(det, frames, None, 10)  # warm-up
    bundle = read_model_bundle(candidate)
    shadow = ShadowRun(
        bundle_detector(bundle, threads=1),
        bundle_detector(bundle, threads=1),
        ShadowLimits(frames=10_000, every_s=1.0),
    )
    shadow.start()
    alone_runs, beside_runs = [], []
    try:
        for _ in range(PAIRS):
            alone_runs.append(_pipeline_fps(det, frames, None, PIPELINE_FRAMES))
            beside_runs.append(_pipeline_fps(det, frames, shadow, PIPELINE_FRAMES))
    finally:
        shadow.stop()
    alone, beside = statistics.median(alone_runs), statistics.median(beside_runs)
    return [
        Figure(
            "model_gate_over_invokes",
            eval_s * 1000.0 / (bare * invokes),
            "x",
            "bare LiteRT invokes (median) of the same model",
            f"evaluate {eval_s:.2f} s for {len(photos)} images, 2 models, "
            f"{invokes} invokes; bare invoke {bare:.1f} ms",
        ),
        Figure(
            "shadow_pipeline_fps_ratio",
            beside / alone,
            "x",
            "the same pipeline without a shadow run",
            f"{beside:.1f} frames/s with, {alone:.1f} without; shadow compared "
            f"{shadow.judge.agreement.frames} frames",
        ),
    ]
