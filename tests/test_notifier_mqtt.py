"""The MQTT notifier against the machine's Mosquitto on 127.0.0.1:1883."""

from __future__ import annotations

import asyncio
import json
import uuid

import aiomqtt
import pytest

from escalation.notifiers.base import DeliveryError
from escalation.notifiers.config import MqttSettings
from escalation.notifiers.mqtt import MqttNotifier
from escalation.policy import ChannelTarget
from tests.daemon_harness import free_port
from tests.test_notifier_webhook import ACK_URL, make_page

BROKER = MqttSettings(
    host="127.0.0.1", port=1883, timeout_s=2.0, client_id="sentinel-test"
)


@pytest.fixture
def topic() -> str:
    return f"sentinel-test/{uuid.uuid4().hex}/pages/alice"


async def test_mqtt_subscriber_receives_page_at_qos1(topic: str) -> None:
    """A subscriber gets the page as JSON, delivered with QoS 1."""
    page = make_page()
    async with aiomqtt.Client(
        "127.0.0.1", 1883, identifier=f"sub-{uuid.uuid4().hex[:8]}"
    ) as sub:
        await sub.subscribe(topic, qos=1)
        await MqttNotifier(BROKER).send(page, ChannelTarget("mqtt", topic))
        async with asyncio.timeout(5):
            message = await anext(aiter(sub.messages))

    assert message.qos == 1
    assert isinstance(message.payload, bytes)
    body = json.loads(message.payload)
    assert body["page_id"] == page.page_id
    assert body["incident"] == "INC-7"
    assert body["ack_url"] == ACK_URL


async def test_mqtt_concurrent_sends_all_arrive(topic: str) -> None:
    """Sends at the same time use distinct client ids, so none kicks another off."""
    notifier = MqttNotifier(BROKER)
    async with aiomqtt.Client(
        "127.0.0.1", 1883, identifier=f"sub-{uuid.uuid4().hex[:8]}"
    ) as sub:
        await sub.subscribe(topic, qos=1)
        await asyncio.gather(
            *(
                notifier.send(make_page(f"p{n}"), ChannelTarget("mqtt", topic))
                for n in range(5)
            )
        )
        received = set()
        async with asyncio.timeout(5):
            async for message in sub.messages:
                assert isinstance(message.payload, bytes)
                received.add(json.loads(message.payload)["page_id"])
                if len(received) == 5:
                    break
    assert received == {f"p{n}" for n in range(5)}


async def test_mqtt_closed_port_is_retryable(topic: str) -> None:
    """No broker listening is a retryable failure."""
    settings = MqttSettings(host="127.0.0.1", port=free_port(), timeout_s=1.0)
    with pytest.raises(DeliveryError) as caught:
        await MqttNotifier(settings).send(make_page(), ChannelTarget("mqtt", topic))
    assert caught.value.retryable
    assert caught.value.message.startswith("MQTT 127.0.0.1:")


async def test_mqtt_wildcard_topic_is_not_retryable() -> None:
    """A topic with a wildcard cannot be published to, ever."""
    with pytest.raises(DeliveryError) as caught:
        await MqttNotifier(BROKER).send(make_page(), ChannelTarget("mqtt", "pages/#"))
    assert not caught.value.retryable


async def test_mqtt_silent_broker_times_out_retryable(topic: str) -> None:
    """A broker that accepts the connection but never answers costs the timeout."""
    accepted: list[asyncio.StreamWriter] = []

    async def swallow(
        reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        accepted.append(writer)

    server = await asyncio.start_server(swallow, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    settings = MqttSettings(host="127.0.0.1", port=port, timeout_s=0.5)
    try:
        with pytest.raises(DeliveryError) as caught:
            await MqttNotifier(settings).send(make_page(), ChannelTarget("mqtt", topic))
    finally:
        for writer in accepted:
            writer.close()
        server.close()
        await server.wait_closed()
    assert caught.value.retryable
    assert "within 0.5 s" in caught.value.message
