"""The http check against real aiohttp and raw asyncio servers on 127.0.0.1."""

from __future__ import annotations

import asyncio
import datetime
import ipaddress
import re
import socket
import ssl
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from checks.base import Check, run_once
from checks.clock import SystemClock
from checks.config import build_check
from checks.http import HttpCheck, der_not_after
from checks.result import CheckResult, Status
from checks.settings import Problems, Section

HUGE_BODY_BYTES = 50 * 1024 * 1024


def build(table: dict[str, Any], name: str = "web") -> tuple[Check | None, Problems]:
    problems = Problems()
    check = build_check(
        name, Section({"type": "http", **table}, f"checks.{name}", problems)
    )
    return check, problems


async def probe(table: dict[str, Any]) -> CheckResult:
    check, problems = build(table)
    assert check is not None, [str(p) for p in problems.items]
    return await run_once(check, SystemClock())


@dataclass
class Server:
    base: str
    state: dict[str, Any]


async def _serve(
    app: web.Application, ssl_context: ssl.SSLContext | None = None
) -> tuple[web.AppRunner, int]:
    runner = web.AppRunner(app, shutdown_timeout=0.5)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0, ssl_context=ssl_context)
    await site.start()
    port = runner.addresses[0][1]
    return runner, port


def _app(state: dict[str, Any], release: asyncio.Event) -> web.Application:
    async def ok(request: web.Request) -> web.Response:
        state["host"] = request.host
        return web.Response(text="all systems ok")

    async def fail(request: web.Request) -> web.Response:
        return web.Response(status=500, text="database is down")

    async def health(request: web.Request) -> web.Response:
        return web.json_response(
            {"status": "ok", "checks": {"db": {"status": "degraded"}}, "workers": 3}
        )

    async def hang(request: web.Request) -> web.Response:
        await release.wait()
        return web.Response(text="too late")

    async def slow(request: web.Request) -> web.Response:
        await asyncio.sleep(0.15)
        return web.Response(text="slow ok")

    async def loop(request: web.Request) -> web.Response:
        raise web.HTTPFound("/loop")

    async def redirect(request: web.Request) -> web.Response:
        raise web.HTTPFound("/ok")

    async def chunked(request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse()
        response.enable_chunked_encoding()
        await response.prepare(request)
        for piece in (b"hello ", b"chunked ", b"world"):
            await response.write(piece)
        await response.write_eof()
        return response

    async def huge(request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse()
        response.content_length = HUGE_BODY_BYTES
        await response.prepare(request)
        piece = b"x" * 65536
        state["huge_sent"] = 0
        try:
            while state["huge_sent"] < HUGE_BODY_BYTES:
                await response.write(piece)
                state["huge_sent"] += len(piece)
        finally:
            state["huge_done"].set()
        return response

    async def echo(request: web.Request) -> web.Response:
        body = await request.text()
        return web.Response(text=f"{request.method} {request.content_type} {body}")

    app = web.Application()
    app.router.add_post("/echo", echo)
    for path, handler in {
        "/ok": ok,
        "/fail": fail,
        "/health": health,
        "/hang": hang,
        "/slow": slow,
        "/loop": loop,
        "/redirect": redirect,
        "/chunked": chunked,
        "/huge": huge,
    }.items():
        app.router.add_get(path, handler)
    return app


@pytest.fixture
async def server() -> AsyncIterator[Server]:
    state: dict[str, Any] = {"huge_done": asyncio.Event()}
    release = asyncio.Event()
    runner, port = await _serve(_app(state, release))
    yield Server(f"http://127.0.0.1:{port}", state)
    release.set()
    await runner.cleanup()


@pytest.fixture
async def raw_server() -> AsyncIterator[Callable[[bytes], Awaitable[str]]]:
    """Serves a canned byte string to each connection, then closes it."""
    servers: list[asyncio.Server] = []

    async def start(reply: bytes) -> str:
        async def handle(
            reader: asyncio.StreamReader, writer: asyncio.StreamWriter
        ) -> None:
            await reader.readuntil(b"\r\n\r\n")
            writer.write(reply)
            await writer.drain()
            writer.close()
            await writer.wait_closed()

        srv = await asyncio.start_server(handle, "127.0.0.1", 0)
        servers.append(srv)
        port = srv.sockets[0].getsockname()[1]
        return f"http://127.0.0.1:{port}/"

    yield start
    for srv in servers:
        srv.close()
        await srv.wait_closed()


async def test_http_200_is_ok(server: Server) -> None:
    """A 2xx answer is OK and reports status, latency and body size."""
    result = await probe({"url": f"{server.base}/ok"})
    assert result.status is Status.OK, result.message
    assert result.message.startswith("HTTP 200 in ")
    assert result.values["status_code"] == 200
    assert result.values["body_bytes"] == len(b"all systems ok")
    assert 0 < result.values["latency_seconds"] < 1


async def test_http_500_is_critical_with_body_as_evidence(server: Server) -> None:
    """A 5xx answer is critical, and the body's start is kept as evidence."""
    result = await probe({"url": f"{server.base}/fail"})
    assert result.status is Status.CRITICAL
    assert "HTTP 500 Internal Server Error (expected 2xx)" in result.message
    assert result.evidence == ("body starts: database is down",)


async def test_http_expect_status_accepts_listed_codes(server: Server) -> None:
    """expect_status replaces the default 2xx rule."""
    result = await probe({"url": f"{server.base}/fail", "expect_status": [500, 503]})
    assert result.status is Status.OK, result.message
    result = await probe({"url": f"{server.base}/ok", "expect_status": [204]})
    assert result.status is Status.CRITICAL
    assert "(expected 204)" in result.message


async def test_http_body_contains_mismatch_is_critical(server: Server) -> None:
    """A body without the expected text is critical and says what was missing."""
    good = await probe({"url": f"{server.base}/ok", "body_contains": "systems ok"})
    assert good.status is Status.OK
    bad = await probe({"url": f"{server.base}/ok", "body_contains": "READY"})
    assert bad.status is Status.CRITICAL
    assert bad.message == 'body does not contain "READY"'


@pytest.mark.parametrize(
    ("field", "expected", "status", "message"),
    [
        ("status", "ok", Status.OK, None),
        ("workers", 3, Status.OK, None),
        ("workers", "3", Status.OK, None),
        (
            "checks.db.status",
            "ok",
            Status.CRITICAL,
            'JSON field "checks.db.status" is "degraded", expected "ok"',
        ),
        ("workers", 4, Status.CRITICAL, 'JSON field "workers" is 3, expected 4'),
        ("checks.cache", "ok", Status.CRITICAL, 'JSON field "checks.cache" is missing'),
    ],
)
async def test_http_json_field_compared(
    server: Server, field: str, expected: object, status: Status, message: str | None
) -> None:
    """json_field/json_equals compare a dotted path as a string or a number."""
    result = await probe(
        {"url": f"{server.base}/health", "json_field": field, "json_equals": expected}
    )
    assert result.status is status, result.message
    if message is not None:
        assert result.message == message


async def test_http_json_field_on_non_json_body_is_critical(server: Server) -> None:
    """A body that is not JSON fails a json_field check with the parse error."""
    result = await probe({"url": f"{server.base}/ok", "json_field": "status"})
    assert result.status is Status.CRITICAL
    assert result.message.startswith("body is not JSON")


async def test_http_hanging_handler_is_critical_within_timeout(server: Server) -> None:
    """A server that never answers makes the check critical at its timeout."""
    began = time.perf_counter()
    result = await probe({"url": f"{server.base}/hang", "timeout": "300ms"})
    assert result.status is Status.CRITICAL
    assert "timeout" in result.message
    assert time.perf_counter() - began < 1.0


async def test_http_redirect_followed(server: Server) -> None:
    """A redirect is followed to the final answer, which is judged."""
    result = await probe({"url": f"{server.base}/redirect", "body_contains": "ok"})
    assert result.status is Status.OK, result.message
    assert "after 1 redirect" in result.message


async def test_http_redirect_not_followed_when_disabled(server: Server) -> None:
    """With follow_redirects off, the redirect itself is the answer."""
    result = await probe({"url": f"{server.base}/redirect", "follow_redirects": False})
    assert result.status is Status.CRITICAL
    assert result.values["status_code"] == 302
    result = await probe(
        {
            "url": f"{server.base}/redirect",
            "follow_redirects": False,
            "expect_status": [302],
        }
    )
    assert result.status is Status.OK


async def test_http_infinite_redirects_are_a_loop(server: Server) -> None:
    """More redirects than max_redirects is a critical redirect loop."""
    result = await probe({"url": f"{server.base}/loop", "max_redirects": 3})
    assert result.status is Status.CRITICAL
    assert result.message.startswith("redirect loop: more than 3 redirects")


async def test_http_huge_body_cut_at_max_body_bytes(server: Server) -> None:
    """A 50 MiB body is read only up to max_body_bytes, then the connection is
    dropped, and the result says the body was cut."""
    began = time.perf_counter()
    result = await probe({"url": f"{server.base}/huge", "body_contains": "needle"})
    elapsed = time.perf_counter() - began
    assert result.status is Status.CRITICAL
    assert result.message == 'body does not contain "needle" (body cut at 1 MiB)'
    assert result.values["body_bytes"] == 1024 * 1024
    await asyncio.wait_for(server.state["huge_done"].wait(), 5)
    assert server.state["huge_sent"] < HUGE_BODY_BYTES // 2
    assert elapsed < 2.0


async def test_http_truncated_body_still_ok_without_body_rules(server: Server) -> None:
    """Cutting the body is not a failure in itself; the message mentions it."""
    result = await probe({"url": f"{server.base}/huge", "max_body_bytes": 1000})
    assert result.status is Status.OK, result.message
    assert result.message.endswith("(body cut at 1000 bytes)")
    assert result.values["body_bytes"] == 1000


async def test_http_chunked_body_decoded(server: Server) -> None:
    """A chunked body is reassembled before it is searched and counted."""
    result = await probe(
        {"url": f"{server.base}/chunked", "body_contains": "chunked world"}
    )
    assert result.status is Status.OK, result.message
    assert result.values["body_bytes"] == len(b"hello chunked world")


async def test_http_connection_refused_is_critical() -> None:
    """Nothing listening on the port is critical: the target is down."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    result = await probe({"url": f"http://127.0.0.1:{port}/"})
    assert result.status is Status.CRITICAL
    assert result.message == f"cannot connect to 127.0.0.1:{port}: connection refused"


async def test_http_unresolvable_host_is_unknown() -> None:
    """A host name that does not resolve means the probe could not run."""
    result = await probe({"url": "http://no-such-host.invalid/health"})
    assert result.status is Status.UNKNOWN
    assert result.message.startswith("cannot resolve host no-such-host.invalid: ")


@pytest.mark.parametrize(
    ("table", "status", "fragment"),
    [
        ({"latency_warning": "50ms"}, Status.WARNING, "slow: "),
        (
            {"latency_warning": "50ms", "latency_critical": "100ms"},
            Status.CRITICAL,
            "slow: ",
        ),
        ({"latency_warning": "5s"}, Status.OK, "HTTP 200"),
    ],
)
async def test_http_latency_thresholds(
    server: Server, table: dict[str, Any], status: Status, fragment: str
) -> None:
    """A slow answer is a warning or critical per the latency thresholds."""
    result = await probe({"url": f"{server.base}/slow", **table})
    assert result.status is status, result.message
    assert fragment in result.message
    assert result.values["latency_seconds"] >= 0.15


async def test_http_post_with_body_and_headers(server: Server) -> None:
    """method, body and headers are sent as configured."""
    result = await probe(
        {
            "url": f"{server.base}/echo",
            "method": "POST",
            "body": '{"ping": 1}',
            "headers": {"Content-Type": "application/json"},
            "body_contains": 'POST application/json {"ping": 1}',
        }
    )
    assert result.status is Status.OK, result.message


async def test_http_host_header_override(server: Server) -> None:
    """A Host header reaches the server in place of the URL's host."""
    result = await probe(
        {"url": f"{server.base}/ok", "headers": {"Host": "api.copysai.com"}}
    )
    assert result.status is Status.OK
    assert server.state["host"] == "api.copysai.com"


@pytest.mark.parametrize(
    ("reply", "status", "fragment"),
    [
        (b"HTTP/1.0 200 OK\r\n\r\nread until close", Status.OK, "HTTP 200"),
        (
            b"HTTP/1.1 100 Continue\r\n\r\n"
            b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok",
            Status.OK,
            "HTTP 200",
        ),
        (
            b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\nshort",
            Status.CRITICAL,
            "HTTP 200: connection closed after 5 body bytes, before the end",
        ),
        (
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
            Status.CRITICAL,
            "invalid HTTP response: bad chunk size",
        ),
        (b"SSH-2.0-OpenSSH_9.2\r\n\r\n", Status.CRITICAL, "bad status line"),
        (b"", Status.CRITICAL, "connection closed before a response"),
    ],
)
async def test_http_raw_responses_parsed(
    raw_server: Callable[[bytes], Awaitable[str]],
    reply: bytes,
    status: Status,
    fragment: str,
) -> None:
    """Bodies read until close, interim 1xx answers, short bodies and garbage
    are each judged right."""
    url = await raw_server(reply)
    result = await probe({"url": url})
    assert result.status is status, result.message
    assert fragment in result.message


async def test_http_header_block_size_bounded(
    raw_server: Callable[[bytes], Awaitable[str]],
) -> None:
    """An endless header block is refused after 64 KiB instead of buffered."""
    url = await raw_server(b"HTTP/1.1 200 OK\r\n" + b"X-Filler: aaaaaaaa\r\n" * 8000)
    result = await probe({"url": url})
    assert result.status is Status.CRITICAL
    assert "headers longer than 65536 bytes" in result.message


# TLS


@dataclass
class Pki:
    ca_file: Path
    cert_file: Path
    key_file: Path
    not_after: float


def _name(common_name: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


def _make_pki(directory: Path, days: int = 30) -> Pki:
    """A CA and a leaf for DNS name `localhost` only (no IP), valid `days`."""
    now = datetime.datetime.now(datetime.UTC)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_cert = (
        x509.CertificateBuilder()
        .subject_name(_name("Sentinel Test CA"))
        .issuer_name(_name("Sentinel Test CA"))
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(days=1))
        .not_valid_after(now + datetime.timedelta(days=365))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(ca_key, hashes.SHA256())
    )
    leaf_key = ec.generate_private_key(ec.SECP256R1())
    leaf = (
        x509.CertificateBuilder()
        .subject_name(_name("localhost"))
        .issuer_name(ca_cert.subject)
        .public_key(leaf_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(days=1))
        .not_valid_after(now + datetime.timedelta(days=days))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName("localhost")]), False)
        .sign(ca_key, hashes.SHA256())
    )
    pki = Pki(
        ca_file=directory / "ca.pem",
        cert_file=directory / "leaf.pem",
        key_file=directory / "leaf.key",
        not_after=leaf.not_valid_after_utc.timestamp(),
    )
    pki.ca_file.write_bytes(ca_cert.public_bytes(serialization.Encoding.PEM))
    pki.cert_file.write_bytes(leaf.public_bytes(serialization.Encoding.PEM))
    pki.key_file.write_bytes(
        leaf_key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return pki


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    return _make_pki(tmp_path_factory.mktemp("pki"))


@pytest.fixture
async def tls_base(pki: Pki) -> AsyncIterator[str]:
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(pki.cert_file, pki.key_file)
    state: dict[str, Any] = {"huge_done": asyncio.Event()}
    release = asyncio.Event()
    runner, port = await _serve(_app(state, release), context)
    yield f"https://127.0.0.1:{port}"
    release.set()
    await runner.cleanup()


async def test_http_tls_days_left_read_without_verification(
    tls_base: str, pki: Pki
) -> None:
    """With verify_tls off, the certificate's days left are still read."""
    result = await probe({"url": f"{tls_base}/ok", "verify_tls": False})
    assert result.status is Status.OK, result.message
    expected_days = (pki.not_after - time.time()) / 86400
    assert result.values["tls_days_left"] == pytest.approx(expected_days, abs=0.01)
    assert "certificate valid 30 more days" in result.message


async def test_http_tls_untrusted_certificate_is_critical(tls_base: str) -> None:
    """A certificate that does not verify is critical and says why."""
    result = await probe({"url": f"{tls_base}/ok", "headers": {"Host": "localhost"}})
    assert result.status is Status.CRITICAL
    assert "TLS certificate of localhost is not valid" in result.message


async def test_http_tls_custom_ca_and_sni_from_host_header(
    tls_base: str, pki: Pki
) -> None:
    """With the CA given, the name to verify comes from the Host header; the
    URL's bare IP does not match the certificate."""
    by_name = await probe(
        {
            "url": f"{tls_base}/ok",
            "tls_ca_file": str(pki.ca_file),
            "headers": {"Host": "localhost"},
        }
    )
    assert by_name.status is Status.OK, by_name.message
    by_ip = await probe({"url": f"{tls_base}/ok", "tls_ca_file": str(pki.ca_file)})
    assert by_ip.status is Status.CRITICAL
    assert "IP address mismatch" in by_ip.message


@pytest.mark.parametrize(
    ("table", "status"),
    [
        ({"tls_days_warning": 60, "tls_days_critical": 7}, Status.WARNING),
        ({"tls_days_warning": 60, "tls_days_critical": 40}, Status.CRITICAL),
    ],
)
async def test_http_tls_days_thresholds(
    tls_base: str, table: dict[str, Any], status: Status
) -> None:
    """Fewer days left than a threshold is a warning or critical."""
    result = await probe({"url": f"{tls_base}/ok", "verify_tls": False, **table})
    assert result.status is status
    assert re.fullmatch(r"TLS certificate expires in (29|30)\.\d days", result.message)


def test_http_der_not_after_reads_generalized_time(tmp_path: Path) -> None:
    """Expiry dates after 2049 use GeneralizedTime and are read too."""
    key = ec.generate_private_key(ec.SECP256R1())
    not_after = datetime.datetime(2061, 3, 4, 5, 6, 7, tzinfo=datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(_name("far"))
        .issuer_name(_name("far"))
        .public_key(key.public_key())
        .serial_number(1)
        .not_valid_before(datetime.datetime(2020, 1, 1, tzinfo=datetime.UTC))
        .not_valid_after(not_after)
        .add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("::1"))]),
            False,
        )
        .sign(key, hashes.SHA256())
    )
    assert der_not_after(cert.public_bytes(serialization.Encoding.DER)) == (
        not_after.timestamp()
    )


