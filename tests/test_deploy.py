"""The deploy files: the systemd unit verifies and is hardened; the nginx
snippet passes only the ack links through."""

from __future__ import annotations

import asyncio
import re
import shutil
import socket
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest
from aiohttp import web

ROOT = Path(__file__).resolve().parent.parent
UNIT = ROOT / "deploy" / "systemd" / "sentinel.service"
NGINX_SNIPPET = ROOT / "deploy" / "nginx" / "sentinel-ack.conf"
# Measured 1.5 with this unit on systemd 252; more means a protection was lost.
MAX_EXPOSURE = 2.0


def _unit_settings() -> dict[str, list[str]]:
    settings: dict[str, list[str]] = {}
    for line in UNIT.read_text().splitlines():
        if "=" in line and not line.startswith(("#", "[")):
            key, _, value = line.partition("=")
            settings.setdefault(key.strip(), []).append(value.strip())
    return settings


def _installable_unit(tmp_path: Path) -> Path:
    """The unit with ExecStart pointing at this venv's console script:
    systemd-analyze refuses a unit whose binary does not exist."""
    binary = Path(sys.executable).parent / "sentinel"
    assert binary.exists(), f"{binary} is missing: pip install -e ."
    text = UNIT.read_text().replace(
        "ExecStart=/usr/local/bin/sentinel ", f"ExecStart={binary} "
    )
    unit = tmp_path / "sentinel.service"
    unit.write_text(text)
    return unit


def _systemd_analyze() -> str:
    tool = shutil.which("systemd-analyze")
    if tool is None:
        pytest.skip("systemd-analyze is not installed")
    return tool


def test_deploy_unit_declares_the_service_contract() -> None:
    """Notify type, watchdog, restart policy, user, reload and stop bounds."""
    settings = _unit_settings()
    expected = {
        "Type": "notify",
        "NotifyAccess": "main",
        "WatchdogSec": "30",
        "Restart": "on-failure",
        "RestartSec": "5",
        "User": "sentinel",
        "Group": "sentinel",
        "DynamicUser": "no",
        "StateDirectory": "sentinel",
        "ExecStart": "/usr/local/bin/sentinel run --config /etc/sentinel/config.toml",
        "ExecReload": "/bin/kill -HUP $MAINPID",
        "TimeoutStopSec": "10",
        "ProtectSystem": "strict",
        "CapabilityBoundingSet": "",
        "SystemCallFilter": "@system-service",
        "RestrictAddressFamilies": "AF_UNIX AF_INET AF_INET6 AF_NETLINK",
    }
    for key, value in expected.items():
        assert value in settings.get(key, []), f"{key}={value} is missing"
    credentials = {v.split(":")[0] for v in settings["LoadCredential"]}
    assert credentials == {"admin_token", "ack_secret", "db_password"}


