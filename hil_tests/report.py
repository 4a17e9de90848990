"""The human-readable report of a rig run: one HTML page from the recorder's timeline
(``timeline.json``, written by the scenario suite) and, when given, pytest's JUnit XML.

    python -m hil_tests.report build/hil/timeline.json --junit build/hil/junit.xml \
        --out build/hil/report.html

Per scenario: its invariant, outcome, faults injected, events produced, events stored,
duplicates and time to recover; then the timeline of every fault, restore, observation
and check, in order, with the seconds since the run began.
"""

from __future__ import annotations

import argparse
import html
import json
import sys
import time
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any

from common.files import atomic_write

_CSS = """
body{font:14px/1.4 system-ui,sans-serif;margin:2em;color:#222}
table{border-collapse:collapse;margin:1em 0}td,th{border:1px solid #ccc;padding:.3em .6em}
th{background:#f3f3f3;text-align:left}.passed{color:#176f2c}.failed{color:#b00020}
.skipped{color:#8a6d00}tr.fault td{background:#fff4f4}tr.restore td{background:#f4fff6}
tr.check td{background:#f4f8ff}td.num{text-align:right;font-variant-numeric:tabular-nums}
"""


def junit_outcomes(path: Path) -> dict[str, tuple[str, str]]:
    """Test name -> (outcome, message) from pytest's JUnit XML."""
    out: dict[str, tuple[str, str]] = {}
    root = ET.parse(path).getroot()
    for case in root.iter("testcase"):
        name = case.get("name", "")
        outcome, message = "passed", ""
        for tag in ("failure", "error", "skipped"):
            node = case.find(tag)
            if node is not None:
                outcome = "skipped" if tag == "skipped" else "failed"
                message = node.get("message", "") or (node.text or "")[:300]
                break
        out[name] = (outcome, message)
    return out


def _fmt(value: object, unit: str = "") -> str:
    if value is None:
        return "&ndash;"
    if isinstance(value, float):
        return f"{value:.1f}{unit}"
    return f"{value}{unit}"


def render(data: dict[str, Any], junit: dict[str, tuple[str, str]] | None = None) -> str:
    scenarios: list[dict[str, Any]] = data.get("scenarios", [])
    records: list[dict[str, Any]] = data.get("records", [])
    t0 = min([r["t"] for r in records] or [time.time()])
    e = html.escape
    rows = []
    for s in scenarios:
        outcome, message = s["outcome"], ""
        if junit:
            outcome, message = junit.get(s["name"], (outcome, ""))
        took = max(0.0, (s["ended"] or s["started"]) - s["started"])
        rows.append(
            f"<tr><td>{e(s['name'])}</td><td>{e(s['rig'])}</td>"
            f"<td class={e(outcome)} title='{e(message)}'>{e(outcome)}</td>"
            f"<td>{e(s['invariant'])}</td><td class=num>{s['faults']}</td>"
            f"<td class=num>{_fmt(s['events_produced'])}</td>"
            f"<td class=num>{_fmt(s['events_stored'])}</td>"
            f"<td class=num>{_fmt(s['duplicates'])}</td>"
            f"<td class=num>{_fmt(s['recover_s'], ' s')}</td>"
            f"<td class=num>{took:.1f} s</td><td>{e('; '.join(s.get('notes', [])))}</td></tr>"
        )
    timeline = [
        f"<tr class={e(r['kind'])}><td class=num>{r['t'] - t0:.2f}</td><td>{e(r['scenario'])}</td>"
        f"<td>{e(r['kind'])}</td><td>{e(r['device'])}</td><td>{e(r['what'])}</td>"
        f"<td>{e(r['detail'])}</td></tr>"
        for r in records
    ]
    counts = {k: sum(1 for s in scenarios if s["outcome"] == k) for k in ("passed", "failed")}
    if junit:
        values = [o for o, _m in junit.values()]
        counts = {k: values.count(k) for k in ("passed", "failed", "skipped")}
    started = time.strftime("%Y-%m-%d %H:%M:%SZ", time.gmtime(t0))
    summary = ", ".join(f"{v} {k}" for k, v in counts.items())
    return (
        "<!doctype html><html><head><meta charset=utf-8><title>camfleet rig report</title>"
        f"<style>{_CSS}</style></head><body><h1>camfleet rig report</h1>"
        f"<p>Run started {e(started)}; {e(summary)}.</p><h2>Scenarios</h2><table><tr>"
        "<th>scenario</th><th>rig</th><th>outcome</th><th>invariant</th><th>faults</th>"
        "<th>events produced</th><th>events stored</th><th>duplicates</th>"
        "<th>time to recover</th><th>took</th><th>notes</th></tr>"
        + "".join(rows)
        + "</table><h2>Timeline</h2><table><tr><th>t (s)</th><th>scenario</th><th>kind</th>"
        "<th>device</th><th>what</th><th>detail</th></tr>" + "".join(timeline) + "</table>"
        "</body></html>\n"
    )


def write_report(timeline: Path, out: Path, junit: Path | None = None) -> Path:
    data = json.loads(timeline.read_text())
    outcomes = junit_outcomes(junit) if junit is not None and junit.exists() else None
    out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(str(out), render(data, outcomes).encode(), 0o644)
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="hil-report", description=__doc__)
    p.add_argument("timeline", type=Path, help="timeline.json written by the scenario suite")
    p.add_argument("--junit", type=Path, help="pytest --junitxml output")
    p.add_argument("--out", type=Path, required=True, help="the HTML file to write")
    args = p.parse_args(argv)
    if not args.timeline.exists():
        print(f"no timeline at {args.timeline}: did the scenarios run?", file=sys.stderr)
        return 1
    write_report(args.timeline, args.out, args.junit)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
