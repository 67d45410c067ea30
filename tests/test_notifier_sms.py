"""The SMS notifier against a real moto server, and the 160-character text."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from checks.settings import Secret
from escalation.model import PageKind
from escalation.notifiers import render
from escalation.notifiers.base import DeliveryError
from escalation.notifiers.config import SmsSettings
from escalation.notifiers.sms import SmsNotifier
from escalation.policy import ChannelTarget
from tests.daemon_harness import free_port
from tests.moto_fixture import (
    DUMMY_ACCESS_KEY_ID,
    DUMMY_SECRET_ACCESS_KEY,
    MotoServer,
)
from tests.test_notifier_webhook import ACK_URL, make_page

PHONE = "+15555550123"


def _settings(endpoint_url: str) -> SmsSettings:
    return SmsSettings(
        region="us-east-1",
        endpoint_url=endpoint_url,
        access_key_id=DUMMY_ACCESS_KEY_ID,
        secret_access_key=Secret(DUMMY_SECRET_ACCESS_KEY),
        sender_id="Sentinel",
        timeout_s=5.0,
    )


@pytest.fixture
async def notifier(moto: MotoServer) -> AsyncIterator[SmsNotifier]:
    notifier = SmsNotifier(_settings(moto.endpoint_url))
    yield notifier
    await notifier.close()


async def test_sms_send_reaches_sns_within_160_chars(
    notifier: SmsNotifier,
    moto: MotoServer,
) -> None:
    """The SMS arrives at SNS, fits one segment and carries the whole ack link."""
    page = make_page(summary="Database unreachable from web-1 " * 8)
    await notifier.send(page, ChannelTarget("sms", PHONE))

    [(phone, text)] = moto.sent_sms()
    assert phone == PHONE
    assert len(text) <= 160
    assert text.startswith("P1 INC-7: Database unreachable")
    assert text.endswith(f"Ack: {ACK_URL}")
    assert "..." in text


async def test_sms_client_is_created_once(
    notifier: SmsNotifier,
    moto: MotoServer,
) -> None:
    """The SNS client is made on the first send and reused after."""
    assert notifier._client is None
    await notifier.send(make_page("a"), ChannelTarget("sms", PHONE))
    client = notifier._client
    await notifier.send(make_page("b"), ChannelTarget("sms", PHONE))
    assert notifier._client is client
    assert len(moto.sent_sms()) == 2


async def test_sms_invalid_phone_is_not_retryable(
    notifier: SmsNotifier,
    moto: MotoServer,
) -> None:
    """A number SNS refuses as a parameter will never work."""
    with pytest.raises(DeliveryError) as caught:
        await notifier.send(make_page(), ChannelTarget("sms", "555-0123"))
    assert not caught.value.retryable
    assert "InvalidParameter" in caught.value.message
    assert DUMMY_SECRET_ACCESS_KEY not in caught.value.message
    assert moto.sent_sms() == []


async def test_sms_unreachable_endpoint_is_retryable() -> None:
    """No SNS endpoint answering is a retryable failure."""
    notifier = SmsNotifier(_settings(f"http://127.0.0.1:{free_port()}"))
    try:
        with pytest.raises(DeliveryError) as caught:
            await notifier.send(make_page(), ChannelTarget("sms", PHONE))
    finally:
        await notifier.close()
    assert caught.value.retryable
    assert caught.value.message.startswith("SNS us-east-1: Could not connect")


def test_sms_text_keeps_the_link_and_cuts_the_summary() -> None:
    """Only the summary is shortened, with an ASCII ellipsis."""
    text = render.sms_text(make_page(summary="word " * 100).payload)
    assert len(text) == 160
    assert text.endswith(f"... Ack: {ACK_URL}")


def test_sms_text_short_page_is_whole() -> None:
    """A short page is sent as it is."""
    text = render.sms_text(make_page(summary="DB down").payload)
    assert text == f"P1 INC-7: DB down Ack: {ACK_URL}"


def test_sms_text_resolved_has_no_link() -> None:
    """A resolved page says so and offers nothing to acknowledge."""
    text = render.sms_text(make_page(kind=PageKind.RESOLVED, summary="DB down").payload)
    assert text == "RESOLVED P1 INC-7: DB down"


def test_sms_text_link_longer_than_limit_is_never_cut() -> None:
    """A link that cannot fit with the headline still goes whole."""
    long_url = "https://sentinel.example.com/ack/" + "x" * 150
    text = render.sms_text(make_page(ack_url=long_url).payload)
    assert text == f"P1 INC-7: Ack: {long_url}"


def test_sms_text_digest_names_incidents_and_one_link() -> None:
    """A digest SMS lists what it can and links the lead incident."""
    items = [
        {"incident": f"INC-{n}", "summary": f"worker {n} stuck", "kind": "page"}
        for n in range(10, 50)
    ]
    payload = {
        "kind": "digest",
        "priority": "P2",
        "incident": "INC-10",
        "ack_url": ACK_URL,
        "pages": items,
    }
    text = render.sms_text(payload)
    assert len(text) <= 160
    assert text.startswith("40 pages P2: INC-10 worker 10 stuck; INC-11")
    assert text.endswith(f"Ack INC-10: {ACK_URL}")
