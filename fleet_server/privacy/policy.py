"""Pure decisions on images: may this image be stored under this site's policy?

``screen`` takes what the server knows (the site's policy, the camera's masks version and
whether its view moved) and the image with the box's marking, and returns a refusal reason
or "". The rules, strictest first:

- policy ``none``: no image at all;
- the camera's view moved and its masks were not confirmed since: none (its masks may no
  longer cover what they should);
- the image was taken under older masks than the camera's current ones: refused (a
  region masked since may be in it);
- policy ``anonymised``: the box must mark the image anonymised, and the image must be one
  (a JPEG thumbnail of at most ``ANON_MAX_SIDE`` pixels: checked in its header, so a box
  that lies about it is caught);
- policy ``full``: any image taken under the current masks.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from common import privacy

POLICY_NONE = "policy_none"
MASKS_STALE = "masks_stale"
OLD_MASKS = "old_masks"
NOT_ANONYMISED = "not_anonymised"
FAILED_CHECK = "anonymised_check_failed"
NOT_JPEG = "not_jpeg"
REASONS = (POLICY_NONE, MASKS_STALE, OLD_MASKS, NOT_ANONYMISED, FAILED_CHECK, NOT_JPEG)


@dataclass(frozen=True)
class CameraPolicy:
    """What the server holds for one camera at the time an image arrives."""

    site_id: str | None
    policy: str
    policy_version: int
    masks_version: int
    stale: bool


def _int(value: object) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) else -1


def screen(cam: CameraPolicy, image: bytes, marking: object) -> str:
    """Refusal reason for ``image`` (with the box's ``marking``), or "" to store it."""
    if cam.policy == privacy.NONE:
        return POLICY_NONE
    if cam.stale:
        return MASKS_STALE
    mark: dict[str, Any] = marking if isinstance(marking, dict) else {}
    if _int(mark.get("masks_version", 0)) < cam.masks_version:
        return OLD_MASKS
    if image[:2] != b"\xff\xd8":
        return NOT_JPEG
    if cam.policy == privacy.ANONYMISED:
        if mark.get("policy") != privacy.ANONYMISED:
            return NOT_ANONYMISED
        if privacy.anonymised_problem(image):
            return FAILED_CHECK
    return ""
