"""The queue check against the machine's Redis (127.0.0.1:6379) and, for
failed jobs, its MariaDB (127.0.0.1:3306, root, database `test`). Every test
uses its own key prefix and table names, and removes them."""

from __future__ import annotations

import asyncio
import json
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import aiomysql
import pytest
from redis.asyncio import Redis

from checks.base import run_once
from checks.clock import SystemClock
from checks.config import build_check
from checks.queue import QueueCheck
from checks.result import CheckResult, Status
from checks.settings import Problems, Section

MakeCheck = Callable[..., QueueCheck]


def _payload(created_at: float | None, job: str = "App\\Jobs\\PublishPost") -> str:
    """A job payload shaped like Laravel's (createdAt only in recent versions)."""
    payload: dict[str, Any] = {
        "uuid": str(uuid.uuid4()),
        "displayName": job,
        "job": "Illuminate\\Queue\\CallQueuedHandler@call",
        "maxTries": None,
        "timeout": None,
        "data": {"commandName": job, "command": "O:21:..."},
        "attempts": 0,
    }
    if created_at is not None:
        payload["createdAt"] = int(created_at)
    return json.dumps(payload)


def _build(
    table: dict[str, Any], problems: Problems | None = None
) -> QueueCheck | None:
    section = Section({"type": "queue", **table}, "checks.jobs", problems or Problems())
    check = build_check("jobs", section)
    assert check is None or isinstance(check, QueueCheck)
    return check


def _errors_for(table: dict[str, Any]) -> list[str]:
    problems = Problems()
    assert _build(table, problems) is None
    return [str(p) for p in problems.errors]


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


async def _probe(check: QueueCheck) -> CheckResult:
    return await run_once(check, SystemClock())


@pytest.fixture
async def redis() -> AsyncIterator[Redis]:
    client = Redis.from_url("redis://127.0.0.1:6379/0")
    yield client
    await client.aclose()


@pytest.fixture
async def prefix(redis: Redis) -> AsyncIterator[str]:
    """A key prefix of this test's own; its keys are deleted afterwards."""
    value = f"sentinel_test_{uuid.uuid4().hex[:10]}_"
    yield value
    keys = [key async for key in redis.scan_iter(match=f"{value}*")]
    if keys:
        await redis.delete(*keys)


@pytest.fixture
async def make_check(prefix: str) -> AsyncIterator[MakeCheck]:
    built: list[QueueCheck] = []

    def make(**keys: Any) -> QueueCheck:
        problems = Problems()
        check = _build({"prefix": prefix, **keys}, problems)
        assert check is not None, [str(p) for p in problems.items]
        built.append(check)
        return check

    yield make
    for check in built:
        await check.close()


@pytest.fixture
async def mysql() -> AsyncIterator[Any]:
    conn = await aiomysql.connect(
        host="127.0.0.1",
        port=3306,
        user="root",
        password="",
        db="test",
        autocommit=True,
    )
    yield conn
    await conn.ensure_closed()


async def _sql(conn: Any, statement: str, args: tuple[object, ...] = ()) -> list[Any]:
    async with conn.cursor() as cursor:
        await cursor.execute(statement, args or None)
        return list(await cursor.fetchall())


@pytest.fixture
async def failed_table(mysql: Any) -> AsyncIterator[str]:
    """A real table with Laravel's failed_jobs columns, dropped afterwards."""
    name = f"sentinel_failed_{uuid.uuid4().hex[:8]}"
    await _sql(
        mysql,
        f"CREATE TABLE `{name}` ("
        " id BIGINT UNSIGNED NOT NULL AUTO_INCREMENT PRIMARY KEY,"
        " uuid VARCHAR(255) NOT NULL UNIQUE,"
        " connection TEXT NOT NULL, queue TEXT NOT NULL,"
        " payload LONGTEXT NOT NULL, exception LONGTEXT NOT NULL,"
        " failed_at TIMESTAMP NOT NULL DEFAULT CURRENT_TIMESTAMP)",
    )
    yield name
    await _sql(mysql, f"DROP TABLE IF EXISTS `{name}`")


