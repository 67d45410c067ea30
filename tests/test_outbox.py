"""The outbox worker on a real SqliteStore with real receivers (aiohttp,
Mosquitto) and a FakeClock; plus the [channels] and [outbox] configuration."""

from __future__ import annotations

import asyncio
import json
import random
import subprocess
import sys
import textwrap
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from pathlib import Path
from typing import Any

import aiomqtt
import pytest
import structlog
from prometheus_client import CollectorRegistry

from checks.clock import FakeClock
from checks.settings import Problems, Secret, Section
from escalation.metrics import EscalationMetrics
from escalation.model import (
    EventKind,
    Incident,
    IncidentState,
    OutboxPage,
    PageState,
    Priority,
    TimelineEvent,
)
from escalation.notifiers.base import Notifier
from escalation.notifiers.config import (
    MqttSettings,
    WebhookSettings,
    build_notifiers_config,
    create_notifiers,
)
from escalation.notifiers.mqtt import MqttNotifier
from escalation.notifiers.sms import SmsNotifier
from escalation.notifiers.webhook import WebhookNotifier
from escalation.outbox import OutboxSettings, OutboxWorker
from escalation.policy import ChannelTarget, Contact, RateLimit
from escalation.sqlite_store import SqliteStore
from tests.daemon_harness import free_port
from tests.test_notifier_webhook import Receiver, make_page, receiver_factory

SETTINGS = OutboxSettings(
    max_attempts_per_channel=3, backoff_initial_s=2.0, backoff_max_s=60.0, concurrency=8
)
SEED = 7


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[SqliteStore]:
    store = SqliteStore(tmp_path / "sentinel.db")
    await store.open()
    yield store
    await store.close()


@pytest.fixture
async def receivers() -> AsyncIterator[Callable[[], Awaitable[Receiver]]]:
    async with receiver_factory() as start:
        yield start


@pytest.fixture
async def receiver(receivers: Callable[[], Awaitable[Receiver]]) -> Receiver:
    return await receivers()


@pytest.fixture
def registry() -> CollectorRegistry:
    return CollectorRegistry()


@pytest.fixture
def metrics(registry: CollectorRegistry) -> EscalationMetrics:
    return EscalationMetrics(registry)


@pytest.fixture
async def webhook() -> AsyncIterator[WebhookNotifier]:
    notifier = WebhookNotifier(WebhookSettings(timeout_s=0.5))
    yield notifier
    await notifier.close()


def contact(
    name: str, *channels: ChannelTarget, rate_limit: RateLimit | None = None
) -> Contact:
    return Contact(name, name.title(), "on call", tuple(channels), rate_limit)


def hook(url: str) -> ChannelTarget:
    return ChannelTarget("webhook", url)


async def queue(
    store: SqliteStore, clock: FakeClock, who: str = "alice", **page_fields: Any
) -> OutboxPage:
    """Open an incident and queue its first page, as the engine does."""
    now = clock.wall()
    incident = await store.create_incident(
        Incident(
            id=0,
            dedup_key=f"k-{uuid.uuid4().hex}",
            rule="db",
            priority=Priority.P1,
            category="database connectivity loss",
            summary="Database unreachable",
            state=IncidentState.TRIGGERED,
            opened_at=now,
            policy={},
        )
    )
    page = make_page(
        f"{incident.ref}.0.s1.r0.{who}",
        incident_id=incident.id,
        contact=who,
        opened_at=now,
        **page_fields,
    )
    await store.save_incident(incident, pages=[page])
    return page


def make_worker(
    store: SqliteStore,
    clock: FakeClock,
    notifiers: dict[str, Notifier],
    contacts: Sequence[Contact],
    *,
    settings: OutboxSettings = SETTINGS,
    metrics: EscalationMetrics | None = None,
) -> OutboxWorker:
    book = {c.name: c for c in contacts}
    return OutboxWorker(
        store,
        notifiers,
        lambda: book,
        clock,
        settings=settings,
        metrics=metrics,
        rng=random.Random(SEED),
    )


async def stored(store: SqliteStore, page: OutboxPage) -> OutboxPage:
    found = await store.get_page(page.page_id)
    assert found is not None
    return found


async def kinds(store: SqliteStore, page: OutboxPage) -> list[EventKind]:
    return [event.kind for event in await events(store, page)]


async def events(store: SqliteStore, page: OutboxPage) -> list[TimelineEvent]:
    return await store.timeline(page.incident_id)


