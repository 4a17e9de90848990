"""Batch preparation: a CSV of sites -> one enrollment token each (kept in an atomic,
private file for working offline) and a printable sheet of QR labels (PNG and PDF).

CSV columns: ``site_id,name,device_id`` and optionally ``kind`` (agent|node), ``lat``,
``lon``. The QR holds ``camfleet-enroll:v1?d=<device>&t=<token>&s=<site>&k=<kind>``, the
text the tool's ``--qr-text`` takes from a scanner.
"""

from __future__ import annotations

import csv
import json
import urllib.parse
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from common.files import atomic_write
from firmware import contract
from provisioning.api import ApiClient
from provisioning.errors import ProvisionError

if TYPE_CHECKING:  # Pillow and qrcode come with the "provision" extra (laptop only)
    from PIL import Image

SCHEME = "camfleet-enroll:v1"
LABEL_W, LABEL_H = 600, 300  # pixels at 150 dpi: 10 x 5 cm
PER_PAGE = (2, 5)  # columns, rows on an A4 sheet


@dataclass(frozen=True)
class Label:
    site_id: str
    name: str
    device_id: str
    kind: str
    token: str
    expires_at: float

    def qr_text(self) -> str:
        query = urllib.parse.urlencode(
            {"d": self.device_id, "t": self.token, "s": self.site_id, "k": self.kind}
        )
        return f"{SCHEME}?{query}"


def parse_qr_text(text: str) -> tuple[str, str, str, str]:
    """(device_id, token, site_id, kind) from a scanned label."""
    scheme, _, query = text.strip().partition("?")
    if scheme != SCHEME:
        raise ProvisionError("not a camfleet enrollment label", "scan the label on the box")
    fields = dict(urllib.parse.parse_qsl(query))
    try:
        return fields["d"], fields["t"], fields["s"], fields.get("k", "agent")
    except KeyError as exc:
        raise ProvisionError(f"label lacks {exc}", "print the label again") from exc


def read_sites(path: Path) -> list[dict[str, str]]:
    try:
        with open(path, newline="", encoding="utf-8") as f:
            rows = list(csv.DictReader(f))
    except (OSError, csv.Error, UnicodeDecodeError) as exc:
        raise ProvisionError(f"cannot read {path}: {exc}") from exc
    for n, row in enumerate(rows, start=2):
        for col in ("site_id", "name", "device_id"):
            if not (row.get(col) or "").strip():
                raise ProvisionError(f"{path}:{n}: column {col} is empty")
        if not contract.valid_device_id(row["device_id"].strip()):
            raise ProvisionError(f"{path}:{n}: invalid device id {row['device_id']!r}")
        if (row.get("kind") or "agent").strip() not in ("agent", "node"):
            raise ProvisionError(f"{path}:{n}: kind must be agent or node")
    return rows


def fetch_tokens(api: ApiClient, rows: list[dict[str, str]], ttl_s: int | None) -> list[Label]:
    labels = []
    for row in rows:
        kind = (row.get("kind") or "agent").strip()
        answer = api.enrollment_token(row["device_id"].strip(), kind, row["site_id"].strip(), ttl_s)
        labels.append(
            Label(
                row["site_id"].strip(),
                row["name"].strip(),
                row["device_id"].strip(),
                kind,
                str(answer["token"]),
                float(answer["expires_at"]),
            )
        )
    return labels


def save_tokens(labels: list[Label], path: Path) -> None:
    """The tokens for offline work: private file, written atomically."""
    data = [label.__dict__ for label in labels]
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(str(path), json.dumps(data, indent=1).encode(), 0o600)


def label_image(label: Label) -> Image.Image:
    import qrcode
    from PIL import Image, ImageDraw

    side = LABEL_H - 20
    # the spec's quiet zone (4 modules) and whole pixels per module: scanners need both
    qr = qrcode.QRCode(error_correction=qrcode.constants.ERROR_CORRECT_M, box_size=1, border=4)
    qr.add_data(label.qr_text())
    qr.make(fit=True)
    qr.box_size = max(1, side // (qr.modules_count + 8))
    code = qr.make_image(fill_color="black", back_color="white").get_image().convert("RGB")
    img = Image.new("RGB", (LABEL_W, LABEL_H), "white")
    img.paste(code, (10, 10))
    draw = ImageDraw.Draw(img)
    draw.rectangle((0, 0, LABEL_W - 1, LABEL_H - 1), outline="black")
    x = side + 24
    for n, line in enumerate(
        [label.device_id, label.kind, f"site {label.site_id}", label.name[:28], "scan to enroll"]
    ):
        draw.text((x, 30 + n * 40), line, fill="black")
    return img


def label_origin(i: int) -> tuple[int, int]:
    """Top-left pixel of the ``i``-th label on its sheet (cut lines, tests)."""
    cols, _rows = PER_PAGE
    return 20 + (i % cols) * LABEL_W, 40 + (i // cols) * (LABEL_H + 30)


def sheets(labels: list[Label]) -> list[Image.Image]:
    from PIL import Image

    cols, rows = PER_PAGE
    pages = []
    for start in range(0, len(labels), cols * rows):
        page = Image.new("RGB", (1240, 1754), "white")  # A4 at 150 dpi
        for i, label in enumerate(labels[start : start + cols * rows]):
            page.paste(label_image(label), label_origin(i))
        pages.append(page)
    return pages


def write_sheets(labels: list[Label], out: Path) -> tuple[list[Path], Path]:
    """PNG per sheet and one PDF; all written atomically."""
    if not labels:
        raise ProvisionError("no sites in the CSV")
    out.mkdir(parents=True, exist_ok=True)
    pages = sheets(labels)
    pngs = []
    for n, page in enumerate(pages, start=1):
        path = out / f"labels-{n}.png"
        tmp = out / f".labels-{n}.png.tmp"
        page.save(tmp, format="PNG")
        atomic_write(str(path), tmp.read_bytes(), 0o644)
        tmp.unlink()
        pngs.append(path)
    pdf = out / "labels.pdf"
    tmp = out / ".labels.pdf.tmp"
    pages[0].save(tmp, format="PDF", save_all=True, append_images=pages[1:], resolution=150.0)
    atomic_write(str(pdf), tmp.read_bytes(), 0o644)
    tmp.unlink()
    return pngs, pdf