def test_deploy_unit_passes_systemd_analyze_verify(tmp_path: Path) -> None:
    """systemd-analyze verify accepts the unit without a single warning."""
    tool = _systemd_analyze()
    unit = _installable_unit(tmp_path)
    done = subprocess.run(
        [tool, "verify", str(unit)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    # Misspelled keys only warn, with exit 0: any stderr is a failure.
    assert done.stderr == ""
    assert done.returncode == 0


def test_deploy_unit_verify_catches_a_typo(tmp_path: Path) -> None:
    """The verify check above has teeth: a misspelled key shows on stderr."""
    tool = _systemd_analyze()
    unit = _installable_unit(tmp_path)
    unit.write_text(unit.read_text().replace("ProtectHome=", "ProtectHom="))
    done = subprocess.run(
        [tool, "verify", str(unit)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert "Unknown key 'ProtectHom'" in done.stderr


def test_deploy_unit_security_exposure_is_low(tmp_path: Path) -> None:
    """systemd-analyze security rates the unit's exposure below the bound."""
    tool = _systemd_analyze()
    unit = _installable_unit(tmp_path)
    done = subprocess.run(
        [tool, "security", "--offline=yes", str(unit)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    match = re.search(r"Overall exposure level for \S+: ([0-9.]+)", done.stdout)
    assert match is not None, done.stdout[-500:] + done.stderr
    assert float(match.group(1)) < MAX_EXPOSURE


# nginx ---------------------------------------------------------------------


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@pytest.fixture
async def upstream() -> AsyncIterator[tuple[int, list[str]]]:
    """A stand-in daemon on loopback that records every request it gets."""
    seen: list[str] = []

    async def record(request: web.Request) -> web.Response:
        seen.append(f"{request.method} {request.path}")
        return web.Response(text="daemon")

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", record)
    runner = web.AppRunner(app)
    await runner.setup()
    port = _free_port()
    site = web.TCPSite(runner, "127.0.0.1", port)
    await site.start()
    yield port, seen
    await runner.cleanup()


@pytest.fixture
async def nginx(tmp_path: Path, upstream: tuple[int, list[str]]) -> AsyncIterator[str]:
    """A real nginx with the snippet included the way the comments say."""
    binary = shutil.which("nginx") or (
        "/usr/sbin/nginx" if Path("/usr/sbin/nginx").exists() else None
    )
    if binary is None:
        pytest.skip("nginx is not installed (Debian package nginx-light)")
    upstream_port, _ = upstream
    snippet = NGINX_SNIPPET.read_text().replace(
        "proxy_pass http://127.0.0.1:8765;",
        f"proxy_pass http://127.0.0.1:{upstream_port};",
    )
    snippet = snippet.replace(
        "/var/log/nginx/sentinel-ack.log", str(tmp_path / "ack.log")
    )
    (tmp_path / "sentinel-ack.conf").write_text(snippet)
    # The http-block lines documented in the snippet's comments, verbatim.
    zone = re.search(r"^#\s+(limit_req_zone .*;)$", snippet, re.M)
    log_format = re.search(
        r"^#\s+(log_format sentinel_ack .*?\n#\s+.*?;)$", snippet, re.M | re.S
    )
    assert zone is not None and log_format is not None
    http_lines = zone.group(1) + "\n" + re.sub(r"\n#\s+", " ", log_format.group(1))
    port = _free_port()
    (tmp_path / "nginx.conf").write_text(
        f"""
daemon off;
master_process off;
worker_processes 1;
pid {tmp_path}/nginx.pid;
error_log {tmp_path}/error.log warn;
events {{ worker_connections 64; }}
http {{
    access_log off;
    client_body_temp_path {tmp_path}/body;
    proxy_temp_path {tmp_path}/proxy;
    fastcgi_temp_path {tmp_path}/fastcgi;
    uwsgi_temp_path {tmp_path}/uwsgi;
    scgi_temp_path {tmp_path}/scgi;
    {http_lines}
    server {{
        listen 127.0.0.1:{port};
        location / {{ return 200 "site\\n"; }}
        include {tmp_path}/sentinel-ack.conf;
    }}
}}
"""
    )
    conf = str(tmp_path / "nginx.conf")
    checked = subprocess.run(
        [binary, "-t", "-p", str(tmp_path), "-c", conf],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert checked.returncode == 0, checked.stderr
    process = await asyncio.create_subprocess_exec(
        binary, "-p", str(tmp_path), "-c", conf, stderr=asyncio.subprocess.PIPE
    )
    base = f"http://127.0.0.1:{port}"
    try:
        for _ in range(100):
            try:
                with socket.create_connection(("127.0.0.1", port), timeout=0.1):
                    break
            except OSError:
                await asyncio.sleep(0.02)
        yield base
    finally:
        process.terminate()
        await process.communicate()


async def test_deploy_nginx_passes_only_ack_links(
    nginx: str, upstream: tuple[int, list[str]]
) -> None:
    """GET and POST /ack/<token> reach the daemon; its API, metrics, other
    methods and malformed tokens do not."""
    _, seen = upstream
    token = "AQAAAAcAZ7pQ8wAbc123_-xyzAbCdEfGhIjKlMnOpQrStUv"
    async with aiohttp.ClientSession() as http:
        for method, path, status in (
            ("GET", f"/ack/{token}", 200),
            ("POST", f"/ack/{token}", 200),
            ("DELETE", f"/ack/{token}", 403),
            ("GET", "/ack/short", 404),
            ("GET", f"/ack/{token}%2F..", 404),
            ("GET", f"/ack/{token}/../../api/v1/incidents", 200),
            ("GET", "/api/v1/incidents", 200),
            ("GET", "/metrics", 200),
        ):
            async with http.request(method, nginx + path) as response:
                assert response.status == status, (method, path)
                if path.startswith(("/api", "/metrics")) or "/../" in path:
                    assert await response.text() == "site\n"
    assert seen == [f"GET /ack/{token}", f"POST /ack/{token}"]


async def test_deploy_nginx_keeps_tokens_out_of_its_log(
    nginx: str, tmp_path: Path
) -> None:
    """The ack access log records the request without the token."""
    token = "AQAAAAcAZ7pQ8wAbc123_-xyzAbCdEfGhIjKlMnOpQrStUv"
    async with (
        aiohttp.ClientSession() as http,
        http.get(f"{nginx}/ack/{token}") as response,
    ):
        assert response.status == 200
    # nginx writes the access log after the response has gone out.
    log_file = tmp_path / "ack.log"
    for _ in range(100):
        log = log_file.read_text() if log_file.exists() else ""
        if log:
            break
        await asyncio.sleep(0.02)
    assert '"GET /ack/..."' in log
    assert token not in log