def sample(registry: CollectorRegistry, name: str, **labels: str) -> float | None:
    return registry.get_sample_value(name, labels)


def pages_total(registry: CollectorRegistry, channel: str, result: str) -> float | None:
    return sample(registry, "sentinel_pages_total", channel=channel, result=result)


async def test_outbox_retries_with_backoff_and_sends_once(
    store: SqliteStore,
    clock: FakeClock,
    webhook: WebhookNotifier,
    receiver: Receiver,
    metrics: EscalationMetrics,
    registry: CollectorRegistry,
) -> None:
    """500, 500, then 200: two jittered backoffs within their caps, then SENT once."""
    receiver.statuses = [500, 500]
    page = await queue(store, clock)
    worker = make_worker(
        store,
        clock,
        {"webhook": webhook},
        [contact("alice", hook(receiver.url))],
        metrics=metrics,
    )
    jitter = random.Random(SEED)

    assert await worker.deliver_due() == 1
    first = await stored(store, page)
    assert (first.state, first.attempts) == (PageState.PENDING, 1)
    assert first.not_before == pytest.approx(clock.wall() + jitter.random() * 2.0)
    assert await worker.deliver_due() == 0, "not due again before its backoff"

    clock.set(first.not_before)
    assert await worker.deliver_due() == 1
    second = await stored(store, page)
    assert second.attempts == 2
    assert second.not_before == pytest.approx(clock.wall() + jitter.random() * 4.0)
    assert second.last_error is not None and "HTTP 500" in second.last_error

    clock.set(second.not_before)
    assert await worker.deliver_due() == 1
    sent = await stored(store, page)
    assert sent.state is PageState.SENT
    assert (sent.sent_at, sent.sent_channel) == (clock.wall(), "webhook")
    assert [body["page_id"] for body in receiver.bodies] == [page.page_id] * 3
    assert await kinds(store, page) == [
        EventKind.PAGE_FAILED,
        EventKind.PAGE_RETRY,
        EventKind.PAGE_FAILED,
        EventKind.PAGE_RETRY,
        EventKind.PAGE_SENT,
    ]
    assert (await events(store, page))[-1].detail == {
        "page_id": page.page_id,
        "contact": "alice",
        "channel": "webhook",
        "attempt": 3,
    }
    assert pages_total(registry, "webhook", "sent") == 1
    assert pages_total(registry, "webhook", "failed") == 2
    assert pages_total(registry, "webhook", "retried") == 2
    assert sample(registry, "sentinel_trigger_to_first_page_seconds_count") == 1
    assert sample(
        registry, "sentinel_trigger_to_first_page_seconds_sum"
    ) == pytest.approx(clock.wall() - page.payload["opened_at"])
    assert sample(registry, "sentinel_outbox_pending_pages") == 0

    assert await worker.deliver_due() == 0
    assert len(receiver.requests) == 3, "a sent page is never sent again"


async def test_outbox_logs_a_failure_only_when_its_reason_changes(
    store: SqliteStore, clock: FakeClock, receiver: Receiver
) -> None:
    """500, 500, 503: two failure log lines, three timeline failures, no secrets."""
    receiver.statuses = [500, 500, 503]
    notifier = WebhookNotifier(WebhookSettings(timeout_s=0.5, secret=Secret("s3cret")))
    settings = OutboxSettings(max_attempts_per_channel=5)
    alice = contact("alice", hook(receiver.url))
    worker = make_worker(
        store, clock, {"webhook": notifier}, [alice], settings=settings
    )
    page = await queue(store, clock)

    with structlog.testing.capture_logs() as logs:
        for _ in range(4):
            await worker.deliver_due()
            clock.advance(settings.backoff_max_s)
    await notifier.close()

    failures = [entry for entry in logs if entry["event"] == "page_failed"]
    assert len(failures) == 2
    assert "HTTP 500" in failures[0]["error"]
    assert "HTTP 503" in failures[1]["error"]
    assert (await kinds(store, page)).count(EventKind.PAGE_FAILED) == 3
    assert [entry["event"] for entry in logs][-1] == "page_sent"
    assert "s3cret" not in repr(logs)
    assert "T0KEN" not in repr(logs)


