"""The default store: one SQLite file in WAL mode, driven from one worker thread.

Every call runs on a single dedicated thread (the connection never leaves
it), so calls are serialised in the order they were made. Writes that record
a page, a ladder step or a spent ack nonce are shielded from cancellation:
once asked for, they commit whole or roll back whole, whatever happens to the
caller. The file is synced on every commit (synchronous=FULL) because "no
page is lost" must survive a power cut, not only a crash of the process.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import sqlite3
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from pathlib import Path
from typing import Any, TypeVar

import structlog

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
from escalation.store import Store

log = structlog.get_logger(__name__)

_T = TypeVar("_T")

BUSY_TIMEOUT_S = 5.0

# Each entry brings the schema from version i to version i + 1. Append new
# migrations; never edit one that has shipped.
MIGRATIONS: tuple[tuple[str, ...], ...] = (
    (
        """CREATE TABLE counters (
            name TEXT PRIMARY KEY,
            value INTEGER NOT NULL
        )""",
        # Incident numbers come from this counter, not from max(id) + 1, so a
        # number is never handed out twice even if rows were ever removed.
        "INSERT INTO counters (name, value) VALUES ('incident', 0)",
        """CREATE TABLE incidents (
            id INTEGER PRIMARY KEY,
            dedup_key TEXT NOT NULL,
            rule TEXT NOT NULL,
            priority TEXT NOT NULL,
            category TEXT NOT NULL,
            summary TEXT NOT NULL,
            state TEXT NOT NULL,
            opened_at REAL NOT NULL,
            policy TEXT NOT NULL,
            checks TEXT NOT NULL,
            evidence TEXT NOT NULL,
            step INTEGER NOT NULL,
            repeat INTEGER NOT NULL,
            next_deadline REAL,
            suppressed TEXT,
            acked_at REAL,
            acked_by TEXT,
            acked_via TEXT,
            resolved_at REAL,
            resolved_by TEXT,
            root_cause TEXT,
            recovered_at REAL,
            response_target_s REAL,
            sla_breached INTEGER NOT NULL,
            reopen_count INTEGER NOT NULL,
            last_paged_step INTEGER NOT NULL,
            paged_contacts TEXT NOT NULL
        )""",
        "CREATE INDEX incidents_by_dedup_key ON incidents (dedup_key, id)",
        "CREATE INDEX incidents_by_state ON incidents (state, id)",
        """CREATE TABLE timeline_events (
            seq INTEGER PRIMARY KEY AUTOINCREMENT,
            incident_id INTEGER NOT NULL REFERENCES incidents (id),
            at REAL NOT NULL,
            kind TEXT NOT NULL,
            actor TEXT NOT NULL,
            detail TEXT NOT NULL
        )""",
        "CREATE INDEX timeline_by_incident ON timeline_events (incident_id, seq)",
        """CREATE TABLE outbox_pages (
            page_id TEXT PRIMARY KEY,
            incident_id INTEGER NOT NULL REFERENCES incidents (id),
            contact TEXT NOT NULL,
            kind TEXT NOT NULL,
            step INTEGER NOT NULL,
            payload TEXT NOT NULL,
            created_at REAL NOT NULL,
            not_before REAL NOT NULL,
            state TEXT NOT NULL,
            channel_index INTEGER NOT NULL,
            attempts INTEGER NOT NULL,
            sent_at REAL,
            sent_channel TEXT,
            last_error TEXT
        )""",
        "CREATE INDEX outbox_by_state_due ON outbox_pages (state, not_before)",
        "CREATE INDEX outbox_by_incident ON outbox_pages (incident_id)",
        """CREATE TABLE used_nonces (
            nonce TEXT PRIMARY KEY,
            used_at REAL NOT NULL
        )""",
        """CREATE TABLE silences (
            id INTEGER PRIMARY KEY AUTOINCREMENT,
            matcher TEXT NOT NULL,
            value TEXT NOT NULL,
            starts_at REAL NOT NULL,
            ends_at REAL NOT NULL,
            reason TEXT NOT NULL,
            created_by TEXT NOT NULL,
            created_at REAL NOT NULL,
            expired_early_at REAL
        )""",
    ),
)

SCHEMA_VERSION = len(MIGRATIONS)

_INCIDENT_COLUMNS = (
    "dedup_key",
    "rule",
    "priority",
    "category",
    "summary",
    "state",
    "opened_at",
    "policy",
    "checks",
    "evidence",
    "step",
    "repeat",
    "next_deadline",
    "suppressed",
    "acked_at",
    "acked_by",
    "acked_via",
    "resolved_at",
    "resolved_by",
    "root_cause",
    "recovered_at",
    "response_target_s",
    "sla_breached",
    "reopen_count",
    "last_paged_step",
    "paged_contacts",
)
_INSERT_INCIDENT = (
    f"INSERT INTO incidents (id, {', '.join(_INCIDENT_COLUMNS)}) "
    f"VALUES (?, {', '.join('?' for _ in _INCIDENT_COLUMNS)})"
)
_UPDATE_INCIDENT = (
    f"UPDATE incidents SET {', '.join(f'{c} = ?' for c in _INCIDENT_COLUMNS)} "
    "WHERE id = ?"
)
_INSERT_EVENT = (
    "INSERT INTO timeline_events (incident_id, at, kind, actor, detail) "
    "VALUES (?, ?, ?, ?, ?)"
)
_INSERT_PAGE = (
    "INSERT OR IGNORE INTO outbox_pages (page_id, incident_id, contact, kind, step, "
    "payload, created_at, not_before, state, channel_index, attempts, sent_at, "
    "sent_channel, last_error) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
)


class SqliteStore(Store):
    """`Store` on one SQLite file; `open()` creates or migrates it."""

    def __init__(
        self,
        path: str | Path,
        *,
        migrations: tuple[tuple[str, ...], ...] = MIGRATIONS,
    ) -> None:
        self.path = Path(path)
        self._migrations = migrations
        """Statements per schema version; the schema's version is how many."""
        self._executor: ThreadPoolExecutor | None = None
        self._conn: sqlite3.Connection | None = None
        """Created, used and closed on the executor's thread only."""

    # Lifecycle ---------------------------------------------------------------

    async def open(self) -> None:
        if self._executor is not None:
            return
        self._executor = ThreadPoolExecutor(
            max_workers=1, thread_name_prefix=f"sqlite-store-{self.path.name}"
        )
        try:
            await self._call(self._open_sync)
        except BaseException:
            self._executor.shutdown(wait=True)
            self._executor = None
            raise

    async def close(self) -> None:
        executor, self._executor = self._executor, None
        if executor is None:
            return
        loop = asyncio.get_running_loop()
        # Queued behind every call made before close(), so they all finish.
        await asyncio.shield(loop.run_in_executor(executor, self._close_sync))
        executor.shutdown(wait=True)

    def _open_sync(self) -> None:
        conn = sqlite3.connect(self.path, timeout=BUSY_TIMEOUT_S, isolation_level=None)
        try:
            conn.row_factory = sqlite3.Row
            mode = conn.execute("PRAGMA journal_mode = WAL").fetchone()[0]
            if mode != "wal":
                raise StoreError(
                    f"cannot put {self.path} in WAL mode "
                    f"(the file system gave {mode!r})"
                )
            conn.execute("PRAGMA synchronous = FULL")
            conn.execute("PRAGMA foreign_keys = ON")
            conn.execute(f"PRAGMA busy_timeout = {int(BUSY_TIMEOUT_S * 1000)}")
            self._migrate(conn)
        except sqlite3.DatabaseError as exc:
            conn.close()
            raise StoreError(f"cannot open the store {self.path}: {exc}") from exc
        except BaseException:
            conn.close()
            raise
        self._conn = conn

    def _migrate(self, conn: sqlite3.Connection) -> None:
        latest = len(self._migrations)
        with _transaction(conn):
            conn.execute(
                "CREATE TABLE IF NOT EXISTS schema_version ("
                "id INTEGER PRIMARY KEY CHECK (id = 1), version INTEGER NOT NULL)"
            )
            row = conn.execute("SELECT version FROM schema_version").fetchone()
            found = 0 if row is None else int(row[0])
            if found > latest:
                raise StoreError(
                    f"{self.path} has schema version {found}, newer than the "
                    f"{latest} this Sentinel understands: run a newer "
                    "Sentinel, or point the store at another file"
                )
            for version in range(found, latest):
                for statement in self._migrations[version]:
                    conn.execute(statement)
            conn.execute(
                "INSERT INTO schema_version (id, version) VALUES (1, ?) "
                "ON CONFLICT (id) DO UPDATE SET version = excluded.version",
                (latest,),
            )
        if found < latest:
            log.info(
                "store_migrated",
                path=str(self.path),
                from_version=found,
                to_version=latest,
            )

    def _close_sync(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None

    async def _call(
        self, fn: Callable[..., _T], *args: Any, shield: bool = False
    ) -> _T:
        executor = self._executor
        if executor is None:
            raise StoreError(f"the store at {self.path} is not open")
        loop = asyncio.get_running_loop()
        future = loop.run_in_executor(executor, functools.partial(fn, *args))
        if shield:
            # A cancelled caller must neither stop a write half way (SQLite
            # would roll it back, but the caller's in-memory state might
            # already assume it) nor drop one that has been queued.
            try:
                return await asyncio.shield(future)
            except asyncio.CancelledError:
                future.add_done_callback(self._report_orphaned_write)
                raise
        return await future

    def _report_orphaned_write(self, future: asyncio.Future[Any]) -> None:
        # Nobody awaits this write any more: its failure must not go unheard.
        if not future.cancelled() and (exc := future.exception()) is not None:
            log.error(
                "store_write_failed",
                path=str(self.path),
                error=f"{type(exc).__name__}: {exc}",
            )

    @property
    def _db(self) -> sqlite3.Connection:
        if self._conn is None:
            raise StoreError(f"the store at {self.path} is not open")
        return self._conn

    # Incidents ---------------------------------------------------------------

    async def create_incident(
        self,
        incident: Incident,
        events: Sequence[TimelineEvent] = (),
        pages: Sequence[OutboxPage] = (),
    ) -> Incident:
        new_id = await self._call(
            self._create_incident_sync,
            incident,
            tuple(events),
            tuple(pages),
            shield=True,
        )
        for event in events:
            event.incident_id = new_id
        for page in pages:
            page.incident_id = new_id
        return replace(incident, id=new_id)

    def _create_incident_sync(
        self,
        incident: Incident,
        events: tuple[TimelineEvent, ...],
        pages: tuple[OutboxPage, ...],
    ) -> int:
        db = self._db
        with _transaction(db):
            row = db.execute(
                "UPDATE counters SET value = value + 1 WHERE name = 'incident' "
                "RETURNING value"
            ).fetchone()
            new_id = int(row[0])
            db.execute(_INSERT_INCIDENT, (new_id, *_incident_values(incident)))
            _insert_events(db, events, new_id)
            _insert_pages(db, pages, new_id)
        return new_id

    async def save_incident(
        self,
        incident: Incident,
        events: Sequence[TimelineEvent] = (),
        pages: Sequence[OutboxPage] = (),
    ) -> None:
        await self._call(
            self._save_incident_sync, incident, tuple(events), tuple(pages), shield=True
        )

    def _save_incident_sync(
        self,
        incident: Incident,
        events: tuple[TimelineEvent, ...],
        pages: tuple[OutboxPage, ...],
    ) -> None:
        db = self._db
        with _transaction(db):
            cursor = db.execute(
                _UPDATE_INCIDENT, (*_incident_values(incident), incident.id)
            )
            if cursor.rowcount != 1:
                raise StoreError(f"cannot save {incident.ref}: it was never created")
            _insert_events(db, events, None)
            _insert_pages(db, pages, None)

    async def get_incident(self, incident_id: int) -> Incident | None:
        rows = await self._call(
            self._select, "SELECT * FROM incidents WHERE id = ?", (incident_id,)
        )
        return _incident(rows[0]) if rows else None

    async def open_incidents(self) -> list[Incident]:
        rows = await self._call(
            self._select,
            "SELECT * FROM incidents WHERE state != ? ORDER BY id",
            (IncidentState.RESOLVED.value,),
        )
        return [_incident(row) for row in rows]

    async def latest_by_dedup_key(self, dedup_key: str) -> Incident | None:
        rows = await self._call(
            self._select,
            "SELECT * FROM incidents WHERE dedup_key = ? ORDER BY id DESC LIMIT 1",
            (dedup_key,),
        )
        return _incident(rows[0]) if rows else None

    async def list_incidents(
        self, *, state: str | None = None, limit: int = 100
    ) -> list[Incident]:
        if state is None:
            rows = await self._call(
                self._select,
                "SELECT * FROM incidents ORDER BY id DESC LIMIT ?",
                (limit,),
            )
        else:
            rows = await self._call(
                self._select,
                "SELECT * FROM incidents WHERE state = ? ORDER BY id DESC LIMIT ?",
                (state, limit),
            )
        return [_incident(row) for row in rows]

    async def timeline(self, incident_id: int) -> list[TimelineEvent]:
        rows = await self._call(
            self._select,
            "SELECT * FROM timeline_events WHERE incident_id = ? ORDER BY seq",
            (incident_id,),
        )
        return [_event(row) for row in rows]

    async def add_events(self, events: Sequence[TimelineEvent]) -> None:
        await self._call(self._add_events_sync, tuple(events), shield=True)

    def _add_events_sync(self, events: tuple[TimelineEvent, ...]) -> None:
        db = self._db
        with _transaction(db):
            _insert_events(db, events, None)

    # Outbox ------------------------------------------------------------------

    async def due_pages(self, now: float, limit: int = 100) -> list[OutboxPage]:
        rows = await self._call(
            self._select,
            "SELECT * FROM outbox_pages WHERE state = ? AND not_before <= ? "
            "ORDER BY not_before, rowid LIMIT ?",
            (PageState.PENDING.value, now, limit),
        )
        return [_page(row) for row in rows]

    async def next_page_due(self) -> float | None:
        rows = await self._call(
            self._select,
            "SELECT MIN(not_before) FROM outbox_pages WHERE state = ?",
            (PageState.PENDING.value,),
        )
        value = rows[0][0]
        return None if value is None else float(value)

    async def update_page(
        self, page: OutboxPage, events: Sequence[TimelineEvent] = ()
    ) -> None:
        await self._call(self._update_page_sync, page, tuple(events), shield=True)

    def _update_page_sync(
        self, page: OutboxPage, events: tuple[TimelineEvent, ...]
    ) -> None:
        db = self._db
        with _transaction(db):
            cursor = db.execute(
                "UPDATE outbox_pages SET state = ?, not_before = ?, channel_index = ?, "
                "attempts = ?, sent_at = ?, sent_channel = ?, last_error = ? "
                "WHERE page_id = ?",
                (
                    page.state.value,
                    page.not_before,
                    page.channel_index,
                    page.attempts,
                    page.sent_at,
                    page.sent_channel,
                    page.last_error,
                    page.page_id,
                ),
            )
            if cursor.rowcount != 1:
                raise StoreError(
                    f"cannot update page {page.page_id}: it is not in the outbox"
                )
            _insert_events(db, events, None)

    async def pages_for_incident(self, incident_id: int) -> list[OutboxPage]:
        rows = await self._call(
            self._select,
            "SELECT * FROM outbox_pages WHERE incident_id = ? ORDER BY rowid",
            (incident_id,),
        )
        return [_page(row) for row in rows]

    async def get_page(self, page_id: str) -> OutboxPage | None:
        rows = await self._call(
            self._select, "SELECT * FROM outbox_pages WHERE page_id = ?", (page_id,)
        )
        return _page(rows[0]) if rows else None

    async def outbox_depth(self) -> int:
        rows = await self._call(
            self._select,
            "SELECT COUNT(*) FROM outbox_pages WHERE state = ?",
            (PageState.PENDING.value,),
        )
        return int(rows[0][0])

    # Acknowledgement tokens --------------------------------------------------

    async def use_nonce(self, nonce: str, now: float) -> bool:
        return await self._call(self._use_nonce_sync, nonce, now, shield=True)

    def _use_nonce_sync(self, nonce: str, now: float) -> bool:
        db = self._db
        with _transaction(db):
            cursor = db.execute(
                "INSERT OR IGNORE INTO used_nonces (nonce, used_at) VALUES (?, ?)",
                (nonce, now),
            )
        return cursor.rowcount == 1

    # Silences ----------------------------------------------------------------

    async def add_silence(self, silence: Silence) -> Silence:
        new_id = await self._call(self._add_silence_sync, silence, shield=True)
        return replace(silence, id=new_id)

    def _add_silence_sync(self, silence: Silence) -> int:
        db = self._db
        with _transaction(db):
            cursor = db.execute(
                "INSERT INTO silences (matcher, value, starts_at, ends_at, reason, "
                "created_by, created_at, expired_early_at) "
                "VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    silence.matcher,
                    silence.value,
                    silence.starts_at,
                    silence.ends_at,
                    silence.reason,
                    silence.created_by,
                    silence.created_at,
                    silence.expired_early_at,
                ),
            )
        assert cursor.lastrowid is not None
        return cursor.lastrowid

    async def list_silences(self, *, active_at: float | None = None) -> list[Silence]:
        if active_at is None:
            rows = await self._call(
                self._select, "SELECT * FROM silences ORDER BY id", ()
            )
        else:
            rows = await self._call(
                self._select,
                "SELECT * FROM silences WHERE starts_at <= ? "
                "AND ? < COALESCE(expired_early_at, ends_at) ORDER BY id",
                (active_at, active_at),
            )
        return [_silence(row) for row in rows]

    async def expire_silence(self, silence_id: int, now: float) -> Silence | None:
        row = await self._call(self._expire_silence_sync, silence_id, now, shield=True)
        return None if row is None else _silence(row)

    def _expire_silence_sync(self, silence_id: int, now: float) -> sqlite3.Row | None:
        db = self._db
        with _transaction(db):
            # A silence that has already ended keeps its end: moving it later
            # would make it look active over a span it never covered.
            db.execute(
                "UPDATE silences SET expired_early_at = ? WHERE id = ? "
                "AND expired_early_at IS NULL AND ends_at > ?",
                (now, silence_id, now),
            )
            row: sqlite3.Row | None = db.execute(
                "SELECT * FROM silences WHERE id = ?", (silence_id,)
            ).fetchone()
        return row

    # Reading -----------------------------------------------------------------

    def _select(self, sql: str, params: tuple[Any, ...]) -> list[sqlite3.Row]:
        return self._db.execute(sql, params).fetchall()


