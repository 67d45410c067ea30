"""What every channel implements: one `send` that either confirms delivery or
raises a `DeliveryError` saying whether trying again could help."""

from __future__ import annotations

import abc
from typing import ClassVar

from escalation.model import OutboxPage
from escalation.policy import ChannelTarget


class DeliveryError(Exception):
    """A send failed. `retryable` is False when the same send would fail the
    same way (a rejected address, a 404), so the outbox moves on to the
    contact's next channel at once instead of burning its retries.

    The message names the channel and peer but never a credential.
    """

    def __init__(self, message: str, *, retryable: bool) -> None:
        super().__init__(message)
        self.message = message
        self.retryable = retryable


class Notifier(abc.ABC):
    channel: ClassVar[str]
    """"webhook", "email", "sms" or "mqtt": the `type` of the targets it serves."""

    timeout_s: float
    """The bound on one whole send; a peer slower than this is a retryable failure."""

    @abc.abstractmethod
    async def send(self, page: OutboxPage, target: ChannelTarget) -> None:
        """Deliver `page` to `target`; return only once the peer accepted it.

        Raises DeliveryError on any failure, within `timeout_s`.
        """

    @abc.abstractmethod
    async def close(self) -> None:
        """Release connections and clients; the notifier is not used after."""