async def test_outbox_falls_back_to_next_channel(
    store: SqliteStore,
    clock: FakeClock,
    webhook: WebhookNotifier,
    receiver: Receiver,
    metrics: EscalationMetrics,
    registry: CollectorRegistry,
) -> None:
    """Past the attempts bound on the webhook, the page goes out on MQTT."""
    receiver.statuses = [503] * 10
    topic = f"sentinel-test/{uuid.uuid4().hex}/alice"
    mqtt = MqttNotifier(MqttSettings(host="127.0.0.1", timeout_s=2.0))
    alice = contact("alice", hook(receiver.url), ChannelTarget("mqtt", topic))
    worker = make_worker(
        store, clock, {"webhook": webhook, "mqtt": mqtt}, [alice], metrics=metrics
    )
    page = await queue(store, clock)

    async with aiomqtt.Client(
        "127.0.0.1", identifier=f"sub-{uuid.uuid4().hex[:8]}"
    ) as sub:
        await sub.subscribe(topic, qos=1)
        for _ in range(SETTINGS.max_attempts_per_channel):
            await worker.deliver_due()
            clock.advance(SETTINGS.backoff_max_s)
        moved = await stored(store, page)
        assert (moved.state, moved.channel_index, moved.attempts) == (
            PageState.PENDING,
            1,
            0,
        )

        assert await worker.deliver_due() == 1
        async with asyncio.timeout(5):
            message = await anext(aiter(sub.messages))

    assert isinstance(message.payload, bytes)
    assert json.loads(message.payload)["page_id"] == page.page_id
    sent = await stored(store, page)
    assert (sent.state, sent.sent_channel) == (PageState.SENT, "mqtt")
    fallback = [
        e for e in await events(store, page) if e.kind is EventKind.CHANNEL_FALLBACK
    ]
    assert len(fallback) == 1
    assert fallback[0].detail["from_channel"] == "webhook"
    assert fallback[0].detail["to_channel"] == "mqtt"
    assert "3 attempts failed" in fallback[0].detail["reason"]
    assert len(receiver.requests) == SETTINGS.max_attempts_per_channel
    assert pages_total(registry, "webhook", "fallback") == 1


async def test_outbox_dead_when_every_channel_fails(
    store: SqliteStore,
    clock: FakeClock,
    webhook: WebhookNotifier,
    receiver: Receiver,
    metrics: EscalationMetrics,
    registry: CollectorRegistry,
) -> None:
    """A 404 falls through at once; a closed port to the end; then the page is DEAD."""
    receiver.statuses = [404]
    closed = f"http://127.0.0.1:{free_port()}/hooks/x"
    alice = contact("alice", hook(receiver.url), hook(closed))
    worker = make_worker(store, clock, {"webhook": webhook}, [alice], metrics=metrics)
    page = await queue(store, clock)

    await worker.deliver_due()
    assert (await stored(store, page)).channel_index == 1, "a 404 is not retried"
    for _ in range(SETTINGS.max_attempts_per_channel):
        await worker.deliver_due()
        clock.advance(SETTINGS.backoff_max_s)

    dead = await stored(store, page)
    assert dead.state is PageState.DEAD
    assert len(receiver.requests) == 1
    timeline = await events(store, page)
    assert [e.kind for e in timeline].count(EventKind.PAGE_FAILED) == 4
    assert timeline[1].kind is EventKind.CHANNEL_FALLBACK
    assert "HTTP 404" in timeline[1].detail["reason"]
    assert timeline[-1].kind is EventKind.PAGE_DEAD
    assert "cannot connect" in timeline[-1].detail["reason"]
    assert pages_total(registry, "webhook", "dead") == 1
    assert await worker.deliver_due() == 0


async def test_outbox_skips_channel_without_notifier(
    store: SqliteStore, clock: FakeClock, webhook: WebhookNotifier, receiver: Receiver
) -> None:
    """A channel type with no notifier is passed over, the reason recorded."""
    alice = contact("alice", ChannelTarget("sms", "+15555550123"), hook(receiver.url))
    worker = make_worker(store, clock, {"webhook": webhook}, [alice])
    page = await queue(store, clock)

    assert await worker.deliver_due() == 1

    sent = await stored(store, page)
    assert (sent.state, sent.channel_index) == (PageState.SENT, 1)
    fallback, sent_event = await events(store, page)
    assert fallback.kind is EventKind.CHANNEL_FALLBACK
    assert fallback.detail["reason"] == "no [channels.sms] is configured"
    assert sent_event.kind is EventKind.PAGE_SENT


