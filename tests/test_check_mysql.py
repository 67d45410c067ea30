"""The mysql check against the machine's MariaDB (127.0.0.1:3306, root, no
password, database `test`)."""

from __future__ import annotations

import asyncio
import contextlib
import socket
import subprocess
import sys
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from pathlib import Path
from typing import Any

import aiomysql
import pytest

from checks.base import run_once
from checks.clock import SystemClock
from checks.config import build_check
from checks.mysql import (
    MysqlCheck,
    MysqlSession,
    MysqlSettings,
    MysqlUnavailable,
    describe_query,
    grants_show_all_sessions,
)
from checks.result import CheckResult, Status
from checks.settings import Problems, Section

ROOT = {"host": "127.0.0.1", "port": 3306, "user": "root", "database": "test"}

MakeCheck = Callable[..., MysqlCheck]


async def _connect(**overrides: Any) -> Any:
    keys: dict[str, Any] = {
        "host": "127.0.0.1",
        "port": 3306,
        "user": "root",
        "password": "",
        "db": "test",
        "autocommit": True,
    }
    keys.update(overrides)
    return await aiomysql.connect(**keys)


async def _sql(conn: Any, statement: str, args: Sequence[object] = ()) -> list[Any]:
    async with conn.cursor() as cursor:
        await cursor.execute(statement, tuple(args) or None)
        return list(await cursor.fetchall())


def _build(
    table: dict[str, Any], problems: Problems | None = None
) -> MysqlCheck | None:
    section = Section({"type": "mysql", **table}, "checks.db", problems or Problems())
    check = build_check("db", section)
    assert check is None or isinstance(check, MysqlCheck)
    return check


@pytest.fixture
async def admin() -> AsyncIterator[Any]:
    conn = await _connect()
    yield conn
    await conn.ensure_closed()


@pytest.fixture
async def make_check() -> AsyncIterator[MakeCheck]:
    built: list[MysqlCheck] = []

    def make(**keys: Any) -> MysqlCheck:
        problems = Problems()
        check = _build({**ROOT, **keys}, problems)
        assert check is not None, [str(p) for p in problems.items]
        built.append(check)
        return check

    yield make
    for check in built:
        await check.close()


@pytest.fixture
async def tables(admin: Any) -> AsyncIterator[list[str]]:
    """Two real InnoDB tables in `test`, named uniquely for this test."""
    suffix = uuid.uuid4().hex[:8]
    names = [f"sentinel_users_{suffix}", f"sentinel_posts_{suffix}"]
    for name in names:
        await _sql(admin, f"CREATE TABLE `{name}` (id INT PRIMARY KEY) ENGINE=InnoDB")
        await _sql(admin, f"INSERT INTO `{name}` VALUES (1), (2), (3)")
    yield names
    for name in names:
        await _sql(admin, f"DROP TABLE IF EXISTS `{name}`")


MakeUser = Callable[..., Awaitable[tuple[str, str]]]


@pytest.fixture
async def make_user(admin: Any) -> AsyncIterator[MakeUser]:
    """Creates users with a password and the given grants; drops them after."""
    created: list[str] = []

    async def make(*grants: str) -> tuple[str, str]:
        name, password = f"sentinel_{uuid.uuid4().hex[:10]}", "right-Pa55"
        await _sql(admin, "CREATE USER %s@'%%' IDENTIFIED BY %s", (name, password))
        created.append(name)
        for grant in grants:
            await _sql(admin, f"GRANT {grant} TO %s@'%%'", (name,))
        return name, password

    yield make
    for name in created:
        await _sql(admin, "DROP USER IF EXISTS %s@'%%'", (name,))


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


async def _probe(check: MysqlCheck) -> CheckResult:
    return await run_once(check, SystemClock())


async def test_probe_healthy_server_ok_with_values(make_check: MakeCheck) -> None:
    """A reachable server with headroom is ok and reports every value."""
    result = await _probe(make_check())

    assert result.status is Status.OK, result.message
    values = result.values
    assert values["connect_seconds"] > 0
    assert values["long_queries"] == 0
    assert values["longest_query_seconds"] == 0
    assert values["connections_used"] >= 1
    assert values["connections_max"] >= values["connections_used"]
    expected = 100 * values["connections_used"] / values["connections_max"]
    assert values["connections_used_percent"] == pytest.approx(expected, abs=0.01)
    assert "tables_with_problems" not in values
    assert "no query running over 5m" in result.message


