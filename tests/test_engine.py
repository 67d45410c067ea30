"""The escalation engine on virtual time: each test plays a timeline on a
FakeClock against a real SqliteStore and lists every page it wants, when."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from dataclasses import replace
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry

from checks.clock import FakeClock
from checks.result import CheckResult, Status
from escalation.ack import AckSigner
from escalation.config import EscalationConfig
from escalation.engine import Engine
from escalation.errors import (
    IncidentClosed,
    IncidentNotFound,
    InvalidRequest,
    StoreError,
)
from escalation.metrics import EscalationMetrics
from escalation.model import (
    EventKind,
    Incident,
    IncidentState,
    OutboxPage,
    Priority,
    TimelineEvent,
)
from escalation.policy import (
    BusinessHours,
    ChannelTarget,
    Contact,
    Policy,
    PrioritySettings,
    Step,
)
from escalation.rules import Condition, Rule, RuleTransition
from escalation.sqlite_store import SqliteStore

Action = Callable[[], Awaitable[object]]
Page = tuple[float, str, str, str, int]
"""(seconds after the start, incident, contact, kind, 1-based step)"""

SIGNING_KEY = b"0123456789abcdef0123456789abcdef"


def _contact(name: str, display: str, role: str) -> Contact:
    return Contact(
        name, display, role, (ChannelTarget("email", f"{name}@example.com"),)
    )


CONTACTS = {
    "support": _contact("support", "Sam Support", "support specialist"),
    "lead": _contact("lead", "Lee Lead", "lead developer"),
    "owner": _contact("owner", "Olga Owner", "business owner"),
    "emergency": _contact("emergency", "Eve Emergency", "emergency contact"),
}
LADDER = Policy(
    "default",
    (
        Step(0, ("support",)),
        Step(900, ("lead",)),
        Step(1800, ("owner",)),
        Step(3600, ("emergency",)),
    ),
)
OFFICE_HOURS = BusinessHours("America/New_York", (1, 2, 3, 4, 5), 9 * 60, 17 * 60)
OFFICE = Policy("office", (Step(0, ("support",)), Step(3600, ("lead",))), OFFICE_HOURS)
PRIORITIES = {
    Priority.P1: PrioritySettings("default", response_target_s=900, ack_timeout_s=1800),
    Priority.P2: PrioritySettings(
        "default", response_target_s=1800, ack_timeout_s=3600
    ),
    Priority.P3: PrioritySettings("office", response_target_s=7200, ack_timeout_s=7200),
}


def make_rule(
    name: str = "db-down",
    *,
    checks: Sequence[str] = ("mysql",),
    priority: Priority = Priority.P1,
    category: str = "database connectivity loss",
    inhibits: Sequence[str] = (),
    resolve_after_s: float = 300.0,
    reopen_within_s: float = 1800.0,
) -> Rule:
    return Rule(
        name=name,
        checks=tuple(checks),
        match="any",
        condition=Condition(status_at_least=Status.CRITICAL, text="critical"),
        priority=priority,
        category=category,
        summary_template="{rule} failing",
        inhibits=tuple(inhibits),
        resolve_after_s=resolve_after_s,
        reopen_within_s=reopen_within_s,
    )


DB_DOWN = make_rule()


def make_config(
    *rules: Rule, policies: Mapping[str, Policy] | None = None
) -> EscalationConfig:
    return EscalationConfig(
        rules=rules or (DB_DOWN,),
        policies=dict(policies or {"default": LADDER, "office": OFFICE}),
        priorities=dict(PRIORITIES),
        contacts=dict(CONTACTS),
        public_url="https://sentinel.example.com/",
    )


def check_result(check: str, status: Status, at: float) -> CheckResult:
    return CheckResult(
        check=check,
        check_type="mysql",
        status=status,
        message=f"{check} is {status.label}",
        values={"latency_ms": 12.5},
        evidence=("SHOW PROCESSLIST: 3 long queries",),
        started_at=at,
        duration_s=0.01,
    )


def transition(
    rule: Rule, at: float, *, firing: bool, key: str | None = None
) -> RuleTransition:
    status = Status.CRITICAL if firing else Status.OK
    return RuleTransition(
        rule=rule,
        firing=firing,
        at=at,
        dedup_key=key or rule.name,
        summary=f"{rule.name} failing",
        evidence=tuple(check_result(c, status, at) for c in rule.checks),
    )


class Harness:
    """Drives one engine second by second and records every page it queues
    with the instant it appeared."""

    def __init__(self, path: Path, clock: FakeClock, config: EscalationConfig) -> None:
        self.path = path
        self.clock = clock
        self.config = config
        self.t0 = clock.wall()
        self.signer = AckSigner(SIGNING_KEY)
        self.registry = CollectorRegistry()
        self.metrics = EscalationMetrics(self.registry)
        self.seen: dict[str, tuple[float, OutboxPage]] = {}
        self._queued = False
        self._store: SqliteStore | None = None
        self._engine: Engine | None = None

    @property
    def engine(self) -> Engine:
        assert self._engine is not None, "start() the harness first"
        return self._engine

    @property
    def store(self) -> SqliteStore:
        assert self._store is not None, "start() the harness first"
        return self._store

    @property
    def elapsed(self) -> float:
        return self.clock.wall() - self.t0

    async def start(self) -> None:
        self._store = SqliteStore(self.path)
        await self._store.open()
        self._engine = Engine(
            self._store,
            self.config,
            self.clock,
            signer=self.signer,
            metrics=self.metrics,
            on_pages_queued=self._pages_queued,
        )
        await self._engine.start()

    async def restart(self, *, down_for_s: float = 0) -> None:
        """Throw the engine away, let time pass, start a new one on the file."""
        await self.close()
        self.clock.advance(down_for_s)
        await self.start()

    async def close(self) -> None:
        if self._store is not None:
            await self._store.close()
        self._store = self._engine = None

    def _pages_queued(self) -> None:
        self._queued = True

    async def play(
        self,
        until_s: float,
        script: Mapping[float, Action | Sequence[Action]] | None = None,
    ) -> None:
        """From now to `until_s` after the start, one second at a time: run
        what the script holds for that instant, then tick."""
        pending = dict(script or {})
        while True:
            actions = pending.pop(self.elapsed, ())
            for action in actions if isinstance(actions, Sequence) else (actions,):
                await action()
            await self.engine.tick()
            if self._queued:
                self._queued = False
                await self._collect()
            if self.elapsed >= until_s:
                break
            self.clock.advance(1)
        assert not pending, f"script instants never reached: {sorted(pending)}"

    async def _collect(self) -> None:
        for incident in await self.store.list_incidents(limit=100_000):
            for page in await self.store.pages_for_incident(incident.id):
                self.seen.setdefault(page.page_id, (self.elapsed, page))

    async def pages(self) -> list[Page]:
        """Every page queued so far; one queued without on_pages_queued shows
        up at the current instant and so fails the comparison."""
        await self._collect()
        return sorted(
            (at, f"INC-{p.incident_id}", p.contact, p.kind.value, p.payload["step"])
            for at, p in self.seen.values()
        )

    async def incident(self, number: int = 1) -> Incident:
        incident = await self.store.get_incident(number)
        assert incident is not None
        return incident

    async def events(self, number: int = 1) -> list[TimelineEvent]:
        return await self.store.timeline(number)

    async def kinds(self, number: int = 1) -> list[EventKind]:
        return [e.kind for e in await self.events(number)]

    def fire(self, rule: Rule = DB_DOWN, key: str | None = None) -> Action:
        return lambda: self.engine.apply_transition(
            transition(rule, self.clock.wall(), firing=True, key=key)
        )

    def recover(self, rule: Rule = DB_DOWN, key: str | None = None) -> Action:
        return lambda: self.engine.apply_transition(
            transition(rule, self.clock.wall(), firing=False, key=key)
        )

    def ack(self, number: int = 1, by: str = "support", via: str = "link") -> Action:
        return lambda: self.engine.acknowledge(number, by=by, via=via)

    def resolve(
        self, number: int = 1, by: str = "alice", root_cause: str | None = None
    ) -> Action:
        return lambda: self.engine.resolve(
            number, by=by, via="api", root_cause=root_cause
        )

    def sample(self, name: str, **labels: str) -> float:
        value = self.registry.get_sample_value(name, labels)
        return 0.0 if value is None else value


@pytest.fixture
async def harness(tmp_path: Path, clock: FakeClock) -> AsyncIterator[Harness]:
    h = Harness(tmp_path / "sentinel.db", clock, make_config())
    await h.start()
    yield h
    await h.close()


# The ladder ------------------------------------------------------------------


async def test_ladder_default_pages_each_step_at_its_instant(harness: Harness) -> None:
    """0s support, 15m lead, +30m owner, +1h emergency; then the ladder is
    exhausted and the incident stays open."""
    await harness.play(7200, {0: harness.fire()})

    assert await harness.pages() == [
        (0, "INC-1", "support", "page", 1),
        (900, "INC-1", "lead", "page", 2),
        (2700, "INC-1", "owner", "page", 3),
        (6300, "INC-1", "emergency", "page", 4),
    ]
    incident = await harness.incident()
    assert incident.state is IncidentState.TRIGGERED
    assert incident.next_deadline is None
    assert incident.paged_contacts == ["support", "lead", "owner", "emergency"]
    events = await harness.events()
    assert [e.detail["step"] for e in events if e.kind is EventKind.ESCALATED] == [
        1,
        2,
        3,
        4,
    ]
    assert events[-1].detail.get("ladder_exhausted") is True


async def test_ladder_page_payload_carries_everything_to_render(
    harness: Harness,
) -> None:
    """A page holds the incident, step, contact, evidence and a working ack link."""
    await harness.play(0, {0: harness.fire()})
    (page,) = await harness.store.pages_for_incident(1)
    payload = page.payload

    assert page.page_id == "INC-1.0.s1.r0.support"
    assert page.not_before == harness.t0
    assert {
        k: payload[k]
        for k in payload
        if k not in ("ack_url", "ack_expires_at", "evidence")
    } == {
        "page_id": "INC-1.0.s1.r0.support",
        "kind": "page",
        "incident": "INC-1",
        "incident_number": 1,
        "priority": "P1",
        "category": "database connectivity loss",
        "summary": "db-down failing",
        "state": "triggered",
        "started_at": "2023-11-14T22:13:20Z",
        "opened_at": harness.t0,
        "step": 1,
        "steps_total": 4,
        "repeat": 0,
        "contact": "support",
        "contact_name": "Sam Support",
        "role": "support specialist",
    }
    assert payload["evidence"][0]["check"] == "mysql"
    assert payload["evidence"][0]["evidence"] == ["SHOW PROCESSLIST: 3 long queries"]
    prefix = "https://sentinel.example.com/ack/"
    assert payload["ack_url"].startswith(prefix)
    claim = harness.signer.verify(
        payload["ack_url"].removeprefix(prefix), harness.clock.wall()
    )
    assert (claim.incident_id, claim.step, claim.contact) == (1, 1, "support")
    assert payload["ack_expires_at"] == harness.t0 + 86400


async def test_ladder_repeat_pages_a_step_again_before_moving_on(
    tmp_path: Path, clock: FakeClock
) -> None:
    """A step with repeat=2 pages three times, repeat_interval_s apart, and the
    next step's delay counts from the last repeat."""
    policy = Policy(
        "default",
        (Step(0, ("support",), repeat=2, repeat_interval_s=300), Step(600, ("lead",))),
    )
    h = Harness(
        tmp_path / "r.db",
        clock,
        make_config(policies={"default": policy, "office": OFFICE}),
    )
    await h.start()
    try:
        await h.play(2000, {0: h.fire()})
        assert await h.pages() == [
            (0, "INC-1", "support", "page", 1),
            (300, "INC-1", "support", "page", 1),
            (600, "INC-1", "support", "page", 1),
            (1200, "INC-1", "lead", "page", 2),
        ]
        ids = sorted(h.seen)
        assert ids == [
            "INC-1.0.s1.r0.support",
            "INC-1.0.s1.r1.support",
            "INC-1.0.s1.r2.support",
            "INC-1.0.s2.r0.lead",
        ]
    finally:
        await h.close()


