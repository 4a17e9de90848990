# Clock sanity for the node, before any TLS or signature decision.
#
# A board without a battery clock starts at its epoch (2000 or 1970) until NTP answers;
# TLS would then call a valid broker certificate "not yet valid", and a clock that is set
# back could take an expired certificate for a valid one. The node compares its clock with
# a floor: the later of the firmware's release time and the last known-good time it saved
# (minus a little slack). Below the floor it must wait for time sync and say so.
#
# Pure functions only (issue 3). Wiring them into node.py (before connect) is left to the
# firmware's owner: call ``clock_ok(now, RELEASE_FLOOR, parse_last_good(text))``.

RELEASE_FLOOR = 1793491200  # 2026-11-01T00:00:00Z, raised at every release
SLACK_S = 300


def parse_last_good(text: object) -> float | None:
    """The saved last known-good time (a number on one line), or None if unusable."""
    if not isinstance(text, str):
        return None
    text = text.strip()
    if not text:
        return None
    try:
        value = float(text)
    except ValueError:
        return None
    if not (0 <= value <= 2**33):  # NaN, negative, absurd
        return None
    return value


def floor(release_floor: float, last_good: float | None) -> float:
    """The earliest time the clock may show."""
    if last_good is None:
        return release_floor
    saved = last_good - SLACK_S
    return saved if saved > release_floor else release_floor


def clock_ok(now: float, release_floor: float, last_good: float | None) -> bool:
    """Whether ``now`` may be trusted for certificate and signature decisions."""
    return now >= floor(release_floor, last_good)


def seconds_behind(now: float, release_floor: float, last_good: float | None) -> float:
    """How far the clock is below the floor (0 when it is sane): for the log."""
    gap = floor(release_floor, last_good) - now
    return gap if gap > 0 else 0
