"""Inhibition, silences and business hours: incidents that are recorded but
held back, and pages that wait for the office to open."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import datetime
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest

from checks.clock import FakeClock
from escalation.engine import next_business_opening
from escalation.errors import InvalidRequest, SilenceNotFound
from escalation.model import EventKind, IncidentState, Priority, Silence
from escalation.policy import BusinessHours
from escalation.rules import Rule
from tests.test_engine import Action, Harness, make_config, make_rule

API_ERRORS = make_rule(
    "api-errors",
    checks=("api", "nginx"),
    priority=Priority.P2,
    category="api degradation",
)
DB_INHIBITS_API = make_rule("db-down", inhibits=("api-errors",))
DB_INHIBITS_CATEGORY = make_rule("db-down", inhibits=("category:api degradation",))
REPORTS_LATE = make_rule(
    "reports-late",
    checks=("reports",),
    priority=Priority.P3,
    category="reporting delays",
)


@pytest.fixture
async def harness(tmp_path: Path, clock: FakeClock) -> AsyncIterator[Harness]:
    h = Harness(
        tmp_path / "sentinel.db", clock, make_config(DB_INHIBITS_API, API_ERRORS)
    )
    await h.start()
    yield h
    await h.close()


def silence(
    h: Harness,
    matcher: str,
    value: str,
    *,
    for_s: float,
    starts_in_s: float = 0,
) -> Action:
    async def add() -> Silence:
        now = h.clock.wall()
        return await h.engine.add_silence(
            matcher=matcher,
            value=value,
            starts_at=now + starts_in_s,
            ends_at=now + starts_in_s + for_s,
            reason="maintenance window",
            created_by="alice",
        )

    return add


# Inhibition ------------------------------------------------------------------


@pytest.mark.parametrize("inhibitor", [DB_INHIBITS_API, DB_INHIBITS_CATEGORY])
async def test_inhibition_records_without_paging_until_the_inhibitor_resolves(
    tmp_path: Path, clock: FakeClock, inhibitor: Rule
) -> None:
    """An incident inhibited by an open one (by rule or by category) is
    recorded and pages nothing; its ladder starts from step 1 when the
    inhibitor resolves."""
    h = Harness(tmp_path / "i.db", clock, make_config(inhibitor, API_ERRORS))
    await h.start()
    try:
        await h.play(
            1200,
            {0: h.fire(inhibitor), 10: h.fire(API_ERRORS), 100: h.resolve(1)},
        )
        assert await h.pages() == [
            (0, "INC-1", "support", "page", 1),
            (100, "INC-1", "support", "resolved", 1),
            (100, "INC-2", "support", "page", 1),
            (1000, "INC-2", "lead", "page", 2),
        ]
        events = await h.events(2)
        assert [e.kind for e in events][:2] == [
            EventKind.TRIGGERED,
            EventKind.SUPPRESSED,
        ]
        assert events[1].detail["reason"] == "inhibited by INC-1"
        unsuppressed = [e for e in events if e.kind is EventKind.UNSUPPRESSED]
        assert [e.at - h.t0 for e in unsuppressed] == [100]
        assert (await h.incident(2)).suppressed is None
    finally:
        await h.close()


async def test_inhibited_incident_is_not_an_inhibitor(harness: Harness) -> None:
    """An incident opened first and not inhibited is never suppressed after the
    fact, and an inhibited incident's own rule holds nothing back."""
    await harness.play(
        100, {0: harness.fire(API_ERRORS), 10: harness.fire(DB_INHIBITS_API)}
    )
    assert await harness.pages() == [
        (0, "INC-1", "support", "page", 1),
        (10, "INC-2", "support", "page", 1),
    ]


