"""Benchmark figures: one entry per figure, written to bench/results.json and the README."""

from __future__ import annotations

import json
import platform
import re
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from common.files import atomic_write

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results.json"
README = ROOT / "README.md"
START, END = "<!-- bench:start -->", "<!-- bench:end -->"


@dataclass(frozen=True)
class Figure:
    name: str
    value: float
    unit: str
    compared_with: str
    detail: str = ""


def previous() -> list[Figure]:
    """The figures bench/results.json holds now (none when it is missing or unreadable)."""
    try:
        doc = json.loads(RESULTS.read_text())
        return [Figure(**f) for f in doc.get("figures", [])]
    except (OSError, ValueError, TypeError):
        return []


def write(figures: list[Figure]) -> None:
    generated = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    doc = {
        "generated": generated,
        "machine": f"{platform.machine()}, {platform.python_implementation()} "
        f"{platform.python_version()}",
        "figures": [asdict(f) for f in figures],
    }
    atomic_write(str(RESULTS), (json.dumps(doc, indent=2) + "\n").encode())
    update_readme(figures, generated)


def _num(value: float) -> str:
    return str(int(value)) if float(value).is_integer() and abs(value) < 1e12 else f"{value:.4g}"


def table(figures: list[Figure], generated: str) -> str:
    lines = [
        f"Latest `make bench` ({generated}):",
        "",
        "| figure | value | unit | compared with | detail |",
        "|---|---|---|---|---|",
    ]
    for f in figures:
        lines.append(
            f"| `{f.name}` | {_num(f.value)} | {f.unit} | {f.compared_with} | {f.detail} |"
        )
    return "\n".join(lines)


def update_readme(figures: list[Figure], generated: str) -> None:
    text = README.read_text()
    if START not in text or END not in text:
        return
    new = re.sub(
        re.escape(START) + r".*?" + re.escape(END),
        START + "\n" + table(figures, generated) + "\n" + END,
        text,
        flags=re.S,
    )
    atomic_write(str(README), new.encode())