async def test_outbox_removed_contact_is_dead(
    store: SqliteStore, clock: FakeClock, webhook: WebhookNotifier
) -> None:
    """A page for a contact no longer configured is given up, saying why."""
    worker = make_worker(store, clock, {"webhook": webhook}, [])
    page = await queue(store, clock, who="bob")

    assert await worker.deliver_due() == 1

    assert (await stored(store, page)).state is PageState.DEAD
    [dead] = await events(store, page)
    assert dead.detail["reason"] == "contact bob is no longer in the configuration"


async def test_outbox_new_worker_redelivers_after_crash(
    store: SqliteStore, clock: FakeClock, receiver: Receiver
) -> None:
    """Pages in flight when a worker dies stay PENDING; the next worker sends them."""
    receiver.hang = True
    first_notifier = WebhookNotifier(WebhookSettings(timeout_s=10.0))
    alice = contact("alice", hook(receiver.url))
    pages = [await queue(store, clock) for _ in range(3)]
    crashed = make_worker(store, clock, {"webhook": first_notifier}, [alice])

    task = asyncio.create_task(crashed.run())
    async with asyncio.timeout(5):
        while len(receiver.requests) < 3:
            await receiver.arrived.wait()
            receiver.arrived.clear()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    await first_notifier.close()
    assert [(await stored(store, p)).state for p in pages] == [PageState.PENDING] * len(
        pages
    )

    receiver.hang = False
    second_notifier = WebhookNotifier(WebhookSettings(timeout_s=2.0))
    try:
        worker = make_worker(store, clock, {"webhook": second_notifier}, [alice])
        assert await worker.deliver_due() == 3
    finally:
        await second_notifier.close()

    assert [(await stored(store, p)).state for p in pages] == [PageState.SENT] * len(
        pages
    )
    ids = [headers["X-Sentinel-Page-Id"] for headers, _ in receiver.requests]
    assert sorted(ids) == sorted([p.page_id for p in pages] * 2)


async def test_outbox_rate_limit_turns_storm_into_digest(
    store: SqliteStore, clock: FakeClock, webhook: WebhookNotifier, receiver: Receiver
) -> None:
    """40 pages in 40 s at 3 per minute reach the contact as 3 pages and one digest."""
    limit = RateLimit(pages=3, per_s=60.0)
    alice = contact("alice", hook(receiver.url), rate_limit=limit)
    worker = make_worker(store, clock, {"webhook": webhook}, [alice])
    start = clock.wall()
    pages = []
    for n in range(40):
        pages.append(await queue(store, clock, summary=f"queue worker {n} stuck"))
        await worker.deliver_due()
        clock.advance(1.0)
    assert len(receiver.requests) == 3
    held = await stored(store, pages[-1])
    assert (held.state, held.not_before) == (PageState.PENDING, start + limit.per_s)

    clock.set(start + limit.per_s)
    assert await worker.deliver_due() == 37

    assert len(receiver.requests) == 4
    digest = receiver.bodies[3]
    assert digest["kind"] == "digest"
    assert digest["count"] == 37
    assert [item["page_id"] for item in digest["pages"]] == [
        p.page_id for p in pages[3:]
    ]
    assert all(item["ack_url"] for item in digest["pages"])
    assert digest["summary"].startswith(
        "37 pages held back by the rate limit: INC-4, INC-5"
    )
    for page in pages[3:]:
        assert (await stored(store, page)).state is PageState.SENT
        sent_event = (await events(store, page))[-1]
        assert sent_event.detail["digest"] is True
        assert sent_event.detail["digest_id"] == digest["page_id"]
    assert await worker.deliver_due() == 0


async def test_outbox_storm_at_once_is_one_digest(
    store: SqliteStore, clock: FakeClock, webhook: WebhookNotifier, receiver: Receiver
) -> None:
    """More due pages than the limit allows at one moment go out as a single digest."""
    alice = contact(
        "alice", hook(receiver.url), rate_limit=RateLimit(pages=3, per_s=60.0)
    )
    worker = make_worker(store, clock, {"webhook": webhook}, [alice])
    for _ in range(10):
        await queue(store, clock)

    assert await worker.deliver_due() == 10
    assert [body["kind"] for body in receiver.bodies] == ["digest"]
    assert receiver.bodies[0]["count"] == 10


