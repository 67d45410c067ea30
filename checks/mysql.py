"""MySQL and MariaDB: long-running queries, connection headroom, CHECK TABLE.

`MysqlSettings` (the connection keys) and `MysqlSession` (one connection kept
across probes, every statement bounded on the server and on the client) are
shared with the queue check, which counts Laravel's failed jobs with them.
aiomysql is imported only when a connection is opened.
"""

from __future__ import annotations

import asyncio
import functools
import re
import socket
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Self

import structlog

from checks.base import Check, CheckSpec, Limits, ProbeSetupError, read_limits
from checks.result import Outcome, Status
from checks.settings import Secret, SecretUnavailable, Section, format_duration

_log = structlog.get_logger(__name__)

# Unquoted-identifier characters only: names are later quoted with backticks
# and put into SQL text, where placeholders cannot stand for identifiers.
_IDENTIFIER = re.compile(r"[A-Za-z0-9_$]{1,64}")
# The server's own bound fires first, so its clean error wins over the
# client's, which has to drop the connection.
_CLIENT_GRACE_S = 1.0
_QUERY_TEXT_CHARS = 200
_MAX_QUERY_EVIDENCE = 10
_HEALTHY_CHECK_STATUS = frozenset({"ok", "table is already up to date"})
# Passwords in CREATE USER / ALTER USER / SET PASSWORD text must not reach a
# page; an unterminated literal (truncated text) is hidden to its end.
_PASSWORD_LITERAL = re.compile(
    r"""((?:IDENTIFIED\s+(?:WITH\s+\S+\s+)?(?:BY|AS)(?:\s+PASSWORD)?"""
    r"""|PASSWORD\s*\(|PASSWORD(?:\s+FOR\s+\S+)?\s*=)\s*)"""
    r"""('(?:[^'\\]|\\.)*(?:'|$)|"(?:[^"\\]|\\.)*(?:"|$))""",
    re.IGNORECASE | re.DOTALL,
)

# Server and client error codes, by what they mean for the probe.
_SETUP_HINTS = {
    1044: "check database and the user's grants",
    1045: "check user and password",
    1049: "check database",
    1142: "grant the user SELECT on it",
    1146: "check the table name",
    1227: "grant the user the privilege named",
    1251: "the server wants an authentication method this client lacks",
    1698: "check user and password",
    2059: "the server wants an authentication method this client lacks",
}
_STATEMENT_TIMEOUT_CODES = frozenset({1969, 3024})  # MariaDB, MySQL
_SERVER_DOWN_CODES = frozenset(
    {1040, 1053, 1129, 1152, 1153, 1158, 1159, 1160, 1161, 2006, 2013, 4031}
)


class MysqlUnavailable(Exception):
    """The server refused us, did not answer in time or went away: the
    target is down or struggling (critical), as opposed to a setup problem
    (`ProbeSetupError`)."""


@dataclass(frozen=True, slots=True)
class TableName:
    """A table named in configuration, checked to be a plain identifier."""

    database: str | None
    table: str

    @classmethod
    def parse(cls, text: str) -> TableName:
        parts = text.split(".")
        if len(parts) > 2 or not all(_IDENTIFIER.fullmatch(p) for p in parts):
            raise ValueError(
                f'"{text}" is not a table name; use letters, digits, "_" and "$", '
                'optionally as "database.table"'
            )
        if len(parts) == 1:
            return cls(None, parts[0])
        return cls(parts[0], parts[1])

    @property
    def sql(self) -> str:
        if self.database is None:
            return f"`{self.table}`"
        return f"`{self.database}`.`{self.table}`"

    def label(self, default_database: str | None) -> str:
        database = self.database or default_database
        return f"{database}.{self.table}" if database else self.table