async def test_inhibited_incident_can_auto_resolve_without_paging(
    harness: Harness,
) -> None:
    """A held-back incident still resolves on recovery, and nobody is paged."""
    await harness.play(
        1000,
        {
            0: harness.fire(DB_INHIBITS_API),
            10: harness.fire(API_ERRORS),
            20: harness.recover(API_ERRORS),
        },
    )
    assert (await harness.incident(2)).state is IncidentState.RESOLVED
    assert [p for p in await harness.pages() if p[1] == "INC-2"] == []


# Silences --------------------------------------------------------------------


@pytest.mark.parametrize(
    ("matcher", "value"),
    [("check", "nginx"), ("rule", "api-errors"), ("category", "api degradation")],
)
async def test_silence_holds_a_new_incident_until_it_expires(
    harness: Harness, matcher: str, value: str
) -> None:
    """A matching silence records the incident without paging; at the
    silence's end the ladder starts from step 1."""
    await harness.play(
        1600,
        {0: silence(harness, matcher, value, for_s=600), 10: harness.fire(API_ERRORS)},
    )
    assert await harness.pages() == [
        (600, "INC-1", "support", "page", 1),
        (1500, "INC-1", "lead", "page", 2),
    ]
    suppressed = [e for e in await harness.events() if e.kind is EventKind.SUPPRESSED]
    assert [e.detail["reason"] for e in suppressed] == ["silenced by S-1"]


async def test_silence_on_another_value_does_not_match(harness: Harness) -> None:
    """A silence for another check leaves the incident paging."""
    await harness.play(
        10,
        {0: silence(harness, "check", "mysql", for_s=600), 5: harness.fire(API_ERRORS)},
    )
    assert await harness.pages() == [(5, "INC-1", "support", "page", 1)]


async def test_new_silence_pauses_an_open_incident_and_resumes_its_step(
    harness: Harness,
) -> None:
    """Silencing a paging incident pauses its ladder; at the end it resumes at
    the step it was at, that step's delay counted from the end."""
    await harness.play(
        3000,
        {
            0: harness.fire(API_ERRORS),
            100: silence(harness, "rule", "api-errors", for_s=1900),
        },
    )
    assert await harness.pages() == [
        (0, "INC-1", "support", "page", 1),
        (2900, "INC-1", "lead", "page", 2),
    ]


async def test_silence_starting_later_suppresses_when_it_starts(
    harness: Harness,
) -> None:
    """A silence in the future takes effect at its start, not before."""
    await harness.play(
        1000,
        {
            0: [
                harness.fire(API_ERRORS),
                silence(harness, "rule", "api-errors", starts_in_s=300, for_s=3600),
            ]
        },
    )
    assert await harness.pages() == [(0, "INC-1", "support", "page", 1)]
    events = await harness.events()
    assert [e.at - harness.t0 for e in events if e.kind is EventKind.SUPPRESSED] == [
        300
    ]


async def test_expire_silence_early_starts_the_ladder(harness: Harness) -> None:
    """Ending a silence early releases what it held at that moment."""

    async def expire() -> None:
        ended = await harness.engine.expire_silence(1, by="bob")
        assert ended.expired_early_at == harness.clock.wall()

    await harness.play(
        200,
        {
            0: silence(harness, "check", "api", for_s=3600),
            10: harness.fire(API_ERRORS),
            120: expire,
        },
    )
    assert await harness.pages() == [(120, "INC-1", "support", "page", 1)]
    with pytest.raises(SilenceNotFound, match="S-9"):
        await harness.engine.expire_silence(9, by="bob")


async def test_resolve_under_silence_still_tells_those_paged(harness: Harness) -> None:
    """RESOLVED pages go to everyone paged, even while a silence matches."""
    await harness.play(
        300,
        {
            0: harness.fire(API_ERRORS),
            100: silence(harness, "rule", "api-errors", for_s=3600),
            200: harness.resolve(),
        },
    )
    assert await harness.pages() == [
        (0, "INC-1", "support", "page", 1),
        (200, "INC-1", "support", "resolved", 1),
    ]


