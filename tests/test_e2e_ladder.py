"""Whole ladders through the real daemon process and real peers: an aiohttp
webhook receiver, aiosmtpd, moto's SNS and Mosquitto.

Delays are two or three seconds so a whole ladder runs in a test; each page
must arrive at its step's deadline, within a second.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiomqtt
import pytest

from tests.daemon_harness import (
    Api,
    Target,
    WebhookReceiver,
    free_port,
    start_daemon,
    wait_until,
)
from tests.moto_fixture import MotoServer
from tests.smtp_fixture import Mailbox

TOKEN = "e2e-admin-token-0123456789abcdef"
ACK_SECRET = "e2e-ack-secret-0123456789abcdef"
# A page may leave up to this long after its deadline: the engine wakes at
# least once a second, and delivery itself takes a little.
ON_TIME_S = 1.0


@pytest.fixture
async def target() -> AsyncIterator[Target]:
    server = Target()
    await server.start()
    yield server
    await server.stop()


@pytest.fixture
async def receiver() -> AsyncIterator[WebhookReceiver]:
    server = WebhookReceiver()
    await server.start()
    yield server
    await server.stop()


@dataclass
class MqttInbox:
    messages: list[tuple[float, str, dict[str, Any]]] = field(default_factory=list)


@pytest.fixture
async def mqtt_inbox() -> AsyncIterator[MqttInbox]:
    inbox = MqttInbox()
    subscribed = asyncio.Event()

    async def listen() -> None:
        async with aiomqtt.Client("127.0.0.1", 1883) as client:
            await client.subscribe("sentinel-e2e/#", qos=1)
            subscribed.set()
            async for message in client.messages:
                assert isinstance(message.payload, bytes)
                inbox.messages.append(
                    (time.time(), str(message.topic), json.loads(message.payload))
                )

    task = asyncio.create_task(listen())
    await asyncio.wait_for(subscribed.wait(), 5)
    yield inbox
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)


def ladder_config(
    tmp_path: Path,
    *,
    api_port: int,
    target: Target,
    steps: list[tuple[str, str]],
    contacts: dict[str, str],
    channels: str = "",
    extra: str = "",
    rule: str = 'when = "critical"\nfail_after = 1',
) -> Path:
    """A daemon watching `target` with one P1 rule and a ladder of
    (delay, contact) steps; `contacts` maps a name to its channels list."""
    step_tables = "".join(
        "[[escalation.policies.default.steps]]\n"
        f'delay = "{delay}"\ncontacts = ["{who}"]\n'
        for delay, who in steps
    )
    contact_tables = "".join(
        f'[contacts.{name}]\nname = "{name.title()}"\nrole = "{name}"\n'
        f"channels = {chans}\n"
        for name, chans in contacts.items()
    )
    config = tmp_path / "sentinel.toml"
    config.write_text(
        f"""
[daemon]
state_dir = "{tmp_path / "state"}"
shutdown_timeout = "3s"
[api]
port = {api_port}
admin_token = "{TOKEN}"
[log]
format = "json"

[checks.api]
type = "http"
url = "{target.url}"
interval = "200ms"
timeout = "150ms"

[rules.api_down]
checks = ["api"]
{rule}
recover_after = 3
resolve_after = "1h"
priority = "P1"
category = "complete_service_outage"
summary = "API down: {{message}}"

