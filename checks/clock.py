"""One injected clock, so the scheduler and the escalation engine run on
virtual time in tests."""

from __future__ import annotations

import time
from typing import Protocol


class Clock(Protocol):
    def wall(self) -> float:
        """Seconds since the epoch: what is stored and shown."""
        ...

    def monotonic(self) -> float:
        """Seconds on a clock that never jumps: what durations are measured on."""
        ...


class SystemClock:
    def wall(self) -> float:
        return time.time()

    def monotonic(self) -> float:
        return time.monotonic()


class FakeClock:
    """A clock that moves only when told to; both readings move together."""

    def __init__(self, start: float = 1_700_000_000.0) -> None:
        self._wall = start
        self._mono = 1000.0

    def wall(self) -> float:
        return self._wall

    def monotonic(self) -> float:
        return self._mono

    def advance(self, seconds: float) -> None:
        if seconds < 0:
            raise ValueError(f"a clock cannot go back {seconds} s")
        self._wall += seconds
        self._mono += seconds

    def set(self, wall: float) -> None:
        self.advance(wall - self._wall)
