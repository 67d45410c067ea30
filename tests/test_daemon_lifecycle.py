"""The daemon as a process: start, reload on SIGHUP, stop on SIGTERM, and
tell systemd about each, with the real binary and real sockets."""

from __future__ import annotations

import asyncio
import signal
import socket
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from aiohttp import web

from tests.daemon_harness import ROOT, Api, Daemon, free_port, start_daemon, wait_until


def write_config(path: Path, api_port: int, checks: str) -> None:
    path.write_text(
        f"""
[daemon]
state_dir = "{path.parent / "state"}"
shutdown_timeout = "3s"
[api]
port = {api_port}
admin_token = "{TOKEN}"
[log]
format = "json"
{checks}
"""
    )


def http_check(
    name: str, url: str, timeout: str = "1s", interval: str = "200ms"
) -> str:
    return f"""
[checks.{name}]
type = "http"
url = "{url}"
interval = "{interval}"
timeout = "{timeout}"
"""


@pytest.fixture
async def hanging_server() -> AsyncIterator[str]:
    """An http peer that accepts and never answers."""

    async def hang(_request: web.Request) -> web.Response:
        await asyncio.sleep(3600)
        return web.Response()

    app = web.Application()
    app.router.add_get("/", hang)
    runner = web.AppRunner(app, shutdown_timeout=0.1)
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    yield f"http://127.0.0.1:{port}/"
    await runner.cleanup()


@pytest.fixture
async def api_port() -> AsyncIterator[int]:
    yield free_port()


TOKEN = "lifecycle-test-token-0123456789"


async def start_with_checks(
    tmp_path: Path, port: int, checks: str, **env: str
) -> tuple[Daemon, Api]:
    config = tmp_path / "sentinel.toml"
    write_config(config, port, checks)
    return await start_daemon(config, port, TOKEN, env)


async def test_sigterm_stops_within_five_seconds_with_hung_probes(
    tmp_path: Path, hanging_server: str, api_port: int
) -> None:
    """SIGTERM stops the daemon in under 5 s even while probes hang, and the
    exit is clean (code 0)."""
    checks = "".join(
        http_check(f"hung{i}", hanging_server, timeout="10s", interval="10s")
        for i in range(20)
    )
    daemon, api = await start_with_checks(tmp_path, api_port, checks)
    try:
        await asyncio.sleep(1.5)  # every probe is now in flight and hanging
        began = time.monotonic()
        daemon.signal(signal.SIGTERM)
        code = await asyncio.to_thread(daemon.wait_exit, 10)
        elapsed = time.monotonic() - began
    finally:
        await api.close()
        daemon.stop()
    assert code == 0, daemon.log_text()
    assert elapsed < 5.0
    events = [e.get("event") for e in daemon.log_lines()]
    assert "sentinel_stopped" in events


async def test_sighup_with_broken_file_keeps_running_config(
    tmp_path: Path, api_port: int
) -> None:
    """A broken file on SIGHUP is refused with its reasons logged; the old
    checks keep running; a fixed file then applies and the metric says so."""
    healthz = f"http://127.0.0.1:{api_port}/healthz"
    daemon, api = await start_with_checks(
        tmp_path, api_port, http_check("self", healthz)
    )
    try:
        await wait_until(lambda: _check_names(api), 10, "the first result")

        write_config(
            daemon.config,
            api_port,
            http_check("self", healthz)
            + '[checks.broken]\ntype = "http"\ninterval = "soon"\n',
        )
        daemon.signal(signal.SIGHUP)
        failure = await wait_until(
            lambda: [
                e
                for e in daemon.log_lines()
                if e.get("event") == "config_reload_failed"
            ],
            10,
            "the reload to be refused",
        )
        problems = " ".join(failure[0]["problems"])
        assert "checks.broken.interval" in problems
        assert "checks.broken.url" in problems
        _, metrics = await api.get("/metrics")
        assert "sentinel_config_last_reload_success 0.0" in metrics
        assert await _check_names(api) == ["self"]
        assert daemon.proc is not None and daemon.proc.poll() is None

        write_config(
            daemon.config,
            api_port,
            http_check("self", healthz) + http_check("second", healthz),
        )
        # Several SIGHUPs in a row collapse into one or two reloads.
        for _ in range(5):
            daemon.signal(signal.SIGHUP)
        await wait_until(
            lambda: _has_checks(api, {"self", "second"}), 10, "the new check to run"
        )
        _, metrics = await api.get("/metrics")
        assert "sentinel_config_last_reload_success 1.0" in metrics
        reloads = [e for e in daemon.log_lines() if e.get("event") == "config_reloaded"]
        assert 1 <= len(reloads) <= 2
    finally:
        await api.close()
        assert daemon.stop() == 0


