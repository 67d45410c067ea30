"""The webhook notifier against a real aiohttp receiver on 127.0.0.1.

`make_page` is shared by the other notifier and outbox tests."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import json
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import pytest
from aiohttp import web

from checks.settings import Secret
from escalation.model import OutboxPage, PageKind
from escalation.notifiers.base import DeliveryError
from escalation.notifiers.config import WebhookSettings
from escalation.notifiers.webhook import (
    TemplateError,
    WebhookNotifier,
    render_template,
    validate_body_template,
)
from escalation.policy import ChannelTarget
from tests.daemon_harness import free_port

ACK_URL = (
    "https://sentinel.example.com/ack/AQAAAAcBZWJ4AAECAwQFBmFsaWNlMTIzNDU2Nzg5MGFi"
)


def make_page(
    page_id: str = "INC-7-s1-r0-alice",
    *,
    incident_id: int = 7,
    contact: str = "alice",
    kind: PageKind = PageKind.PAGE,
    summary: str = "Database unreachable from web-1",
    priority: str = "P1",
    step: int = 1,
    repeat: int = 0,
    opened_at: float = 1_700_000_000.0,
    **extra: Any,
) -> OutboxPage:
    """A page with the payload the engine builds."""
    payload: dict[str, Any] = {
        "page_id": page_id,
        "kind": kind.value,
        "incident": f"INC-{incident_id}",
        "incident_number": incident_id,
        "priority": priority,
        "category": "database connectivity loss",
        "summary": summary,
        "state": "triggered",
        "started_at": "2023-11-14T22:13:20Z",
        "opened_at": opened_at,
        "step": step,
        "steps_total": 4,
        "repeat": repeat,
        "contact": contact,
        "contact_name": "Alice Moreau",
        "role": "support specialist",
        "evidence": [
            {
                "check": "db",
                "type": "mysql",
                "status": "critical",
                "message": "connection refused",
                "values": {"connect_ms": 3.0},
                "evidence": ["Can't connect to MySQL server on 'db' (111)"],
                "started_at": 1_700_000_000.0,
                "duration_s": 0.003,
            }
        ],
        "ack_url": ACK_URL,
        "ack_expires_at": 1_700_086_400,
        **extra,
    }
    return OutboxPage(
        page_id=page_id,
        incident_id=incident_id,
        contact=contact,
        kind=kind,
        step=step,
        payload=payload,
        created_at=opened_at,
        not_before=opened_at,
    )


Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


@dataclass
class Receiver:
    """An HTTP endpoint that records what it is sent and answers as told."""

    url: str
    requests: list[tuple[dict[str, str], bytes]] = field(default_factory=list)
    statuses: list[int] = field(default_factory=list)
    """Answers for the next requests in order; 200 once exhausted."""
    hang: bool = False
    arrived: asyncio.Event = field(default_factory=asyncio.Event)

    async def handle(self, request: web.Request) -> web.Response:
        self.requests.append((dict(request.headers), await request.read()))
        self.arrived.set()
        if self.hang:
            await asyncio.Event().wait()
        status = self.statuses.pop(0) if self.statuses else 200
        return web.Response(status=status, text="nope" if status >= 300 else "ok")

    @property
    def bodies(self) -> list[dict[str, Any]]:
        return [json.loads(body) for _, body in self.requests]


@contextlib.asynccontextmanager
async def receiver_factory() -> AsyncIterator[Callable[[], Awaitable[Receiver]]]:
    """A factory of receivers, each on its own port; all stopped on exit."""
    runners: list[web.AppRunner] = []

    async def start() -> Receiver:
        app = web.Application()
        receiver = Receiver(url="")
        app.router.add_post("/hooks/{token}", receiver.handle)
        runner = web.AppRunner(app, shutdown_timeout=0.1)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        port = runner.addresses[0][1]
        receiver.url = f"http://127.0.0.1:{port}/hooks/T0KEN"
        runners.append(runner)
        return receiver

    yield start
    for runner in runners:
        await runner.cleanup()


@pytest.fixture
async def receivers() -> AsyncIterator[Callable[[], Awaitable[Receiver]]]:
    async with receiver_factory() as start:
        yield start


@pytest.fixture
async def receiver(receivers: Callable[[], Awaitable[Receiver]]) -> Receiver:
    return await receivers()


@pytest.fixture
async def notifier() -> AsyncIterator[WebhookNotifier]:
    notifier = WebhookNotifier(WebhookSettings(timeout_s=0.5, secret=Secret("s3cret")))
    yield notifier
    await notifier.close()


async def test_webhook_send_posts_payload_with_page_id(
    notifier: WebhookNotifier, receiver: Receiver
) -> None:
    """The body is the payload plus page_id, and the page id is in a header."""
    page = make_page()
    await notifier.send(page, ChannelTarget("webhook", receiver.url))

    headers, _ = receiver.requests[0]
    body = receiver.bodies[0]
    assert headers["Content-Type"] == "application/json"
    assert headers["X-Sentinel-Page-Id"] == page.page_id
    assert body["page_id"] == page.page_id
    assert body["incident"] == "INC-7"
    assert body["priority"] == "P1"
    assert body["ack_url"] == ACK_URL
    assert body["evidence"][0]["message"] == "connection refused"


async def test_webhook_signature_verifies_with_the_secret(
    notifier: WebhookNotifier, receiver: Receiver
) -> None:
    """X-Sentinel-Signature is HMAC-SHA256 of the exact body bytes."""
    await notifier.send(make_page(), ChannelTarget("webhook", receiver.url))

    headers, raw = receiver.requests[0]
    expected = hmac.new(b"s3cret", raw, hashlib.sha256).hexdigest()
    assert headers["X-Sentinel-Signature"] == f"sha256={expected}"


async def test_webhook_target_secret_overrides_default(
    notifier: WebhookNotifier, receiver: Receiver
) -> None:
    """A contact channel's own secret signs instead of the channel default."""
    target = ChannelTarget("webhook", receiver.url, secret=Secret("contact-key"))
    await notifier.send(make_page(), target)

    headers, raw = receiver.requests[0]
    expected = hmac.new(b"contact-key", raw, hashlib.sha256).hexdigest()
    assert headers["X-Sentinel-Signature"] == f"sha256={expected}"


