"""SqliteStore against real files in tmp_path: schema, durability, atomicity."""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import structlog.testing

from escalation import sqlite_store
from escalation.errors import StoreError
from escalation.model import (
    EventKind,
    Incident,
    IncidentState,
    OutboxPage,
    PageKind,
    PageState,
    Priority,
    Silence,
    TimelineEvent,
)
from escalation.sqlite_store import SCHEMA_VERSION, SqliteStore

T0 = 1_700_000_000.0


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[SqliteStore]:
    s = SqliteStore(tmp_path / "sentinel.db")
    await s.open()
    yield s
    await s.close()


def _incident(key: str = "db-down", **changes: object) -> Incident:
    incident = Incident(
        id=0,
        dedup_key=key,
        rule="db-down",
        priority=Priority.P1,
        category="database connectivity loss",
        summary="MySQL unreachable",
        state=IncidentState.TRIGGERED,
        opened_at=T0,
        policy={"name": "default", "steps": [{"delay_s": 0, "contacts": ["ana"]}]},
        checks=["mysql"],
        evidence=[{"check": "mysql", "status": "critical", "values": {"ms": 1.5}}],
        next_deadline=T0 + 900,
        response_target_s=900.0,
    )
    for name, value in changes.items():
        setattr(incident, name, value)
    return incident


def _event(
    kind: EventKind = EventKind.TRIGGERED, incident_id: int = 0
) -> TimelineEvent:
    return TimelineEvent(incident_id, T0, kind, "sentinel", {"why": kind.value})


def _page(page_id: str, incident_id: int = 0, not_before: float = T0) -> OutboxPage:
    return OutboxPage(
        page_id=page_id,
        incident_id=incident_id,
        contact="ana",
        kind=PageKind.PAGE,
        step=0,
        payload={"incident": f"INC-{incident_id}", "summary": "MySQL unreachable"},
        created_at=T0,
        not_before=not_before,
    )


def _tables(path: Path) -> set[str]:
    with sqlite3.connect(path) as conn:
        rows = conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")
        names = {row[0] for row in rows}
    conn.close()
    return names


async def test_open_creates_schema_at_current_version(tmp_path: Path) -> None:
    """A new file gets every table, WAL mode and the current schema version."""
    path = tmp_path / "new.db"
    store = SqliteStore(path)
    await store.open()
    await store.close()

    assert {
        "schema_version",
        "counters",
        "incidents",
        "timeline_events",
        "outbox_pages",
        "used_nonces",
        "silences",
    } <= _tables(path)
    conn = sqlite3.connect(path)
    try:
        assert conn.execute("SELECT version FROM schema_version").fetchall() == [
            (SCHEMA_VERSION,)
        ]
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    finally:
        conn.close()


async def test_open_applies_later_migrations_in_order(tmp_path: Path) -> None:
    """A file at version 1 is brought to version 2 and keeps its data."""
    path = tmp_path / "old.db"
    store = SqliteStore(path)
    await store.open()
    created = await store.create_incident(_incident())
    await store.close()

    migration = ("CREATE TABLE extra (id INTEGER PRIMARY KEY)",)
    store = SqliteStore(path, migrations=(*sqlite_store.MIGRATIONS, migration))
    await store.open()
    try:
        assert await store.get_incident(created.id) == created
    finally:
        await store.close()

    assert "extra" in _tables(path)
    conn = sqlite3.connect(path)
    try:
        version = conn.execute("SELECT version FROM schema_version").fetchone()[0]
    finally:
        conn.close()
    assert version == SCHEMA_VERSION + 1


async def test_open_refuses_newer_schema_version(tmp_path: Path) -> None:
    """A file written by a newer Sentinel is refused with a clear error."""
    path = tmp_path / "future.db"
    store = SqliteStore(path)
    await store.open()
    await store.close()
    conn = sqlite3.connect(path)
    with conn:
        conn.execute("UPDATE schema_version SET version = ?", (SCHEMA_VERSION + 5,))
    conn.close()

    store = SqliteStore(path)
    with pytest.raises(
        StoreError, match=rf"schema version {SCHEMA_VERSION + 5}.*newer"
    ):
        await store.open()
    with pytest.raises(StoreError, match="not open"):
        await store.open_incidents()


