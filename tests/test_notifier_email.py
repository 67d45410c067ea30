"""The email notifier against a real aiosmtpd server on 127.0.0.1, and the
text rendering it uses."""

from __future__ import annotations

from collections.abc import AsyncIterator
from email.message import EmailMessage
from typing import Any

import pytest
from aiosmtpd.controller import Controller
from aiosmtpd.smtp import AuthResult

from checks.settings import Secret
from escalation.model import PageKind
from escalation.notifiers import render
from escalation.notifiers.base import DeliveryError
from escalation.notifiers.config import EmailSettings
from escalation.notifiers.email import EmailNotifier, message_id
from escalation.policy import ChannelTarget
from tests.daemon_harness import free_port
from tests.smtp_fixture import Mailbox
from tests.test_notifier_webhook import ACK_URL, make_page

TO = ChannelTarget("email", "alice@example.com")


@pytest.fixture
async def notifier(mailbox: tuple[Mailbox, int]) -> AsyncIterator[EmailNotifier]:
    settings = EmailSettings(
        host="127.0.0.1",
        port=mailbox[1],
        security="none",
        sender="Sentinel <sentinel@copysai.com>",
        timeout_s=2.0,
    )
    notifier = EmailNotifier(settings)
    yield notifier
    await notifier.close()


def _parts(message: EmailMessage) -> dict[str, str]:
    return {
        part.get_content_type(): part.get_content()
        for part in message.walk()
        if not part.is_multipart()
    }


async def test_email_send_delivers_text_and_html(
    notifier: EmailNotifier, mailbox: tuple[Mailbox, int]
) -> None:
    """The message has a plain and an HTML part, both with the ack link."""
    await notifier.send(make_page(), TO)

    [message] = mailbox[0].messages
    assert message["Subject"] == "[P1] INC-7 Database unreachable from web-1"
    assert message["To"] == "alice@example.com"
    assert message["Auto-Submitted"] == "auto-generated"
    parts = _parts(message)
    assert set(parts) == {"text/plain", "text/html"}
    assert ACK_URL in parts["text/plain"]
    assert f'href="{ACK_URL}"' in parts["text/html"]
    assert "connection refused" in parts["text/plain"]
    assert "Ladder step: 1 of 4" in parts["text/plain"]


async def test_email_message_id_is_stable_per_page(
    notifier: EmailNotifier, mailbox: tuple[Mailbox, int]
) -> None:
    """Sending a page twice gives the same Message-ID; another page gets another."""
    await notifier.send(make_page("INC-7-s1-r0-alice"), TO)
    await notifier.send(make_page("INC-7-s1-r0-alice"), TO)
    await notifier.send(make_page("INC-7-s2-r0-alice"), TO)

    ids = [message["Message-ID"] for message in mailbox[0].messages]
    assert ids[0] == ids[1] == "<INC-7-s1-r0-alice.page@copysai.com>"
    assert ids[2] != ids[0]
    assert message_id("weird id/with spaces", "x@y.org").startswith("<")
    assert " " not in message_id("weird id/with spaces", "x@y.org")


async def test_email_html_escapes_page_text(
    notifier: EmailNotifier, mailbox: tuple[Mailbox, int]
) -> None:
    """Markup in a summary arrives as text, not as HTML."""
    await notifier.send(make_page(summary="<script>alert(1)</script> & co"), TO)

    html = _parts(mailbox[0].messages[0])["text/html"]
    assert "<script>" not in html
    assert "&lt;script&gt;alert(1)&lt;/script&gt; &amp; co" in html


async def test_email_rejected_recipient_is_not_retryable(
    notifier: EmailNotifier, mailbox: tuple[Mailbox, int]
) -> None:
    """A 550 from the server is final."""
    mailbox[0].rcpt_reply = "550 5.1.1 No such user"
    with pytest.raises(DeliveryError) as caught:
        await notifier.send(make_page(), TO)
    assert not caught.value.retryable
    assert "550" in caught.value.message


async def test_email_temporary_refusal_is_retryable(
    notifier: EmailNotifier, mailbox: tuple[Mailbox, int]
) -> None:
    """A 4xx (greylisting, a full queue) is worth retrying."""
    mailbox[0].rcpt_reply = "451 4.7.1 Try again later"
    with pytest.raises(DeliveryError) as caught:
        await notifier.send(make_page(), TO)
    assert caught.value.retryable
    assert "451" in caught.value.message