[escalation]
public_url = "http://127.0.0.1:{api_port}"
ack_secret = "{ACK_SECRET}"
[escalation.priorities.P1]
policy = "default"
response_target = "1h"
ack_timeout = "1h"
[escalation.policies.default]
{step_tables}
{contact_tables}
[channels.webhook]
timeout = "2s"
secret = "e2e-webhook-secret"
{channels}
[outbox]
backoff_initial = "200ms"
backoff_max = "500ms"
max_attempts_per_channel = 3
{extra}
"""
    )
    return config


@pytest.fixture
async def api_port() -> AsyncIterator[int]:
    yield free_port()


async def only_incident(api: Api) -> dict[str, Any]:
    incidents = await wait_until(api.incidents, 10, "an incident")
    assert len(incidents) == 1, incidents
    status, body = await api.get(f"/api/v1/incidents/{incidents[0]['id']}")
    assert status == 200
    detail: dict[str, Any] = body
    return detail


def webhook_contacts(receiver: WebhookReceiver, *names: str) -> dict[str, str]:
    """Contacts each paged by webhook at their own path on `receiver`."""
    return {
        name: f'[{{ type = "webhook", to = "{receiver.url(name)}" }}]' for name in names
    }


async def kill_after_step_one(
    config: Path,
    api_port: int,
    target: Target,
    receiver: WebhookReceiver,
    *,
    down_for_s: float,
) -> dict[str, Any]:
    """Trigger, SIGKILL the daemon once step 1 has paged, stay down a while,
    restart, and wait for the last step (owner); returns the incident."""
    daemon, api = await start_daemon(config, api_port, TOKEN)
    target.healthy = False
    try:
        await wait_until(lambda: receiver.pages_for("support"), 10, "step 1")
        daemon.kill()
        await api.close()
        await asyncio.sleep(down_for_s)
        daemon, api = await start_daemon(config, api_port, TOKEN)
        await wait_until(lambda: receiver.pages_for("owner"), 10, "step 3")
        return await only_incident(api)
    finally:
        await api.close()
        assert daemon.stop() == 0


async def test_full_ladder_pages_each_step_on_time_through_every_channel(
    tmp_path: Path,
    api_port: int,
    target: Target,
    receiver: WebhookReceiver,
    mailbox: tuple[Mailbox, int],
    moto: MotoServer,
    mqtt_inbox: MqttInbox,
) -> None:
    """Webhook at the trigger, email 2 s later, SMS 2 s after that, MQTT 2 s
    after that: each page arrives within a second of its deadline, and each
    carries the incident, its step and an ack link."""
    box, smtp_port = mailbox
    config = ladder_config(
        tmp_path,
        api_port=api_port,
        target=target,
        steps=[("0s", "support"), ("2s", "lead"), ("2s", "owner"), ("2s", "emergency")],
        contacts={
            "support": f'[{{ type = "webhook", to = "{receiver.url("support")}" }}]',
            "lead": '[{ type = "email", to = "lead@example.com" }]',
            "owner": '[{ type = "sms", to = "+15550100003" }]',
            "emergency": '[{ type = "mqtt", to = "sentinel-e2e/pages/emergency" }]',
        },
        channels=f"""