@dataclass(frozen=True, slots=True)
class MysqlSettings:
    """How to reach one server, and how long each step may take."""

    host: str
    port: int
    user: str
    password: Secret | None
    database: str | None
    unix_socket: str | None
    connect_timeout_s: float
    query_timeout_s: float

    @classmethod
    def read(cls, section: Section) -> MysqlSettings:
        """``host``, ``port``, ``user``, ``password`` (inline, ``${ENV}`` or
        ``password_file``), ``database``, ``unix_socket``, ``connect_timeout``
        and ``query_timeout``; problems are recorded on `section`."""
        host = section.str("host", "127.0.0.1")
        port = section.int("port", 3306, min=1, max=65535)
        user = section.str("user")
        password = section.secret("password")
        database = section.str("database", None)
        unix_socket = section.str("unix_socket", None)
        if unix_socket is not None:
            for ignored in ("host", "port"):
                if section.has(ignored):
                    section.warn(ignored, "is ignored because unix_socket is set")
        return cls(
            host=host if isinstance(host, str) else "127.0.0.1",
            port=port if isinstance(port, int) else 3306,
            user=user if isinstance(user, str) else "",
            password=password,
            database=database,
            unix_socket=unix_socket,
            connect_timeout_s=section.duration("connect_timeout", 5.0, min_s=0.1),
            query_timeout_s=section.duration("query_timeout", 5.0, min_s=0.1),
        )

    @property
    def address(self) -> str:
        return self.unix_socket or f"{self.host}:{self.port}"

    async def connect(self) -> Any:
        """A new autocommit aiomysql connection.

        Raises `ProbeSetupError` when the probe cannot run as configured
        (unreadable password file, access denied, unknown database, a host
        name that does not resolve) and `MysqlUnavailable` when the server
        refuses or does not answer within ``connect_timeout``."""
        import aiomysql  # noqa: PLC0415 - tens of MiB; only MySQL configs pay

        try:
            password = self.password.reveal() if self.password else ""
        except SecretUnavailable as exc:
            raise ProbeSetupError(str(exc)) from None
        try:
            # aiomysql bounds only the TCP connect; a server that accepts and
            # then stalls the handshake must not hold the probe.
            async with asyncio.timeout(self.connect_timeout_s):
                return await aiomysql.connect(
                    host=self.host,
                    port=self.port,
                    user=self.user,
                    password=password,
                    db=self.database,
                    unix_socket=self.unix_socket,
                    connect_timeout=self.connect_timeout_s,
                    charset="utf8mb4",
                    # A kept connection outside autocommit would read from one
                    # old snapshot forever: counts would never change.
                    autocommit=True,
                    program_name="sentinel",
                )
        except TimeoutError:
            raise MysqlUnavailable(self._no_answer()) from None
        except aiomysql.Error as exc:
            raise self._connect_failure(exc) from None

    def _no_answer(self) -> str:
        return (
            f"MySQL at {self.address} did not complete the connection within "
            f"connect_timeout ({format_duration(self.connect_timeout_s)})"
        )

    def _connect_failure(self, exc: Exception) -> Exception:
        cause = exc.__cause__
        if isinstance(cause, socket.gaierror):
            return ProbeSetupError(
                f'cannot resolve MySQL host "{self.host}": {cause.strerror}; check host'
            )
        if isinstance(cause, TimeoutError):
            return MysqlUnavailable(self._no_answer())
        if isinstance(cause, ConnectionRefusedError):
            return MysqlUnavailable(f"MySQL at {self.address} refused the connection")
        if isinstance(cause, FileNotFoundError):
            return MysqlUnavailable(
                f"MySQL socket {self.address} does not exist (is the server running?)"
            )
        if isinstance(cause, PermissionError):
            return ProbeSetupError(
                f"no permission to open MySQL socket {self.address}; check unix_socket"
            )
        if isinstance(cause, OSError):
            reason = cause.strerror or type(cause).__name__
            return MysqlUnavailable(f"cannot reach MySQL at {self.address}: {reason}")
        return self.classify(exc, "the connection")

    def classify(self, exc: Exception, what: str) -> Exception:
        """`MysqlUnavailable` or `ProbeSetupError` for a server or client error
        raised while doing `what`."""
        code, message = _error_parts(exc)
        if code in _STATEMENT_TIMEOUT_CODES:
            return MysqlUnavailable(
                f"MySQL at {self.address} did not finish {what} within query_timeout "
                f"({format_duration(self.query_timeout_s)})"
            )
        if code in _SERVER_DOWN_CODES:
            return MysqlUnavailable(f"MySQL at {self.address} failed {what}: {message}")
        hint = _SETUP_HINTS.get(code or 0)
        suffix = f"; {hint}" if hint else ""
        return ProbeSetupError(
            f"MySQL at {self.address} refused {what}: {message}{suffix}"
        )


