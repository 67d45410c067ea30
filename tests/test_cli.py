"""The `sentinel` command, run as a real subprocess (`python -m daemon`), against
real configuration files and a real API server on loopback."""

from __future__ import annotations

import asyncio
import json
import re
import sys
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from aiohttp import web

from checks.clock import FakeClock
from checks.result import Status
from daemon.api import build_app
from daemon.metrics import sentinel_version
from tests.daemon_harness import free_port
from tests.test_api import ADMIN_TOKEN, CONFIG, Backend, make_result, real_backend

VERBS = [
    ["run"],
    ["check-config"],
    ["checks"],
    ["status"],
    ["incidents"],
    ["ack"],
    ["resolve"],
    ["note"],
    ["silence"],
    ["silence", "add"],
    ["silence", "list"],
    ["silence", "expire"],
]


@dataclass
class Done:
    code: int
    out: str
    err: str


async def sentinel(*args: str, cwd: Path | None = None) -> Done:
    """Run `python -m daemon ARGS` to completion."""
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "daemon",
        *args,
        cwd=cwd,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(process.communicate(), timeout=30)
    assert process.returncode is not None
    return Done(process.returncode, out.decode(), err.decode())


def _config(
    tmp_path: Path, port: int, extra: str = "", token: str = ADMIN_TOKEN
) -> Path:
    text = CONFIG.replace(
        f'admin_token = "{ADMIN_TOKEN}"', f'admin_token = "{token}"\nport = {port}'
    )
    path = tmp_path / "config.toml"
    path.write_text(text + extra)
    return path


# Local verbs ---------------------------------------------------------------


async def test_cli_version() -> None:
    """--version prints the installed version and exits 0."""
    done = await sentinel("--version")
    assert (done.code, done.out.strip()) == (0, f"sentinel {sentinel_version()}")


async def test_cli_help_on_every_verb() -> None:
    """Every verb answers --help with its usage and the --config option."""
    results = await asyncio.gather(*(sentinel(*verb, "--help") for verb in VERBS))
    for verb, done in zip(VERBS, results, strict=True):
        assert done.code == 0, (verb, done.err)
        assert done.out.startswith(f"usage: sentinel {' '.join(verb)}"), verb
        if verb != ["silence"]:
            assert "--config PATH" in done.out, verb


async def test_cli_without_a_verb_is_a_usage_error() -> None:
    """No verb: usage on stderr, exit 2."""
    done = await sentinel()
    assert done.code == 2
    assert "usage: sentinel" in done.err


async def test_cli_check_config_valid(tmp_path: Path) -> None:
    """A valid file: exit 0 and one summary line with the counts."""
    path = _config(tmp_path, 8765)
    done = await sentinel("check-config", "--config", str(path))
    assert done.code == 0, done.err
    assert done.out == f"{path}: ok — 2 checks, 1 rule, 2 contacts, 1 policy\n"
    assert done.err == ""


async def test_cli_check_config_uses_sentinel_config_default(tmp_path: Path) -> None:
    """Without --config, ./config.toml in the working directory is read."""
    _config(tmp_path, 8765)
    done = await sentinel("check-config", cwd=tmp_path)
    assert done.code == 0, done.err
    assert done.out.startswith("config.toml: ok")


async def test_cli_check_config_warnings_go_to_stderr(tmp_path: Path) -> None:
    """Warnings do not fail the check; each is one located line on stderr."""
    path = _config(tmp_path, 8765)
    path.write_text(path.read_text().replace("[api]", '[api]\nhost = "0.0.0.0"'))
    done = await sentinel("check-config", "--config", str(path))
    assert done.code == 0
    assert "ok" in done.out
    [warning] = done.err.splitlines()
    assert re.match(rf"^{re.escape(str(path))}:\d+: warning: api\.host: ", warning)


async def test_cli_check_config_lists_every_problem(tmp_path: Path) -> None:
    """A file with several mistakes: exit 1, one file:line: key line each."""
    path = _config(tmp_path, 8765)
    text = path.read_text()
    text = text.replace(
        'url = "http://127.0.0.1:9/db"',
        'url = "http://127.0.0.1:9/db"\ninterval = "5 minutes"',
    )
    text = text.replace('priority = "P1"', 'priority = "P7"')
    text = text.replace("[api]", "[api]\nprot = 8080")
    path.write_text(text)
    done = await sentinel("check-config", "--config", str(path))
    assert done.code == 1
    assert done.out == ""
    lines = done.err.splitlines()
    located = re.compile(rf"^{re.escape(str(path))}:(\d+): (\S+): ")
    keys = {}
    for line in lines:
        match = located.match(line)
        assert match, line
        keys[match.group(2)] = int(match.group(1))
    source = text.splitlines()
    assert source[keys["checks.db.interval"] - 1] == 'interval = "5 minutes"'
    assert source[keys["rules.api_down.priority"] - 1] == 'priority = "P7"'
    assert source[keys["api.prot"] - 1] == "prot = 8080"


