"""The escalation engine: rule transitions become incidents, incidents climb
their ladder, and every page they earn is written to the durable outbox.

Open incidents live in memory and are written through to the store; each
change is built on a copy, saved in one store call, and only then replaces
the in-memory incident, so a failed write leaves memory matching the store
and the next tick simply tries again.

Every deadline (ladder step, repeat, ack reminder, response target, auto
resolve, silence start and end) is a wall-clock instant kept in one heap.
A ladder's next deadline is computed from the previous deadline, never from
the time it was processed, so a restart or a slow tick never shifts the
schedule: after a downtime each missed step fires once, in order.
"""

from __future__ import annotations

import asyncio
import contextlib
import heapq
import json
import math
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass, replace
from datetime import UTC, date, datetime, timedelta
from datetime import time as dt_time
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import structlog

from checks.clock import Clock
from checks.result import CheckResult
from checks.settings import format_duration
from escalation.ack import AckSigner
from escalation.config import EscalationConfig
from escalation.errors import (
    IncidentClosed,
    IncidentNotFound,
    InvalidRequest,
    SilenceNotFound,
)
from escalation.metrics import EscalationMetrics
from escalation.model import (
    EventKind,
    Incident,
    IncidentState,
    OutboxPage,
    PageKind,
    Priority,
    Silence,
    TimelineEvent,
)
from escalation.policy import BusinessHours, Policy, Step
from escalation.rules import RuleEvaluator, RuleTransition
from escalation.store import Store

log = structlog.get_logger(__name__)

MAX_WAIT_S = 1.0
"""run() never sleeps longer than this, so a wall clock jump is noticed soon."""
MIN_WAIT_S = 0.01
RETRY_AFTER_FAILURE_S = 1.0
MAX_NOTE_CHARS = 4000
SILENCE_MATCHERS = ("check", "rule", "category")
AUTO_ACTOR = "sentinel"

_INHIBITED = "inhibited by "
_SILENCED = "silenced by "
_INCIDENT = 0
_SILENCE = 1
_MAX_ACTIONS_PER_ADVANCE = 10_000
"""A guard only: a ladder has a handful of steps and repeats."""

_HeapKey = tuple[int, int]


@dataclass(frozen=True, slots=True)
class FrozenPolicy:
    """The parsed form of `Incident.policy`: what a running incident obeys
    whatever the configuration says now."""

    policy: Policy
    resolve_after_s: float
    reopen_within_s: float
    ack_timeout_s: float
    response_target_s: float
    inhibits: tuple[str, ...]

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> FrozenPolicy:
        return cls(
            policy=Policy.from_json(data),
            resolve_after_s=float(data["resolve_after_s"]),
            reopen_within_s=float(data["reopen_within_s"]),
            ack_timeout_s=float(data["ack_timeout_s"]),
            response_target_s=float(data["response_target_s"]),
            inhibits=tuple(data.get("inhibits", ())),
        )

    @property
    def steps(self) -> tuple[Step, ...]:
        return self.policy.steps