async def _check_names(api: Api) -> list[str]:
    status, body = await api.get("/api/v1/checks")
    assert status == 200, body
    items = body["checks"] if isinstance(body, dict) else body
    return sorted(item["check"] for item in items if item.get("status") != "pending")


async def _has_checks(api: Api, names: set[str]) -> bool:
    return set(await _check_names(api)) == names


async def test_sd_notify_ready_watchdog_stopping(tmp_path: Path, api_port: int) -> None:
    """With NOTIFY_SOCKET and WATCHDOG_USEC set, the daemon sends READY=1
    after start, WATCHDOG=1 on the interval, STOPPING=1 on stop, to a real
    unix datagram socket."""
    socket_path = tmp_path / "notify.sock"
    receiver = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    receiver.bind(str(socket_path))
    receiver.settimeout(0.2)
    datagrams: list[str] = []
    try:
        daemon, api = await start_with_checks(
            tmp_path,
            api_port,
            http_check("self", f"http://127.0.0.1:{api_port}/healthz"),
            NOTIFY_SOCKET=str(socket_path),
            WATCHDOG_USEC="400000",
        )
        try:
            deadline = time.monotonic() + 3
            while time.monotonic() < deadline:
                datagrams.extend(await asyncio.to_thread(_receive_all, receiver))
        finally:
            await api.close()
            assert daemon.stop() == 0
        datagrams.extend(await asyncio.to_thread(_receive_all, receiver))
    finally:
        receiver.close()
    lines = [line for d in datagrams for line in d.splitlines()]
    assert lines[0] == "READY=1" or "READY=1" in lines
    assert lines.count("WATCHDOG=1") >= 3
    assert "STOPPING=1" in lines
    assert lines.index("READY=1") < lines.index("STOPPING=1")


def _receive_all(receiver: socket.socket) -> list[str]:
    found = []
    while True:
        try:
            found.append(receiver.recv(4096).decode())
        except TimeoutError:
            return found


def test_bundled_config_is_valid() -> None:
    """`make run` uses config.toml: it must pass check-config as shipped."""
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "daemon",
            "check-config",
            "--config",
            str(ROOT / "config.toml"),
        ],
        capture_output=True,
        text=True,
        timeout=30,
        cwd=ROOT,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert "ok" in result.stdout


async def test_bad_config_never_starts(tmp_path: Path, api_port: int) -> None:
    """`sentinel run` on a broken file exits 1 naming each problem and never
    opens its port."""
    config = tmp_path / "bad.toml"
    write_config(config, api_port, '[checks.x]\ntype = "htp"\ninterval = "1 minute"\n')
    result = await asyncio.to_thread(
        subprocess.run,
        [sys.executable, "-m", "daemon", "run", "--config", str(config)],
        capture_output=True,
        text=True,
        timeout=30,
        cwd=ROOT,
    )
    assert result.returncode == 1
    assert f"{config}:" in result.stderr
    assert "checks.x.type" in result.stderr
    assert '"htp" is not a check type' in result.stderr
