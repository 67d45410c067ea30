"""Incidents, their timelines, outbox pages and silences: the records the
store keeps and every part of escalation passes around."""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from typing import Any


class Priority(enum.StrEnum):
    P1 = "P1"
    P2 = "P2"
    P3 = "P3"


class IncidentState(enum.StrEnum):
    TRIGGERED = "triggered"
    ACKNOWLEDGED = "acknowledged"
    RESOLVED = "resolved"


class PageState(enum.StrEnum):
    PENDING = "pending"
    """Not yet confirmed by a channel: sent (again) after any restart."""
    SENT = "sent"
    DEAD = "dead"
    """Every channel of the contact failed past its bound."""


class PageKind(enum.StrEnum):
    PAGE = "page"
    """A ladder step."""
    REMINDER = "reminder"
    """Acknowledged but still open after the ack timeout."""
    RESOLVED = "resolved"
    REOPENED = "reopened"
    DIGEST = "digest"
    """Several pages to one contact and channel, held back by its rate limit."""


class EventKind(enum.StrEnum):
    TRIGGERED = "triggered"
    SUPPRESSED = "suppressed"
    UNSUPPRESSED = "unsuppressed"
    PAGE_QUEUED = "page_queued"
    PAGE_SENT = "page_sent"
    PAGE_FAILED = "page_failed"
    PAGE_RETRY = "page_retry"
    CHANNEL_FALLBACK = "channel_fallback"
    PAGE_DEAD = "page_dead"
    ESCALATED = "escalated"
    ACKNOWLEDGED = "acknowledged"
    ACK_TIMEOUT = "ack_timeout"
    NOTE = "note"
    RECOVERED = "recovered"
    RELAPSED = "relapsed"
    RESOLVED = "resolved"
    REOPENED = "reopened"
    SLA_BREACHED = "sla_breached"


@dataclass(slots=True)
class TimelineEvent:
    incident_id: int
    at: float
    kind: EventKind
    actor: str = "sentinel"
    detail: dict[str, Any] = field(default_factory=dict)


@dataclass(slots=True)
class Incident:
    id: int
    """0 until the store assigns one; shown as INC-<id>."""
    dedup_key: str
    rule: str
    priority: Priority
    category: str
    summary: str
    state: IncidentState
    opened_at: float
    policy: dict[str, Any]
    """The ladder this incident escalates on, frozen when it opened (JSON)."""
    checks: list[str] = field(default_factory=list)
    evidence: list[dict[str, Any]] = field(default_factory=list)
    step: int = 0
    """Index of the next ladder step to page."""
    repeat: int = 0
    """How many times the current step has been repeated."""
    next_deadline: float | None = None
    """Wall-clock instant of the next ladder action (step, repeat or reminder)."""
    suppressed: str | None = None
    """Why it is recorded but not paged: "inhibited by INC-3", "silenced by S-2"."""
    acked_at: float | None = None
    acked_by: str | None = None
    acked_via: str | None = None
    resolved_at: float | None = None
    resolved_by: str | None = None
    root_cause: str | None = None
    recovered_at: float | None = None
    """Since when its checks have been healthy; None while they fail."""
    response_target_s: float | None = None
    sla_breached: bool = False
    reopen_count: int = 0
    last_paged_step: int = -1
    paged_contacts: list[str] = field(default_factory=list)

    @property
    def ref(self) -> str:
        return f"INC-{self.id}"

    @property
    def is_open(self) -> bool:
        return self.state is not IncidentState.RESOLVED

    def to_json(self) -> dict[str, Any]:
        return {
            "id": self.ref,
            "number": self.id,
            "dedup_key": self.dedup_key,
            "rule": self.rule,
            "priority": self.priority.value,
            "category": self.category,
            "summary": self.summary,
            "state": self.state.value,
            "opened_at": self.opened_at,
            "checks": list(self.checks),
            "evidence": list(self.evidence),
            "step": self.step,
            "next_deadline": self.next_deadline,
            "suppressed": self.suppressed,
            "acked_at": self.acked_at,
            "acked_by": self.acked_by,
            "acked_via": self.acked_via,
            "resolved_at": self.resolved_at,
            "resolved_by": self.resolved_by,
            "root_cause": self.root_cause,
            "recovered_at": self.recovered_at,
            "response_target_s": self.response_target_s,
            "sla_breached": self.sla_breached,
            "reopen_count": self.reopen_count,
        }


@dataclass(slots=True)
class OutboxPage:
    page_id: str
    """Stable across retries and restarts, so a receiver can drop a repeat."""
    incident_id: int
    contact: str
    kind: PageKind
    step: int
    payload: dict[str, Any]
    """Everything a notifier renders, fixed when the page was queued."""
    created_at: float
    not_before: float
    """Earliest instant of the next attempt (backoff, business hours)."""
    state: PageState = PageState.PENDING
    channel_index: int = 0
    """Which of the contact's channels is in use."""
    attempts: int = 0
    """Attempts on the current channel."""
    sent_at: float | None = None
    sent_channel: str | None = None
    last_error: str | None = None


@dataclass(slots=True)
class Silence:
    id: int
    """0 until stored; shown as S-<id>."""
    matcher: str
    """What it matches: "check", "rule" or "category"."""
    value: str
    starts_at: float
    ends_at: float
    reason: str
    created_by: str
    created_at: float
    expired_early_at: float | None = None

    @property
    def ref(self) -> str:
        return f"S-{self.id}"

    def active(self, now: float) -> bool:
        ended = self.ends_at if self.expired_early_at is None else self.expired_early_at
        return self.starts_at <= now < ended

    def to_json(self) -> dict[str, Any]:
        return {
            "id": self.ref,
            "matcher": self.matcher,
            "value": self.value,
            "starts_at": self.starts_at,
            "ends_at": self.ends_at,
            "reason": self.reason,
            "created_by": self.created_by,
            "created_at": self.created_at,
            "expired_early_at": self.expired_early_at,
        }