# Acknowledgement -------------------------------------------------------------


async def test_ack_stops_the_ladder(harness: Harness) -> None:
    """After an acknowledgement no further step pages."""
    await harness.play(
        2000, {0: harness.fire(), 300: harness.ack(by="alice", via="api")}
    )

    assert await harness.pages() == [(0, "INC-1", "support", "page", 1)]
    incident = await harness.incident()
    assert incident.state is IncidentState.ACKNOWLEDGED
    assert (incident.acked_by, incident.acked_via) == ("alice", "api")
    assert incident.next_deadline == harness.t0 + 300 + 1800
    ack = [e for e in await harness.events() if e.kind is EventKind.ACKNOWLEDGED]
    assert [(e.actor, e.detail["via"]) for e in ack] == [("alice", "api")]


async def test_ack_timeout_reminds_the_acknowledger_then_resumes(
    harness: Harness,
) -> None:
    """Acked by a contact and still open after ack_timeout: that contact gets a
    reminder, and the ladder resumes at the next step with its own delay."""
    await harness.play(5000, {0: harness.fire(), 300: harness.ack(by="support")})

    assert await harness.pages() == [
        (0, "INC-1", "support", "page", 1),
        (2100, "INC-1", "support", "reminder", 1),
        (3000, "INC-1", "lead", "page", 2),
        (4800, "INC-1", "owner", "page", 3),
    ]
    assert (await harness.incident()).state is IncidentState.TRIGGERED
    timeout = [e for e in await harness.events() if e.kind is EventKind.ACK_TIMEOUT]
    assert len(timeout) == 1
    assert timeout[0].detail["reminded"] == ["support"]
    reminder = await harness.store.get_page("INC-1.0.remind1700002100.support")
    assert reminder is not None
    assert "acknowledged by support 30m ago" in reminder.payload["note"]


