"""Evaluation sets and model bundles from the command line.

``make_eval_set`` writes an evaluation set from photos with a model's detections as the
expected results; in production a person reviews and corrects them before the set ships
(``python -m agent.ota.eval_set eval-set ...``; see docs/ota.md). ``build`` and ``check``
make and check a bundle (the format: ``common.model_bundle``).
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from agent.errors import ModelError
from agent.vision.modelcard import load_card
from common.files import atomic_write
from common.model_bundle import (
    IMAGE_SUFFIXES,
    BundleError,
    build_model_bundle,
    parse_expected,
    read_model_bundle,
)

if TYPE_CHECKING:
    from agent.vision.detector import Detector


def make_eval_set(detector: Detector, images: Sequence[Path], out_dir: Path) -> Path:
    """Copy ``images`` into ``out_dir`` with ``expected.json`` holding the detector's
    detections on each: a draft to be reviewed by a person before it ships."""
    from agent.vision.pipeline import decode_image  # the detector runtime only when used

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    expected: dict[str, list[dict[str, object]]] = {}
    for src in images:
        name = Path(src).name
        if not name.lower().endswith(IMAGE_SUFFIXES) or name == "expected.json":
            raise BundleError(f"{src} is not an image file ({', '.join(IMAGE_SUFFIXES)})")
        if name in expected:
            raise BundleError(f"two images are named {name}")
        data = Path(src).read_bytes()
        try:
            rgb = decode_image(data)
        except ValueError as exc:
            raise BundleError(f"{src}: {exc}") from exc
        expected[name] = [
            {"label": d.label, "box": [round(min(1.0, max(0.0, v)), 4) for v in d.box]}
            for d in detector.detect(rgb)
        ]
        atomic_write(str(out_dir / name), data, 0o644)
    text = json.dumps(dict(sorted(expected.items())), indent=1).encode()
    parse_expected(text, "the drafted expected.json")  # what the bundle reader accepts
    atomic_write(str(out_dir / "expected.json"), text, 0o644)
    return out_dir


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m agent.ota.eval_set", description=__doc__)
    sub = ap.add_subparsers(dest="cmd", required=True)
    ev = sub.add_parser("eval-set", help="draft an evaluation set with a model's detections")
    ev.add_argument("--card", type=Path, required=True)
    ev.add_argument("--model-dir", type=Path, required=True)
    ev.add_argument("--out", type=Path, required=True)
    ev.add_argument("images", type=Path, nargs="+")
    b = sub.add_parser("build", help="make a model bundle directory")
    b.add_argument("--model", type=Path, required=True)
    b.add_argument("--labels", type=Path, required=True)
    b.add_argument("--card", type=Path, required=True)
    b.add_argument("--eval", type=Path, required=True)
    b.add_argument("--release", required=True)
    b.add_argument("--out", type=Path, required=True)
    c = sub.add_parser("check", help="check a model bundle directory")
    c.add_argument("dir", type=Path)
    args = ap.parse_args(argv)
    try:
        if args.cmd == "eval-set":
            from agent.vision.detector import Detector

            det = Detector(load_card(args.card), args.model_dir, "litert", 2)
            print(make_eval_set(det, args.images, args.out))
        elif args.cmd == "build":
            print(
                build_model_bundle(
                    args.model, args.labels, args.card, args.eval, args.release, args.out
                )
            )
        else:
            bundle = read_model_bundle(args.dir)
            print(f"{bundle.name} {bundle.release}: {len(bundle.eval_set)} evaluation images")
    except (ModelError, BundleError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
