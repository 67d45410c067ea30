"""Who gets paged, how, and when: contacts, policies, per-priority settings.

These are plain records parsed from the configuration by
`escalation.config`; a policy is frozen into each incident as JSON when it
opens, so a reload changes the ladder of new incidents, not running ones.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

from checks.settings import Secret


@dataclass(frozen=True, slots=True)
class ChannelTarget:
    """One way to reach a contact: ``{type = "sms", to = "+15551234567"}``."""

    type: str
    """sms, email, webhook or mqtt."""
    to: str
    """Phone number, address, URL or topic."""
    options: dict[str, Any] = field(default_factory=dict)
    """Channel-specific extras, e.g. a webhook's body template or secret."""
    secret: Secret | None = None


@dataclass(frozen=True, slots=True)
class RateLimit:
    pages: int
    per_s: float


@dataclass(frozen=True, slots=True)
class Contact:
    name: str
    """The key under ``[contacts]``: what steps and the timeline refer to."""
    display_name: str
    role: str
    channels: tuple[ChannelTarget, ...]
    rate_limit: RateLimit | None = None


@dataclass(frozen=True, slots=True)
class BusinessHours:
    timezone: str
    days: tuple[int, ...]
    """ISO weekdays, Monday = 1."""
    start_minute: int
    end_minute: int


@dataclass(frozen=True, slots=True)
class Step:
    delay_s: float
    """Wait after the previous step (after the trigger, for the first)."""
    contacts: tuple[str, ...]
    repeat: int = 0
    """Extra times this step pages before the ladder moves on."""
    repeat_interval_s: float | None = None
    """Between repeats; the next step's delay when unset."""


@dataclass(frozen=True, slots=True)
class Policy:
    name: str
    steps: tuple[Step, ...]
    business_hours: BusinessHours | None = None
    """When set, pages outside the window wait in the outbox until it opens."""

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Policy:
        hours = data.get("business_hours")
        return cls(
            name=data["name"],
            steps=tuple(
                Step(
                    delay_s=s["delay_s"],
                    contacts=tuple(s["contacts"]),
                    repeat=s.get("repeat", 0),
                    repeat_interval_s=s.get("repeat_interval_s"),
                )
                for s in data["steps"]
            ),
            business_hours=(
                BusinessHours(
                    timezone=hours["timezone"],
                    days=tuple(hours["days"]),
                    start_minute=hours["start_minute"],
                    end_minute=hours["end_minute"],
                )
                if hours
                else None
            ),
        )


@dataclass(frozen=True, slots=True)
class PrioritySettings:
    policy: str
    response_target_s: float
    """Time to acknowledge: 15 min for P1, 30 min for P2, 2 h for P3."""
    ack_timeout_s: float
    """An acknowledged incident still open after this pages its acknowledger
    again and resumes the ladder."""