class Engine:
    def __init__(
        self,
        store: Store,
        config: EscalationConfig,
        clock: Clock,
        *,
        signer: AckSigner,
        metrics: EscalationMetrics | None = None,
        on_pages_queued: Callable[[], None] | None = None,
    ) -> None:
        validate_config(config)
        self.store = store
        self._config = config
        self._clock = clock
        self._signer = signer
        self._metrics = metrics
        self._on_pages_queued = on_pages_queued
        self._evaluator = RuleEvaluator(config.rules)
        self._lock = asyncio.Lock()
        self._poked = asyncio.Event()

        self._open: dict[int, Incident] = {}
        self._by_key: dict[str, int] = {}
        self._frozen: dict[int, FrozenPolicy] = {}
        self._suppressed_by: dict[str, set[int]] = {}
        """Suppression reason -> the open incidents it holds back."""
        self._inhibiting: set[int] = set()
        """Open incidents whose rule inhibits others."""
        self._silences: dict[int, Silence] = {}
        """Silences that have not ended, and those whose end is not processed."""
        self._silences_started: set[int] = set()

        self._heap: list[tuple[float, int, int]] = []
        self._scheduled: dict[_HeapKey, float] = {}
        self._unapplied: deque[RuleTransition] = deque()
        """Transitions the evaluator emitted but the store could not record
        yet; the evaluator will not emit them again, so they are kept here
        and retried, in order, by tick()."""

    # Lifecycle ---------------------------------------------------------------

    async def start(self) -> None:
        """Load open incidents and silences from the (open) store, re-arm every
        deadline and tell the rule evaluator which rules are firing."""
        async with self._lock:
            now = self._clock.wall()
            incidents = await self.store.open_incidents()
            silences = await self.store.list_silences()

            if self._metrics is not None:
                for priority in Priority:
                    self._metrics.incidents_open.labels(priority.value).set(0)
            for incident in incidents:
                self._frozen[incident.id] = FrozenPolicy.from_json(incident.policy)
                self._remember(incident)

            referenced = {
                reason for reason in self._suppressed_by if reason.startswith(_SILENCED)
            }
            for silence in silences:
                if _silence_end(silence) > now or _silenced(silence) in referenced:
                    self._silences[silence.id] = silence
                    self._schedule((_SILENCE, silence.id))

            # A crash between resolving an inhibitor (or ending a silence) and
            # releasing what it held leaves dangling reasons: release them now.
            for reason in list(self._suppressed_by):
                if not self._reason_holds(reason, now):
                    await self._recheck_suppressed(reason, now)

            firing = {
                i.rule: i.dedup_key
                for i in self.open_incident_list()
                if i.recovered_at is None
            }
            self._evaluator.restore_firing(sorted(firing), dedup_keys=firing)
        log.info(
            "escalation_started",
            open_incidents=len(self._open),
            silences=len(self._silences),
        )

    async def run(self) -> None:
        """Tick forever: process what is due, then sleep until the next
        deadline (at most `MAX_WAIT_S`) or until a change pokes the loop."""
        while True:
            try:
                await self.tick()
            except Exception:
                # The store can fail transiently (disk full, a locked file);
                # everything due stays scheduled and is retried, so the loop
                # must survive rather than stop escalating for good.
                log.exception("escalation_tick_failed")
                await asyncio.sleep(RETRY_AFTER_FAILURE_S)
                continue
            self._poked.clear()
            wake = self.next_wakeup()
            if wake is None:
                wait_s = MAX_WAIT_S
            else:
                wait_s = min(max(wake - self._clock.wall(), MIN_WAIT_S), MAX_WAIT_S)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._poked.wait(), wait_s)

    def reload(self, config: EscalationConfig) -> None:
        """Use new rules, policies and contacts. Running incidents keep the
        policy frozen into them when they opened."""
        validate_config(config)
        self._config = config
        self._evaluator.replace_rules(config.rules)
        log.info("escalation_reloaded", rules=len(config.rules))

    # Inputs ------------------------------------------------------------------

    async def observe(self, result: CheckResult) -> None:
        """Feed one check result to the rules and apply what it changes."""
        await self.apply_transitions(self.evaluate(result))

    def evaluate(self, result: CheckResult) -> list[RuleTransition]:
        """What one result changes in the rules, not yet applied. Cheap and
        synchronous: most results change nothing, and a caller can skip the
        asynchronous step for those. Pass the transitions, in order, to
        apply_transitions()."""
        return self._evaluator.observe(result)

    async def apply_transitions(self, transitions: list[RuleTransition]) -> None:
        """Apply transitions from evaluate(), in order.

        A transition that cannot be recorded (the store failed) is kept and
        retried by tick(), never dropped: the rule will not fire again."""
        if self._unapplied:
            self._unapplied.extend(transitions)
            return
        for index, transition in enumerate(transitions):
            try:
                await self.apply_transition(transition)
            except Exception as exc:
                self._unapplied.extend(transitions[index:])
                self._poked.set()
                log.error(
                    "transition_deferred",
                    rule=transition.rule.name,
                    dedup_key=transition.dedup_key,
                    firing=transition.firing,
                    error=f"{type(exc).__name__}: {exc}",
                )
                return

    async def apply_transition(self, t: RuleTransition) -> None:
        async with self._lock:
            now = self._clock.wall()
            if t.firing:
                await self._on_firing(t, now)
            else:
                await self._on_recovered(t, now)

    async def tick(self) -> None:
        """Process every deadline that has come at `clock.wall()`, after any
        transition still waiting to be recorded."""
        while self._unapplied:
            await self.apply_transition(self._unapplied[0])
            self._unapplied.popleft()
        async with self._lock:
            now = self._clock.wall()
            done: set[_HeapKey] = set()
            deferred: list[_HeapKey] = []
            while self._heap and self._heap[0][0] <= now:
                when, kind, ident = heapq.heappop(self._heap)
                key = (kind, ident)
                if self._scheduled.get(key) != when:
                    continue
                del self._scheduled[key]
                if key in done:
                    # Due again within one tick: only the action guard can do
                    # that; leave it for the next tick instead of spinning.
                    deferred.append(key)
                    continue
                done.add(key)
                try:
                    if kind == _INCIDENT:
                        await self._advance(ident, now)
                    else:
                        await self._silence_due(ident, now)
                finally:
                    self._schedule(key)
            for key in deferred:
                self._schedule(key)
            self._compact_heap()

    def next_wakeup(self) -> float | None:
        """The earliest pending deadline (wall clock), None when nothing waits."""
        if self._unapplied:
            return self._unapplied[0].at
        while self._heap:
            when, kind, ident = self._heap[0]
            if self._scheduled.get((kind, ident)) == when:
                return when
            heapq.heappop(self._heap)
        return None

    def open_incident_list(self) -> list[Incident]:
        return [self._open[i] for i in sorted(self._open)]

    # Operator actions --------------------------------------------------------

    async def acknowledge(self, incident_id: int, *, by: str, via: str) -> Incident:
        _require_text("by", by)
        _require_text("via", via)
        async with self._lock:
            now = self._clock.wall()
            incident = await self._require_open(incident_id, "acknowledge")
            if incident.state is IncidentState.ACKNOWLEDGED:
                return incident
            frozen = self._frozen[incident.id]
            new = replace(
                incident,
                state=IncidentState.ACKNOWLEDGED,
                acked_at=now,
                acked_by=by,
                acked_via=via,
                # A suppressed incident's reminder is armed when it is released.
                next_deadline=(
                    None if incident.suppressed else now + frozen.ack_timeout_s
                ),
            )
            event = self._event(
                new,
                now,
                EventKind.ACKNOWLEDGED,
                actor=by,
                via=via,
                step=incident.last_paged_step + 1,
                reminder_at=new.next_deadline,
            )
            await self._save(new, [event])
            if (
                self._metrics is not None
                and incident.acked_at is None
                and incident.reopen_count == 0
            ):
                self._metrics.time_to_ack.labels(new.priority.value).observe(
                    max(now - new.opened_at, 0.0)
                )
            log.info("incident_acknowledged", incident=new.ref, by=by, via=via)
            return new

    async def resolve(
        self,
        incident_id: int,
        *,
        by: str,
        via: str,
        root_cause: str | None = None,
    ) -> Incident:
        _require_text("by", by)
        _require_text("via", via)
        if root_cause is not None:
            root_cause = root_cause.strip() or None
        async with self._lock:
            now = self._clock.wall()
            incident = await self._require_open(incident_id, "resolve")
            note = f"resolved by {by}"
            if root_cause:
                note += f": root cause {root_cause}"
            return await self._resolve(
                incident, now, by=by, via=via, root_cause=root_cause, note=note
            )

    async def add_note(self, incident_id: int, *, by: str, text: str) -> TimelineEvent:
        _require_text("by", by)
        _require_text("text", text)
        if len(text) > MAX_NOTE_CHARS:
            raise InvalidRequest(
                f"a note on INC-{incident_id} is {len(text)} characters long; "
                f"the limit is {MAX_NOTE_CHARS}"
            )
        async with self._lock:
            now = self._clock.wall()
            incident = self._open.get(incident_id)
            if incident is None:
                incident = await self.store.get_incident(incident_id)
            if incident is None:
                raise IncidentNotFound(incident_id)
            event = TimelineEvent(
                incident.id, now, EventKind.NOTE, by, {"text": text.strip()}
            )
            await self.store.add_events([event])
            return event

    async def add_silence(
        self,
        *,
        matcher: str,
        value: str,
        starts_at: float,
        ends_at: float,
        reason: str,
        created_by: str,
    ) -> Silence:
        if matcher not in SILENCE_MATCHERS:
            raise InvalidRequest(
                f"a silence matcher is one of {', '.join(SILENCE_MATCHERS)}, "
                f"not {matcher!r}"
            )
        _require_text("value", value)
        _require_text("reason", reason)
        _require_text("created_by", created_by)
        if not (math.isfinite(starts_at) and math.isfinite(ends_at)):
            raise InvalidRequest(
                f"a silence needs finite times (starts_at {starts_at}, "
                f"ends_at {ends_at})"
            )
        if ends_at <= starts_at:
            raise InvalidRequest(
                f"a silence must end after it starts (starts_at {starts_at}, "
                f"ends_at {ends_at})"
            )
        self._check_silence_target(matcher, value)
        async with self._lock:
            now = self._clock.wall()
            if ends_at <= now:
                raise InvalidRequest(
                    f"a silence ending at {_iso(ends_at)} has already ended"
                )
            silence = await self.store.add_silence(
                Silence(
                    id=0,
                    matcher=matcher,
                    value=value,
                    starts_at=starts_at,
                    ends_at=ends_at,
                    reason=reason,
                    created_by=created_by,
                    created_at=now,
                )
            )
            self._silences[silence.id] = silence
            log.info(
                "silence_added",
                silence=silence.ref,
                matcher=matcher,
                value=value,
                starts_at=_iso(starts_at),
                ends_at=_iso(ends_at),
                by=created_by,
            )
            await self._silence_due(silence.id, now)
            self._schedule((_SILENCE, silence.id))
            return silence

    async def expire_silence(self, silence_id: int, *, by: str) -> Silence:
        _require_text("by", by)
        async with self._lock:
            now = self._clock.wall()
            silence = await self.store.expire_silence(silence_id, now)
            if silence is None:
                raise SilenceNotFound(silence_id)
            if silence.id in self._silences:
                self._silences[silence.id] = silence
                log.info("silence_expired", silence=silence.ref, by=by)
                await self._silence_due(silence.id, now)
                self._schedule((_SILENCE, silence.id))
            return silence

    # Rule transitions --------------------------------------------------------

    async def _on_firing(self, t: RuleTransition, now: float) -> None:
        open_id = self._by_key.get(t.dedup_key)
        if open_id is not None:
            incident = self._open[open_id]
            if incident.recovered_at is not None:
                new = replace(incident, recovered_at=None)
                await self._save(new, [self._event(new, now, EventKind.RELAPSED)])
                log.info("incident_relapsed", incident=new.ref)
            return

        latest = await self.store.latest_by_dedup_key(t.dedup_key)
        if latest is not None and latest.is_open:
            # Open in the store but unknown here: another writer, or a store
            # restored under a running engine. Adopt it; never open a second.
            self._frozen[latest.id] = FrozenPolicy.from_json(latest.policy)
            self._remember(latest)
            log.warning("incident_adopted", incident=latest.ref)
            return
        if (
            latest is not None
            and latest.state is IncidentState.RESOLVED
            and latest.resolved_at is not None
            and now - latest.resolved_at
            < FrozenPolicy.from_json(latest.policy).reopen_within_s
        ):
            await self._reopen(latest, t, now)
        else:
            await self._open_incident(t, now)

    async def _open_incident(self, t: RuleTransition, now: float) -> None:
        config = self._config
        rule = t.rule
        settings = config.priorities[rule.priority]
        policy = config.policies[settings.policy]
        policy_json = policy.to_json()
        policy_json.update(
            resolve_after_s=rule.resolve_after_s,
            reopen_within_s=rule.reopen_within_s,
            ack_timeout_s=settings.ack_timeout_s,
            response_target_s=settings.response_target_s,
            inhibits=list(rule.inhibits),
        )
        # Through JSON once, so memory holds exactly what a restart reads back.
        frozen_json: dict[str, Any] = json.loads(json.dumps(policy_json))
        incident = Incident(
            id=0,
            dedup_key=t.dedup_key,
            rule=rule.name,
            priority=rule.priority,
            category=rule.category,
            summary=t.summary,
            state=IncidentState.TRIGGERED,
            opened_at=now,
            policy=frozen_json,
            checks=list(rule.checks),
            evidence=[r.to_json() for r in t.evidence],
            response_target_s=settings.response_target_s,
        )
        frozen = FrozenPolicy.from_json(frozen_json)
        held_back = self._arm_first_step(incident, frozen, now)
        events = [
            self._event(
                incident,
                now,
                EventKind.TRIGGERED,
                rule=rule.name,
                priority=rule.priority.value,
                category=rule.category,
                summary=t.summary,
                dedup_key=t.dedup_key,
                policy=policy.name,
                evidence=incident.evidence,
            ),
            *held_back,
        ]

        created = await self.store.create_incident(incident, events)
        self._frozen[created.id] = frozen
        self._remember(created)
        if self._metrics is not None:
            self._metrics.incidents_opened.labels(created.priority.value).inc()
        log.info(
            "incident_opened",
            incident=created.ref,
            priority=created.priority.value,
            rule=created.rule,
            dedup_key=created.dedup_key,
            suppressed=created.suppressed,
        )
        await self._advance(created.id, now)

    def _arm_first_step(
        self, incident: Incident, frozen: FrozenPolicy, now: float
    ) -> list[TimelineEvent]:
        """Hold a new or reopened incident back when something suppresses
        it, else arm its first step; returns the SUPPRESSED event, if any."""
        incident.suppressed = self._suppression_reason(incident, now)
        if incident.suppressed is None:
            incident.next_deadline = now + frozen.steps[0].delay_s
            return []
        return [
            self._event(incident, now, EventKind.SUPPRESSED, reason=incident.suppressed)
        ]

    async def _reopen(self, latest: Incident, t: RuleTransition, now: float) -> None:
        frozen = FrozenPolicy.from_json(latest.policy)
        assert latest.resolved_at is not None
        incident = replace(
            latest,
            state=IncidentState.TRIGGERED,
            summary=t.summary,
            evidence=[r.to_json() for r in t.evidence],
            step=0,
            repeat=0,
            next_deadline=None,
            suppressed=None,
            acked_at=None,
            acked_by=None,
            acked_via=None,
            resolved_at=None,
            resolved_by=None,
            root_cause=None,
            recovered_at=None,
            reopen_count=latest.reopen_count + 1,
            last_paged_step=-1,
            # Who hears about this episode is decided by its own ladder.
            paged_contacts=[],
        )
        held_back = self._arm_first_step(incident, frozen, now)
        events = [
            self._event(
                incident,
                now,
                EventKind.REOPENED,
                reopen_count=incident.reopen_count,
                resolved_at=latest.resolved_at,
                resolved_by=latest.resolved_by,
                evidence=incident.evidence,
            ),
            *held_back,
        ]
        self._frozen[incident.id] = frozen
        try:
            await self._save(incident, events)
        except BaseException:
            self._frozen.pop(incident.id, None)
            raise
        if self._metrics is not None:
            self._metrics.incidents_opened.labels(incident.priority.value).inc()
        log.info(
            "incident_reopened",
            incident=incident.ref,
            reopen_count=incident.reopen_count,
            resolved_for_s=round(now - latest.resolved_at, 3),
            suppressed=incident.suppressed,
        )
        await self._advance(incident.id, now)

    async def _on_recovered(self, t: RuleTransition, now: float) -> None:
        open_id = self._by_key.get(t.dedup_key)
        if open_id is None:
            return
        incident = self._open[open_id]
        if incident.recovered_at is not None:
            return
        frozen = self._frozen[incident.id]
        new = replace(incident, recovered_at=now)
        await self._save(
            new,
            [
                self._event(
                    new,
                    now,
                    EventKind.RECOVERED,
                    resolves_at=now + frozen.resolve_after_s,
                )
            ],
        )
        log.info("incident_recovered", incident=new.ref)
        await self._advance(new.id, now)

    # Deadlines ---------------------------------------------------------------

    async def _advance(self, incident_id: int, now: float) -> None:
        """Carry out, oldest first, every action of one incident due by `now`."""
        for _ in range(_MAX_ACTIONS_PER_ADVANCE):
            incident = self._open.get(incident_id)
            if incident is None:
                return
            due = self._next_action(incident)
            if due is None or due[0] > now:
                return
            at, action = due
            if action == "resolve":
                frozen = self._frozen[incident.id]
                await self._resolve(
                    incident,
                    now,
                    by=AUTO_ACTOR,
                    via="auto",
                    root_cause=None,
                    note=(
                        "auto-resolved: checks healthy for "
                        f"{format_duration(frozen.resolve_after_s)}"
                    ),
                )
            elif action == "sla":
                await self._judge_response_target(incident, at, now)
            elif incident.state is IncidentState.ACKNOWLEDGED:
                await self._ack_timeout(incident, at, now)
            else:
                await self._page_step(incident, at, now)
        log.error("escalation_action_guard_hit", incident=f"INC-{incident_id}")

    def _next_action(self, incident: Incident) -> tuple[float, str] | None:
        """The earliest pending action; on a tie resolving comes first (never
        page for a healthy incident) and the response target before a step."""
        frozen = self._frozen[incident.id]
        candidates: list[tuple[float, int, str]] = []
        if incident.recovered_at is not None:
            candidates.append(
                (incident.recovered_at + frozen.resolve_after_s, 0, "resolve")
            )
        sla_due = _response_due(incident)
        if sla_due is not None:
            candidates.append((sla_due, 1, "sla"))
        if incident.next_deadline is not None and incident.suppressed is None:
            candidates.append((incident.next_deadline, 2, "ladder"))
        if not candidates:
            return None
        at, _, action = min(candidates)
        return at, action

    async def _page_step(self, incident: Incident, due: float, now: float) -> None:
        frozen = self._frozen[incident.id]
        steps = frozen.steps
        index, repeat = incident.step, incident.repeat
        if index >= len(steps):
            # Only a hand-edited store gets here; stop rather than crash a tick.
            await self._save(replace(incident, next_deadline=None))
            return
        step = steps[index]
        kind = PageKind.PAGE
        note = None
        if incident.reopen_count and index == 0 and repeat == 0:
            kind = PageKind.REOPENED
            note = f"reopened: failing again (reopen #{incident.reopen_count})"
        new = replace(incident, last_paged_step=index)
        pages = [
            self._page(
                new,
                kind,
                contact,
                now,
                step_index=index,
                repeat=repeat,
                note=note,
            )
            for contact in step.contacts
        ]
        new.paged_contacts = incident.paged_contacts + [
            c for c in step.contacts if c not in incident.paged_contacts
        ]
        events = [self._page_event(new, page, now) for page in pages]
        events.append(
            self._event(
                new,
                now,
                EventKind.ESCALATED,
                step=index + 1,
                steps_total=len(steps),
                repeat=repeat,
                contacts=list(step.contacts),
                due_at=due,
            )
        )
        if repeat < step.repeat:
            new.repeat = repeat + 1
            new.next_deadline = due + _repeat_interval_s(steps, index)
        elif index + 1 < len(steps):
            new.step = index + 1
            new.repeat = 0
            new.next_deadline = due + steps[index + 1].delay_s
        else:
            new.step = len(steps)
            new.repeat = 0
            new.next_deadline = None
            events.append(
                self._event(
                    new,
                    now,
                    EventKind.NOTE,
                    text=(
                        f"escalation ladder exhausted: all {len(steps)} steps "
                        "paged; the incident stays open"
                    ),
                    ladder_exhausted=True,
                )
            )
        await self._save(new, events, pages)
        log.info(
            "incident_escalated",
            incident=new.ref,
            step=index + 1,
            repeat=repeat,
            contacts=list(step.contacts),
            late_s=round(now - due, 3),
        )
        if new.next_deadline is None:
            log.info("incident_ladder_exhausted", incident=new.ref)

    async def _ack_timeout(self, incident: Incident, due: float, now: float) -> None:
        frozen = self._frozen[incident.id]
        steps = frozen.steps
        acked_by = incident.acked_by or ""
        if acked_by in self._config.contacts:
            reminded: tuple[str, ...] = (acked_by,)
        elif 0 <= incident.last_paged_step < len(steps):
            reminded = steps[incident.last_paged_step].contacts
        else:
            reminded = ()
        resume = incident.last_paged_step + 1
        new = replace(
            incident,
            state=IncidentState.TRIGGERED,
            step=resume,
            repeat=0,
            next_deadline=due + steps[resume].delay_s if resume < len(steps) else None,
        )
        acked_for = format_duration(max(now - (incident.acked_at or now), 0.0))
        note = f"acknowledged by {acked_by} {acked_for} ago and still open"
        pages = [
            self._page(
                new,
                PageKind.REMINDER,
                contact,
                now,
                step_index=max(incident.last_paged_step, 0),
                note=note,
                page_tag=f"remind{int(due)}",
            )
            for contact in reminded
        ]
        new.paged_contacts = incident.paged_contacts + [
            c for c in reminded if c not in incident.paged_contacts
        ]
        events = [
            self._event(
                new,
                now,
                EventKind.ACK_TIMEOUT,
                acked_by=incident.acked_by,
                acked_at=incident.acked_at,
                ack_timeout_s=frozen.ack_timeout_s,
                reminded=list(reminded),
                resumes_at_step=resume + 1 if resume < len(steps) else None,
            ),
            *(self._page_event(new, page, now) for page in pages),
        ]
        await self._save(new, events, pages)
        log.info(
            "incident_ack_timeout",
            incident=new.ref,
            acked_by=incident.acked_by,
            reminded=list(reminded),
        )

    async def _judge_response_target(
        self, incident: Incident, due: float, now: float
    ) -> None:
        target_s = incident.response_target_s
        if incident.suppressed is not None:
            # Nobody was paged, so nobody could respond: the target is waived,
            # and saying so in the record keeps it waived across restarts.
            waived = replace(incident, response_target_s=None)
            text = (
                f"response target of {format_duration(target_s or 0.0)} waived: "
                f"the incident was {incident.suppressed} when it came due"
            )
            await self._save(
                waived,
                [self._event(waived, now, EventKind.NOTE, text=text, due_at=due)],
            )
            return
        new = replace(incident, sla_breached=True)
        await self._save(
            new,
            [
                self._event(
                    new,
                    now,
                    EventKind.SLA_BREACHED,
                    response_target_s=target_s,
                    due_at=due,
                )
            ],
        )
        if self._metrics is not None:
            self._metrics.sla_breaches.labels(new.priority.value).inc()
        log.warning(
            "incident_response_target_breached",
            incident=new.ref,
            priority=new.priority.value,
            response_target_s=target_s,
        )

    async def _resolve(
        self,
        incident: Incident,
        now: float,
        *,
        by: str,
        via: str,
        root_cause: str | None,
        note: str,
    ) -> Incident:
        new = replace(
            incident,
            state=IncidentState.RESOLVED,
            resolved_at=now,
            resolved_by=by,
            root_cause=root_cause,
            next_deadline=None,
        )
        # Everyone who was woken hears it is over, even under a silence now.
        pages = [
            self._page(
                new,
                PageKind.RESOLVED,
                contact,
                now,
                step_index=max(incident.last_paged_step, 0),
                note=note,
                page_tag="resolved",
            )
            for contact in incident.paged_contacts
        ]
        events = [
            self._event(
                new,
                now,
                EventKind.RESOLVED,
                actor=by,
                via=via,
                root_cause=root_cause,
                note=note,
            ),
            *(self._page_event(new, page, now) for page in pages),
        ]
        await self._save(new, events, pages)
        log.info(
            "incident_resolved",
            incident=new.ref,
            by=by,
            via=via,
            open_for_s=round(now - new.opened_at, 3),
        )
        await self._recheck_suppressed(f"{_INHIBITED}{new.ref}", now)
        return new

    # Suppression -------------------------------------------------------------

    def _suppression_reason(self, incident: Incident, now: float) -> str | None:
        targets = (incident.rule, f"category:{incident.category}")
        inhibitors = sorted(
            other_id
            for other_id in self._inhibiting
            if other_id != incident.id
            and any(t in self._frozen[other_id].inhibits for t in targets)
            # An inhibited incident inhibits nothing (no cycles); a silenced one
            # still does, or silencing a cause would unleash pages for its effects.
            and not (self._open[other_id].suppressed or "").startswith(_INHIBITED)
        )
        if inhibitors:
            return f"{_INHIBITED}INC-{inhibitors[0]}"
        for silence_id in sorted(self._silences):
            silence = self._silences[silence_id]
            if silence.active(now) and _matches(silence, incident):
                return _silenced(silence)
        return None

    def _reason_holds(self, reason: str, now: float) -> bool:
        if reason.startswith(_INHIBITED):
            ref = reason.removeprefix(_INHIBITED).removeprefix("INC-")
            return ref.isdigit() and int(ref) in self._open
        ref = reason.removeprefix(_SILENCED).removeprefix("S-")
        silence = self._silences.get(int(ref)) if ref.isdigit() else None
        return silence is not None and silence.active(now)

    async def _recheck_suppressed(self, reason: str, now: float) -> None:
        """Release (or re-attribute) every incident held back by `reason`."""
        for incident_id in sorted(self._suppressed_by.get(reason, ())):
            incident = self._open.get(incident_id)
            if incident is None or incident.suppressed != reason:
                continue
            await self._set_suppression(
                incident, self._suppression_reason(incident, now), now
            )
            await self._advance(incident_id, now)

    async def _set_suppression(
        self, incident: Incident, reason: str | None, now: float
    ) -> None:
        previous = incident.suppressed
        if reason == previous:
            return
        if reason is not None:
            new = replace(incident, suppressed=reason, next_deadline=None)
            event = self._event(
                new, now, EventKind.SUPPRESSED, reason=reason, previously=previous
            )
            await self._save(new, [event])
            log.info("incident_suppressed", incident=new.ref, reason=reason)
            return

        # The ladder picks up at the step it was at, counted from now.
        frozen = self._frozen[incident.id]
        steps = frozen.steps
        if incident.state is IncidentState.ACKNOWLEDGED:
            next_deadline: float | None = now + frozen.ack_timeout_s
        elif incident.step < len(steps):
            if incident.repeat:
                next_deadline = now + _repeat_interval_s(steps, incident.step)
            else:
                next_deadline = now + steps[incident.step].delay_s
        else:
            next_deadline = None
        new = replace(incident, suppressed=None, next_deadline=next_deadline)
        event = self._event(
            new,
            now,
            EventKind.UNSUPPRESSED,
            reason=previous,
            resumes_at_step=new.step + 1 if next_deadline is not None else None,
            next_deadline=next_deadline,
        )
        await self._save(new, [event])
        log.info("incident_unsuppressed", incident=new.ref, reason=previous)

    async def _silence_due(self, silence_id: int, now: float) -> None:
        silence = self._silences.get(silence_id)
        if silence is None:
            return
        if now >= _silence_end(silence):
            del self._silences[silence_id]
            self._silences_started.discard(silence_id)
            log.info("silence_ended", silence=silence.ref)
            await self._recheck_suppressed(_silenced(silence), now)
            return
        if now < silence.starts_at or silence_id in self._silences_started:
            return
        self._silences_started.add(silence_id)
        reason = _silenced(silence)
        for incident_id in sorted(self._open):
            incident = self._open.get(incident_id)
            if (
                incident is not None
                and incident.suppressed is None
                and _matches(silence, incident)
            ):
                await self._set_suppression(incident, reason, now)

    def _check_silence_target(self, matcher: str, value: str) -> None:
        # Open incidents count too: their rule may have left the configuration.
        rules, incidents = self._config.rules, self._open.values()
        if matcher == "rule":
            known = {r.name for r in rules} | {i.rule for i in incidents}
        elif matcher == "check":
            known = {c for r in rules for c in r.checks}
            known |= {c for i in incidents for c in i.checks}
        else:
            known = {r.category for r in rules} | {i.category for i in incidents}
            known |= set(self._config.categories)
        if value not in known:
            raise InvalidRequest(
                f"no configured rule uses {matcher} {value!r}, so a silence on it "
                f"would match nothing; known: {', '.join(sorted(known)) or 'none'}"
            )

    # Memory and store --------------------------------------------------------

    async def _require_open(self, incident_id: int, action: str) -> Incident:
        incident = self._open.get(incident_id)
        if incident is not None:
            return incident
        stored = await self.store.get_incident(incident_id)
        if stored is None:
            raise IncidentNotFound(incident_id)
        raise IncidentClosed(incident_id, action)

    async def _save(
        self,
        new: Incident,
        events: Iterable[TimelineEvent] = (),
        pages: Iterable[OutboxPage] = (),
    ) -> None:
        pages = list(pages)
        await self.store.save_incident(new, list(events), pages)
        self._remember(new)
        if pages and self._on_pages_queued is not None:
            self._on_pages_queued()

    def _remember(self, new: Incident) -> None:
        """Make `new` the in-memory truth and keep every index in step."""
        old = self._open.get(new.id)
        if old is not None and old.suppressed is not None:
            held = self._suppressed_by.get(old.suppressed)
            if held is not None:
                held.discard(new.id)
                if not held:
                    del self._suppressed_by[old.suppressed]
        if new.is_open:
            self._open[new.id] = new
            self._by_key[new.dedup_key] = new.id
            if new.suppressed is not None:
                self._suppressed_by.setdefault(new.suppressed, set()).add(new.id)
            if self._frozen[new.id].inhibits:
                self._inhibiting.add(new.id)
        else:
            self._open.pop(new.id, None)
            if self._by_key.get(new.dedup_key) == new.id:
                del self._by_key[new.dedup_key]
            self._inhibiting.discard(new.id)
        if self._metrics is not None and (old is not None) != new.is_open:
            self._metrics.incidents_open.labels(new.priority.value).inc(
                1 if new.is_open else -1
            )
        self._schedule((_INCIDENT, new.id))
        if not new.is_open:
            self._frozen.pop(new.id, None)

    def _schedule(self, key: _HeapKey) -> None:
        kind, ident = key
        when: float | None = None
        if kind == _INCIDENT:
            incident = self._open.get(ident)
            if incident is not None:
                due = self._next_action(incident)
                when = None if due is None else due[0]
        else:
            silence = self._silences.get(ident)
            if silence is not None:
                started = ident in self._silences_started
                when = _silence_end(silence) if started else silence.starts_at
        if when is None:
            self._scheduled.pop(key, None)
            return
        if self._scheduled.get(key) == when:
            return
        self._scheduled[key] = when
        heapq.heappush(self._heap, (when, kind, ident))
        self._poked.set()

    def _compact_heap(self) -> None:
        # Changed deadlines leave stale entries behind; rebuild once they
        # outnumber the live ones so memory stays proportional to the work.
        if len(self._heap) > 2 * len(self._scheduled) + 1024:
            self._heap = [(when, k, i) for (k, i), when in self._scheduled.items()]
            heapq.heapify(self._heap)

    # Pages and events --------------------------------------------------------

    def _page(
        self,
        incident: Incident,
        kind: PageKind,
        contact: str,
        now: float,
        *,
        step_index: int,
        repeat: int = 0,
        note: str | None = None,
        page_tag: str | None = None,
    ) -> OutboxPage:
        config = self._config
        frozen = self._frozen[incident.id]
        tag = page_tag or f"s{step_index + 1}.r{repeat}"
        page_id = f"{incident.ref}.{incident.reopen_count}.{tag}.{contact}"
        known = config.contacts.get(contact)
        if known is None:
            log.warning("page_contact_unknown", incident=incident.ref, contact=contact)
        ack_url: str | None = None
        ack_expires_at: float | None = None
        if kind is not PageKind.RESOLVED:
            ack_expires_at = now + config.ack_link_ttl_s
            token = self._signer.issue(
                incident.id, step_index + 1, contact, ack_expires_at
            )
            ack_url = f"{config.public_url.rstrip('/')}/ack/{token}"
        payload: dict[str, Any] = {
            "page_id": page_id,
            "kind": kind.value,
            "incident": incident.ref,
            "incident_number": incident.id,
            "priority": incident.priority.value,
            "category": incident.category,
            "summary": incident.summary,
            "state": incident.state.value,
            "started_at": _iso(incident.opened_at),
            "opened_at": incident.opened_at,
            "step": step_index + 1,
            "steps_total": len(frozen.steps),
            "repeat": repeat,
            "contact": contact,
            "contact_name": known.display_name if known else contact,
            "role": known.role if known else "",
            "evidence": list(incident.evidence),
            "ack_url": ack_url,
            "ack_expires_at": ack_expires_at,
        }
        if note is not None:
            payload["note"] = note
        hours = frozen.policy.business_hours
        return OutboxPage(
            page_id=page_id,
            incident_id=incident.id,
            contact=contact,
            kind=kind,
            step=step_index,
            payload=payload,
            created_at=now,
            not_before=now if hours is None else next_business_opening(hours, now),
        )

    @staticmethod
    def _event(
        incident: Incident,
        now: float,
        kind: EventKind,
        /,
        *,
        actor: str = AUTO_ACTOR,
        **detail: Any,
    ) -> TimelineEvent:
        return TimelineEvent(incident.id, now, kind, actor, detail)

    def _page_event(
        self, incident: Incident, page: OutboxPage, now: float
    ) -> TimelineEvent:
        return self._event(
            incident,
            now,
            EventKind.PAGE_QUEUED,
            page_id=page.page_id,
            kind=page.kind.value,
            contact=page.contact,
            step=page.step + 1,
            not_before=page.not_before,
        )