def _error_parts(exc: Exception) -> tuple[int | None, str]:
    """PyMySQL errors carry ``(code, message)``; some carry a message only."""
    args = exc.args
    if len(args) >= 2 and isinstance(args[0], int):
        return args[0], str(args[1])
    return None, str(exc) or type(exc).__name__


class MysqlSession:
    """One connection kept across probes, reopened when it breaks.

    Every statement is bounded on the server (MariaDB's ``SET STATEMENT
    max_statement_time``; MySQL's ``MAX_EXECUTION_TIME`` hint, which only
    SELECT honours) and on the client. A client timeout drops the connection
    (aiomysql closes it when cancelled); a statement the server does not
    bound is then killed from a fresh connection so it does not run on.
    """

    def __init__(self, settings: MysqlSettings) -> None:
        self.settings = settings
        self.generation = 0
        """Counts connections opened, so callers can redo per-connection work."""
        self._conn: Any = None
        self._thread_id: int | None = None
        self._flavour: str | None = None
        """"mariadb" or "mysql" once known; None while the connection is new."""

    async def ensure(self) -> float:
        """Seconds it took to get a working connection: a round trip on the
        kept one, or a fresh connect when there is none or it broke."""
        import aiomysql  # noqa: PLC0415

        if self._conn is not None and not self._conn.closed:
            began = time.perf_counter()
            try:
                async with asyncio.timeout(self.settings.query_timeout_s):
                    await self._conn.ping(reconnect=False)
            except (TimeoutError, aiomysql.Error) as exc:
                _log.info(
                    "mysql_connection_broken",
                    address=self.settings.address,
                    reason=_error_parts(exc)[1],
                )
                self._drop()
            else:
                return time.perf_counter() - began
        self._drop()
        began = time.perf_counter()
        self._conn = await self.settings.connect()
        self.generation += 1
        try:
            # VERSION(), not the handshake's version: proxies answer that one.
            rows = await self.fetch(
                "SELECT VERSION(), CONNECTION_ID()", what="VERSION()"
            )
        except BaseException:
            self._drop()
            raise
        version, thread_id = rows[0]
        self._thread_id = int(thread_id)
        self._flavour = "mariadb" if "mariadb" in str(version).lower() else "mysql"
        return time.perf_counter() - began

    async def fetch(
        self, sql: str, args: Sequence[object] = (), *, what: str = "a query"
    ) -> list[tuple[Any, ...]]:
        """All rows of one statement. `sql` uses ``%s`` placeholders for
        `args`; `what` names the statement in error messages."""
        import aiomysql  # noqa: PLC0415

        conn = self._conn
        if conn is None or conn.closed:
            raise MysqlUnavailable(f"MySQL at {self.settings.address}: not connected")
        statement, server_bounded = self._bounded(sql)
        try:
            async with asyncio.timeout(self.settings.query_timeout_s + _CLIENT_GRACE_S):
                cursor = await conn.cursor(_quiet_cursor_class())
                await cursor.execute(statement, tuple(args) or None)
                rows = await cursor.fetchall()
                await cursor.close()
        except TimeoutError:
            thread_id = self._thread_id
            self._drop()
            # TODO: when the check's own timeout cancels us instead, this kill
            # is skipped; doing it would need a task outliving the probe.
            if not server_bounded and thread_id is not None:
                await self._kill_query(thread_id)
            raise MysqlUnavailable(
                f"MySQL at {self.settings.address} did not answer {what} within "
                f"query_timeout ({format_duration(self.settings.query_timeout_s)})"
            ) from None
        except aiomysql.Error as exc:
            if conn.closed:
                self._drop()
                raise MysqlUnavailable(
                    f"MySQL at {self.settings.address} dropped the connection "
                    f"during {what}: {_error_parts(exc)[1]}"
                ) from None
            raise self.settings.classify(exc, what) from None
        return list(rows)

    def _bounded(self, sql: str) -> tuple[str, bool]:
        """The statement with the server-side time limit, and whether the
        server will enforce one."""
        timeout_s = self.settings.query_timeout_s
        if self._flavour == "mariadb":
            return f"SET STATEMENT max_statement_time={timeout_s:.3f} FOR {sql}", True
        if self._flavour == "mysql" and sql.startswith("SELECT "):
            hint = f"/*+ MAX_EXECUTION_TIME({max(1, round(timeout_s * 1000))}) */"
            return f"SELECT {hint} {sql.removeprefix('SELECT ')}", True
        return sql, False

    async def _kill_query(self, thread_id: int) -> None:
        """Best effort: stop an abandoned statement the server does not bound."""
        import aiomysql  # noqa: PLC0415

        conn: Any = None
        try:
            conn = await self.settings.connect()
            async with asyncio.timeout(self.settings.query_timeout_s):
                cursor = await conn.cursor()
                await cursor.execute("KILL QUERY %s", (thread_id,))
            _log.info(
                "mysql_abandoned_query_killed",
                address=self.settings.address,
                thread_id=thread_id,
            )
        except (MysqlUnavailable, ProbeSetupError, TimeoutError, aiomysql.Error) as exc:
            _log.warning(
                "mysql_abandoned_query_kill_failed",
                address=self.settings.address,
                thread_id=thread_id,
                reason=str(exc) or type(exc).__name__,
            )
        finally:
            if conn is not None:
                conn.close()

    def _drop(self) -> None:
        if self._conn is not None:
            self._conn.close()
        self._drop_state()

    def _drop_state(self) -> None:
        self._conn = None
        self._thread_id = None
        self._flavour = None

    async def close(self) -> None:
        """Say goodbye to the server (COM_QUIT) and close the socket."""
        conn = self._conn
        self._drop_state()
        if conn is None or conn.closed:
            return
        try:
            async with asyncio.timeout(1.0):
                await conn.ensure_closed()
        except (TimeoutError, OSError):
            pass  # the socket is closed below either way
        finally:
            conn.close()


