"""The result of one probe: what every check produces and everything else reads."""

from __future__ import annotations

import enum
from collections.abc import Mapping
from dataclasses import dataclass, field


class Status(enum.IntEnum):
    """Check status, ordered like the Nagios plugin exit codes."""

    OK = 0
    WARNING = 1
    CRITICAL = 2
    # The probe itself could not run (bad credentials file, missing binary):
    # we do not know the target's state, and the message says what to fix.
    UNKNOWN = 3

    @property
    def label(self) -> str:
        return self.name.lower()

    @classmethod
    def parse(cls, text: str) -> Status:
        try:
            return cls[text.upper()]
        except KeyError:
            expected = ", ".join(s.label for s in cls)
            raise ValueError(
                f"{text!r} is not a status; use one of {expected}"
            ) from None

    def worst(self, other: Status) -> Status:
        """The more severe of two statuses; unknown ranks below critical."""
        return max(self, other, key=_SEVERITY.__getitem__)


_SEVERITY = {Status.OK: 0, Status.UNKNOWN: 1, Status.WARNING: 2, Status.CRITICAL: 3}


@dataclass(frozen=True, slots=True)
class Outcome:
    """What a probe returns; the runner adds the name, timing and clock."""

    status: Status
    message: str
    values: Mapping[str, float] = field(default_factory=dict)
    # Lines a responder wants at hand: the long queries, the matching log lines.
    evidence: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class CheckResult:
    check: str
    check_type: str
    status: Status
    message: str
    values: Mapping[str, float]
    evidence: tuple[str, ...]
    started_at: float
    """Wall-clock start of the probe, seconds since the epoch."""
    duration_s: float

    @property
    def ok(self) -> bool:
        return self.status is Status.OK

    def to_json(self) -> dict[str, object]:
        return {
            "check": self.check,
            "type": self.check_type,
            "status": self.status.label,
            "message": self.message,
            "values": dict(self.values),
            "evidence": list(self.evidence),
            "started_at": self.started_at,
            "duration_s": round(self.duration_s, 6),
        }