async def test_open_refuses_a_file_that_is_not_a_database(tmp_path: Path) -> None:
    """A garbage file is named in the error instead of being overwritten."""
    path = tmp_path / "garbage.db"
    path.write_bytes(b"this is not sqlite" * 100)
    with pytest.raises(StoreError, match=r"garbage\.db"):
        await SqliteStore(path).open()


async def test_calls_before_open_fail_clearly(tmp_path: Path) -> None:
    """Using a store that was never opened names the file and the problem."""
    with pytest.raises(StoreError, match="not open"):
        await SqliteStore(tmp_path / "x.db").get_incident(1)


async def test_reopen_keeps_incidents_events_pages_nonces_silences(
    tmp_path: Path,
) -> None:
    """Everything written survives closing and reopening the file."""
    path = tmp_path / "durable.db"
    store = SqliteStore(path)
    await store.open()
    created = await store.create_incident(
        _incident(), [_event()], [_page("INC-1.0.s1.r0.ana")]
    )
    silence = await store.add_silence(
        Silence(0, "rule", "db-down", T0, T0 + 600, "maintenance", "ana", T0)
    )
    assert await store.use_nonce("abc123", T0)
    await store.close()

    store = SqliteStore(path)
    await store.open()
    try:
        assert await store.get_incident(created.id) == created
        assert await store.timeline(created.id) == [
            TimelineEvent(
                created.id, T0, EventKind.TRIGGERED, "sentinel", {"why": "triggered"}
            )
        ]
        pages = await store.pages_for_incident(created.id)
        assert [p.page_id for p in pages] == ["INC-1.0.s1.r0.ana"]
        assert pages[0].payload == {"incident": "INC-0", "summary": "MySQL unreachable"}
        assert await store.list_silences() == [silence]
        assert not await store.use_nonce("abc123", T0 + 1)
    finally:
        await store.close()


async def test_create_incident_numbers_are_never_reused(tmp_path: Path) -> None:
    """Incident numbers keep counting up across reopening the file."""
    path = tmp_path / "ids.db"
    store = SqliteStore(path)
    await store.open()
    first = await store.create_incident(_incident("a"))
    second = await store.create_incident(_incident("b"))
    await store.close()
    store = SqliteStore(path)
    await store.open()
    try:
        third = await store.create_incident(_incident("c"))
    finally:
        await store.close()
    assert (first.id, second.id, third.id) == (1, 2, 3)


async def test_create_incident_sets_ids_on_events_and_pages(store: SqliteStore) -> None:
    """The new id lands on the returned incident and on the events and pages."""
    event, page = _event(), _page("p1")
    created = await store.create_incident(_incident(), [event], [page])
    assert created.id == 1
    assert event.incident_id == 1
    assert page.incident_id == 1
    assert (await store.pages_for_incident(1))[0].incident_id == 1


async def test_create_incident_is_atomic(store: SqliteStore) -> None:
    """A failing page aborts the whole creation, including the id counter."""
    bad = _page("bad")
    bad.payload = {"unserialisable": object()}
    with pytest.raises(TypeError):
        await store.create_incident(_incident(), [_event()], [_page("good"), bad])
    assert await store.list_incidents() == []
    assert await store.outbox_depth() == 0
    assert (await store.create_incident(_incident())).id == 1