async def test_outbox_failed_digest_is_retried_as_digest(
    store: SqliteStore, clock: FakeClock, webhook: WebhookNotifier, receiver: Receiver
) -> None:
    """The pages of a failed digest wait alike and go out together again."""
    receiver.statuses = [500]
    alice = contact(
        "alice", hook(receiver.url), rate_limit=RateLimit(pages=1, per_s=10.0)
    )
    worker = make_worker(store, clock, {"webhook": webhook}, [alice])
    pages = [await queue(store, clock) for _ in range(4)]

    await worker.deliver_due()
    waits = {(await stored(store, p)).not_before for p in pages}
    assert len(waits) == 1
    clock.set(max(waits.pop(), clock.wall() + 10.0))
    assert await worker.deliver_due() == 4

    assert [body["kind"] for body in receiver.bodies] == ["digest", "digest"]
    assert receiver.bodies[0]["page_id"] == receiver.bodies[1]["page_id"]
    assert [(await stored(store, p)).state for p in pages] == [PageState.SENT] * len(
        pages
    )


async def test_outbox_hung_receiver_does_not_delay_other_contact(
    store: SqliteStore,
    clock: FakeClock,
    receivers: Callable[[], Awaitable[Receiver]],
) -> None:
    """While alice's webhook hangs, a page for bob queued later arrives promptly."""
    stuck, fine = await receivers(), await receivers()
    stuck.hang = True
    notifier = WebhookNotifier(WebhookSettings(timeout_s=5.0))
    people = [contact("alice", hook(stuck.url)), contact("bob", hook(fine.url))]
    worker = make_worker(store, clock, {"webhook": notifier}, people)
    task = asyncio.create_task(worker.run())
    try:
        alice_page = await queue(store, clock, who="alice")
        worker.wake()
        async with asyncio.timeout(2):
            await stuck.arrived.wait()

        bob_page = await queue(store, clock, who="bob")
        worker.wake()
        async with asyncio.timeout(0.5):
            await fine.arrived.wait()
            while (await stored(store, bob_page)).state is not PageState.SENT:
                await asyncio.sleep(0.01)
    finally:
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        await notifier.close()

    assert fine.bodies[0]["page_id"] == bob_page.page_id
    assert (await stored(store, alice_page)).state is PageState.PENDING


async def test_outbox_concurrency_bounds_sends_in_flight(
    store: SqliteStore, clock: FakeClock, receiver: Receiver
) -> None:
    """With concurrency 2, only two sends to a hung receiver are open at once."""
    receiver.hang = True
    notifier = WebhookNotifier(WebhookSettings(timeout_s=5.0))
    settings = OutboxSettings(concurrency=2)
    worker = make_worker(
        store, clock, {"webhook": notifier}, [contact("alice", hook(receiver.url))],
        settings=settings,
    )  # fmt: skip
    for _ in range(4):
        await queue(store, clock)
    task = asyncio.create_task(worker.run())
    try:
        async with asyncio.timeout(2):
            while len(receiver.requests) < 2:
                await receiver.arrived.wait()
                receiver.arrived.clear()
        await asyncio.sleep(0.2)
        assert len(receiver.requests) == 2
    finally:
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        await notifier.close()


async def test_outbox_reload_switches_notifiers(
    store: SqliteStore,
    clock: FakeClock,
    receivers: Callable[[], Awaitable[Receiver]],
) -> None:
    """After reload, sends use the new notifiers (here: signed with a new secret)."""
    target = await receivers()
    old = WebhookNotifier(WebhookSettings(timeout_s=1.0))
    new = WebhookNotifier(WebhookSettings(timeout_s=1.0, secret=Secret("k")))
    worker = make_worker(
        store, clock, {"webhook": old}, [contact("alice", hook(target.url))]
    )
    await queue(store, clock)
    await worker.deliver_due()
    worker.reload({"webhook": new}, SETTINGS)
    await queue(store, clock)
    await worker.deliver_due()
    await old.close()
    await new.close()

    assert ["X-Sentinel-Signature" in headers for headers, _ in target.requests] == [
        False,
        True,
    ]


# Configuration ----------------------------------------------------------------


def read(
    data: dict[str, Any], env: dict[str, str] | None = None
) -> tuple[Any, Problems]:
    problems = Problems()
    root = Section(data, "", problems, env=env or {})
    return build_notifiers_config(root), problems