async def test_cli_check_config_missing_file(tmp_path: Path) -> None:
    """A file that is not there is named in the error."""
    missing = tmp_path / "nope.toml"
    done = await sentinel("check-config", "--config", str(missing))
    assert done.code == 1
    assert str(missing) in done.err
    assert "No such file" in done.err


async def test_cli_checks_runs_each_check_once(tmp_path: Path) -> None:
    """`checks` prints a row per check and fails when one is not ok."""
    hits: list[str] = []

    async def healthz(request: web.Request) -> web.Response:
        hits.append(request.path)
        return web.Response(text="ok")

    app = web.Application()
    app.router.add_get("/healthz", healthz)
    runner = web.AppRunner(app)
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    try:
        path = _config(tmp_path, 8765)
        path.write_text(
            path.read_text().replace("127.0.0.1:9/healthz", f"127.0.0.1:{port}/healthz")
        )
        done = await sentinel("checks", "--config", str(path))
        only_api = await sentinel("checks", "api", "--json", "--config", str(path))
        unknown = await sentinel("checks", "nosuch", "--config", str(path))
    finally:
        await runner.cleanup()

    assert done.code == 1, done.err
    header, *rows = done.out.splitlines()
    assert header.split() == ["CHECK", "TYPE", "STATUS", "MS", "MESSAGE"]
    statuses = {row.split()[0]: row.split()[2] for row in rows}
    assert statuses == {"api": "ok", "db": "critical"}
    assert only_api.code == 0, only_api.err
    assert [r["check"] for r in json.loads(only_api.out)] == ["api"]
    assert hits == ["/healthz", "/healthz"]
    assert unknown.code == 1
    assert "no enabled check is named nosuch" in unknown.err


# Verbs that talk to the daemon ---------------------------------------------


async def test_cli_daemon_not_running(tmp_path: Path) -> None:
    """With nothing listening, API verbs exit 2 and say what to check."""
    port = free_port()
    path = _config(tmp_path, port)
    for verb in (["status"], ["ack", "INC-1", "--by", "ann"], ["silence", "list"]):
        done = await sentinel(*verb, "--config", str(path))
        assert done.code == 2, verb
        assert done.err.strip() == (
            f"sentinel: cannot reach the Sentinel API at http://127.0.0.1:{port}: "
            "connection refused; is the daemon running?"
        )


async def test_cli_api_verbs_need_only_the_daemon_sections(tmp_path: Path) -> None:
    """An operator's shell without a channel's secret variable still reaches
    the daemon: the API verbs read only [daemon] and [api]."""
    port = free_port()
    path = _config(tmp_path, port)
    # CONFIG ends inside [channels.webhook]: give that channel the secret.
    assert path.read_text().rstrip().endswith("[channels.webhook]")
    path.write_text(path.read_text() + 'secret = "${SENTINEL_TEST_VARIABLE_NOT_SET}"\n')
    whole = await sentinel("check-config", "--config", str(path))
    assert whole.code == 1
    assert "SENTINEL_TEST_VARIABLE_NOT_SET is not set" in whole.err

    done = await sentinel("status", "--config", str(path))
    assert done.code == 2
    assert "cannot reach the Sentinel API" in done.err


@dataclass
class Live:
    config: Path
    port: int
    backend: Backend

    async def run(self, *args: str) -> Done:
        return await sentinel(*args, "--config", str(self.config))


@pytest.fixture
async def live(tmp_path: Path, clock: FakeClock) -> AsyncIterator[Live]:
    """The real API app with a real engine, served on a loopback port the
    configuration names, so the CLI finds it the way it finds the daemon."""
    port = free_port()
    path = _config(tmp_path, port)
    async with real_backend(path, clock) as backend:
        runner = web.AppRunner(build_app(backend))
        await runner.setup()
        await web.TCPSite(runner, "127.0.0.1", port).start()
        try:
            yield Live(path, port, backend)
        finally:
            await runner.cleanup()


async def _open_incident(live: Live) -> None:
    clock = live.backend.clock
    await live.backend.engine.observe(
        make_result("api", Status.CRITICAL, "refused", clock)
    )


