"""Traffic counts and events taken out: CSV, and counts as NGSI-LD ``TrafficFlowObserved``
entities (FIWARE Smart Data Models, normalized form) for a province's context broker.

The mapping (docs/operations.md, "Counts as NGSI-LD") is ``ATTRIBUTES``: one entity per
device, line, direction, vehicle class and counting interval. Classes that are not vehicles
(a person) and zone entries have no place in the model and are left out (counted).
Pure: rows in, text and dicts out."""

from __future__ import annotations

import csv
import io
import urllib.parse
from collections.abc import Iterable, Sequence
from typing import Any

from fleet_server.dashboard.ops_data import CountRow, iso
from fleet_server.ingest.events import snapshot_url

CONTEXT = [
    "https://raw.githubusercontent.com/smart-data-models/dataModel.Transportation/master/"
    "context.jsonld",
    "https://uri.etsi.org/ngsi-ld/v1/ngsi-ld-core-context-v1.8.jsonld",
]
ENTITY_TYPE = "TrafficFlowObserved"
DATA_PROVIDER = "camfleet"
# attribute -> (NGSI-LD attribute type, unitCode (UN/CEFACT) or None). The model gives
# intensity no unit: a number of vehicles in the observation period.
ATTRIBUTES: dict[str, tuple[str, str | None]] = {
    "dateObserved": ("Property", None),
    "dateObservedFrom": ("Property", None),
    "dateObservedTo": ("Property", None),
    "intensity": ("Property", None),
    "vehicleType": ("Property", None),
    "laneDirection": ("Property", None),
    "location": ("GeoProperty", None),
    "name": ("Property", None),
    "description": ("Property", None),
    "dataProvider": ("Property", None),
}
# detector class (lower case) -> the model's vehicleType enum
VEHICLE_TYPES = {
    "car": "car", "bus": "bus", "minibus": "minibus", "truck": "lorry", "lorry": "lorry",
    "van": "van", "motorcycle": "motorcycle", "motorbike": "motorcycle", "moped": "moped",
    "scooter": "motorscooter", "motorscooter": "motorscooter", "bicycle": "bicycle",
    "tram": "tram", "trailer": "trailer", "tanker": "tanker",
}  # fmt: skip
# a line's direction names -> laneDirection; other names go into the description only
LANE_DIRECTIONS = {"in": "forward", "forward": "forward", "out": "backward",
                   "backward": "backward"}  # fmt: skip

COUNT_FIELDS = ["site_id", "site_name", "device_id", "start_utc", "end_utc", "line", "kind",
                "class", "direction", "count"]  # fmt: skip
EVENT_FIELDS = ["event_id", "time_utc", "type", "device_id", "site_id", "class", "snapshot"]


def _safe_cell(value: object) -> str:
    """A cell a spreadsheet will not run as a formula (=, +, -, @ at the start)."""
    text = str(value)
    return "'" + text if text[:1] in ("=", "+", "-", "@", "\t", "\r") else text


def counts_csv(rows: Iterable[CountRow], names: dict[str, str]) -> str:
    out = io.StringIO()
    w = csv.writer(out, lineterminator="\r\n")
    w.writerow(COUNT_FIELDS)
    for r in rows:
        w.writerow([_safe_cell(v) for v in (
            r.site_id, names.get(r.site_id, ""), r.device_id, iso(r.start), iso(r.end), r.line,
            r.kind, r.label, r.direction)] + [r.count])  # fmt: skip
    return out.getvalue()


def events_csv(rows: Iterable[tuple[str, float, str, str, str, str, bool]]) -> str:
    """Rows of (event id, time, type, device, site, class, has a snapshot)."""
    out = io.StringIO()
    w = csv.writer(out, lineterminator="\r\n")
    w.writerow(EVENT_FIELDS)
    for event_id, ts, type_, device, site, label, snap in rows:
        link = snapshot_url(device, event_id) if snap else ""
        w.writerow([_safe_cell(v) for v in (event_id, iso(ts), type_, device, site, label, link)])
    return out.getvalue()


def _prop(value: object) -> dict[str, Any]:
    return {"type": "Property", "value": value}


def _when(ts: float) -> dict[str, Any]:
    return _prop({"@type": "DateTime", "@value": iso(ts)})


def entity_id(r: CountRow, vehicle: str) -> str:
    parts = [r.device_id, r.line, r.direction, vehicle, str(int(r.start))]
    return f"urn:ngsi-ld:{ENTITY_TYPE}:{DATA_PROVIDER}:" + ":".join(
        urllib.parse.quote(p, safe="-._") for p in parts
    )


def traffic_flow_observed(
    rows: Sequence[CountRow], sites: dict[str, tuple[str, float | None, float | None]]
) -> tuple[list[dict[str, Any]], int]:
    """(entities, rows left out). ``sites``: site id -> (name, lat, lon)."""
    entities: list[dict[str, Any]] = []
    skipped = 0
    for r in rows:
        vehicle = VEHICLE_TYPES.get(r.label.lower())
        if r.kind != "line" or vehicle is None:
            skipped += 1
            continue
        name, lat, lon = sites.get(r.site_id, (r.device_id, None, None))
        e: dict[str, Any] = {
            "id": entity_id(r, vehicle),
            "type": ENTITY_TYPE,
            "dateObserved": _prop(f"{iso(r.start)}/{iso(r.end)}"),
            "dateObservedFrom": _when(r.start),
            "dateObservedTo": _when(r.end),
            "intensity": _prop(r.count),
            "vehicleType": _prop(vehicle),
            "name": _prop(name),
            "description": _prop(
                f"line {r.line}, direction {r.direction}, class {r.label}, device {r.device_id}"
            ),
            "dataProvider": _prop(DATA_PROVIDER),
            "@context": CONTEXT,
        }
        lane = LANE_DIRECTIONS.get(r.direction.lower())
        if lane is not None:
            e["laneDirection"] = _prop(lane)
        if lat is not None and lon is not None:
            e["location"] = {"type": "GeoProperty",
                             "value": {"type": "Point", "coordinates": [lon, lat]}}  # fmt: skip
        entities.append(e)
    return entities, skipped
