"""Laravel job queues in Redis, and optionally Laravel's failed_jobs table.

Laravel keeps each queue under its key prefix: ``<prefix>queues:<name>`` is a
list of waiting jobs (pushed on the right, popped from the left, so index 0
is the next to run), and ``...:delayed`` and ``...:reserved`` are sorted sets.
Laravel's own queue size is the list's length plus both sets' sizes. redis is
imported only when the first probe connects.
"""

from __future__ import annotations

import json
import re
import socket
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Self
from urllib.parse import urlsplit

from checks.base import Check, CheckSpec, Limits, ProbeSetupError, read_limits
from checks.clock import Clock, SystemClock
from checks.mysql import MysqlSession, MysqlSettings, MysqlUnavailable, TableName
from checks.result import Outcome, Status
from checks.settings import Secret, Section, format_duration

if TYPE_CHECKING:
    from redis.asyncio import Redis

# Queue names become parts of value names (``pending:<queue>``), which rules
# read as single words.
_QUEUE_NAME = re.compile(r"[A-Za-z0-9_.-]{1,64}")
_REDIS_SCHEMES = ("redis", "rediss", "unix")
# Laravel writes displayName near the start of a payload; reading it with a
# pattern from the first bytes avoids parsing (or fetching) a large payload.
_DISPLAY_NAME = re.compile(r'"displayName"\s*:\s*"((?:[^"\\]|\\.)*)"')
_RECENT_FAILURES = 3
_EXCEPTION_CHARS = 200
_SEVERITY = {Status.OK: 0, Status.UNKNOWN: 1, Status.WARNING: 2, Status.CRITICAL: 3}


@dataclass(frozen=True, slots=True)
class QueueLimits:
    """Thresholds applied to each queue on its own."""

    pending: Limits
    delayed: Limits
    reserved: Limits
    oldest_age_s: Limits


@dataclass(frozen=True, slots=True)
class FailedJobsSettings:
    """The ``failed_jobs`` sub-table: where Laravel records failed jobs."""

    mysql: MysqlSettings
    table: TableName
    total: Limits
    growth: Limits
    """New failures since the previous probe."""

    @classmethod
    def read(cls, section: Section) -> FailedJobsSettings:
        mysql = MysqlSettings.read(section)
        text = section.str("table", "failed_jobs")
        table = TableName(None, "failed_jobs")
        if isinstance(text, str):
            try:
                table = TableName.parse(text)
            except ValueError as exc:
                section.error("table", str(exc))
            else:
                if table.database is None and mysql.database is None:
                    section.error(
                        "table",
                        f'"{text}" names no database; set database or write '
                        f'"database.{text}"',
                    )
        return cls(
            mysql=mysql,
            table=table,
            total=read_limits(section, "failed", kind="count"),
            growth=read_limits(section, "failed_growth", (1, 10), kind="count"),
        )


@dataclass(frozen=True, slots=True)
class _QueueState:
    name: str
    pending: int
    delayed: int
    reserved: int
    oldest_age_s: float | None
    """Age of the job at the head of the list; None when empty or unknown."""
    age_unknown: bool
    """Jobs wait, but the head job's payload has no ``createdAt``."""

    @property
    def size(self) -> int:
        return self.pending + self.delayed + self.reserved


@dataclass(frozen=True, slots=True)
class _FailedReport:
    total: int
    growth: int | None
    """None on the first count: there is nothing to compare with yet."""
    recent: tuple[str, ...]


class _RedisDown(Exception):
    """Redis refused the connection, did not answer in time or went away."""