async def test_cli_incident_lifecycle(live: Live) -> None:
    """incidents, ack, note and resolve act on the daemon and print results."""
    await _open_incident(live)
    listed = await live.run("incidents")
    assert listed.code == 0, listed.err
    assert "INC-1" in listed.out and "triggered" in listed.out

    acked = await live.run("ack", "INC-1", "--by", "ann")
    assert (acked.code, acked.out) == (0, "INC-1 acknowledged by ann\n")
    again = await live.run("ack", "1", "--by", "bob")
    assert "already acknowledged by ann" in again.out

    noted = await live.run("note", "INC-1", "--by", "ann", "restarted php-fpm")
    assert noted.code == 0 and noted.out.startswith("note added to INC-1")

    resolved = await live.run(
        "resolve", "INC-1", "--by", "ann", "--root-cause", "deploy"
    )
    assert (resolved.code, resolved.out) == (0, "INC-1 resolved by ann\n")
    closed = await live.run("resolve", "INC-1", "--by", "ann", "--root-cause", "x")
    assert closed.code == 1
    assert "already resolved" in closed.err

    as_json = await live.run("incidents", "--state", "all", "--json")
    [incident] = json.loads(as_json.out)
    assert (incident["state"], incident["root_cause"]) == ("resolved", "deploy")
    store = live.backend.engine.store
    notes = [e for e in await store.timeline(1) if e.kind.value == "note"]
    assert [n.detail["text"] for n in notes] == ["restarted php-fpm"]


async def test_cli_refusals_name_the_problem(live: Live) -> None:
    """A 404 or 400 from the daemon is exit 1 with its error on stderr."""
    missing = await live.run("ack", "INC-99", "--by", "ann")
    assert missing.code == 1
    assert missing.err.strip() == "sentinel: not found: INC-99 does not exist"
    malformed = await live.run("ack", "INC-x/../1", "--by", "ann")
    assert malformed.code == 1
    assert "not an incident reference" in malformed.err


async def test_cli_wrong_admin_token_is_refused(live: Live, tmp_path: Path) -> None:
    """A CLI configured with another token is refused by the daemon."""
    other = tmp_path / "other"
    other.mkdir()
    path = _config(other, live.port, token="not-the-admin-token-000")
    done = await sentinel("ack", "INC-1", "--by", "ann", "--config", str(path))
    assert done.code == 1
    assert "missing or wrong admin token" in done.err


async def test_cli_silences(live: Live) -> None:
    """silence add, list and expire round-trip through the API."""
    added = await live.run(
        "silence",
        "add",
        "--check",
        "api",
        "--duration",
        "2h",
        "--reason",
        "deploy",
        "--by",
        "ann",
    )
    assert added.code == 0, added.err
    assert added.out.startswith("S-1 silences check api until ")

    listed = await live.run("silence", "list")
    header, row = listed.out.splitlines()
    assert header.split()[:3] == ["ID", "MATCHES", "STARTS"]
    assert row.startswith("S-1") and " yes " in row

    bad = await live.run(
        "silence",
        "add",
        "--rule",
        "nosuch",
        "--duration",
        "1h",
        "--reason",
        "r",
        "--by",
        "a",
    )
    assert bad.code == 1
    assert "nosuch" in bad.err

    expired = await live.run("silence", "expire", "S-1", "--by", "ann")
    assert (expired.code, expired.out) == (0, "S-1 ended\n")
    assert (await live.run("silence", "list")).out == "no current silences\n"
    everything = json.loads((await live.run("silence", "list", "--all", "--json")).out)
    assert [s["active"] for s in everything] == [False]


async def test_cli_bad_duration_is_a_usage_error(live: Live) -> None:
    """A malformed --duration is refused before anything is sent."""
    done = await live.run(
        "silence",
        "add",
        "--check",
        "api",
        "--duration",
        "2 hours",
        "--reason",
        "r",
        "--by",
        "a",
    )
    assert done.code == 2
    assert "is not a duration" in done.err
    assert await live.backend.engine.store.list_silences() == []


async def test_cli_status(live: Live) -> None:
    """status shows health, failing checks and open incidents; exit 1 when
    the daemon reports itself unhealthy."""
    clock = live.backend.clock
    live.backend.results["api"] = make_result("api", Status.CRITICAL, "refused", clock)
    await _open_incident(live)
    done = await live.run("status")
    assert done.code == 0, done.err
    lines = done.out.splitlines()
    assert lines[0] == "Sentinel on web-1: ok (2 checks scheduled)"
    assert lines[1] == "Checks: 1 critical, 1 pending"
    assert "Open incidents: 1" in lines
    assert any(line.strip().startswith("INC-1") for line in lines)

    live.backend.alive = (False, "the loop of check db has stopped")
    sick = await live.run("status", "--json")
    assert sick.code == 1
    body = json.loads(sick.out)
    assert body["health"]["detail"] == "the loop of check db has stopped"
    assert [i["id"] for i in body["incidents"]] == ["INC-1"]