async def test_ack_timeout_by_an_operator_reminds_the_last_paged_step(
    harness: Harness,
) -> None:
    """An acknowledger who is not a contact: the last paged step is reminded."""
    await harness.play(
        4700, {0: harness.fire(), 1000: harness.ack(by="alice", via="cli")}
    )
    assert await harness.pages() == [
        (0, "INC-1", "support", "page", 1),
        (900, "INC-1", "lead", "page", 2),
        (2800, "INC-1", "lead", "reminder", 2),
        (4600, "INC-1", "owner", "page", 3),
    ]


async def test_ack_twice_is_a_no_op(harness: Harness) -> None:
    """Acknowledging an acknowledged incident changes nothing."""
    await harness.play(100, {0: harness.fire(), 10: harness.ack(by="alice")})
    again = await harness.engine.acknowledge(1, by="bob", via="api")
    assert again.acked_by == "alice"
    assert (await harness.kinds()).count(EventKind.ACKNOWLEDGED) == 1


async def test_ack_unknown_incident_is_not_found(harness: Harness) -> None:
    """An unknown number raises IncidentNotFound naming it."""
    with pytest.raises(IncidentNotFound, match="INC-42"):
        await harness.engine.acknowledge(42, by="alice", via="api")
    with pytest.raises(IncidentNotFound, match="INC-42"):
        await harness.engine.resolve(42, by="alice", via="api")