@pytest.fixture
async def long_query(admin: Any) -> AsyncIterator[int]:
    """A real SELECT SLEEP(30) on its own connection, running for over a
    second; killed afterwards. Yields its connection id."""
    sleeper = await _connect()
    sleeper_id: int = sleeper.thread_id()
    task = asyncio.create_task(_sql(sleeper, "SELECT SLEEP(30) /* sentinel test */"))
    try:
        for _ in range(50):
            rows = await _sql(
                admin,
                "SELECT TIME FROM information_schema.PROCESSLIST WHERE ID = %s",
                (sleeper_id,),
            )
            if rows and rows[0][0] > 1:
                break
            await asyncio.sleep(0.1)
        yield sleeper_id
    finally:
        await _sql(admin, "KILL QUERY %s", (sleeper_id,))
        with contextlib.suppress(aiomysql.Error):
            await task
        sleeper.close()


async def test_probe_long_query_listed_in_evidence(
    long_query: int, make_check: MakeCheck
) -> None:
    """A real long query is counted, described and judged against the limits."""
    warning = await _probe(
        make_check(
            long_query_threshold="1s", long_queries_warning=1, long_queries_critical=50
        )
    )
    critical = await _probe(
        make_check(
            long_query_threshold="1s", long_queries_warning=1, long_queries_critical=1
        )
    )

    assert warning.status is Status.WARNING, warning.message
    assert critical.status is Status.CRITICAL, critical.message
    assert warning.values["long_queries"] >= 1
    assert warning.values["longest_query_seconds"] >= 2
    line = next(e for e in warning.evidence if e.startswith(f"query {long_query} "))
    assert " by root@127.0.0.1:" in line
    assert " on test running " in line
    assert line.endswith(": SELECT SLEEP(30) /* sentinel test */")
    assert "running over 1s" in warning.message


async def test_probe_wrong_password_unknown_access_denied(
    make_user: MakeUser, make_check: MakeCheck
) -> None:
    """A rejected password means the probe could not run: unknown, saying why."""
    user, _ = await make_user("SELECT ON test.*")
    result = await _probe(make_check(user=user, password="Wr0ng-Secret-42"))

    assert result.status is Status.UNKNOWN
    assert f"Access denied for user '{user}'" in result.message
    assert "check user and password" in result.message
    assert "Wr0ng-Secret-42" not in result.message


async def test_probe_without_process_privilege_unknown(
    make_user: MakeUser, make_check: MakeCheck
) -> None:
    """A user who cannot see other sessions cannot judge long queries."""
    user, password = await make_user("SELECT ON test.*")
    result = await _probe(make_check(user=user, password=password))

    assert result.status is Status.UNKNOWN
    assert "PROCESS privilege" in result.message
    assert "long_queries" not in result.values
    assert result.values["connections_used"] >= 1


async def test_probe_unknown_database_unknown(make_check: MakeCheck) -> None:
    """A database that does not exist is a setup problem, named as such."""
    result = await _probe(make_check(database="sentinel_no_such_db"))

    assert result.status is Status.UNKNOWN
    assert "sentinel_no_such_db" in result.message
    assert "check database" in result.message


async def test_probe_closed_port_critical(make_check: MakeCheck) -> None:
    """Nothing listening on the port means the target is down: critical."""
    port = _free_port()
    result = await _probe(make_check(port=port))

    assert result.status is Status.CRITICAL
    assert result.message == f"MySQL at 127.0.0.1:{port} refused the connection"


async def test_probe_unreadable_password_file_unknown(
    tmp_path: Path, make_check: MakeCheck
) -> None:
    """A password file that cannot be read is unknown and names the file."""
    missing = tmp_path / "mysql-password"
    result = await _probe(make_check(password_file=str(missing)))

    assert result.status is Status.UNKNOWN
    assert str(missing) in result.message
    assert "checks.db.password_file" in result.message


async def test_probe_password_file_read_at_connect(
    tmp_path: Path, make_user: MakeUser, make_check: MakeCheck
) -> None:
    """The password comes from the file when connecting, without its newline."""
    user, password = await make_user("SELECT ON test.*", "PROCESS ON *.*")
    secret = tmp_path / "mysql-password"
    secret.write_text(password + "\n", encoding="utf-8")
    result = await _probe(make_check(user=user, password_file=str(secret)))

    assert result.status is Status.OK, result.message


