"""Reconnect and retry delays: exponential backoff with full jitter (contract policy)."""

from __future__ import annotations

import random
from collections.abc import Callable

from firmware import contract


class Backoff:
    """Counts failed attempts and hands out the delay before the next one.

    Delays come from ``contract.reconnect_delay``: the first retry after a loss is spread
    uniformly over ``first_spread`` seconds, later ones are a uniform draw below
    ``min(cap, base * 2**attempt)``. ``rnd`` returns a number in [0, 1).
    """

    def __init__(
        self,
        base: float,
        cap: float,
        first_spread: float,
        rnd: Callable[[], float] | None = None,
    ) -> None:
        if base <= 0 or cap < base or first_spread < 0:
            raise ValueError("need 0 < base <= cap and first_spread >= 0")
        self.base = base
        self.cap = cap
        self.first_spread = first_spread
        self._rnd = rnd if rnd is not None else random.SystemRandom().random
        self.attempt = 0

    def next_delay(self) -> float:
        """Seconds to wait before the next attempt; each call counts one more failure."""
        delay = float(
            contract.reconnect_delay(
                self.attempt, self._rnd(), self.base, self.cap, self.first_spread
            )
        )
        self.attempt += 1
        return delay

    def reset(self) -> None:
        """Back to the first retry (after a connection that held)."""
        self.attempt = 0