async def test_ack_without_actor_is_refused(harness: Harness) -> None:
    """An empty `by` is a bad request that names the field."""
    await harness.play(0, {0: harness.fire()})
    with pytest.raises(InvalidRequest, match="by must be"):
        await harness.engine.acknowledge(1, by=" ", via="api")


# Resolution ------------------------------------------------------------------


async def test_auto_resolve_after_recovery_pages_everyone_paged(
    harness: Harness,
) -> None:
    """Healthy for resolve_after_s: resolved by sentinel, and every contact
    paged so far gets a RESOLVED page; the ladder stops."""
    await harness.play(3000, {0: harness.fire(), 1000: harness.recover()})

    assert await harness.pages() == [
        (0, "INC-1", "support", "page", 1),
        (900, "INC-1", "lead", "page", 2),
        (1300, "INC-1", "lead", "resolved", 2),
        (1300, "INC-1", "support", "resolved", 2),
    ]
    incident = await harness.incident()
    assert incident.state is IncidentState.RESOLVED
    assert (incident.resolved_by, incident.resolved_at) == (
        "sentinel",
        harness.t0 + 1300,
    )
    resolved = await harness.store.get_page("INC-1.0.resolved.lead")
    assert resolved is not None
    assert resolved.payload["note"] == "auto-resolved: checks healthy for 5m"
    assert resolved.payload["ack_url"] is None
    kinds = await harness.kinds()
    assert kinds.index(EventKind.RECOVERED) < kinds.index(EventKind.RESOLVED)