@functools.cache
def _quiet_cursor_class() -> type[Any]:
    """An aiomysql cursor that leaves SQL warnings alone. The stock one asks
    for them (one more round trip) and turns each into a Python warning on
    stderr, such as MySQL 8.0.35's deprecation note on every read of
    information_schema.PROCESSLIST."""
    import aiomysql  # noqa: PLC0415

    class QuietCursor(aiomysql.Cursor):  # type: ignore[misc]
        async def _show_warnings(self, conn: Any) -> None:
            return None

    return QuietCursor


@dataclass(frozen=True, slots=True)
class _TableReport:
    """The outcome of the last CHECK TABLE run, reported until the next one."""

    checked_at: float
    """time.monotonic() at the run."""
    status: Status
    summary: str
    evidence: tuple[str, ...]
    tables_with_problems: int | None
    """None when the run failed, so no count is known."""


class MysqlCheck(Check):
    """A MySQL 8 or MariaDB (10.1 and later) server: long-running queries,
    connection headroom and, on a slower interval of its own, CHECK TABLE.

    Values:
        ``connect_seconds``: time to get a working connection (a round trip
        on the kept connection, or a fresh connect when it broke).
        ``long_queries``: queries running longer than ``long_query_threshold``
        (system and replication threads excluded).
        ``longest_query_seconds``: the longest of them, 0 when there is none.
        ``connections_used``, ``connections_max``: Threads_connected and
        max_connections. ``connections_used_percent``: the first as a percent
        of the second.
        ``tables_with_problems``: tables the last CHECK TABLE run found an
        error or warning for (only when ``check_tables`` is set and a run
        completed).

    Access denied, an unknown database, an unreadable password file, a host
    name that does not resolve, or a user without the PROCESS privilege
    (other sessions' queries would be invisible) are unknown. A refused
    connection, a timeout or a server that drops the connection are
    critical.
    """

    type_name = "mysql"
    default_interval_s = 30.0
    default_timeout_s = 15.0

    def __init__(
        self,
        spec: CheckSpec,
        settings: MysqlSettings,
        *,
        long_query_threshold_s: float,
        long_queries: Limits,
        connections_percent: Limits,
        check_tables: tuple[TableName, ...],
        check_tables_interval_s: float,
    ) -> None:
        super().__init__(spec)
        self.settings = settings
        self.long_query_threshold_s = long_query_threshold_s
        self.long_queries = long_queries
        self.connections_percent = connections_percent
        self.check_tables = check_tables
        self.check_tables_interval_s = check_tables_interval_s
        self._session = MysqlSession(settings)
        self._table_report: _TableReport | None = None
        self._sees_all_sessions: bool = True
        self._grants_generation = -1

    @classmethod
    def configure(cls, spec: CheckSpec, section: Section) -> Self:
        settings = MysqlSettings.read(section)
        for key, seconds in (
            ("connect_timeout", settings.connect_timeout_s),
            ("query_timeout", settings.query_timeout_s),
        ):
            if seconds >= spec.timeout_s:
                section.warn(
                    key,
                    f"{format_duration(seconds)} is not shorter than the check's "
                    f"timeout ({format_duration(spec.timeout_s)}); a slow server will "
                    "show as a check timeout",
                )
        return cls(
            spec,
            settings,
            # PROCESSLIST.TIME counts whole seconds.
            long_query_threshold_s=section.duration(
                "long_query_threshold", 300.0, min_s=1.0
            ),
            long_queries=read_limits(section, "long_queries", (1, 5), kind="count"),
            connections_percent=read_limits(
                section, "connections", (80, 95), maximum=100.0
            ),
            check_tables=_read_check_tables(section, settings.database),
            check_tables_interval_s=section.duration(
                "check_tables_interval", 3600.0, min_s=1.0
            ),
        )

    async def probe(self) -> Outcome:
        session = self._session
        try:
            connect_s = await session.ensure()
            if self._grants_generation != session.generation:
                self._sees_all_sessions = await self._has_process_privilege()
                self._grants_generation = session.generation
            queries = await self._long_queries() if self._sees_all_sessions else None
            used, maximum = await self._connections()
        except MysqlUnavailable as exc:
            return Outcome(Status.CRITICAL, str(exc))
        if self.check_tables and self._tables_due():
            self._table_report = await self._run_check_tables()

        values: dict[str, float] = {"connect_seconds": round(connect_s, 6)}
        parts: list[tuple[Status, str]] = []
        evidence: list[str] = []
        if queries is None:
            parts.append(
                (
                    Status.UNKNOWN,
                    f'user "{self.settings.user}" lacks the PROCESS privilege, so '
                    "other sessions' queries are invisible; GRANT PROCESS ON *.* to it",
                )
            )
        else:
            parts.append(self._judge_queries(queries, values, evidence))
        parts.append(self._judge_connections(used, maximum, values))
        report = self._table_report
        if report is not None:
            age = format_duration(time.monotonic() - report.checked_at)
            parts.append((report.status, f"{report.summary} ({age} ago)"))
            evidence.extend(report.evidence)
            if report.tables_with_problems is not None:
                values["tables_with_problems"] = float(report.tables_with_problems)

        status = Status.OK
        for part_status, _ in parts:
            status = status.worst(part_status)
        # The worst findings lead the message; stable order otherwise.
        parts.sort(key=lambda part: -_SEVERITY[part[0]])
        message = "; ".join(text for _, text in parts)
        return Outcome(status, message, values, tuple(evidence))

    async def close(self) -> None:
        await self._session.close()

    async def _has_process_privilege(self) -> bool:
        rows = await self._session.fetch("SHOW GRANTS", what="SHOW GRANTS")
        return grants_show_all_sessions([str(row[0]) for row in rows])

    async def _long_queries(self) -> list[tuple[Any, ...]]:
        # TODO: MySQL 8.0.35 deprecates information_schema.PROCESSLIST; move
        # to performance_schema.processlist there once it is removed.
        # COMMAND = 'Query' already leaves out replication ('Binlog Dump',
        # 'Slave_*', 'Connect') and daemon threads; the users below run
        # system work that shows as queries.
        return await self._session.fetch(
            "SELECT ID, USER, HOST, DB, TIME, INFO FROM information_schema.PROCESSLIST"
            " WHERE COMMAND = 'Query' AND TIME > %s AND ID <> CONNECTION_ID()"
            " AND USER NOT IN ('system user', 'event_scheduler')"
            " ORDER BY TIME DESC",
            (int(self.long_query_threshold_s),),
            what="the processlist query",
        )

    async def _connections(self) -> tuple[int, int]:
        status_rows = await self._session.fetch(
            "SHOW GLOBAL STATUS LIKE 'Threads_connected'", what="SHOW GLOBAL STATUS"
        )
        max_rows = await self._session.fetch(
            "SELECT @@GLOBAL.max_connections", what="the max_connections query"
        )
        if not status_rows:
            raise ProbeSetupError(
                f"MySQL at {self.settings.address} reported no Threads_connected status"
            )
        return int(status_rows[0][1]), int(max_rows[0][0])

    def _judge_queries(
        self, rows: list[tuple[Any, ...]], values: dict[str, float], evidence: list[str]
    ) -> tuple[Status, str]:
        longest_s = max((float(row[4]) for row in rows), default=0.0)
        values["long_queries"] = float(len(rows))
        values["longest_query_seconds"] = longest_s
        threshold = format_duration(self.long_query_threshold_s)
        for row in rows[:_MAX_QUERY_EVIDENCE]:
            evidence.append(describe_query(row))
        if len(rows) > _MAX_QUERY_EVIDENCE:
            evidence.append(
                f"... and {len(rows) - _MAX_QUERY_EVIDENCE} more long queries"
            )
        if not rows:
            return Status.OK, f"no query running over {threshold}"
        noun = "query" if len(rows) == 1 else "queries"
        return (
            self.long_queries.status(len(rows)),
            f"{len(rows)} {noun} running over {threshold} "
            f"(longest {format_duration(longest_s)})",
        )

    def _judge_connections(
        self, used: int, maximum: int, values: dict[str, float]
    ) -> tuple[Status, str]:
        percent = 100.0 * used / maximum if maximum > 0 else 100.0
        values["connections_used"] = float(used)
        values["connections_max"] = float(maximum)
        values["connections_used_percent"] = round(percent, 2)
        text = f"{used} of {maximum} connections in use ({percent:.0f}%)"
        return self.connections_percent.status(percent), text

    def _tables_due(self) -> bool:
        report = self._table_report
        return (
            report is None
            or time.monotonic() - report.checked_at >= self.check_tables_interval_s
        )

    async def _run_check_tables(self) -> _TableReport:
        checked_at = time.monotonic()
        database = self.settings.database
        try:
            rows = await self._session.fetch(
                "CHECK TABLE " + ", ".join(t.sql for t in self.check_tables),
                what="CHECK TABLE",
            )
        except (MysqlUnavailable, ProbeSetupError) as exc:
            # The server's health is judged above; a CHECK TABLE that cannot
            # finish only means its answer is unknown until the next run.
            return _TableReport(
                checked_at,
                Status.UNKNOWN,
                f"CHECK TABLE could not run: {exc}",
                (),
                None,
            )
        labels = [t.label(database) for t in self.check_tables]
        problems = table_problems(labels, [tuple(str(c) for c in row) for row in rows])
        status = Status.OK
        evidence = []
        for label, found in problems.items():
            for kind, text in found:
                evidence.append(f"table {label}: {kind}: {text}")
                status = status.worst(
                    Status.WARNING if kind == "warning" else Status.CRITICAL
                )
        if problems:
            summary = (
                f"CHECK TABLE found problems in {len(problems)} of {len(labels)} "
                f"tables ({', '.join(problems)})"
            )
        else:
            summary = f"CHECK TABLE: {len(labels)} tables ok"
        return _TableReport(checked_at, status, summary, tuple(evidence), len(problems))