async def test_webhook_unsigned_without_secret(receiver: Receiver) -> None:
    """With no secret anywhere, no signature header is sent."""
    notifier = WebhookNotifier(WebhookSettings(timeout_s=0.5))
    try:
        await notifier.send(make_page(), ChannelTarget("webhook", receiver.url))
    finally:
        await notifier.close()
    headers, _ = receiver.requests[0]
    assert "X-Sentinel-Signature" not in headers


async def test_webhook_body_template_renders_json(
    notifier: WebhookNotifier, receiver: Receiver
) -> None:
    """A Slack-style template gets JSON-escaped values, in strings and bare."""
    template = (
        '{"text": "${priority} ${incident}: ${summary} ${ack_url}", "step": ${step}}'
    )
    page = make_page(summary='Quote " and \\ backslash\nnewline')
    options = {
        "body_template": template,
        "content_type": "application/json; charset=utf-8",
    }
    await notifier.send(page, ChannelTarget("webhook", receiver.url, options=options))

    headers, _ = receiver.requests[0]
    assert headers["Content-Type"] == "application/json; charset=utf-8"
    assert receiver.bodies[0] == {
        "text": f'P1 INC-7: Quote " and \\ backslash\nnewline {ACK_URL}',
        "step": 1,
    }


async def test_webhook_template_unknown_field_is_not_retryable(
    notifier: WebhookNotifier, receiver: Receiver
) -> None:
    """A template naming a field pages lack fails for good, before any request."""
    target = ChannelTarget(
        "webhook", receiver.url, options={"body_template": '{"a": "${nope}"}'}
    )
    with pytest.raises(DeliveryError) as caught:
        await notifier.send(make_page(), target)
    assert not caught.value.retryable
    assert "${nope}" in caught.value.message
    assert receiver.requests == []


def test_webhook_template_must_yield_json() -> None:
    """A template whose output is not JSON is refused at validation."""
    with pytest.raises(TemplateError, match="valid JSON"):
        validate_body_template('{"text": "${summary}"')
    validate_body_template('{"text": "${priority} ${incident}: ${summary} ${ack_url}"}')


def test_webhook_template_bare_placeholder_is_a_json_value() -> None:
    """Outside a string, a placeholder is the value as JSON; an absent one null."""
    rendered = render_template(
        '{"s": ${summary}, "checks": ${evidence}, "note": ${note}}',
        {"summary": "bare text", "evidence": [{"check": "db"}]},
    )
    assert json.loads(rendered) == {
        "s": "bare text",
        "checks": [{"check": "db"}],
        "note": None,
    }


async def test_webhook_server_error_is_retryable(
    notifier: WebhookNotifier, receiver: Receiver
) -> None:
    """HTTP 500 (and 429) are worth retrying."""
    receiver.statuses = [500, 429]
    target = ChannelTarget("webhook", receiver.url)
    for status in (500, 429):
        with pytest.raises(DeliveryError) as caught:
            await notifier.send(make_page(), target)
        assert caught.value.retryable
        assert f"HTTP {status}" in caught.value.message


async def test_webhook_not_found_is_not_retryable(
    notifier: WebhookNotifier, receiver: Receiver
) -> None:
    """HTTP 404 will not go away by retrying; the URL's token stays out of the error."""
    receiver.statuses = [404]
    with pytest.raises(DeliveryError) as caught:
        await notifier.send(make_page(), ChannelTarget("webhook", receiver.url))
    assert not caught.value.retryable
    assert "HTTP 404" in caught.value.message
    assert "T0KEN" not in caught.value.message
    assert "s3cret" not in caught.value.message


async def test_webhook_hung_receiver_times_out_retryable(
    notifier: WebhookNotifier, receiver: Receiver
) -> None:
    """A receiver that never answers costs the timeout, then a retryable failure."""
    receiver.hang = True
    loop = asyncio.get_running_loop()
    started = loop.time()
    with pytest.raises(DeliveryError) as caught:
        await notifier.send(make_page(), ChannelTarget("webhook", receiver.url))
    assert caught.value.retryable
    assert "did not answer within 0.5 s" in caught.value.message
    assert loop.time() - started < 2.0


async def test_webhook_closed_port_is_retryable(notifier: WebhookNotifier) -> None:
    """Nobody listening is a connection error, worth retrying."""
    url = f"http://127.0.0.1:{free_port()}/hooks/T0KEN"
    with pytest.raises(DeliveryError) as caught:
        await notifier.send(make_page(), ChannelTarget("webhook", url))
    assert caught.value.retryable
    assert "cannot connect" in caught.value.message
    assert "T0KEN" not in caught.value.message


async def test_webhook_session_is_reused(
    notifier: WebhookNotifier, receiver: Receiver
) -> None:
    """Consecutive sends share one connection pool."""
    target = ChannelTarget("webhook", receiver.url)
    await notifier.send(make_page("p1"), target)
    session = notifier._session
    await notifier.send(make_page("p2"), target)
    assert notifier._session is session
    assert [body["page_id"] for body in receiver.bodies] == ["p1", "p2"]