@contextlib.contextmanager
def _transaction(conn: sqlite3.Connection) -> Iterator[None]:
    # IMMEDIATE takes the write lock up front, so a second process holding the
    # file waits out busy_timeout instead of failing half way through.
    conn.execute("BEGIN IMMEDIATE")
    try:
        yield
        conn.execute("COMMIT")
    except BaseException:
        if conn.in_transaction:
            conn.execute("ROLLBACK")
        raise


def _dumps(value: Any) -> str:
    return json.dumps(value, separators=(",", ":"), sort_keys=True)


def _incident_values(incident: Incident) -> tuple[Any, ...]:
    return (
        incident.dedup_key,
        incident.rule,
        incident.priority.value,
        incident.category,
        incident.summary,
        incident.state.value,
        incident.opened_at,
        _dumps(incident.policy),
        _dumps(incident.checks),
        _dumps(incident.evidence),
        incident.step,
        incident.repeat,
        incident.next_deadline,
        incident.suppressed,
        incident.acked_at,
        incident.acked_by,
        incident.acked_via,
        incident.resolved_at,
        incident.resolved_by,
        incident.root_cause,
        incident.recovered_at,
        incident.response_target_s,
        int(incident.sla_breached),
        incident.reopen_count,
        incident.last_paged_step,
        _dumps(incident.paged_contacts),
    )