# Configuration


@pytest.mark.parametrize(
    ("table", "key", "fragment"),
    [
        ({"url": "ftp://example.com/"}, "url", "the scheme must be http or https"),
        ({"url": "http:///path"}, "url", "there is no host"),
        ({"url": "http://example.com:99999/"}, "url", "is not usable"),
        ({"url": "http://user:pw@example.com/"}, "url", "credentials in the URL"),
        ({"url": "http://example.com/a b"}, "url", "percent-encoding"),
        (
            {"url": "http://x/", "latency_warning": "fast"},
            "latency_warning",
            "not a duration",
        ),
        ({"url": "http://x/", "expect_status": [200, 700]}, "expect_status", "700"),
        (
            {"url": "http://x/", "headers": {"Content-Length": "5"}},
            "headers.Content-Length",
            "",
        ),
        ({"url": "http://x/", "json_equals": "ok"}, "json_equals", "needs json_field"),
        ({"url": "http://x/", "tls_ca_file": "/nonexistent/ca.pem"}, "tls_ca_file", ""),
        ({"url": "http://x/", "colour": "blue"}, "colour", ""),
        (
            {"url": "http://x/", "tls_days_warning": 3},
            "tls_days_warning",
            "must come first",
        ),
    ],
)
def test_http_config_errors_name_the_key(
    table: dict[str, Any], key: str, fragment: str
) -> None:
    """Bad settings leave the check out and name the key and the reason."""
    check, problems = build(table)
    assert check is None
    messages = [str(p) for p in problems.errors]
    assert any(f"checks.web.{key}: " in m and fragment in m for m in messages), messages


def test_http_config_defaults() -> None:
    """A bare url builds a check with the documented defaults."""
    check, problems = build({"url": "https://api.copysai.com/health"})
    assert isinstance(check, HttpCheck), [str(p) for p in problems.items]
    settings = check.settings
    assert settings.max_body_bytes == 1024 * 1024
    assert settings.max_redirects == 5
    assert settings.follow_redirects is True
    assert settings.verify_tls is True
    assert check.spec.timeout_s == 10.0