async def test_save_incident_is_atomic(store: SqliteStore) -> None:
    """A page that violates a constraint rolls back the incident and events too."""
    created = await store.create_incident(_incident())
    changed = _incident(step=1, last_paged_step=0, paged_contacts=["ana"])
    changed.id = created.id
    orphan = _page("orphan", incident_id=999)  # no such incident: foreign key
    with pytest.raises(sqlite3.IntegrityError):
        await store.save_incident(
            changed,
            [_event(EventKind.ESCALATED, created.id)],
            [_page("ok", incident_id=created.id), orphan],
        )
    assert await store.get_incident(created.id) == created
    assert await store.timeline(created.id) == []
    assert await store.pages_for_incident(created.id) == []

    await store.save_incident(
        changed,
        [_event(EventKind.ESCALATED, created.id)],
        [_page("ok", incident_id=created.id)],
    )
    assert await store.get_incident(created.id) == changed
    assert [e.kind for e in await store.timeline(created.id)] == [EventKind.ESCALATED]
    assert [p.page_id for p in await store.pages_for_incident(created.id)] == ["ok"]


async def test_save_incident_never_creates(store: SqliteStore) -> None:
    """Saving an incident that was never created is an error, not an insert."""
    ghost = _incident()
    ghost.id = 42
    with pytest.raises(StoreError, match="INC-42"):
        await store.save_incident(ghost)


async def test_save_incident_leaves_an_existing_page_alone(store: SqliteStore) -> None:
    """Queuing a page id again neither duplicates nor resets the first one."""
    created = await store.create_incident(_incident(), pages=[_page("p1")])
    page = (await store.pages_for_incident(created.id))[0]
    page.state, page.sent_at, page.sent_channel = PageState.SENT, T0 + 3, "email"
    await store.update_page(page)

    await store.save_incident(created, pages=[_page("p1", incident_id=created.id)])
    pages = await store.pages_for_incident(created.id)
    assert len(pages) == 1
    assert pages[0].state is PageState.SENT


async def test_save_incident_survives_a_cancelled_caller(tmp_path: Path) -> None:
    """A save queued behind a blocked write still commits after its caller is
    cancelled: the shield keeps the bookkeeping."""
    path = tmp_path / "shield.db"
    store = SqliteStore(path)
    await store.open()
    created = await store.create_incident(_incident())
    blocker = sqlite3.connect(path, isolation_level=None)
    try:
        blocker.execute("BEGIN IMMEDIATE")  # another process holds the write lock
        nonce = asyncio.create_task(store.use_nonce("n1", T0))
        changed = _incident(step=2)
        changed.id = created.id
        save = asyncio.create_task(
            store.save_incident(changed, [_event(EventKind.ESCALATED, created.id)])
        )
        await asyncio.sleep(0.05)
        save.cancel()
        with pytest.raises(asyncio.CancelledError):
            await save
        blocker.execute("ROLLBACK")
        assert await nonce
        assert (await store.get_incident(created.id)) == changed
        assert len(await store.timeline(created.id)) == 1
    finally:
        blocker.close()
        await store.close()


async def test_incident_queries(store: SqliteStore) -> None:
    """Open, latest-by-key and state-filtered lists answer from the table."""
    a = await store.create_incident(_incident("k1"))
    b = await store.create_incident(_incident("k2"))
    c = await store.create_incident(_incident("k1"))
    a.state, a.resolved_at = IncidentState.RESOLVED, T0 + 60
    await store.save_incident(a)

    assert [i.id for i in await store.open_incidents()] == [b.id, c.id]
    assert (await store.latest_by_dedup_key("k1")) == c
    assert await store.latest_by_dedup_key("nope") is None
    assert [i.id for i in await store.list_incidents()] == [c.id, b.id, a.id]
    assert [i.id for i in await store.list_incidents(limit=1)] == [c.id]
    assert [i.id for i in await store.list_incidents(state="resolved")] == [a.id]