async def test_relapse_cancels_auto_resolve(harness: Harness) -> None:
    """Failing again before resolve_after_s keeps the incident open and paging."""
    await harness.play(
        1000, {0: harness.fire(), 100: harness.recover(), 200: harness.fire()}
    )
    assert await harness.pages() == [
        (0, "INC-1", "support", "page", 1),
        (900, "INC-1", "lead", "page", 2),
    ]
    incident = await harness.incident()
    assert incident.is_open and incident.recovered_at is None
    assert EventKind.RELAPSED in await harness.kinds()


async def test_manual_resolve_pages_resolved_with_root_cause(harness: Harness) -> None:
    """A manual resolve records who and why and tells the paged contacts."""
    await harness.play(
        2000, {0: harness.fire(), 60: harness.resolve(root_cause="disk full")}
    )
    assert await harness.pages() == [
        (0, "INC-1", "support", "page", 1),
        (60, "INC-1", "support", "resolved", 1),
    ]
    incident = await harness.incident()
    assert (incident.resolved_by, incident.root_cause) == ("alice", "disk full")
    page = await harness.store.get_page("INC-1.0.resolved.support")
    assert page is not None
    assert page.payload["note"] == "resolved by alice: root cause disk full"
    with pytest.raises(IncidentClosed, match="INC-1"):
        await harness.engine.resolve(1, by="bob", via="api")


async def test_ack_racing_resolve_raises_closed_and_does_not_reopen(
    harness: Harness,
) -> None:
    """An ack that arrives after the auto-resolve fails with IncidentClosed and
    leaves the incident resolved; so does one queued behind a manual resolve."""
    await harness.play(500, {0: harness.fire(), 10: harness.recover()})
    assert (await harness.incident()).state is IncidentState.RESOLVED
    with pytest.raises(IncidentClosed, match=r"INC-1.*already resolved"):
        await harness.engine.acknowledge(1, by="support", via="link")
    assert (await harness.incident()).state is IncidentState.RESOLVED

    await harness.play(501, {501: harness.fire(make_rule("api-down", checks=("api",)))})
    outcome = await asyncio.gather(
        harness.engine.resolve(2, by="alice", via="api"),
        harness.engine.acknowledge(2, by="support", via="link"),
        return_exceptions=True,
    )
    assert isinstance(outcome[0], Incident)
    assert isinstance(outcome[1], IncidentClosed)
    incident = await harness.incident(2)
    assert incident.state is IncidentState.RESOLVED and incident.acked_at is None
    assert EventKind.ACKNOWLEDGED not in await harness.kinds(2)


# Reopen and dedup ------------------------------------------------------------


async def test_reopen_within_window_restarts_the_ladder(harness: Harness) -> None:
    """Failing again within reopen_within_s reopens the same incident at step 1."""
    await harness.play(
        2000, {0: harness.fire(), 100: harness.recover(), 1000: harness.fire()}
    )
    assert await harness.pages() == [
        (0, "INC-1", "support", "page", 1),
        (400, "INC-1", "support", "resolved", 1),
        (1000, "INC-1", "support", "reopened", 1),
        (1900, "INC-1", "lead", "page", 2),
    ]
    incident = await harness.incident()
    assert (incident.state, incident.reopen_count) == (IncidentState.TRIGGERED, 1)
    assert incident.resolved_at is None
    assert await harness.store.get_incident(2) is None
    assert EventKind.REOPENED in await harness.kinds()
    assert "INC-1.1.s1.r0.support" in harness.seen


async def test_failure_after_reopen_window_opens_a_new_incident(
    harness: Harness,
) -> None:
    """Failing again after reopen_within_s opens INC-2; INC-1 stays resolved."""
    await harness.play(
        2300, {0: harness.fire(), 100: harness.recover(), 2201: harness.fire()}
    )
    assert await harness.pages() == [
        (0, "INC-1", "support", "page", 1),
        (400, "INC-1", "support", "resolved", 1),
        (2201, "INC-2", "support", "page", 1),
    ]
    assert (await harness.incident(1)).state is IncidentState.RESOLVED
    assert (await harness.incident(2)).reopen_count == 0