_SEVERITY = {Status.OK: 0, Status.UNKNOWN: 1, Status.WARNING: 2, Status.CRITICAL: 3}


def _read_check_tables(section: Section, database: str | None) -> tuple[TableName, ...]:
    names = section.str_list("check_tables", [])
    tables: list[TableName] = []
    seen: set[str] = set()
    for text in names or []:
        try:
            table = TableName.parse(text)
        except ValueError as exc:
            section.error("check_tables", str(exc))
            continue
        if table.database is None and database is None:
            section.error(
                "check_tables",
                f'"{text}" names no database; set database or write "database.{text}"',
            )
            continue
        label = table.label(database).lower()
        if label in seen:
            # CHECK TABLE refuses a list that names a table twice.
            section.error("check_tables", f'"{text}" is listed twice')
            continue
        seen.add(label)
        tables.append(table)
    return tuple(tables)


def table_problems(
    labels: Sequence[str], rows: Sequence[tuple[str, ...]]
) -> dict[str, list[tuple[str, str]]]:
    """Problems per table label from CHECK TABLE's rows (Table, Op, Msg_type,
    Msg_text): errors and warnings, a failed status when no error explains
    it, and a table the server returned no row for."""
    by_label = {label.lower(): label for label in labels}
    found: dict[str, list[tuple[str, str]]] = {}
    failed_status: dict[str, str] = {}
    answered: set[str] = set()
    for table, _op, msg_type, msg_text in rows:
        label = by_label.get(table.lower(), table)
        answered.add(label)
        kind = msg_type.lower()
        if kind in ("error", "warning"):
            found.setdefault(label, []).append((kind, msg_text))
        elif kind == "status" and msg_text.lower() not in _HEALTHY_CHECK_STATUS:
            failed_status[label] = msg_text
    for label, text in failed_status.items():
        if label not in found:
            found[label] = [("error", text)]
    for label in labels:
        if label not in answered:
            found[label] = [("error", "CHECK TABLE returned no row for it")]
    return found