async def test_email_closed_port_is_retryable() -> None:
    """Nobody listening on the SMTP port is a retryable connection failure."""
    settings = EmailSettings(
        host="127.0.0.1",
        port=free_port(),
        security="none",
        sender="s@x.org",
        timeout_s=1.0,
    )
    with pytest.raises(DeliveryError) as caught:
        await EmailNotifier(settings).send(make_page(), TO)
    assert caught.value.retryable
    assert caught.value.message.startswith("SMTP 127.0.0.1:")


async def test_email_starttls_without_server_support_is_not_retryable(
    mailbox: tuple[Mailbox, int],
) -> None:
    """Requiring STARTTLS from a server that lacks it is a configuration error."""
    settings = EmailSettings(
        host="127.0.0.1", port=mailbox[1], security="starttls", sender="s@x.org"
    )
    with pytest.raises(DeliveryError) as caught:
        await EmailNotifier(settings).send(make_page(), TO)
    assert not caught.value.retryable
    assert "does not offer STARTTLS" in caught.value.message
    assert mailbox[0].messages == []


async def test_email_login_and_wrong_password(mailbox: tuple[Mailbox, int]) -> None:
    """Good credentials deliver; a refused login is final and hides the password."""

    def authenticate(
        server: Any, session: Any, envelope: Any, mechanism: str, auth_data: Any
    ) -> AuthResult:
        ok = (auth_data.login, auth_data.password) == (b"sentinel", b"right-pw")
        # handled=False: aiosmtpd itself answers 235 or 535.
        return AuthResult(success=ok, handled=False)

    port = free_port()
    controller = Controller(
        mailbox[0],
        hostname="127.0.0.1",
        port=port,
        authenticator=authenticate,
        auth_require_tls=False,
    )
    controller.start()
    try:
        for password in ("right-pw", "wrong-pw"):
            settings = EmailSettings(
                host="127.0.0.1",
                port=port,
                security="none",
                sender="s@x.org",
                username="sentinel",
                password=Secret(password),
            )
            if password == "right-pw":
                await EmailNotifier(settings).send(make_page(), TO)
                continue
            with pytest.raises(DeliveryError) as caught:
                await EmailNotifier(settings).send(make_page(), TO)
    finally:
        controller.stop()
    assert len(mailbox[0].messages) == 1
    assert not caught.value.retryable
    assert "535" in caught.value.message
    assert "wrong-pw" not in caught.value.message


async def test_email_bad_address_is_not_retryable(notifier: EmailNotifier) -> None:
    """A target that is not an address fails for good without connecting."""
    with pytest.raises(DeliveryError) as caught:
        await notifier.send(make_page(), ChannelTarget("email", "alice"))
    assert not caught.value.retryable


def test_email_subject_prefixes_resolved_and_reminder() -> None:
    """Resolved and reminder pages say so first in the subject."""
    assert render.subject(make_page(kind=PageKind.RESOLVED).payload).startswith(
        "RESOLVED [P1] INC-7 "
    )
    assert render.subject(make_page(kind=PageKind.REMINDER).payload).startswith(
        "REMINDER [P1] INC-7 "
    )
    assert "\n" not in render.subject(make_page(summary="two\nlines").payload)


def test_email_resolved_body_has_no_ack_link() -> None:
    """A resolved page does not invite anyone to acknowledge."""
    payload = make_page(
        kind=PageKind.RESOLVED, note="fixed by restarting php-fpm"
    ).payload
    text = render.plain_text(payload)
    assert ACK_URL not in text
    assert "fixed by restarting php-fpm" in text


def test_email_digest_lists_every_page_with_its_link() -> None:
    """A digest's body names each held-back incident and its own ack link."""
    items = [
        {"incident": f"INC-{n}", "priority": "P2", "summary": f"queue stuck {n}",
         "kind": "page", "ack_url": f"https://s.example/ack/{n}"}
        for n in (3, 4)
    ]  # fmt: skip
    payload = {
        "kind": "digest",
        "priority": "P2",
        "incident": "INC-3",
        "summary": "2 pages held back",
        "pages": items,
    }
    text = render.plain_text(payload)
    html = render.html_text(payload)
    assert render.subject(payload) == "[P2] 2 pages held back: INC-3, INC-4"
    many = {
        **payload,
        "pages": [{**items[0], "incident": f"INC-{n}"} for n in range(9)],
    }
    assert render.subject(many) == (
        "[P2] 9 pages held back: INC-0, INC-1, INC-2, INC-3, INC-4 and 4 more"
    )
    for n in (3, 4):
        assert f"INC-{n} queue stuck {n}" in text
        assert f"https://s.example/ack/{n}" in text
        assert f'href="https://s.example/ack/{n}"' in html