async def test_dedup_key_never_has_two_open_incidents(harness: Harness) -> None:
    """The same key firing again adds nothing; another key opens its own."""
    await harness.play(
        10,
        {
            0: harness.fire(key="db-down:eu"),
            5: [harness.fire(key="db-down:eu"), harness.fire(key="db-down:us")],
        },
    )
    assert await harness.pages() == [
        (0, "INC-1", "support", "page", 1),
        (5, "INC-2", "support", "page", 1),
    ]
    open_keys = [i.dedup_key for i in await harness.store.open_incidents()]
    assert open_keys == ["db-down:eu", "db-down:us"]
    assert [i.dedup_key for i in harness.engine.open_incident_list()] == open_keys


# Response target -------------------------------------------------------------


async def test_sla_breach_recorded_once(harness: Harness) -> None:
    """Unacknowledged at opened_at + response_target_s: one SLA_BREACHED event,
    the flag and the counter."""
    await harness.play(3000, {0: harness.fire()})
    breaches = [e for e in await harness.events() if e.kind is EventKind.SLA_BREACHED]
    assert [e.at - harness.t0 for e in breaches] == [900]
    assert (await harness.incident()).sla_breached
    assert harness.sample("sentinel_response_target_breaches_total", priority="P1") == 1


async def test_sla_not_breached_when_acked_in_time(harness: Harness) -> None:
    """An ack before the target means no breach, ever."""
    await harness.play(5000, {0: harness.fire(), 899: harness.ack(by="alice")})
    assert EventKind.SLA_BREACHED not in await harness.kinds()
    assert harness.sample("sentinel_response_target_breaches_total", priority="P1") == 0


# Restarts --------------------------------------------------------------------


async def test_restart_fires_next_step_once_at_its_original_deadline(
    harness: Harness,
) -> None:
    """A new engine on the same file after step 1: step 2 pages once at 900 s,
    step 1 never again."""
    await harness.play(100, {0: harness.fire()})
    await harness.restart()
    await harness.play(1000)
    await harness.restart(down_for_s=1)
    await harness.play(1100)

    assert await harness.pages() == [
        (0, "INC-1", "support", "page", 1),
        (900, "INC-1", "lead", "page", 2),
    ]
    escalations = [e for e in await harness.events() if e.kind is EventKind.ESCALATED]
    assert [e.detail["step"] for e in escalations] == [1, 2]


async def test_downtime_across_two_deadlines_fires_both_once_in_order(
    harness: Harness,
) -> None:
    """Down from 100 s to 3000 s: steps 2 and 3 fire at start, in order, once;
    step 4 keeps its original deadline (2700 + 3600)."""
    await harness.play(100, {0: harness.fire()})
    await harness.restart(down_for_s=2900)
    await harness.play(7000)

    assert await harness.pages() == [
        (0, "INC-1", "support", "page", 1),
        (3000, "INC-1", "lead", "page", 2),
        (3000, "INC-1", "owner", "page", 3),
        (6300, "INC-1", "emergency", "page", 4),
    ]
    queued = [p.page_id for p in await harness.store.pages_for_incident(1)]
    assert queued == [
        "INC-1.0.s1.r0.support",
        "INC-1.0.s2.r0.lead",
        "INC-1.0.s3.r0.owner",
        "INC-1.0.s4.r0.emergency",
    ]
    late = [
        e.detail["due_at"] - harness.t0
        for e in await harness.events()
        if e.kind is EventKind.ESCALATED
    ]
    assert late == [0, 900, 2700, 6300]


async def test_restart_keeps_ack_reminder_and_auto_resolve(harness: Harness) -> None:
    """Deadlines other than steps (reminder, auto-resolve) survive a restart."""
    rule = make_rule("api-down", checks=("api",))
    await harness.play(
        300,
        {
            0: [harness.fire(), harness.fire(rule)],
            100: harness.ack(1),
            200: harness.recover(rule),
        },
    )
    await harness.restart(down_for_s=1)
    await harness.play(2000)
    assert await harness.pages() == [
        (0, "INC-1", "support", "page", 1),
        (0, "INC-2", "support", "page", 1),
        (500, "INC-2", "support", "resolved", 1),
        (1900, "INC-1", "support", "reminder", 1),
    ]


# Configuration ---------------------------------------------------------------


