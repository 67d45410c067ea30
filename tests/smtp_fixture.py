"""A real SMTP peer (aiosmtpd) on a loopback port, keeping what it receives.

tests/conftest.py registers this module as a plugin, so any test can ask
for the ``mailbox`` fixture.
"""

from __future__ import annotations

import email
import email.policy
import time
from collections.abc import Iterator
from email.message import EmailMessage
from typing import Any

import pytest
from aiosmtpd.controller import Controller

from tests.daemon_harness import free_port


class Mailbox:
    """An aiosmtpd handler that keeps what it receives, or refuses as told."""

    def __init__(self) -> None:
        self.messages: list[EmailMessage] = []
        self.arrivals: list[float] = []
        """Wall-clock instant each message was accepted."""
        self.rcpt_reply: str | None = None

    async def handle_RCPT(
        self, server: Any, session: Any, envelope: Any, address: str, rcpt_options: Any
    ) -> str:
        if self.rcpt_reply is not None:
            return self.rcpt_reply
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        parsed = email.message_from_bytes(envelope.content, policy=email.policy.default)
        assert isinstance(parsed, EmailMessage)
        self.messages.append(parsed)
        self.arrivals.append(time.time())
        return "250 Message accepted for delivery"


@pytest.fixture
def mailbox() -> Iterator[tuple[Mailbox, int]]:
    handler = Mailbox()
    port = free_port()
    controller = Controller(handler, hostname="127.0.0.1", port=port)
    controller.start()
    try:
        yield handler, port
    finally:
        controller.stop()