async def test_outbox_due_pages_and_depth(store: SqliteStore) -> None:
    """Pending pages come due by not_before, oldest first; sent ones leave."""
    created = await store.create_incident(
        _incident(),
        pages=[
            _page("late", not_before=T0 + 100),
            _page("now"),
            _page("soon", not_before=T0 + 5),
        ],
    )
    assert await store.outbox_depth() == 3
    assert await store.next_page_due() == T0
    assert [p.page_id for p in await store.due_pages(T0 + 5)] == ["now", "soon"]
    assert [p.page_id for p in await store.due_pages(T0 + 5, limit=1)] == ["now"]

    page = await store.get_page("now")
    assert page is not None
    page.state, page.sent_at, page.attempts = PageState.SENT, T0 + 1, 1
    sent_event = TimelineEvent(created.id, T0 + 1, EventKind.PAGE_SENT, "sentinel", {})
    await store.update_page(page, [sent_event])

    assert await store.get_page("now") == page
    assert await store.outbox_depth() == 2
    assert await store.next_page_due() == T0 + 5
    assert [e.kind for e in await store.timeline(created.id)] == [EventKind.PAGE_SENT]
    assert await store.get_page("missing") is None


async def test_update_page_of_unknown_page_fails(store: SqliteStore) -> None:
    """Updating a page that is not in the outbox names the page."""
    with pytest.raises(StoreError, match="ghost"):
        await store.update_page(_page("ghost"))


async def test_use_nonce_is_single_use(store: SqliteStore) -> None:
    """A nonce is accepted once and refused every time after."""
    assert await store.use_nonce("a1b2c3", T0)
    assert not await store.use_nonce("a1b2c3", T0 + 1)
    assert await store.use_nonce("d4e5f6", T0 + 1)


async def test_silences_listing_and_early_expiry(store: SqliteStore) -> None:
    """Silences are active in [starts_at, end); expiring early moves the end
    once, and never moves an end that has passed."""
    now_one = await store.add_silence(
        Silence(0, "check", "mysql", T0, T0 + 600, "upgrade", "ana", T0)
    )
    later = await store.add_silence(
        Silence(0, "rule", "queue-stuck", T0 + 1000, T0 + 2000, "deploy", "ana", T0)
    )
    assert (now_one.id, later.id) == (1, 2)
    assert await store.list_silences(active_at=T0 + 10) == [now_one]
    assert await store.list_silences(active_at=T0 + 1500) == [later]
    assert await store.list_silences() == [now_one, later]

    expired = await store.expire_silence(now_one.id, T0 + 100)
    assert expired is not None and expired.expired_early_at == T0 + 100
    assert await store.list_silences(active_at=T0 + 150) == []
    again = await store.expire_silence(now_one.id, T0 + 200)
    assert again is not None and again.expired_early_at == T0 + 100

    ended = await store.expire_silence(later.id, T0 + 5000)
    assert ended is not None and ended.expired_early_at is None
    assert await store.expire_silence(99, T0) is None


async def test_close_is_idempotent_and_open_twice_is_harmless(tmp_path: Path) -> None:
    """open() on an open store and close() on a closed one do nothing."""
    store = SqliteStore(tmp_path / "twice.db")
    await store.open()
    await store.open()
    await store.close()
    await store.close()


async def test_failed_write_of_a_cancelled_caller_is_logged(tmp_path: Path) -> None:
    """A write that fails after its caller was cancelled is logged, not lost
    silently."""
    path = tmp_path / "orphan.db"
    store = SqliteStore(path)
    await store.open()
    blocker = sqlite3.connect(path, isolation_level=None)
    try:
        blocker.execute("BEGIN IMMEDIATE")
        nonce = asyncio.create_task(store.use_nonce("n1", T0))
        with structlog.testing.capture_logs() as logs:
            # An event for an incident that does not exist: a foreign key error.
            write = asyncio.create_task(store.add_events([_event(incident_id=999)]))
            await asyncio.sleep(0.05)
            write.cancel()
            with pytest.raises(asyncio.CancelledError):
                await write
            blocker.execute("ROLLBACK")
            assert await nonce
            await store.close()
        failures = [e for e in logs if e["event"] == "store_write_failed"]
        assert len(failures) == 1
        assert "FOREIGN KEY" in failures[0]["error"]
    finally:
        blocker.close()
        await store.close()
