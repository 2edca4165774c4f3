"""A circuit breaker: after a few failures in a row, stop calling for a while, then try once."""

from __future__ import annotations

import time
from collections.abc import Callable


class Breaker:
    def __init__(
        self,
        failures_to_open: int = 3,
        cooldown: float = 1.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._failures_to_open = failures_to_open
        self._cooldown = cooldown
        self._clock = clock
        self._failures = 0
        self._open_until = 0.0

    @property
    def is_open(self) -> bool:
        return self._failures >= self._failures_to_open

    def allows(self) -> bool:
        """True when a call may go out: closed, or open with its cooldown over (one trial)."""
        if self._failures < self._failures_to_open:
            return True
        now = self._clock()
        if now >= self._open_until:
            # Half-open: let this one call through and hold the others for another cooldown.
            self._open_until = now + self._cooldown
            return True
        return False

    def succeeded(self) -> None:
        self._failures = 0

    def failed(self) -> None:
        self._failures += 1
        if self._failures == self._failures_to_open:
            self._open_until = self._clock() + self._cooldown