async def test_policy_frozen_at_open_reload_changes_new_incidents_only(
    harness: Harness,
) -> None:
    """After a reload to a faster ladder, INC-1 keeps its 15 m step; INC-2,
    opened after the reload, uses the new 60 s step."""
    fast = Policy("default", (Step(0, ("support",)), Step(60, ("owner",))))

    async def reload() -> None:
        harness.engine.reload(make_config(policies={"default": fast, "office": OFFICE}))

    await harness.play(
        1000, {0: harness.fire(key="a"), 10: reload, 20: harness.fire(key="b")}
    )
    assert await harness.pages() == [
        (0, "INC-1", "support", "page", 1),
        (20, "INC-2", "support", "page", 1),
        (80, "INC-2", "owner", "page", 2),
        (900, "INC-1", "lead", "page", 2),
    ]
    first, second = await harness.incident(1), await harness.incident(2)
    assert [s["delay_s"] for s in first.policy["steps"]] == [0, 900, 1800, 3600]
    assert first.policy["ack_timeout_s"] == 1800
    assert first.policy["resolve_after_s"] == 300
    assert [s["delay_s"] for s in second.policy["steps"]] == [0, 60]


async def test_engine_refuses_a_config_it_cannot_page_from(
    harness: Harness, clock: FakeClock
) -> None:
    """A step naming an unknown contact is refused at construction and reload."""
    bad = Policy("default", (Step(0, ("nobody",)),))
    config = make_config(policies={"default": bad, "office": OFFICE})
    with pytest.raises(ValueError, match="'nobody'"):
        Engine(harness.store, config, clock, signer=harness.signer)
    with pytest.raises(ValueError, match="'nobody'"):
        harness.engine.reload(config)


async def test_engine_accepts_a_checks_only_config(
    harness: Harness, clock: FakeClock
) -> None:
    """No rules and no policies (a setup that only runs checks) is valid."""
    config = replace(make_config(), rules=(), policies={})
    Engine(harness.store, config, clock, signer=harness.signer)
    harness.engine.reload(config)


# Metrics, notes, the loop ----------------------------------------------------


async def test_metrics_count_incidents_and_time_to_ack(harness: Harness) -> None:
    """Opened and open per priority, and time to acknowledge."""
    await harness.play(
        400,
        {
            0: [
                harness.fire(),
                harness.fire(make_rule("api", checks=("api",), priority=Priority.P2)),
            ],
            120: harness.ack(1),
            300: harness.resolve(2),
        },
    )
    assert harness.sample("sentinel_incidents_opened_total", priority="P1") == 1
    assert harness.sample("sentinel_incidents_opened_total", priority="P2") == 1
    assert harness.sample("sentinel_incidents_open", priority="P1") == 1
    assert harness.sample("sentinel_incidents_open", priority="P2") == 0
    assert (
        harness.sample("sentinel_time_to_acknowledge_seconds_count", priority="P1") == 1
    )
    assert (
        harness.sample("sentinel_time_to_acknowledge_seconds_sum", priority="P1") == 120
    )

    await harness.restart()
    assert harness.sample("sentinel_incidents_open", priority="P1") == 1


async def test_add_note_appends_to_the_timeline(harness: Harness) -> None:
    """A note is stored with its author, on open and resolved incidents alike."""
    await harness.play(10, {0: harness.fire(), 5: harness.resolve()})
    event = await harness.engine.add_note(1, by="alice", text="  replica lag was 2h  ")
    assert (event.kind, event.actor, event.detail) == (
        EventKind.NOTE,
        "alice",
        {"text": "replica lag was 2h"},
    )
    assert (await harness.events())[-1] == event
    with pytest.raises(IncidentNotFound):
        await harness.engine.add_note(9, by="alice", text="x")
    with pytest.raises(InvalidRequest, match="limit is 4000"):
        await harness.engine.add_note(1, by="alice", text="x" * 4001)


async def test_next_wakeup_is_the_earliest_deadline(harness: Harness) -> None:
    """next_wakeup follows the ladder, the response target and the reminder."""
    assert harness.engine.next_wakeup() is None
    await harness.play(0, {0: harness.fire()})
    assert harness.engine.next_wakeup() == harness.t0 + 900
    await harness.engine.acknowledge(1, by="alice", via="api")
    assert harness.engine.next_wakeup() == harness.t0 + 1800