async def test_probe_reconnects_after_connection_killed(
    admin: Any, make_user: MakeUser, make_check: MakeCheck
) -> None:
    """A kept connection killed on the server is replaced on the next probe."""
    user, password = await make_user("SELECT ON test.*", "PROCESS ON *.*")
    check = make_check(user=user, password=password)
    first = await _probe(check)
    kept = await _sql(
        admin, "SELECT ID FROM information_schema.PROCESSLIST WHERE USER = %s", (user,)
    )
    for (thread_id,) in kept:
        await _sql(admin, "KILL %s", (thread_id,))

    second = await _probe(check)
    now = await _sql(
        admin, "SELECT ID FROM information_schema.PROCESSLIST WHERE USER = %s", (user,)
    )

    assert first.status is Status.OK, first.message
    assert len(kept) == 1
    assert second.status is Status.OK, second.message
    assert len(now) == 1
    assert now != kept


async def test_session_statement_past_query_timeout_stopped_by_server() -> None:
    """The server itself ends a statement at query_timeout; the connection lives on."""
    section = Section({**ROOT, "query_timeout": "300ms"}, "checks.db", Problems())
    session = MysqlSession(MysqlSettings.read(section))
    try:
        await session.ensure()
        generation = session.generation
        with pytest.raises(MysqlUnavailable) as raised:
            await session.fetch("SELECT SLEEP(5)", what="the sleep")
        after = await session.fetch("SELECT 1")
        await session.ensure()
    finally:
        await session.close()

    assert str(raised.value) == (
        "MySQL at 127.0.0.1:3306 did not finish the sleep within query_timeout (300ms)"
    )
    assert after == [(1,)]
    assert session.generation == generation


async def test_session_sql_warnings_are_not_python_warnings() -> None:
    """An SQL warning on a statement never becomes a Python warning."""
    session = MysqlSession(MysqlSettings.read(Section(ROOT, "checks.db", Problems())))
    try:
        await session.ensure()
        rows = await session.fetch("SELECT CAST('abc' AS INT)")
    finally:
        await session.close()

    assert rows == [(0,)]