def _insert_events(
    db: sqlite3.Connection, events: Sequence[TimelineEvent], incident_id: int | None
) -> None:
    db.executemany(
        _INSERT_EVENT,
        [
            (
                e.incident_id if incident_id is None else incident_id,
                e.at,
                e.kind.value,
                e.actor,
                _dumps(e.detail),
            )
            for e in events
        ],
    )


def _insert_pages(
    db: sqlite3.Connection, pages: Sequence[OutboxPage], incident_id: int | None
) -> None:
    db.executemany(
        _INSERT_PAGE,
        [
            (
                p.page_id,
                p.incident_id if incident_id is None else incident_id,
                p.contact,
                p.kind.value,
                p.step,
                _dumps(p.payload),
                p.created_at,
                p.not_before,
                p.state.value,
                p.channel_index,
                p.attempts,
                p.sent_at,
                p.sent_channel,
                p.last_error,
            )
            for p in pages
        ],
    )


def _incident(row: sqlite3.Row) -> Incident:
    return Incident(
        id=row["id"],
        dedup_key=row["dedup_key"],
        rule=row["rule"],
        priority=Priority(row["priority"]),
        category=row["category"],
        summary=row["summary"],
        state=IncidentState(row["state"]),
        opened_at=row["opened_at"],
        policy=json.loads(row["policy"]),
        checks=json.loads(row["checks"]),
        evidence=json.loads(row["evidence"]),
        step=row["step"],
        repeat=row["repeat"],
        next_deadline=row["next_deadline"],
        suppressed=row["suppressed"],
        acked_at=row["acked_at"],
        acked_by=row["acked_by"],
        acked_via=row["acked_via"],
        resolved_at=row["resolved_at"],
        resolved_by=row["resolved_by"],
        root_cause=row["root_cause"],
        recovered_at=row["recovered_at"],
        response_target_s=row["response_target_s"],
        sla_breached=bool(row["sla_breached"]),
        reopen_count=row["reopen_count"],
        last_paged_step=row["last_paged_step"],
        paged_contacts=json.loads(row["paged_contacts"]),
    )


def _event(row: sqlite3.Row) -> TimelineEvent:
    return TimelineEvent(
        incident_id=row["incident_id"],
        at=row["at"],
        kind=EventKind(row["kind"]),
        actor=row["actor"],
        detail=json.loads(row["detail"]),
    )


def _page(row: sqlite3.Row) -> OutboxPage:
    return OutboxPage(
        page_id=row["page_id"],
        incident_id=row["incident_id"],
        contact=row["contact"],
        kind=PageKind(row["kind"]),
        step=row["step"],
        payload=json.loads(row["payload"]),
        created_at=row["created_at"],
        not_before=row["not_before"],
        state=PageState(row["state"]),
        channel_index=row["channel_index"],
        attempts=row["attempts"],
        sent_at=row["sent_at"],
        sent_channel=row["sent_channel"],
        last_error=row["last_error"],
    )


def _silence(row: sqlite3.Row) -> Silence:
    return Silence(
        id=row["id"],
        matcher=row["matcher"],
        value=row["value"],
        starts_at=row["starts_at"],
        ends_at=row["ends_at"],
        reason=row["reason"],
        created_by=row["created_by"],
        created_at=row["created_at"],
        expired_early_at=row["expired_early_at"],
    )