async def test_silence_that_ended_during_a_downtime_is_released_at_start(
    harness: Harness,
) -> None:
    """A restart after the silence's end releases the incident on the first tick."""
    await harness.play(
        100,
        {
            0: silence(harness, "rule", "api-errors", for_s=600),
            10: harness.fire(API_ERRORS),
        },
    )
    await harness.restart(down_for_s=900)
    await harness.play(1100)
    assert await harness.pages() == [(1000, "INC-1", "support", "page", 1)]


async def test_silence_requests_are_validated(harness: Harness) -> None:
    """Bad matchers, unknown targets and backwards or past windows are refused
    with the reason."""
    now = harness.clock.wall()
    add = harness.engine.add_silence
    with pytest.raises(InvalidRequest, match="matcher is one of check, rule, category"):
        await add(
            matcher="host",
            value="web1",
            starts_at=now,
            ends_at=now + 60,
            reason="x",
            created_by="a",
        )
    with pytest.raises(InvalidRequest, match="no configured rule uses check 'mysq'"):
        await add(
            matcher="check",
            value="mysq",
            starts_at=now,
            ends_at=now + 60,
            reason="x",
            created_by="a",
        )
    with pytest.raises(InvalidRequest, match="must end after it starts"):
        await add(
            matcher="rule",
            value="db-down",
            starts_at=now,
            ends_at=now,
            reason="x",
            created_by="a",
        )
    with pytest.raises(InvalidRequest, match="already ended"):
        await add(
            matcher="rule",
            value="db-down",
            starts_at=now - 60,
            ends_at=now - 1,
            reason="x",
            created_by="a",
        )
    with pytest.raises(InvalidRequest, match="reason must be"):
        await add(
            matcher="rule",
            value="db-down",
            starts_at=now,
            ends_at=now + 60,
            reason="",
            created_by="a",
        )
    assert await harness.store.list_silences() == []


# Business hours --------------------------------------------------------------


def _new_york(*args: int) -> float:
    year, month, day, hour, minute = args
    zone = ZoneInfo("America/New_York")
    return datetime(year, month, day, hour, minute, tzinfo=zone).timestamp()


async def test_business_hours_hold_a_p3_page_until_the_window_opens(
    tmp_path: Path,
) -> None:
    """A P3 failing on Friday evening in New York is paged on Monday 09:00 New
    York time, across the end of daylight saving time."""
    friday_evening = _new_york(2024, 11, 1, 18, 0)
    clock = FakeClock(start=friday_evening)
    h = Harness(tmp_path / "bh.db", clock, make_config(REPORTS_LATE))
    await h.start()
    try:
        await h.play(0, {0: h.fire(REPORTS_LATE)})
        (page,) = await h.store.pages_for_incident(1)
        monday_nine = _new_york(2024, 11, 4, 9, 0)
        assert page.not_before == monday_nine
        assert (
            monday_nine - friday_evening == (2 * 24 + 15 + 1) * 3600
        )  # an hour gained
        assert await h.store.due_pages(monday_nine - 1) == []
        assert [p.page_id for p in await h.store.due_pages(monday_nine)] == [
            page.page_id
        ]
    finally:
        await h.close()


async def test_business_hours_page_at_once_inside_the_window(tmp_path: Path) -> None:
    """Inside the window a P3 page is due immediately."""
    clock = FakeClock(start=_new_york(2024, 11, 5, 10, 30))
    h = Harness(tmp_path / "bh.db", clock, make_config(REPORTS_LATE))
    await h.start()
    try:
        await h.play(0, {0: h.fire(REPORTS_LATE)})
        (page,) = await h.store.pages_for_incident(1)
        assert page.not_before == clock.wall()
    finally:
        await h.close()


