"""Running the real daemon as a child process, with real peers around it.

End-to-end tests use these: a `Daemon` started with `sentinel run` on a
config written by the test, a `Target` the http checks probe (its answers
switched by the test), and a `WebhookReceiver` that records pages and can
be told to fail.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
from aiohttp import web

ROOT = Path(__file__).resolve().parent.parent


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


class Daemon:
    """`python -m daemon run` on a config file, output captured to a file."""

    def __init__(self, config: Path, *, env: dict[str, str] | None = None) -> None:
        self.config = config
        self.log_path = config.with_suffix(".log")
        self.env = {**os.environ, **(env or {})}
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        with self.log_path.open("ab") as log_file:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "daemon", "run", "--config", str(self.config)],
                stdout=log_file,
                stderr=subprocess.STDOUT,
                cwd=ROOT,
                env=self.env,
            )

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def signal(self, signum: int) -> None:
        assert self.proc is not None
        self.proc.send_signal(signum)

    def kill(self) -> None:
        """SIGKILL: no chance to flush or say goodbye."""
        assert self.proc is not None
        self.proc.kill()
        self.proc.wait(timeout=10)

    def stop(self, timeout_s: float = 10.0) -> int:
        if self.proc is None or self.proc.poll() is not None:
            return self.proc.returncode if self.proc else 0
        self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            raise

    async def wait_ready(self, api: Api, timeout_s: float = 20.0) -> None:
        """Until the API answers; a daemon that exits instead fails the test
        at once with what it printed."""

        async def answering() -> bool:
            if self.proc is not None and self.proc.poll() is not None:
                raise AssertionError(
                    f"the daemon exited with {self.proc.returncode}:\n{self.log_text()}"
                )
            return await api.up()

        await wait_until(answering, timeout_s, "the API to answer")

    def wait_exit(self, timeout_s: float) -> int:
        assert self.proc is not None
        return self.proc.wait(timeout=timeout_s)

    def log_lines(self) -> list[dict[str, Any]]:
        events = []
        for line in self.log_path.read_text(errors="replace").splitlines():
            try:
                events.append(json.loads(line))
            except json.JSONDecodeError:
                continue
        return events

    def log_text(self) -> str:
        return self.log_path.read_text(errors="replace")


async def start_daemon(
    config: Path, api_port: int, token: str, env: dict[str, str] | None = None
) -> tuple[Daemon, Api]:
    """`sentinel run` on `config`, once its API on `api_port` answers."""
    daemon = Daemon(config, env=env)
    daemon.start()
    api = Api(api_port, token)
    try:
        await daemon.wait_ready(api)
    except AssertionError:
        await api.close()
        daemon.stop()
        raise
    return daemon, api


async def wait_until(
    predicate: Callable[[], Any], timeout_s: float, what: str, interval_s: float = 0.05
) -> Any:
    deadline = time.monotonic() + timeout_s
    while True:
        value = predicate()
        if asyncio.iscoroutine(value):
            value = await value
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout_s} s waiting for {what}")
        await asyncio.sleep(interval_s)


class Api:
    """A small client for the daemon's HTTP API."""

    def __init__(self, port: int, token: str | None = None) -> None:
        self.base = f"http://127.0.0.1:{port}"
        self.token = token
        self.session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=5))

    async def close(self) -> None:
        await self.session.close()

    async def up(self) -> bool:
        try:
            async with self.session.get(f"{self.base}/healthz") as response:
                return response.status in (200, 503)
        except aiohttp.ClientError:
            return False

    async def get(self, path: str) -> tuple[int, Any]:
        async with self.session.get(self.base + path) as response:
            body = await response.text()
            try:
                return response.status, json.loads(body)
            except json.JSONDecodeError:
                return response.status, body

    async def post(
        self, path: str, payload: Any = None, *, auth: bool = True
    ) -> tuple[int, Any]:
        headers = (
            {"Authorization": f"Bearer {self.token}"} if auth and self.token else {}
        )
        async with self.session.post(
            self.base + path, json=payload, headers=headers
        ) as response:
            body = await response.text()
            try:
                return response.status, json.loads(body)
            except json.JSONDecodeError:
                return response.status, body

    async def incidents(self) -> list[dict[str, Any]]:
        status, body = await self.get("/api/v1/incidents?state=all")
        assert status == 200, body
        items: list[dict[str, Any]] = (
            body["incidents"] if isinstance(body, dict) else body
        )
        return items


@dataclass
class Target:
    """An http target whose answer the test switches between up and down, or
    that alternates on every request while `flapping`."""

    healthy: bool = True
    flapping: bool = False
    requests: int = 0
    port: int = 0
    runner: web.AppRunner | None = None

    async def start(self) -> None:
        app = web.Application()
        app.router.add_get("/health", self._health)
        self.runner = web.AppRunner(app, access_log=None)
        await self.runner.setup()
        self.port = self.port or free_port()
        await web.TCPSite(self.runner, "127.0.0.1", self.port).start()

    async def _health(self, _request: web.Request) -> web.Response:
        self.requests += 1
        if self.flapping:
            self.healthy = not self.healthy
        if self.healthy:
            return web.json_response({"status": "ok"})
        return web.json_response({"status": "down"}, status=503)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/health"

    async def stop(self) -> None:
        if self.runner is not None:
            await self.runner.cleanup()


@dataclass
class WebhookReceiver:
    """Records every page POSTed to /hook/<contact>; answers `fail_status`
    while it is set."""

    port: int = 0
    pages: list[dict[str, Any]] = field(default_factory=list)
    arrivals: list[float] = field(default_factory=list)
    headers: list[dict[str, str]] = field(default_factory=list)
    fail_status: int | None = None
    refused: int = 0
    runner: web.AppRunner | None = None

    async def start(self) -> None:
        app = web.Application()
        app.router.add_post("/hook/{contact}", self._hook)
        self.runner = web.AppRunner(app, access_log=None)
        await self.runner.setup()
        self.port = self.port or free_port()
        await web.TCPSite(self.runner, "127.0.0.1", self.port).start()

    def url(self, contact: str) -> str:
        return f"http://127.0.0.1:{self.port}/hook/{contact}"

    async def _hook(self, request: web.Request) -> web.Response:
        if self.fail_status is not None:
            self.refused += 1
            return web.Response(status=self.fail_status, text="failing on purpose")
        body = await request.read()
        page = json.loads(body)
        page["_contact_path"] = request.match_info["contact"]
        page["_raw"] = body.decode()
        self.pages.append(page)
        self.arrivals.append(time.time())
        self.headers.append(dict(request.headers))
        return web.json_response({"ok": True})

    def pages_for(self, contact: str, kind: str = "page") -> list[dict[str, Any]]:
        return [
            p
            for p in self.pages
            if p["_contact_path"] == contact and p.get("kind") == kind
        ]

    async def stop(self) -> None:
        if self.runner is not None:
            await self.runner.cleanup()