async def test_idle_ticks_do_not_touch_the_store(harness: Harness) -> None:
    """With many open incidents and nothing due, a tick reads the heap only."""
    await harness.play(0, {0: [harness.fire(key=f"k{i}") for i in range(50)]})
    await harness.store.close()  # any store call from here on would raise
    for _ in range(100):
        harness.clock.advance(1)
        await harness.engine.tick()
    assert len(harness.engine.open_incident_list()) == 50


async def test_run_loop_pages_when_a_deadline_passes_and_stops_on_cancel(
    harness: Harness,
) -> None:
    """run() ticks on its own and ends cleanly when cancelled."""
    runner = asyncio.create_task(harness.engine.run())
    try:
        await harness.fire()()
        harness.clock.advance(900)
        for _ in range(150):
            await asyncio.sleep(0.01)
            if len(await harness.store.pages_for_incident(1)) == 2:
                break
        contacts = [p.contact for p in await harness.store.pages_for_incident(1)]
        assert contacts == ["support", "lead"]
    finally:
        runner.cancel()
        with pytest.raises(asyncio.CancelledError):
            await runner


# Through the rule evaluator --------------------------------------------------


async def test_observe_opens_and_recovers_through_the_rules(harness: Harness) -> None:
    """Critical results open the incident; healthy ones start the recovery."""
    now = harness.clock.wall
    await harness.engine.observe(check_result("mysql", Status.CRITICAL, now()))
    assert [i.ref for i in harness.engine.open_incident_list()] == ["INC-1"]
    assert (await harness.incident()).evidence[0]["status"] == "critical"

    await harness.engine.observe(check_result("mysql", Status.CRITICAL, now()))
    await harness.engine.observe(check_result("mysql", Status.OK, now()))
    assert await harness.kinds() == [
        EventKind.TRIGGERED,
        EventKind.PAGE_QUEUED,
        EventKind.ESCALATED,
        EventKind.RECOVERED,
    ]


async def test_observe_after_restart_does_not_fire_again(harness: Harness) -> None:
    """A rule with an open incident is still firing after a restart: a failing
    result adds nothing and a healthy one recovers the incident."""
    now = harness.clock.wall
    await harness.engine.observe(check_result("mysql", Status.CRITICAL, now()))
    await harness.restart(down_for_s=5)
    before = await harness.kinds()
    await harness.engine.observe(check_result("mysql", Status.CRITICAL, now()))
    assert await harness.kinds() == before
    await harness.engine.observe(check_result("mysql", Status.OK, now()))
    assert (await harness.kinds())[-1] is EventKind.RECOVERED


async def test_observe_without_a_change_does_not_touch_the_store(
    harness: Harness,
) -> None:
    """Results that change no rule's state never reach the store."""
    now = harness.clock.wall
    await harness.engine.observe(check_result("mysql", Status.CRITICAL, now()))
    await harness.store.close()  # any store call from here on would raise
    for _ in range(20):
        await harness.engine.observe(check_result("mysql", Status.CRITICAL, now()))
        await harness.engine.observe(check_result("unrelated", Status.OK, now()))


async def test_incident_policy_and_memory_match_the_store(harness: Harness) -> None:
    """What the engine holds in memory is exactly what the store has."""
    await harness.play(1000, {0: harness.fire(), 950: harness.ack(by="lead")})
    (in_memory,) = harness.engine.open_incident_list()
    assert in_memory == await harness.incident()


async def test_observe_keeps_a_transition_the_store_could_not_record(
    harness: Harness,
) -> None:
    """A firing transition that hits a failing store is retried by tick, in
    order with the ones after it, and pages once the store is back."""
    now = harness.clock.wall
    await harness.store.close()  # the store is down
    await harness.engine.observe(check_result("mysql", Status.CRITICAL, now()))
    await harness.engine.observe(check_result("mysql", Status.OK, now()))
    assert harness.engine.next_wakeup() == now()
    with pytest.raises(StoreError):
        await harness.engine.tick()

    await harness.store.open()  # and back
    await harness.play(5)
    assert await harness.pages() == [(0, "INC-1", "support", "page", 1)]
    assert (await harness.kinds())[-1] is EventKind.RECOVERED