def grants_show_all_sessions(grants: Sequence[str]) -> bool:
    """Whether SHOW GRANTS output lets the user see every session's query:
    PROCESS (or SUPER, or ALL) on ``*.*``. Roles are not expanded by SHOW
    GRANTS, so a granted role is given the benefit of the doubt."""
    for line in grants:
        head, on, rest = line.partition(" ON ")
        if not on:
            if " TO " in line and line.upper().startswith("GRANT "):
                return True  # a role grant: ``GRANT `role` TO `user```
            continue
        if not rest.startswith("*.* "):
            continue
        privileges = head.upper().removeprefix("GRANT ")
        if {"PROCESS", "SUPER", "ALL", "ALL PRIVILEGES"} & {
            p.strip() for p in privileges.split(",")
        }:
            return True
    return False


def describe_query(row: Sequence[object]) -> str:
    """One evidence line for a processlist row (ID, USER, HOST, DB, TIME,
    INFO): who, where, how long and the first characters of the query, on one
    line and with password literals hidden."""
    thread_id, user, host, db, time_s, info = row
    text = " ".join(str(info or "").split())
    text = _PASSWORD_LITERAL.sub(lambda m: m.group(1) + "'***'", text)
    if len(text) > _QUERY_TEXT_CHARS:
        text = text[:_QUERY_TEXT_CHARS] + "..."
    return (
        f"query {thread_id} by {user}@{host} on {db or '-'} running {time_s} s: {text}"
    )