class QueueCheck(Check):
    """Laravel queues in Redis: how many jobs wait, are delayed or are being
    worked on, how long the next job has waited, and (with a ``failed_jobs``
    sub-table) how many jobs failed.

    Values, as totals over the configured queues and per queue as
    ``<value>:<queue>`` (e.g. ``pending:emails``):
        ``pending``: jobs waiting in the list.
        ``delayed``: jobs scheduled for later.
        ``reserved``: jobs a worker has taken and not finished.
        ``size``: the three together (Laravel's ``Queue::size``).
        ``oldest_pending_age_seconds``: how long ago the job at the head of
        the list was first queued (delays and retries included); only when
        its payload carries ``createdAt`` (older Laravel versions omit it:
        the age is then not reported rather than guessed). The total is the
        largest age over the queues.
    And from the failed_jobs table (no per-queue split):
        ``failed_jobs``: rows in the table.
        ``failed_jobs_growth``: rows added since the previous probe (from the
        second probe on; a table emptied in between counts all its rows).

    The pending, delayed, reserved and age thresholds apply to each queue on
    its own. A wrong password, a key of the wrong type (a wrong prefix), an
    unresolvable host or a port that does not speak Redis are unknown;
    a refused connection or a timeout is critical. A failed_jobs table that
    cannot be read makes only that part unknown: the database's health is
    the mysql check's to judge.
    """

    type_name = "queue"
    default_interval_s = 30.0
    default_timeout_s = 10.0

    def __init__(
        self,
        spec: CheckSpec,
        *,
        redis_url: str,
        address: str,
        password: Secret | None,
        prefix: str,
        queues: tuple[str, ...],
        limits: QueueLimits,
        connect_timeout_s: float,
        failed_jobs: FailedJobsSettings | None,
    ) -> None:
        super().__init__(spec)
        self.redis_url = redis_url
        self.address = address
        """Where Redis is, for messages: never the URL, which may hold a password."""
        self.password = password
        self.prefix = prefix
        self.queues = queues
        self.limits = limits
        self.connect_timeout_s = connect_timeout_s
        self.failed_jobs = failed_jobs
        self.clock: Clock = SystemClock()
        """Judges job ages against payload timestamps, which are wall-clock."""
        self._redis: Redis | None = None
        self._redis_password: str | None = None
        self._redis_answered = False
        self._failed_session = MysqlSession(failed_jobs.mysql) if failed_jobs else None
        self._failed_baseline_id: int | None = None

    @classmethod
    def configure(cls, spec: CheckSpec, section: Section) -> Self:
        redis_url = section.str("redis_url", "redis://127.0.0.1:6379/0")
        address = "Redis"
        url_has_password = False
        if isinstance(redis_url, str):
            try:
                address, url_has_password = _parse_redis_url(redis_url)
            except ValueError as exc:
                # The URL may carry a password: name the problem, not the value.
                section.error("redis_url", f"is not a usable Redis URL: {exc}")
        password = section.secret("password")
        if password is not None and url_has_password:
            section.error(
                "password", "give the password in redis_url or here, not both"
            )
        prefix = section.str("prefix", "laravel_database_", nonempty=False)
        queues = section.str_list("queues", ["default"])
        if isinstance(queues, list):
            if not queues:
                section.error("queues", "must name at least one queue")
            for name in queues:
                if not _QUEUE_NAME.fullmatch(name):
                    section.error(
                        "queues",
                        f'"{name}" is not a queue name; use letters, digits, "_", "." '
                        'and "-" (64 at most)',
                    )
            if len(set(queues)) != len(queues):
                section.error("queues", "lists a queue twice")
        limits = QueueLimits(
            pending=read_limits(section, "pending", (100, 1000), kind="count"),
            delayed=read_limits(section, "delayed", kind="count"),
            reserved=read_limits(section, "reserved", kind="count"),
            oldest_age_s=read_limits(
                section, "oldest_age", (300, 900), kind="duration"
            ),
        )
        connect_timeout_s = section.duration("connect_timeout", 2.0, min_s=0.01)
        failed_jobs = None
        if section.has("failed_jobs"):
            sub = section.section("failed_jobs")
            failed_jobs = FailedJobsSettings.read(sub)
            sub.finish()
        return cls(
            spec,
            redis_url=redis_url if isinstance(redis_url, str) else "",
            address=address,
            password=password,
            prefix=prefix if isinstance(prefix, str) else "laravel_database_",
            queues=tuple(queues or ("default",)),
            limits=limits,
            connect_timeout_s=connect_timeout_s,
            failed_jobs=failed_jobs,
        )

    async def probe(self) -> Outcome:
        try:
            states = await self._read_queues()
        except _RedisDown as exc:
            return Outcome(Status.CRITICAL, str(exc))

        values: dict[str, float] = {}
        parts: list[tuple[Status, str]] = []
        evidence: list[str] = []
        for state in states:
            parts.extend(self._judge_queue(state, values, evidence))
        _add_totals(states, values)
        if not parts:
            parts.append((Status.OK, "; ".join(_summary(s) for s in states)))
        if self.failed_jobs is not None:
            parts.append(await self._judge_failed(self.failed_jobs, values, evidence))

        status = Status.OK
        for part_status, _ in parts:
            status = status.worst(part_status)
        parts.sort(key=lambda part: -_SEVERITY[part[0]])
        return Outcome(status, "; ".join(t for _, t in parts), values, tuple(evidence))

    async def close(self) -> None:
        redis, self._redis = self._redis, None
        if redis is not None:
            await redis.aclose()
        if self._failed_session is not None:
            await self._failed_session.close()

    async def _client(self) -> Redis:
        """The kept client, rebuilt when the password (file) changed."""
        password = self.password.reveal() if self.password is not None else None
        if self._redis is not None and password == self._redis_password:
            return self._redis
        if self._redis is not None:
            await self._redis.aclose()
        # Imported here: a configuration without queue checks never loads redis.
        from redis.asyncio import Redis  # noqa: PLC0415
        from redis.asyncio.retry import Retry  # noqa: PLC0415
        from redis.backoff import NoBackoff  # noqa: PLC0415

        self._redis = Redis.from_url(
            self.redis_url,
            password=password,
            socket_connect_timeout=self.connect_timeout_s,
            socket_timeout=self.connect_timeout_s,
            # redis-py retries ten times with backoff by default: a dead
            # server would take seconds to report instead of connect_timeout.
            retry=Retry(NoBackoff(), 0),
            client_name="sentinel",
        )
        self._redis_password = password
        return self._redis

    async def _read_queues(self) -> list[_QueueState]:
        """One pipelined round trip: LLEN, both ZCARDs and the head job of
        every queue."""
        from redis import exceptions as rx  # noqa: PLC0415

        client = await self._client()
        keys = [f"{self.prefix}queues:{name}" for name in self.queues]
        try:
            replies = await self._pipeline(client, keys)
        except (rx.AuthenticationError, rx.AuthorizationError) as exc:
            raise ProbeSetupError(
                f"Redis at {self.address} rejected the login: {exc}; check password"
            ) from None
        except rx.TimeoutError:
            raise _RedisDown(
                f"Redis at {self.address} did not answer within connect_timeout "
                f"({format_duration(self.connect_timeout_s)})"
            ) from None
        except rx.ConnectionError as exc:
            raise self._connection_failure(exc) from None
        except rx.InvalidResponse:
            raise ProbeSetupError(
                f"{self.address} does not answer like Redis; check redis_url"
            ) from None

        commands = []
        for key in keys:
            commands += [
                (key, "a list"),
                (f"{key}:delayed", "a sorted set"),
                (f"{key}:reserved", "a sorted set"),
                (key, "a list"),
            ]
        for (key, kind), reply in zip(commands, replies, strict=True):
            if isinstance(reply, Exception):
                raise self._reply_failure(reply, key, kind)
        now = self.clock.wall()
        states = []
        for index, name in enumerate(self.queues):
            pending, delayed, reserved, head = replies[4 * index : 4 * index + 4]
            created_at = _created_at(head) if head is not None else None
            states.append(
                _QueueState(
                    name=name,
                    pending=int(pending),
                    delayed=int(delayed),
                    reserved=int(reserved),
                    oldest_age_s=None
                    if created_at is None
                    else max(0.0, now - created_at),
                    age_unknown=head is not None and created_at is None,
                )
            )
        return states

    async def _pipeline(self, client: Redis, keys: Sequence[str]) -> list[Any]:
        from redis import exceptions as rx  # noqa: PLC0415

        # The kept connection dies when Redis restarts or drops idle clients;
        # after a good probe, one retry (on a new connection: redis-py drops
        # the broken one) keeps that from reading as an outage.
        retries = 1 if self._redis_answered else 0
        while True:
            try:
                async with client.pipeline(transaction=False) as pipe:
                    for key in keys:
                        pipe.llen(key)
                        pipe.zcard(f"{key}:delayed")
                        pipe.zcard(f"{key}:reserved")
                        pipe.lindex(key, 0)
                    replies: list[Any] = await pipe.execute(raise_on_error=False)
            except (rx.AuthenticationError, rx.AuthorizationError):
                raise
            except rx.ConnectionError:
                self._redis_answered = False
                if retries == 0:
                    raise
                retries -= 1
            else:
                self._redis_answered = True
                return replies

    def _connection_failure(self, exc: Exception) -> Exception:
        # redis-py raises its ConnectionError inside the handler of the OS
        # error, which stays reachable as the context.
        cause = exc.__context__
        if isinstance(cause, socket.gaierror):
            return ProbeSetupError(
                f"cannot resolve the Redis host of {self.address}: {cause.strerror}; "
                "check redis_url"
            )
        if isinstance(cause, ConnectionRefusedError):
            return _RedisDown(f"Redis at {self.address} refused the connection")
        if isinstance(cause, OSError) and cause.strerror:
            return _RedisDown(f"cannot reach Redis at {self.address}: {cause.strerror}")
        return _RedisDown(f"cannot reach Redis at {self.address}: {exc}")

    def _reply_failure(self, reply: Exception, key: str, kind: str) -> Exception:
        from redis import exceptions as rx  # noqa: PLC0415

        text = str(reply)
        if isinstance(reply, rx.BusyLoadingError):
            return _RedisDown(f"Redis at {self.address} is still loading its data")
        if isinstance(reply, rx.AuthenticationError | rx.AuthorizationError):
            return ProbeSetupError(
                f"Redis at {self.address} wants a login: {text}; set password"
            )
        if text.startswith("WRONGTYPE"):
            return ProbeSetupError(
                f'Redis key "{key}" is not {kind}; check prefix and queues'
            )
        return ProbeSetupError(
            f'Redis at {self.address} refused to read "{key}": {text}'
        )

    def _judge_queue(
        self, state: _QueueState, values: dict[str, float], evidence: list[str]
    ) -> list[tuple[Status, str]]:
        limits = self.limits
        name = state.name
        values[f"pending:{name}"] = float(state.pending)
        values[f"delayed:{name}"] = float(state.delayed)
        values[f"reserved:{name}"] = float(state.reserved)
        values[f"size:{name}"] = float(state.size)
        counts = (
            ("pending", state.pending, limits.pending),
            ("delayed", state.delayed, limits.delayed),
            ("reserved", state.reserved, limits.reserved),
        )
        parts: list[tuple[Status, str]] = []
        for noun, count, count_limits in counts:
            status = count_limits.status(count)
            if status is not Status.OK:
                limit = count_limits.reached(status)
                text = (
                    f"queue {name}: {count} jobs {noun} ({status.label} at {limit:g})"
                )
                parts.append((status, text))
        if state.oldest_age_s is not None:
            age_s = state.oldest_age_s
            values[f"oldest_pending_age_seconds:{name}"] = round(age_s, 3)
            status = limits.oldest_age_s.status(age_s)
            if status is not Status.OK:
                reached = format_duration(limits.oldest_age_s.reached(status))
                waited = format_duration(age_s)
                text = f"queue {name}: the next job has waited {waited} "
                parts.append((status, text + f"({status.label} at {reached})"))
        if state.age_unknown:
            evidence.append(
                f"queue {name}: the next job's payload has no createdAt (older "
                "Laravel), so its wait is not known"
            )
        return parts

    async def _judge_failed(
        self,
        settings: FailedJobsSettings,
        values: dict[str, float],
        evidence: list[str],
    ) -> tuple[Status, str]:
        try:
            report = await self._count_failed(settings)
        except (MysqlUnavailable, ProbeSetupError) as exc:
            return Status.UNKNOWN, f"failed jobs not counted: {exc}"
        values["failed_jobs"] = float(report.total)
        status = settings.total.status(report.total)
        text = f"{report.total} failed jobs"
        if report.growth is not None:
            values["failed_jobs_growth"] = float(report.growth)
            status = status.worst(settings.growth.status(report.growth))
            text = f"{report.growth} new failed jobs since the last probe ({text})"
        evidence.extend(report.recent)
        return status, text

    async def _count_failed(self, settings: FailedJobsSettings) -> _FailedReport:
        session = self._failed_session
        assert session is not None  # created with the settings
        table = settings.table.sql
        baseline = self._failed_baseline_id
        await session.ensure()
        rows = await session.fetch(
            f"SELECT COUNT(*), COALESCE(MAX(id), 0), COALESCE(SUM(id > %s), 0) "
            f"FROM {table}",
            (baseline or 0,),
            what="the failed_jobs count",
        )
        total, max_id, above = (int(v) for v in rows[0])
        self._failed_baseline_id = max_id
        if baseline is None:
            return _FailedReport(total, None, ())
        # A lower top id means the table was truncated, which restarts ids:
        # every row now in it came after the previous probe.
        since = baseline if max_id >= baseline else 0
        growth = above if max_id >= baseline else total
        recent: tuple[str, ...] = ()
        if growth > 0:
            recent_rows = await session.fetch(
                "SELECT id, queue, failed_at, LEFT(payload, 1000),"
                f" LEFT(exception, 1000) FROM {table}"
                " WHERE id > %s ORDER BY id DESC LIMIT %s",
                (since, _RECENT_FAILURES),
                what="the recent failed jobs query",
            )
            recent = tuple(_describe_failure(row) for row in recent_rows)
        return _FailedReport(total, growth, recent)