async def test_probe_silent_server_critical_after_connect_timeout(
    make_check: MakeCheck,
) -> None:
    """A peer that never sends the handshake is critical after connect_timeout."""

    async def hold(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.read()
        writer.close()

    server = await asyncio.start_server(hold, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        result = await _probe(make_check(port=port, connect_timeout="300ms"))
    finally:
        server.close()
        await server.wait_closed()

    assert result.status is Status.CRITICAL
    assert result.message == (
        f"MySQL at 127.0.0.1:{port} did not complete the connection within "
        "connect_timeout (300ms)"
    )


async def test_connections_thresholds_warning_and_critical(
    make_check: MakeCheck,
) -> None:
    """Connection use at or over a threshold sets the status and says so."""
    warning = await _probe(make_check(connections_warning=0))
    critical = await _probe(make_check(connections_warning=0, connections_critical=0))

    assert warning.status is Status.WARNING
    assert "connections in use" in warning.message
    assert critical.status is Status.CRITICAL


async def test_check_tables_ok_and_missing_table_problem(
    tables: list[str], make_check: MakeCheck
) -> None:
    """Real tables check ok; a table that does not exist is an error."""
    missing = f"sentinel_missing_{uuid.uuid4().hex[:8]}"
    healthy = await _probe(make_check(check_tables=tables))
    broken = await _probe(make_check(check_tables=[*tables, f"test.{missing}"]))

    assert healthy.status is Status.OK, healthy.message
    assert healthy.values["tables_with_problems"] == 0
    assert "CHECK TABLE: 2 tables ok (" in healthy.message
    assert broken.status is Status.CRITICAL
    assert broken.values["tables_with_problems"] == 1
    assert f"CHECK TABLE found problems in 1 of 3 tables (test.{missing})" in (
        broken.message
    )
    assert any(
        e.startswith(f"table test.{missing}: error: ") and "doesn't exist" in e
        for e in broken.evidence
    ), broken.evidence


async def test_check_tables_findings_remembered_until_next_run(
    admin: Any, tables: list[str], make_check: MakeCheck
) -> None:
    """Findings are reported until the next CHECK TABLE run replaces them."""
    late = f"sentinel_late_{uuid.uuid4().hex[:8]}"
    check = make_check(check_tables=[tables[0], late], check_tables_interval="1s")
    try:
        first = await _probe(check)
        await _sql(admin, f"CREATE TABLE `{late}` (id INT PRIMARY KEY) ENGINE=InnoDB")
        remembered = await _probe(check)
        await asyncio.sleep(1.0)
        rerun = await _probe(check)
    finally:
        await _sql(admin, f"DROP TABLE IF EXISTS `{late}`")

    assert first.status is Status.CRITICAL
    assert remembered.status is Status.CRITICAL
    assert remembered.values["tables_with_problems"] == 1
    assert "CHECK TABLE" in remembered.message
    assert rerun.status is Status.OK, rerun.message
    assert rerun.values["tables_with_problems"] == 0


def _problems_for(table: dict[str, Any]) -> list[str]:
    problems = Problems()
    check = _build({**ROOT, **table}, problems)
    assert check is None
    return [str(p) for p in problems.errors]


def test_configure_rejects_table_name_that_is_not_an_identifier() -> None:
    """Table names go into SQL text, so anything but an identifier is refused."""
    errors = _problems_for({"check_tables": ["users; DROP TABLE users"]})

    assert len(errors) == 1
    assert "checks.db.check_tables" in errors[0]
    assert '"users; DROP TABLE users" is not a table name' in errors[0]


def test_configure_rejects_duplicate_and_unqualified_tables() -> None:
    """A table listed twice, or one with no database to live in, is refused."""
    twice = _problems_for({"check_tables": ["users", "test.users"]})
    problems = Problems()
    nowhere = _build({"user": "root", "check_tables": ["users"]}, problems)

    assert any('"test.users" is listed twice' in e for e in twice)
    assert nowhere is None
    assert [str(p) for p in problems.errors] == [
        '<config>: checks.db.check_tables: "users" names no database; '
        'set database or write "database.users"'
    ]


def test_configure_rejects_inverted_thresholds_and_unknown_keys() -> None:
    """Warning above critical and a misspelled key are both reported."""
    errors = _problems_for(
        {"long_queries_warning": 9, "long_queries_critical": 2, "conections_warning": 5}
    )

    assert any(
        "long_queries_warning: 9 is above long_queries_critical" in e for e in errors
    )
    assert any("checks.db.conections_warning: " in e for e in errors)


def test_configure_defaults() -> None:
    """Unset keys take the documented defaults."""
    check = _build({"user": "monitor"})

    assert check is not None
    assert (check.settings.host, check.settings.port) == ("127.0.0.1", 3306)
    assert check.settings.connect_timeout_s == 5.0
    assert check.settings.query_timeout_s == 5.0
    assert check.long_query_threshold_s == 300.0
    assert (check.long_queries.warning, check.long_queries.critical) == (1, 5)
    assert (check.connections_percent.warning, check.connections_percent.critical) == (
        80,
        95,
    )
    assert check.check_tables == ()
    assert check.check_tables_interval_s == 3600.0


def test_describe_query_hides_password_literals() -> None:
    """Query text in evidence never carries a password literal."""
    created = describe_query(
        (7, "admin", "10.0.0.1:5000", None, 12, "CREATE USER a IDENTIFIED BY 's3cret'")
    )
    altered = describe_query(
        (8, "admin", "h", "db", 3, "ALTER USER b IDENTIFIED WITH x AS 'hash' \n\tLOCK")
    )
    truncated = describe_query((9, "admin", "h", "db", 3, "SET PASSWORD = 'abc"))

    assert created == (
        "query 7 by admin@10.0.0.1:5000 on - running 12 s: "
        "CREATE USER a IDENTIFIED BY '***'"
    )
    assert altered.endswith("ALTER USER b IDENTIFIED WITH x AS '***' LOCK")
    assert "abc" not in truncated


def test_describe_query_keeps_first_200_characters() -> None:
    """Long query text is cut to 200 characters."""
    line = describe_query((1, "u", "h", "d", 400, "SELECT " + "x" * 500))

    assert line.endswith("SELECT " + "x" * 193 + "...")


def test_grants_show_all_sessions_needs_process_super_all_or_a_role() -> None:
    """PROCESS, SUPER or ALL on *.* (or a role, unexpanded) sees all sessions."""
    assert grants_show_all_sessions(["GRANT ALL PRIVILEGES ON *.* TO `root`@`%`"])
    assert grants_show_all_sessions(["GRANT SELECT, PROCESS ON *.* TO `m`@`%`"])
    assert grants_show_all_sessions(
        ["GRANT USAGE ON *.* TO `m`@`%`", "GRANT `r` TO `m`"]
    )
    assert not grants_show_all_sessions(
        ["GRANT USAGE ON *.* TO `m`@`%`", "GRANT ALL PRIVILEGES ON `test`.* TO `m`@`%`"]
    )


def test_configuring_does_not_import_aiomysql() -> None:
    """Building a mysql check costs nothing until it first probes."""
    code = (
        "import sys\n"
        "from checks.config import build_check\n"
        "from checks.settings import Problems, Section\n"
        "section = Section({'type': 'mysql', 'user': 'm'}, 'checks.db', Problems())\n"
        "assert build_check('db', section) is not None\n"
        "print('aiomysql' in sys.modules, 'pymysql' in sys.modules)\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    )
    assert out.stdout.split() == ["False", "False"]
