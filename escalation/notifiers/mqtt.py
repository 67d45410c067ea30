"""Pages as JSON on an MQTT topic, published with QoS 1.

Each send opens its own connection: aiomqtt has no automatic reconnect, so a
long-lived client would need its own supervisor, and pages are rare enough
that a fresh connection (a few milliseconds on a LAN) is the simpler
guarantee that a dead broker connection never swallows a page.
"""

from __future__ import annotations

import asyncio
import json
import math
import secrets
import ssl

import aiomqtt
from aiomqtt.exceptions import MqttConnectError

from checks.settings import SecretUnavailable
from escalation.model import OutboxPage
from escalation.notifiers.base import DeliveryError, Notifier
from escalation.notifiers.config import MqttSettings
from escalation.policy import ChannelTarget

# CONNACK refusals that the same credentials will meet again: MQTT 3.1.1
# codes 4 and 5, and their MQTT 5 reason codes as paho reports them.
_AUTH_REFUSALS = frozenset({4, 5, 134, 135})
_BACKSTOP_S = 2.0
_MIN_STEP_S = 0.05


class MqttNotifier(Notifier):
    channel = "mqtt"

    def __init__(self, settings: MqttSettings) -> None:
        self.timeout_s = settings.timeout_s
        self._settings = settings

    async def close(self) -> None:
        """Nothing to release: each send opens and closes its own connection."""

    async def send(self, page: OutboxPage, target: ChannelTarget) -> None:
        topic = target.to
        if not topic or any(char in topic for char in "+#\0"):
            raise DeliveryError(
                f'MQTT topic "{topic}" is not publishable (empty or with a wildcard)',
                retryable=False,
            )
        settings = self._settings
        where = f"MQTT {settings.host}:{settings.port}"
        try:
            password = settings.password.reveal() if settings.password else None
        except SecretUnavailable as exc:
            raise DeliveryError(f"{where}: {exc}", retryable=True) from None
        body = json.dumps({**page.payload, "page_id": page.page_id}, default=str)

        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.timeout_s
        client = aiomqtt.Client(
            settings.host,
            settings.port,
            username=settings.username,
            password=password,
            identifier=f"{settings.client_id}-{secrets.token_hex(4)}",
            tls_context=ssl.create_default_context() if settings.tls else None,
            timeout=self.timeout_s,
            # paho closes a connection its broker never answered only at the
            # keepalive check; a short one bounds that leftover socket.
            keepalive=max(1, math.ceil(self.timeout_s)),
            clean_session=True,
        )
        try:
            # aiomqtt's own timeouts bound each step. Cancelling its connect
            # from outside would leave its state half torn down (an open
            # socket, and a cancelled future its disconnect callback trips
            # over later), so the outer timeout is only a backstop.
            async with asyncio.timeout(self.timeout_s + _BACKSTOP_S), client:
                await client.publish(
                    topic, body, qos=1, timeout=max(deadline - loop.time(), _MIN_STEP_S)
                )
                client.timeout = max(deadline - loop.time(), _MIN_STEP_S)
        except aiomqtt.MqttCodeError as exc:
            code = getattr(exc.rc, "value", exc.rc)
            retryable = not (
                isinstance(exc, MqttConnectError) and code in _AUTH_REFUSALS
            )
            raise DeliveryError(f"{where}: {exc}", retryable=retryable) from None
        except aiomqtt.MqttError as exc:
            if loop.time() >= deadline:
                raise DeliveryError(
                    f"{where} did not confirm within {self.timeout_s:g} s",
                    retryable=True,
                ) from None
            raise DeliveryError(
                f"{where}: {exc or type(exc).__name__}", retryable=True
            ) from None
        except TimeoutError:
            raise DeliveryError(
                f"{where} did not confirm within {self.timeout_s:g} s", retryable=True
            ) from None