def _parse_redis_url(url: str) -> tuple[str, bool]:
    """The address to name in messages, and whether the URL holds a password."""
    parts = urlsplit(url)
    if parts.scheme not in _REDIS_SCHEMES:
        raise ValueError(f"the scheme must be one of {', '.join(_REDIS_SCHEMES)}")
    if parts.scheme == "unix":
        if not parts.path:
            raise ValueError(
                "a unix URL needs a socket path, e.g. unix:///run/redis.sock"
            )
        return parts.path, parts.password is not None
    if not parts.hostname:
        raise ValueError("it names no host")
    try:
        port = parts.port or 6379
    except ValueError:
        raise ValueError("its port is not a number from 1 to 65535") from None
    db = parts.path.strip("/")
    if db and not db.isdigit():
        raise ValueError(f'the database "{db}" is not a number')
    host = f"[{parts.hostname}]" if ":" in parts.hostname else parts.hostname
    return f"{host}:{port}", parts.password is not None


def _created_at(payload: bytes | str) -> float | None:
    """``createdAt`` (epoch seconds) from a Laravel job payload, if present."""
    try:
        data = json.loads(payload)
    except ValueError:
        return None
    value = data.get("createdAt") if isinstance(data, dict) else None
    if isinstance(value, int | float) and not isinstance(value, bool):
        return float(value)
    return None