async def _fail_jobs(mysql: Any, table: str, count: int, job: str) -> None:
    for n in range(count):
        await _sql(
            mysql,
            f"INSERT INTO `{table}` (uuid, connection, queue, payload, exception)"
            " VALUES (%s, 'redis', 'default', %s, %s)",
            (
                str(uuid.uuid4()),
                _payload(time.time(), job),
                f"RuntimeException: token expired for account {n}\n#0 /app/J.php(4)",
            ),
        )


@pytest.fixture
async def silent_port() -> AsyncIterator[int]:
    """A TCP server that accepts connections and never says a word."""

    async def hold(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.read()
        writer.close()

    server = await asyncio.start_server(hold, "127.0.0.1", 0)
    yield server.sockets[0].getsockname()[1]
    server.close()
    await server.wait_closed()


@pytest.fixture
async def http_port() -> AsyncIterator[int]:
    """A TCP server that answers anything like an HTTP server would."""

    async def answer(
        reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        await reader.read(1024)
        writer.write(b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\n\r\n")
        await writer.drain()
        writer.close()

    server = await asyncio.start_server(answer, "127.0.0.1", 0)
    yield server.sockets[0].getsockname()[1]
    server.close()
    await server.wait_closed()


@pytest.fixture
async def redis_user(redis: Redis, prefix: str) -> AsyncIterator[tuple[str, str]]:
    """A Redis ACL user of this test's own, limited to its prefix; deleted
    afterwards (which also drops its connections)."""
    name, password = f"sentinel_{uuid.uuid4().hex[:10]}", uuid.uuid4().hex
    await redis.acl_setuser(
        name,
        enabled=True,
        passwords=[f"+{password}"],
        keys=[f"{prefix}*"],
        commands=["+@all"],
    )
    yield name, password
    await redis.acl_deluser(name)


async def test_probe_empty_queue_ok(make_check: MakeCheck) -> None:
    """An empty queue is ok, with zero counts and no age."""
    result = await _probe(make_check())

    assert result.status is Status.OK, result.message
    assert result.values == {
        "pending:default": 0,
        "delayed:default": 0,
        "reserved:default": 0,
        "size:default": 0,
        "pending": 0,
        "delayed": 0,
        "reserved": 0,
        "size": 0,
    }
    assert result.message == "queue default: 0 pending, 0 delayed, 0 reserved"


async def test_probe_filled_queue_over_thresholds(
    redis: Redis, prefix: str, make_check: MakeCheck
) -> None:
    """A backlog with an old head job warns, then is critical, naming both limits."""
    key = f"{prefix}queues:default"
    now = time.time()
    await redis.rpush(key, *[_payload(now - 600 + n) for n in range(150)])

    warning = await _probe(make_check())
    critical = await _probe(make_check(pending_critical=150, oldest_age_critical="9m"))

    assert warning.status is Status.WARNING, warning.message
    assert warning.values["pending"] == 150
    assert warning.values["size:default"] == 150
    assert 598 <= warning.values["oldest_pending_age_seconds"] <= 605
    assert (
        warning.values["oldest_pending_age_seconds:default"]
        == (warning.values["oldest_pending_age_seconds"])
    )
    assert "queue default: 150 jobs pending (warning at 100)" in warning.message
    assert "queue default: the next job has waited 10m" in warning.message
    assert "(warning at 5m)" in warning.message
    assert critical.status is Status.CRITICAL
    assert "150 jobs pending (critical at 150)" in critical.message
    assert "(critical at 9m)" in critical.message


async def test_probe_counts_delayed_and_reserved(
    redis: Redis, prefix: str, make_check: MakeCheck
) -> None:
    """Delayed and reserved jobs count into the size and have their own limits."""
    key = f"{prefix}queues:default"
    now = time.time()
    await redis.rpush(key, _payload(now - 5))
    await redis.zadd(
        f"{key}:delayed", {_payload(now - 1): now + 60 + n for n in range(3)}
    )
    await redis.zadd(
        f"{key}:reserved", {_payload(now - 2): now + 90 + n for n in range(2)}
    )

    result = await _probe(make_check(delayed_warning=3, reserved_critical=10))

    assert result.status is Status.WARNING, result.message
    assert result.values["pending"] == 1
    assert result.values["delayed"] == 3
    assert result.values["reserved"] == 2
    assert result.values["size"] == 6
    assert result.message == "queue default: 3 jobs delayed (warning at 3)"


async def test_probe_several_queues_per_queue_values_and_totals(
    redis: Redis, prefix: str, make_check: MakeCheck
) -> None:
    """Each queue gets its own values; totals add up and take the largest age."""
    now = time.time()
    await redis.rpush(f"{prefix}queues:default", *[_payload(now - 30)] * 2)
    await redis.rpush(f"{prefix}queues:emails", *[_payload(now - 90)] * 5)

    result = await _probe(make_check(queues=["default", "emails", "reports"]))

    assert result.status is Status.OK, result.message
    values = result.values
    assert (values["pending:default"], values["pending:emails"]) == (2, 5)
    assert values["pending:reports"] == 0
    assert values["pending"] == 7
    assert 88 <= values["oldest_pending_age_seconds"] <= 95
    assert (
        values["oldest_pending_age_seconds"]
        == values["oldest_pending_age_seconds:emails"]
    )
    assert "oldest_pending_age_seconds:reports" not in values
    assert "queue emails: 5 pending, 0 delayed, 0 reserved, next job waited" in (
        result.message
    )


async def test_probe_payload_without_created_at_reports_no_age(
    redis: Redis, prefix: str, make_check: MakeCheck
) -> None:
    """An older Laravel payload has no createdAt: the age is left out, not guessed."""
    await redis.rpush(f"{prefix}queues:default", _payload(None))

    result = await _probe(make_check())

    assert result.status is Status.OK
    assert result.values["pending"] == 1
    assert "oldest_pending_age_seconds" not in result.values
    assert "oldest_pending_age_seconds:default" not in result.values
    assert any("has no createdAt" in line for line in result.evidence)


async def test_probe_closed_port_critical(make_check: MakeCheck) -> None:
    """Nothing listening where Redis should be is critical and names the address."""
    port = _free_port()
    result = await _probe(make_check(redis_url=f"redis://127.0.0.1:{port}/0"))

    assert result.status is Status.CRITICAL
    assert result.message == f"Redis at 127.0.0.1:{port} refused the connection"


async def test_probe_silent_server_critical_after_connect_timeout(
    silent_port: int, make_check: MakeCheck
) -> None:
    """A peer that accepts but never answers is critical, within connect_timeout."""
    check = make_check(
        redis_url=f"redis://127.0.0.1:{silent_port}/0", connect_timeout="300ms"
    )
    result = await _probe(check)

    assert result.status is Status.CRITICAL
    assert result.message == (
        f"Redis at 127.0.0.1:{silent_port} did not answer within connect_timeout"
        " (300ms)"
    )


async def test_probe_port_that_is_not_redis_unknown(
    http_port: int, make_check: MakeCheck
) -> None:
    """A port that answers in another protocol is a setup problem."""
    result = await _probe(make_check(redis_url=f"redis://127.0.0.1:{http_port}/0"))

    assert result.status is Status.UNKNOWN
    assert result.message == (
        f"127.0.0.1:{http_port} does not answer like Redis; check redis_url"
    )


async def test_probe_unreadable_password_file_unknown(
    tmp_path: Path, make_check: MakeCheck
) -> None:
    """A Redis password file that cannot be read is unknown and names the file."""
    missing = tmp_path / "redis-password"
    result = await _probe(make_check(password_file=str(missing)))

    assert result.status is Status.UNKNOWN
    assert result.message.startswith(f"cannot read checks.jobs.password_file {missing}")


async def test_probe_password_key_logs_in(
    redis_user: tuple[str, str], make_check: MakeCheck
) -> None:
    """The password key is used to log in as the URL's user."""
    user, password = redis_user
    check = make_check(redis_url=f"redis://{user}@127.0.0.1:6379/0", password=password)
    result = await _probe(check)

    assert result.status is Status.OK, result.message


async def test_probe_wrong_password_unknown(
    redis_user: tuple[str, str], make_check: MakeCheck
) -> None:
    """A rejected login means the probe could not run: unknown, saying what to fix."""
    user, _ = redis_user
    check = make_check(
        redis_url=f"redis://{user}@127.0.0.1:6379/0", password="Wr0ng-Secret-42"
    )
    result = await _probe(check)

    assert result.status is Status.UNKNOWN
    assert result.message.startswith("Redis at 127.0.0.1:6379 rejected the login: ")
    assert result.message.endswith("; check password")
    assert "Wr0ng-Secret-42" not in result.message


async def test_probe_survives_a_dropped_kept_connection(
    redis: Redis, redis_user: tuple[str, str], make_check: MakeCheck
) -> None:
    """A kept connection the server dropped is replaced without an alarm."""
    user, password = redis_user
    check = make_check(redis_url=f"redis://{user}:{password}@127.0.0.1:6379/0")
    first = await _probe(check)
    killed = await redis.client_kill_filter(user=user)
    second = await _probe(check)

    assert first.status is Status.OK, first.message
    assert killed == 1
    assert second.status is Status.OK, second.message


async def test_probe_key_of_wrong_type_unknown(
    redis: Redis, prefix: str, make_check: MakeCheck
) -> None:
    """A queue key that is not a list points at a wrong prefix: unknown."""
    await redis.set(f"{prefix}queues:default", "not a list")

    result = await _probe(make_check())

    assert result.status is Status.UNKNOWN
    assert result.message == (
        f'Redis key "{prefix}queues:default" is not a list; check prefix and queues'
    )


async def test_failed_jobs_growth_between_probes(
    mysql: Any, failed_table: str, make_check: MakeCheck
) -> None:
    """Rows added to failed_jobs between probes are the growth, described."""
    check = make_check(
        failed_jobs={"user": "root", "database": "test", "table": failed_table}
    )
    await _fail_jobs(mysql, failed_table, 2, "App\\Jobs\\OldJob")
    first = await _probe(check)
    await _fail_jobs(mysql, failed_table, 3, "App\\Jobs\\PublishPost")
    second = await _probe(check)
    third = await _probe(check)

    assert first.status is Status.OK, first.message
    assert first.values["failed_jobs"] == 2
    assert "failed_jobs_growth" not in first.values
    assert second.status is Status.WARNING, second.message
    assert second.values["failed_jobs"] == 5
    assert second.values["failed_jobs_growth"] == 3
    assert "3 new failed jobs since the last probe (5 failed jobs)" in second.message
    recent = [line for line in second.evidence if line.startswith("failed job ")]
    assert len(recent) == 3
    assert all("(App\\Jobs\\PublishPost) on queue default at " in r for r in recent)
    assert recent[0].endswith(": RuntimeException: token expired for account 2")
    assert third.status is Status.OK, third.message
    assert third.values["failed_jobs_growth"] == 0


async def test_failed_jobs_thresholds_and_truncated_table(
    mysql: Any, failed_table: str, make_check: MakeCheck
) -> None:
    """Totals have limits, and after a TRUNCATE every row counts as new."""
    check = make_check(
        failed_jobs={
            "user": "root",
            "database": "test",
            "table": failed_table,
            "failed_warning": 3,
            "failed_growth_critical": 2,
        }
    )
    await _fail_jobs(mysql, failed_table, 4, "App\\Jobs\\A")
    first = await _probe(check)
    await _sql(mysql, f"TRUNCATE TABLE `{failed_table}`")
    await _fail_jobs(mysql, failed_table, 2, "App\\Jobs\\B")
    second = await _probe(check)

    assert first.status is Status.WARNING, first.message
    assert second.values["failed_jobs_growth"] == 2
    assert second.status is Status.CRITICAL, second.message


async def test_failed_jobs_unreadable_table_only_that_part_unknown(
    redis: Redis, prefix: str, make_check: MakeCheck
) -> None:
    """An unreadable failed_jobs table is unknown without hiding queue problems."""
    await redis.rpush(f"{prefix}queues:default", *[_payload(time.time())] * 120)
    check = make_check(
        failed_jobs={"user": "root", "database": "test", "table": "sentinel_nope"}
    )
    result = await _probe(check)

    assert result.status is Status.WARNING
    assert result.values["pending"] == 120
    assert "failed_jobs" not in result.values
    assert "failed jobs not counted: MySQL at 127.0.0.1:3306 refused" in result.message
    assert "sentinel_nope" in result.message


async def test_failed_jobs_database_down_is_unknown(make_check: MakeCheck) -> None:
    """The queue check leaves judging a dead database to the mysql check."""
    port = _free_port()
    check = make_check(failed_jobs={"user": "root", "database": "test", "port": port})
    result = await _probe(check)

    assert result.status is Status.UNKNOWN
    assert result.message.startswith(
        f"failed jobs not counted: MySQL at 127.0.0.1:{port} refused the connection"
    )
    assert result.values["pending"] == 0


def test_configure_defaults() -> None:
    """Unset keys take the documented defaults."""
    check = _build({})

    assert check is not None
    assert check.redis_url == "redis://127.0.0.1:6379/0"
    assert check.address == "127.0.0.1:6379"
    assert check.prefix == "laravel_database_"
    assert check.queues == ("default",)
    limits = check.limits
    assert (limits.pending.warning, limits.pending.critical) == (100, 1000)
    assert (limits.delayed.warning, limits.delayed.critical) == (None, None)
    assert (limits.reserved.warning, limits.reserved.critical) == (None, None)
    assert (limits.oldest_age_s.warning, limits.oldest_age_s.critical) == (300, 900)
    assert check.connect_timeout_s == 2.0
    assert check.failed_jobs is None


def test_configure_failed_jobs_defaults() -> None:
    """The failed_jobs sub-table reuses the MySQL keys and its own defaults."""
    check = _build({"failed_jobs": {"user": "laravel", "database": "copysai"}})

    assert check is not None and check.failed_jobs is not None
    failed = check.failed_jobs
    assert failed.table.label(failed.mysql.database) == "copysai.failed_jobs"
    assert (failed.mysql.host, failed.mysql.port) == ("127.0.0.1", 3306)
    assert (failed.total.warning, failed.total.critical) == (None, None)
    assert (failed.growth.warning, failed.growth.critical) == (1, 10)


def test_configure_reports_bad_values_by_key() -> None:
    """Bad URLs, queue names, tables and unknown sub-table keys name their key."""
    errors = _errors_for(
        {
            "redis_url": "http://127.0.0.1:6379",
            "queues": ["default", "bad queue"],
            "pending_warning": 50,
            "pending_critical": 10,
            "failed_jobs": {"user": "u", "table": "failed_jobs; --", "passwrd": "x"},
        }
    )

    joined = "\n".join(errors)
    assert "checks.jobs.redis_url: is not a usable Redis URL: the scheme" in joined
    assert 'checks.jobs.queues: "bad queue" is not a queue name' in joined
    assert "checks.jobs.pending_warning: 50 is above pending_critical (10)" in joined
    assert 'checks.jobs.failed_jobs.table: "failed_jobs; --" is not a table' in joined
    assert "checks.jobs.failed_jobs.passwrd:" in joined


def test_configure_password_twice_and_url_never_echoed() -> None:
    """A password in both the URL and the key is refused without echoing it."""
    errors = _errors_for(
        {"redis_url": "redis://:Hunter2-secret@127.0.0.1:6379/0", "password": "other"}
    )
    bad_url = _errors_for({"redis_url": "redis://:Hunter2-secret@127.0.0.1:port/0"})

    assert errors == [
        "<config>: checks.jobs.password: give the password in redis_url or here, "
        "not both"
    ]
    assert len(bad_url) == 1
    assert "Hunter2" not in bad_url[0]


def test_configuring_does_not_import_redis_or_aiomysql() -> None:
    """Building a queue check loads neither client library."""
    code = (
        "import sys\n"
        "from checks.config import build_check\n"
        "from checks.settings import Problems, Section\n"
        "table = {'type': 'queue', 'failed_jobs': {'user': 'u', 'database': 'd'}}\n"
        "section = Section(table, 'checks.jobs', Problems())\n"
        "assert build_check('jobs', section) is not None\n"
        "print(*(name in sys.modules for name in ('redis', 'aiomysql', 'pymysql')))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    )
    assert out.stdout.split() == ["False", "False", "False"]