@pytest.mark.parametrize(
    ("now", "expected"),
    [
        # Inside: now itself.
        ((2024, 3, 11, 16, 59), (2024, 3, 11, 16, 59)),
        # At the closing minute: the next morning.
        ((2024, 3, 11, 17, 0), (2024, 3, 12, 9, 0)),
        # Before opening on a weekday: that morning.
        ((2024, 3, 12, 3, 0), (2024, 3, 12, 9, 0)),
        # Saturday night before spring forward: Monday 09:00 EDT.
        ((2024, 3, 9, 23, 0), (2024, 3, 11, 9, 0)),
    ],
)
def test_next_business_opening(now: tuple[int, ...], expected: tuple[int, ...]) -> None:
    """Openings are local wall-clock times, weekdays only."""
    hours = BusinessHours("America/New_York", (1, 2, 3, 4, 5), 9 * 60, 17 * 60)
    assert next_business_opening(hours, _new_york(*now)) == _new_york(*expected)


def test_next_business_opening_overnight_window() -> None:
    """A window that closes after midnight (22:00-06:00) counts from its start day."""
    hours = BusinessHours("Europe/Berlin", (5,), 22 * 60, 6 * 60)  # Friday night
    berlin = ZoneInfo("Europe/Berlin")
    saturday_3am = datetime(2024, 6, 8, 3, 0, tzinfo=berlin).timestamp()
    assert next_business_opening(hours, saturday_3am) == saturday_3am
    saturday_7am = datetime(2024, 6, 8, 7, 0, tzinfo=berlin).timestamp()
    next_friday = datetime(2024, 6, 14, 22, 0, tzinfo=berlin).timestamp()
    assert next_business_opening(hours, saturday_7am) == next_friday


async def test_silence_and_inhibition_reasons_survive_a_restart(
    harness: Harness,
) -> None:
    """A suppressed incident stays suppressed across a restart and is released
    when its inhibitor resolves afterwards."""
    await harness.play(
        20, {0: harness.fire(DB_INHIBITS_API), 10: harness.fire(API_ERRORS)}
    )
    await harness.restart(down_for_s=1)
    assert (await harness.incident(2)).suppressed == "inhibited by INC-1"
    await harness.play(100, {50: harness.resolve(1)})
    assert [p for p in await harness.pages() if p[1] == "INC-2"] == [
        (50, "INC-2", "support", "page", 1)
    ]


async def test_inhibitor_resolved_during_a_crash_is_released_at_start(
    harness: Harness,
) -> None:
    """If the inhibitor was resolved but its held incident never released (a
    crash in between), start() releases it."""
    await harness.play(
        20, {0: harness.fire(DB_INHIBITS_API), 10: harness.fire(API_ERRORS)}
    )
    inhibitor = await harness.incident(1)
    inhibitor.state, inhibitor.resolved_at = (
        IncidentState.RESOLVED,
        harness.clock.wall(),
    )
    await harness.store.save_incident(inhibitor)  # as if the release never ran
    await harness.restart(down_for_s=5)
    await harness.play(30)
    assert (await harness.incident(2)).suppressed is None
    assert [p for p in await harness.pages() if p[1] == "INC-2"] == [
        (25, "INC-2", "support", "page", 1)
    ]


async def test_response_target_is_waived_while_suppressed(harness: Harness) -> None:
    """Held back past its response target: no breach, the waiver is recorded,
    and it holds after release and across a restart."""
    await harness.play(
        2000,
        {0: harness.fire(DB_INHIBITS_API), 10: harness.fire(API_ERRORS)},
    )
    await harness.restart(down_for_s=1)
    await harness.play(4000, {2500: harness.resolve(1)})

    incident = await harness.incident(2)
    assert incident.response_target_s is None and not incident.sla_breached
    events = await harness.events(2)
    assert EventKind.SLA_BREACHED not in [e.kind for e in events]
    (waiver,) = [e for e in events if "waived" in e.detail.get("text", "")]
    assert waiver.at - harness.t0 == 1810
    assert "inhibited by INC-1" in waiver.detail["text"]
    assert (await harness.incident(1)).sla_breached