def _add_totals(states: Sequence[_QueueState], values: dict[str, float]) -> None:
    values["pending"] = float(sum(s.pending for s in states))
    values["delayed"] = float(sum(s.delayed for s in states))
    values["reserved"] = float(sum(s.reserved for s in states))
    values["size"] = float(sum(s.size for s in states))
    ages = [s.oldest_age_s for s in states if s.oldest_age_s is not None]
    if ages:
        values["oldest_pending_age_seconds"] = round(max(ages), 3)


def _summary(state: _QueueState) -> str:
    text = (
        f"queue {state.name}: {state.pending} pending, {state.delayed} delayed, "
        f"{state.reserved} reserved"
    )
    if state.oldest_age_s is not None:
        text += f", next job waited {format_duration(state.oldest_age_s)}"
    return text


def _describe_failure(row: Sequence[Any]) -> str:
    """One evidence line for a failed_jobs row: which job, where, when, why."""
    job_id, queue, failed_at, payload, exception = row
    match = _DISPLAY_NAME.search(str(payload or ""))
    job = "unknown job"
    if match:
        try:
            job = json.loads(f'"{match.group(1)}"')
        except ValueError:
            job = match.group(1)
    lines = str(exception or "").strip().splitlines()
    reason = lines[0][:_EXCEPTION_CHARS] if lines else "no exception recorded"
    return f"failed job {job_id} ({job}) on queue {queue} at {failed_at}: {reason}"