def validate_config(config: EscalationConfig) -> None:
    """Refuse a configuration the engine could not page from; the config
    loader checks the same and more, this guards programmatic callers.
    Priorities no rule uses may name missing policies (a checks-only setup)."""
    for rule in config.rules:
        settings = config.priorities.get(rule.priority)
        if settings is None:
            raise ValueError(
                f"rule {rule.name!r} has priority {rule.priority.value} but there "
                f"are no settings for {rule.priority.value}"
            )
        if settings.policy not in config.policies:
            raise ValueError(
                f"rule {rule.name!r} has priority {rule.priority.value}, whose "
                f"policy {settings.policy!r} is not defined"
            )
    for name, policy in config.policies.items():
        if not policy.steps:
            raise ValueError(f"policy {name!r} has no steps")
        for number, step in enumerate(policy.steps, start=1):
            for contact in step.contacts:
                if contact not in config.contacts:
                    raise ValueError(
                        f"policy {name!r} step {number} pages {contact!r}, "
                        "who is not among the contacts"
                    )
        if policy.business_hours is not None:
            try:
                ZoneInfo(policy.business_hours.timezone)
            except (ZoneInfoNotFoundError, ValueError):
                raise ValueError(
                    f"policy {name!r} business hours use the unknown time zone "
                    f"{policy.business_hours.timezone!r}"
                ) from None