def test_outbox_config_defaults() -> None:
    """No [channels] and no [outbox]: no channel, the documented outbox defaults."""
    config, problems = read({})
    assert problems.items == []
    assert config.types == frozenset()
    assert config.outbox == OutboxSettings(4, 2.0, 300.0, 8)


def test_outbox_config_reads_every_channel() -> None:
    """Each channel table yields its settings; secrets come from the environment."""
    config, problems = read(
        {
            "channels": {
                "webhook": {"timeout": "3s", "secret": "${HOOK_KEY}"},
                "email": {"host": "smtp.example.com", "security": "tls",
                          "from": "s@x.org", "username": "s", "password": "pw"},
                "sms": {"region": "eu-west-1", "access_key_id": "AKIA",
                        "secret_access_key": "sk", "sender_id": "Sentinel"},
                "mqtt": {"host": "broker", "tls": True, "client_id": "web-1"},
            },
            "outbox": {"max_attempts_per_channel": 2, "backoff_initial": "1s",
                       "backoff_max": "1m", "concurrency": 3},
        },
        env={"HOOK_KEY": "hunter2"},
    )  # fmt: skip
    assert problems.items == []
    assert config.types == {"webhook", "email", "sms", "mqtt"}
    assert config.webhook.timeout_s == 3.0
    assert config.webhook.secret.reveal() == "hunter2"
    assert (config.email.port, config.email.security) == (465, "tls")
    assert config.sms.region == "eu-west-1"
    assert (config.mqtt.port, config.mqtt.tls, config.mqtt.client_id) == (
        1883,
        True,
        "web-1",
    )
    assert config.outbox == OutboxSettings(2, 1.0, 60.0, 3)


def test_outbox_config_errors_name_the_key() -> None:
    """Bad values are reported with their key and what was expected."""
    _, problems = read(
        {
            "channels": {
                "pager": {},
                "email": {"host": "h", "from": "not-an-address", "security": "ssl",
                          "username": "u"},
                "sms": {"region": "mars", "sender_id": "with space"},
                "mqtt": {"host": "b", "port": 70000, "colour": "red"},
            },
            "outbox": {"backoff_initial": "10s", "backoff_max": "1s", "concurrency": 0},
        }
    )  # fmt: skip
    messages = {(p.key, p.message) for p in problems.errors}
    keys = {key for key, _ in messages}
    assert (
        "channels.pager",
        "is not a channel type; use one of webhook, email, sms, mqtt",
    ) in (messages)
    assert {
        "channels.email.from",
        "channels.email.security",
        "channels.email.password",
        "channels.sms.region",
        "channels.sms.sender_id",
        "channels.mqtt.port",
        "channels.mqtt.colour",
        "outbox.backoff_max",
        "outbox.concurrency",
    } <= keys


async def test_outbox_config_creates_one_notifier_per_channel() -> None:
    """Every configured channel gets its notifier; the SNS client waits for a page."""
    config, problems = read(
        {
            "channels": {
                "webhook": {},
                "email": {"host": "127.0.0.1", "from": "s@x.org"},
                "sms": {},
                "mqtt": {"host": "127.0.0.1"},
            }
        }
    )
    assert problems.errors == []
    notifiers = await create_notifiers(config)
    try:
        assert {name: n.channel for name, n in notifiers.items()} == {
            "webhook": "webhook",
            "email": "email",
            "sms": "sms",
            "mqtt": "mqtt",
        }
        assert isinstance(notifiers["sms"], SmsNotifier)
        assert notifiers["sms"]._client is None
    finally:
        for notifier in notifiers.values():
            await notifier.close()


def test_outbox_config_imports_channel_libraries_lazily() -> None:
    """A webhook-only configuration never imports aiobotocore or aiomqtt."""
    code = textwrap.dedent(
        """
        import asyncio, sys
        from checks.settings import Problems, Section
        from escalation.notifiers.config import build_notifiers_config
        from escalation.notifiers.config import create_notifiers
        data = {"channels": {"webhook": {}}}
        cfg = build_notifiers_config(Section(data, "", Problems()))
        notifiers = asyncio.run(create_notifiers(cfg))
        assert set(notifiers) == {"webhook"}, notifiers
        heavy = ("aiobotocore", "aiomqtt", "aiosmtplib")
        loaded = [name for name in heavy if name in sys.modules]
        assert not loaded, loaded
        """
    )
    subprocess.run(
        [sys.executable, "-c", code], check=True, cwd=Path(__file__).parent.parent
    )