[channels.email]
host = "127.0.0.1"
port = {smtp_port}
security = "none"
from = "sentinel@example.com"
[channels.sms]
region = "us-east-1"
endpoint_url = "{moto.endpoint_url}"
access_key_id = "testing"
secret_access_key = "testing"
[channels.mqtt]
host = "127.0.0.1"
port = 1883
""",
    )
    daemon, api = await start_daemon(config, api_port, TOKEN)
    try:
        target.healthy = False
        await wait_until(lambda: receiver.pages, 10, "the first page")
        await wait_until(lambda: mqtt_inbox.messages, 12, "the MQTT page")
        incident = await only_incident(api)
    finally:
        await api.close()
        assert daemon.stop() == 0

    opened = incident["opened_at"]
    webhook_page = receiver.pages[0]
    assert webhook_page["incident"] == incident["id"]
    assert webhook_page["priority"] == "P1"
    assert webhook_page["step"] == 1
    assert "/ack/" in webhook_page["ack_url"]
    assert opened <= receiver.arrivals[0] <= opened + ON_TIME_S

    assert len(box.messages) == 1
    mail_at, mail = box.arrivals[0], box.messages[0]
    assert incident["id"] in mail["Subject"]
    assert opened + 2 <= mail_at <= opened + 2 + ON_TIME_S

    sms = moto.sent_sms()
    assert len(sms) == 1
    number, text = sms[0]
    assert number == "+15550100003"
    assert len(text) <= 160 and "/ack/" in text
    sms_events = [e for e in incident["timeline"] if e["kind"] == "page_sent"]
    sms_sent = [e["at"] for e in sms_events if e["detail"].get("channel") == "sms"]
    assert sms_sent and opened + 4 <= sms_sent[0] <= opened + 4 + ON_TIME_S

    mqtt_at, topic, payload = mqtt_inbox.messages[0]
    assert topic == "sentinel-e2e/pages/emergency"
    assert payload["step"] == 4
    assert opened + 6 <= mqtt_at <= opened + 6 + ON_TIME_S
    assert len(mqtt_inbox.messages) == 1


async def test_ack_link_post_stops_ladder_and_get_does_not(
    tmp_path: Path, api_port: int, target: Target, receiver: WebhookReceiver
) -> None:
    """Opening the ack link (GET) acknowledges nothing and the ladder goes on;
    the POST acknowledges and no later step pages; the link then refuses a
    second use, and a forged link is refused."""
    config = ladder_config(
        tmp_path,
        api_port=api_port,
        target=target,
        steps=[("0s", "support"), ("2s", "lead"), ("2s", "owner")],
        contacts=webhook_contacts(receiver, "support", "lead", "owner"),
    )
    daemon, api = await start_daemon(config, api_port, TOKEN)
    try:
        target.healthy = False
        await wait_until(lambda: receiver.pages_for("support"), 10, "step 1")
        ack_url = receiver.pages_for("support")[0]["ack_url"]
        path = ack_url.split(f"127.0.0.1:{api_port}", 1)[1]

        status, html = await api.get(path)
        assert status == 200
        assert "<form" in html and 'method="post"' in html.lower()
        await wait_until(
            lambda: receiver.pages_for("lead"), 5, "step 2 despite the GET"
        )

        status, _ = await api.post(path, auth=False)
        assert status == 200
        incident = await only_incident(api)
        assert incident["state"] == "acknowledged"
        assert incident["acked_by"] == "support"
        assert incident["acked_via"] == "link"

        await asyncio.sleep(3)  # past step 3's deadline
        assert receiver.pages_for("owner") == []

        status, _ = await api.post(path, auth=False)
        assert status == 409
        token = path.rsplit("/", 1)[1]
        forged = token[:-2] + ("AA" if not token.endswith("AA") else "BB")
        status, _ = await api.post(f"/ack/{forged}", auth=False)
        assert status == 400
    finally:
        await api.close()
        assert daemon.stop() == 0


async def test_sigkill_after_step_one_keeps_the_ladder(
    tmp_path: Path, api_port: int, target: Target, receiver: WebhookReceiver
) -> None:
    """SIGKILL right after step 1 and a restart: step 2 and step 3 fire at
    their original deadlines, step 1 is not paged again as a new page, and
    every page is delivered."""
    config = ladder_config(
        tmp_path,
        api_port=api_port,
        target=target,
        steps=[("0s", "support"), ("3s", "lead"), ("3s", "owner")],
        contacts=webhook_contacts(receiver, "support", "lead", "owner"),
    )
    incident = await kill_after_step_one(
        config, api_port, target, receiver, down_for_s=0
    )

    opened = incident["opened_at"]
    support = receiver.pages_for("support")
    # At-least-once: a repeat after the kill carries the same page id.
    assert len({p["page_id"] for p in support}) == 1
    lead_at = receiver.arrivals[receiver.pages.index(receiver.pages_for("lead")[0])]
    owner_at = receiver.arrivals[receiver.pages.index(receiver.pages_for("owner")[0])]
    assert opened + 3 <= lead_at <= opened + 3 + ON_TIME_S
    assert opened + 6 <= owner_at <= opened + 6 + ON_TIME_S
    assert len(receiver.pages_for("lead")) == 1
    assert len(receiver.pages_for("owner")) == 1
    assert all(p["state"] == "sent" for p in incident["pages"])


async def test_downtime_across_a_deadline_fires_the_missed_step_once(
    tmp_path: Path, api_port: int, target: Target, receiver: WebhookReceiver
) -> None:
    """Down through step 2's deadline: at restart step 2 fires at once (late,
    never skipped), and step 3 still fires at its original deadline."""
    config = ladder_config(
        tmp_path,
        api_port=api_port,
        target=target,
        steps=[("0s", "support"), ("2s", "lead"), ("4s", "owner")],
        contacts=webhook_contacts(receiver, "support", "lead", "owner"),
    )
    # Step 2 is due 2 s after the trigger: stay down past it.
    incident = await kill_after_step_one(
        config, api_port, target, receiver, down_for_s=3
    )

    opened = incident["opened_at"]
    assert len(receiver.pages_for("lead")) == 1
    owner_at = receiver.arrivals[receiver.pages.index(receiver.pages_for("owner")[0])]
    assert opened + 6 <= owner_at <= opened + 6 + ON_TIME_S


async def test_failing_webhook_retries_then_falls_back(
    tmp_path: Path,
    api_port: int,
    target: Target,
    receiver: WebhookReceiver,
    mqtt_inbox: MqttInbox,
) -> None:
    """A receiver answering 500 for a while gets the page once it recovers; a
    contact whose first channel stays down past the bound gets the page on its
    next channel, and the timeline says so."""
    dead_port = free_port()
    config = ladder_config(
        tmp_path,
        api_port=api_port,
        target=target,
        steps=[("0s", "support"), ("0s", "lead")],
        contacts={
            "support": f'[{{ type = "webhook", to = "{receiver.url("support")}" }}]',
            "lead": (
                f'[{{ type = "webhook", to = "http://127.0.0.1:{dead_port}/hook" }}, '
                '{ type = "mqtt", to = "sentinel-e2e/pages/lead" }]'
            ),
        },
        channels='[channels.mqtt]\nhost = "127.0.0.1"\nport = 1883\n',
    )
    receiver.fail_status = 500
    daemon, api = await start_daemon(config, api_port, TOKEN)
    try:
        target.healthy = False
        await wait_until(lambda: receiver.refused >= 2, 10, "failed attempts")
        receiver.fail_status = None
        await wait_until(
            lambda: receiver.pages_for("support"), 10, "the page after recovery"
        )
        await wait_until(lambda: mqtt_inbox.messages, 10, "the fallback page")
        incident = await only_incident(api)
    finally:
        await api.close()
        assert daemon.stop() == 0

    assert len(receiver.pages_for("support")) == 1
    kinds = [e["kind"] for e in incident["timeline"]]
    assert "page_failed" in kinds or "page_retry" in kinds
    assert "channel_fallback" in kinds
    lead_page = next(p for p in incident["pages"] if p["contact"] == "lead")
    assert lead_page["state"] == "sent"
    assert lead_page["sent_channel"] == "mqtt"
    assert mqtt_inbox.messages[0][2]["incident"] == incident["id"]


async def test_flapping_check_opens_one_incident(
    tmp_path: Path, api_port: int, target: Target, receiver: WebhookReceiver
) -> None:
    """A target that alternates up and down on every probe opens one
    incident, not one per flap."""
    config = ladder_config(
        tmp_path,
        api_port=api_port,
        target=target,
        steps=[("0s", "support")],
        contacts=webhook_contacts(receiver, "support"),
        rule='when = "critical"\nfail_window = [2, 4]',
    )
    daemon, api = await start_daemon(config, api_port, TOKEN)
    try:
        target.flapping = True
        await asyncio.sleep(4)  # about twenty probes, ten of them failing
        incidents = await api.incidents()
    finally:
        await api.close()
        assert daemon.stop() == 0
    assert target.requests >= 12
    assert len(incidents) == 1
    assert len(receiver.pages_for("support")) == 1