def next_business_opening(hours: BusinessHours, now: float) -> float:
    """`now` when it falls inside the window, else the next time it opens.

    Openings and closings are local wall-clock times in the window's time
    zone, so a DST change moves them with the clocks on the wall.
    """
    zone = ZoneInfo(hours.timezone)
    today = datetime.fromtimestamp(now, zone).date()
    best: float | None = None
    # From yesterday (a window past midnight) to a week ahead covers every
    # weekday once more.
    for offset in range(-1, 9):
        day = today + timedelta(days=offset)
        if day.isoweekday() not in hours.days:
            continue
        opens = _local_instant(day, hours.start_minute, zone)
        closing_minute = hours.end_minute
        if closing_minute <= hours.start_minute:
            closing_minute += 24 * 60
        closes = _local_instant(day, closing_minute, zone)
        if opens <= now < closes:
            return now
        if opens > now and (best is None or opens < best):
            best = opens
    # No weekday at all: never hold a page back forever.
    return now if best is None else best


def _local_instant(day: date, minute: int, zone: ZoneInfo) -> float:
    day += timedelta(days=minute // (24 * 60))
    minute %= 24 * 60
    local = datetime.combine(day, dt_time(minute // 60, minute % 60), tzinfo=zone)
    return local.timestamp()


def _response_due(incident: Incident) -> float | None:
    """When the response target is judged; None once it has been (breached or
    waived), after an acknowledgement, and for a reopened incident, whose
    target was judged in its first episode."""
    if (
        incident.response_target_s is None
        or incident.sla_breached
        or incident.acked_at is not None
        or incident.reopen_count
    ):
        return None
    return incident.opened_at + incident.response_target_s


def _repeat_interval_s(steps: tuple[Step, ...], index: int) -> float:
    step = steps[index]
    if step.repeat_interval_s is not None:
        return step.repeat_interval_s
    if index + 1 < len(steps):
        return steps[index + 1].delay_s
    return step.delay_s


def _matches(silence: Silence, incident: Incident) -> bool:
    if silence.matcher == "check":
        return silence.value in incident.checks
    if silence.matcher == "rule":
        return silence.value == incident.rule
    return silence.value == incident.category


def _silence_end(silence: Silence) -> float:
    if silence.expired_early_at is None:
        return silence.ends_at
    return min(silence.expired_early_at, silence.ends_at)


def _silenced(silence: Silence) -> str:
    return f"{_SILENCED}{silence.ref}"


def _require_text(name: str, value: str) -> None:
    if not isinstance(value, str) or not value.strip():
        raise InvalidRequest(f"{name} must be a non-empty string, got {value!r}")


def _iso(epoch: float) -> str:
    return (
        datetime.fromtimestamp(epoch, UTC)
        .isoformat(timespec="seconds")
        .replace("+00:00", "Z")
    )
