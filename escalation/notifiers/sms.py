"""Pages as SMS through AWS SNS: one 160-character segment that always
carries the whole ack link."""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any

from checks.settings import SecretUnavailable
from escalation.model import OutboxPage
from escalation.notifiers import render
from escalation.notifiers.base import DeliveryError, Notifier
from escalation.notifiers.config import SmsSettings
from escalation.policy import ChannelTarget

_RETRYABLE_CODES = frozenset(
    {
        "Throttling",
        "ThrottlingException",
        "ThrottledException",
        "RequestLimitExceeded",
        "InternalError",
        "InternalFailure",
        "ServiceUnavailable",
        "KMSThrottling",
    }
)


class SmsNotifier(Notifier):
    channel = "sms"

    def __init__(self, settings: SmsSettings) -> None:
        self.timeout_s = settings.timeout_s
        self._settings = settings
        self._client: Any = None
        self._client_lock = asyncio.Lock()
        self._exit_stack = contextlib.AsyncExitStack()

    async def send(self, page: OutboxPage, target: ChannelTarget) -> None:
        attributes = {
            # Transactional messages are routed for reliability, not price.
            "AWS.SNS.SMS.SMSType": {
                "DataType": "String",
                "StringValue": "Transactional",
            },
        }
        if self._settings.sender_id:
            attributes["AWS.SNS.SMS.SenderID"] = {
                "DataType": "String",
                "StringValue": self._settings.sender_id,
            }
        text = render.sms_text(page.payload)
        where = f"SNS {self._settings.region}"
        try:
            async with asyncio.timeout(self.timeout_s):
                await self._publish(target.to, text, attributes, where)
        except TimeoutError:
            raise DeliveryError(
                f"{where} did not answer within {self.timeout_s:g} s", retryable=True
            ) from None
        except SecretUnavailable as exc:
            raise DeliveryError(f"{where}: {exc}", retryable=True) from None

    async def _publish(
        self, number: str, text: str, attributes: dict[str, Any], where: str
    ) -> None:
        # botocore weighs tens of MiB: the first SMS imports it, not the start.
        from botocore.exceptions import (  # noqa: PLC0415
            BotoCoreError,
            ClientError,
            NoCredentialsError,
            PartialCredentialsError,
        )

        try:
            client = await self._sns()
            await client.publish(
                PhoneNumber=number, Message=text, MessageAttributes=attributes
            )
        except ClientError as exc:
            error = exc.response.get("Error", {})
            code = str(error.get("Code", "?"))
            status = int(
                exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0)
            )
            retryable = code in _RETRYABLE_CODES or status >= 500 or status == 429
            raise DeliveryError(
                f"{where} refused the SMS: {code}: {error.get('Message', '')}".rstrip(
                    ": "
                ),
                retryable=retryable,
            ) from None
        except (NoCredentialsError, PartialCredentialsError) as exc:
            raise DeliveryError(f"{where}: {exc}", retryable=False) from None
        except BotoCoreError as exc:
            raise DeliveryError(f"{where}: {exc}", retryable=True) from None

    async def close(self) -> None:
        async with self._client_lock:
            self._client = None
            await self._exit_stack.aclose()

    async def _sns(self) -> Any:
        """The one SNS client, created on the first page: loading botocore's
        service models takes tens of MiB that an idle daemon should not hold."""
        from aiobotocore.config import AioConfig  # noqa: PLC0415
        from aiobotocore.session import get_session  # noqa: PLC0415

        async with self._client_lock:
            if self._client is None:
                settings = self._settings
                secret = settings.secret_access_key
                config = AioConfig(
                    connect_timeout=self.timeout_s,
                    read_timeout=self.timeout_s,
                    # The outbox retries with its own backoff and fallback.
                    retries={"total_max_attempts": 1},
                )
                self._client = await self._exit_stack.enter_async_context(
                    get_session().create_client(
                        "sns",
                        region_name=settings.region,
                        endpoint_url=settings.endpoint_url,
                        aws_access_key_id=settings.access_key_id,
                        aws_secret_access_key=secret.reveal() if secret else None,
                        config=config,
                    )
                )
            return self._client
