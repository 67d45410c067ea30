"""Pages as email through an SMTP relay: plain text plus HTML, one
connection per page (pages are rare; a pooled connection would go stale)."""

from __future__ import annotations

import asyncio
import hashlib
import re
from email.message import EmailMessage
from email.utils import formatdate, parseaddr

import aiosmtplib

from checks.settings import SecretUnavailable
from escalation.model import OutboxPage
from escalation.notifiers import render
from escalation.notifiers.base import DeliveryError, Notifier
from escalation.notifiers.config import EmailSettings
from escalation.policy import ChannelTarget

_MSGID_SAFE = re.compile(r"^[A-Za-z0-9._-]{1,128}$")


def message_id(page_id: str, sender: str) -> str:
    """The same Message-ID for every attempt of a page, so a mail system or
    a mail filter can drop the repeat sent after a crash."""
    local = (
        page_id
        if _MSGID_SAFE.match(page_id)
        else hashlib.sha256(page_id.encode("utf-8")).hexdigest()[:40]
    )
    domain = parseaddr(sender)[1].rpartition("@")[2] or "sentinel.invalid"
    return f"<{local}.page@{domain}>"


def build_message(page: OutboxPage, target: ChannelTarget, sender: str) -> EmailMessage:
    payload = page.payload
    message = EmailMessage()
    message["Subject"] = render.subject(payload)
    message["From"] = sender
    message["To"] = target.to
    message["Date"] = formatdate(usegmt=True)
    message["Message-ID"] = message_id(page.page_id, sender)
    message["X-Sentinel-Page-Id"] = page.page_id
    # RFC 3834: tells vacation responders not to answer a page.
    message["Auto-Submitted"] = "auto-generated"
    if payload.get("priority") == "P1":
        message["X-Priority"] = "1"
    message.set_content(render.plain_text(payload))
    message.add_alternative(render.html_text(payload), subtype="html")
    return message


class EmailNotifier(Notifier):
    channel = "email"

    def __init__(self, settings: EmailSettings) -> None:
        self.timeout_s = settings.timeout_s
        self._settings = settings

    async def close(self) -> None:
        """Nothing to release: each send opens and closes its own connection."""

    async def send(self, page: OutboxPage, target: ChannelTarget) -> None:
        settings = self._settings
        where = f"SMTP {settings.host}:{settings.port}"
        if "@" not in parseaddr(target.to)[1]:
            raise DeliveryError(
                f'"{target.to}" is not an email address', retryable=False
            )
        try:
            password = settings.password.reveal() if settings.password else None
        except SecretUnavailable as exc:
            raise DeliveryError(f"{where}: {exc}", retryable=True) from None
        message = build_message(page, target, settings.sender)

        try:
            async with asyncio.timeout(self.timeout_s):
                await aiosmtplib.send(
                    message,
                    hostname=settings.host,
                    port=settings.port,
                    username=settings.username,
                    password=password,
                    use_tls=settings.security == "tls",
                    start_tls=settings.security == "starttls",
                    timeout=self.timeout_s,
                )
        except aiosmtplib.SMTPRecipientsRefused as exc:
            codes = [refusal.code for refusal in exc.recipients]
            detail = "; ".join(f"{r.code} {r.message}" for r in exc.recipients)
            raise DeliveryError(
                f"{where} refused {target.to}: {detail}",
                retryable=any(400 <= code < 500 for code in codes),
            ) from None
        except aiosmtplib.SMTPResponseException as exc:
            # 4xx is the server saying "not now" (greylisting, a full queue).
            raise DeliveryError(
                f"{where} answered {exc.code} {_one_line(exc.message)}",
                retryable=400 <= exc.code < 500,
            ) from None
        except aiosmtplib.SMTPNotSupported as exc:
            raise DeliveryError(
                f"{where}: {_one_line(exc.message)}", retryable=False
            ) from None
        except TimeoutError:
            raise DeliveryError(
                f"{where} did not answer within {self.timeout_s:g} s", retryable=True
            ) from None
        except (aiosmtplib.SMTPException, OSError) as exc:
            detail = _one_line(str(exc)) or type(exc).__name__
            # aiosmtplib reports a server without STARTTLS with the base
            # class; asking again will not add it, the configuration must
            # change. Any other wording falls back to a retry, which is safe.
            if "STARTTLS" in detail and "not supported" in detail:
                raise DeliveryError(
                    f"{where}: the server does not offer STARTTLS; set security "
                    '= "tls" for implicit TLS, or "none" for a trusted local relay',
                    retryable=False,
                ) from None
            raise DeliveryError(f"{where}: {detail}", retryable=True) from None


def _one_line(text: str) -> str:
    return " ".join(text.split())
