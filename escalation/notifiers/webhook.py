"""Pages as signed JSON POSTs: to Sentinel-aware receivers as they are, or
shaped by a contact's ``body_template`` for chat tools such as Slack."""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import re
from collections.abc import Mapping
from typing import Any
from urllib.parse import urlsplit

import aiohttp

from checks.settings import SecretUnavailable
from escalation.model import OutboxPage
from escalation.notifiers.base import DeliveryError, Notifier
from escalation.notifiers.config import WebhookSettings
from escalation.policy import ChannelTarget

PAYLOAD_FIELDS = frozenset(
    {
        "page_id", "kind", "incident", "incident_number", "priority", "category",
        "summary", "state", "started_at", "opened_at", "step", "steps_total",
        "repeat", "contact", "contact_name", "role", "evidence", "ack_url",
        "ack_expires_at", "note", "count", "pages",
    }
)  # fmt: skip
"""What a body template may refer to; an optional field absent from a page
renders as empty (inside a string) or null."""

_RETRYABLE_STATUS = frozenset({408, 425, 429})
_TOKEN = re.compile(r'"(?:[^"\\]|\\.)*"|\$\{([A-Za-z_][A-Za-z0-9_]*)\}')
_PLACEHOLDER = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}")
_SNIPPET_CHARS = 160


class TemplateError(ValueError):
    """A body template refers to an unknown field or does not yield JSON."""


def render_template(template: str, fields: Mapping[str, Any]) -> str:
    """`template` with each ``${field}`` replaced: inside a JSON string by the
    value's text, JSON-escaped; elsewhere by the value as JSON. The result is
    checked to parse as JSON."""

    def value_of(name: str) -> Any:
        if name in fields:
            return fields[name]
        if name in PAYLOAD_FIELDS:
            return None
        raise TemplateError(
            f"body_template refers to ${{{name}}}, which is not a page field"
        )

    def in_string(match: re.Match[str]) -> str:
        value = value_of(match.group(1))
        text = (
            value
            if isinstance(value, str)
            else ""
            if value is None
            else _compact(value)
        )
        return json.dumps(text)[1:-1]

    def token(match: re.Match[str]) -> str:
        if match.group(1) is not None:
            return _compact(value_of(match.group(1)))
        return _PLACEHOLDER.sub(in_string, match.group(0))

    rendered = _TOKEN.sub(token, template)
    try:
        json.loads(rendered)
    except ValueError as exc:
        raise TemplateError(
            f"body_template does not produce valid JSON: {exc}"
        ) from None
    return rendered


def validate_body_template(template: str) -> None:
    """Raise TemplateError if `template` cannot work for any page: for the
    configuration loader, so a broken template fails at start, not at 3 am."""
    sample: dict[str, Any] = dict.fromkeys(PAYLOAD_FIELDS, "x")
    render_template(template, sample)


class WebhookNotifier(Notifier):
    channel = "webhook"

    def __init__(self, settings: WebhookSettings) -> None:
        self.timeout_s = settings.timeout_s
        self._secret = settings.secret
        self._session: aiohttp.ClientSession | None = None

    async def send(self, page: OutboxPage, target: ChannelTarget) -> None:
        where = safe_url(target.to)
        if urlsplit(target.to).scheme not in ("http", "https"):
            raise DeliveryError(
                f"webhook {where} is not an http(s) URL", retryable=False
            )
        body = self._body(page, target).encode("utf-8")
        headers = {
            "Content-Type": str(
                target.options.get("content_type") or "application/json"
            ),
            "X-Sentinel-Page-Id": page.page_id,
        }
        secret = target.secret or self._secret
        if secret is not None:
            try:
                key = secret.reveal().encode("utf-8")
            except SecretUnavailable as exc:
                raise DeliveryError(f"webhook {where}: {exc}", retryable=True) from None
            digest = hmac.new(key, body, hashlib.sha256).hexdigest()
            headers["X-Sentinel-Signature"] = f"sha256={digest}"

        try:
            async with asyncio.timeout(self.timeout_s):
                status, snippet = await self._post(target.to, body, headers)
        except TimeoutError:
            raise DeliveryError(
                f"webhook {where} did not answer within {self.timeout_s:g} s",
                retryable=True,
            ) from None
        except aiohttp.InvalidURL:
            raise DeliveryError(
                f"webhook {where} is not a valid URL", retryable=False
            ) from None
        except aiohttp.ClientConnectorError as exc:
            reason = exc.os_error.strerror or type(exc.os_error).__name__
            raise DeliveryError(
                f"webhook {where}: cannot connect: {reason}", retryable=True
            ) from None
        except (aiohttp.ClientError, OSError) as exc:
            detail = _scrub(str(exc), target.to) or type(exc).__name__
            raise DeliveryError(f"webhook {where}: {detail}", retryable=True) from None

        if 200 <= status < 300:
            return
        retryable = status >= 500 or status in _RETRYABLE_STATUS
        message = f"webhook {where} answered HTTP {status}"
        if 300 <= status < 400:
            message += " (a redirect, not followed: fix the URL)"
        if snippet:
            message += f": {snippet}"
        raise DeliveryError(message, retryable=retryable)

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    async def _post(
        self, url: str, body: bytes, headers: dict[str, str]
    ) -> tuple[int, str]:
        if self._session is None or self._session.closed:
            self._session = aiohttp.ClientSession(
                timeout=aiohttp.ClientTimeout(total=self.timeout_s),
                headers={"User-Agent": "sentinel-pager"},
            )
        # A redirected POST turns into a GET on some status codes: the page
        # would be "delivered" to a page that ignores it.
        async with self._session.post(
            url, data=body, headers=headers, allow_redirects=False
        ) as response:
            if 200 <= response.status < 300:
                return response.status, ""
            text = await response.text(errors="replace")
            return response.status, _scrub(" ".join(text.split())[:_SNIPPET_CHARS], url)

    def _body(self, page: OutboxPage, target: ChannelTarget) -> str:
        fields = dict(page.payload)
        fields["page_id"] = page.page_id
        template = target.options.get("body_template")
        if template is None:
            return json.dumps(fields, default=str)
        if not isinstance(template, str):
            raise DeliveryError(
                "webhook body_template is not a string", retryable=False
            )
        try:
            return render_template(template, fields)
        except TemplateError as exc:
            raise DeliveryError(str(exc), retryable=False) from None


def safe_url(url: str) -> str:
    """Scheme, host and port only: chat webhooks carry their token in the path
    and some URLs carry a password, neither of which belongs in a log."""
    try:
        parts = urlsplit(url)
        host = parts.hostname or "?"
        port = f":{parts.port}" if parts.port else ""
    except ValueError:
        return "<invalid URL>"
    base = f"{parts.scheme}://{host}{port}"
    return base if parts.path in ("", "/") else f"{base}/..."


def _scrub(text: str, url: str) -> str:
    return text.replace(url, safe_url(url)) if url else text


def _compact(value: Any) -> str:
    return json.dumps(value, default=str, separators=(",", ":"))
