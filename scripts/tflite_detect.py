"""Run the detector with the tflite-runtime backend on images given as .npy files and print
the detections as JSON. Runs in the tflite venv (numpy < 2), which cannot hold LiteRT."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np

from agent.vision.detector import Detector
from agent.vision.modelcard import DEFAULT_CARD, load_card


def main() -> int:
    model_dir, images = Path(sys.argv[1]), [Path(p) for p in sys.argv[2:]]
    det = Detector(load_card(DEFAULT_CARD), model_dir, "tflite", 2)
    out = {}
    for path in images:
        found = det.detect(np.load(path))
        out[path.stem] = [{"label": d.label, "score": d.score, "box": list(d.box)} for d in found]
    print(json.dumps(out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
