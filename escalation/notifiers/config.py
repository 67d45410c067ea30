"""The ``[channels]`` and ``[outbox]`` sections, and the notifiers they build.

A channel exists when its table is present (an empty ``[channels.webhook]``
enables webhooks with the defaults). Only the configured channels' libraries
are imported and only when `create_notifiers` runs: aiobotocore alone costs
tens of MiB the first time it loads its service models.
"""

from __future__ import annotations

import re
import socket
from dataclasses import dataclass, field
from email.utils import parseaddr
from typing import TYPE_CHECKING

from checks.settings import Secret, Section
from escalation.outbox import OutboxSettings

if TYPE_CHECKING:
    from escalation.notifiers.base import Notifier

CHANNEL_TYPES = ("webhook", "email", "sms", "mqtt")
EMAIL_SECURITY = ("starttls", "tls", "none")
_EMAIL_DEFAULT_PORT = {"starttls": 587, "tls": 465, "none": 25}
_AWS_REGION = re.compile(r"^[a-z]{2}(-[a-z]+)+-\d+$")
_SENDER_ID = re.compile(r"^(?=.*[A-Za-z])[A-Za-z0-9]{1,11}$")
_MQTT_CLIENT_ID = re.compile(r"^[A-Za-z0-9_.-]{1,64}$")
_MIN_TIMEOUT_S = 0.1
_MAX_TIMEOUT_S = 300.0


def _default_client_id() -> str:
    host = re.sub(r"[^A-Za-z0-9_.-]", "-", socket.gethostname())[:40] or "host"
    return f"sentinel-{host}"


@dataclass(frozen=True, slots=True)
class WebhookSettings:
    timeout_s: float = 5.0
    secret: Secret | None = None
    """Default HMAC key for X-Sentinel-Signature; a contact channel's own
    secret overrides it."""


@dataclass(frozen=True, slots=True)
class EmailSettings:
    host: str
    port: int
    security: str
    """"starttls", "tls" (implicit TLS, usually port 465) or "none"."""
    sender: str
    """The From address."""
    username: str | None = None
    password: Secret | None = None
    timeout_s: float = 10.0


@dataclass(frozen=True, slots=True)
class SmsSettings:
    region: str = "us-east-1"
    endpoint_url: str | None = None
    """Set for moto or a VPC endpoint; AWS's own endpoint otherwise."""
    access_key_id: str | None = None
    """With `secret_access_key`; both unset means botocore's usual chain
    (environment, instance role)."""
    secret_access_key: Secret | None = None
    sender_id: str | None = None
    timeout_s: float = 10.0


@dataclass(frozen=True, slots=True)
class MqttSettings:
    host: str
    port: int = 1883
    username: str | None = None
    password: Secret | None = None
    tls: bool = False
    timeout_s: float = 10.0
    client_id: str = field(default_factory=_default_client_id)
    """Prefix of each connection's client id; a random suffix keeps
    concurrent sends (and other nodes) from kicking each other off."""


@dataclass(frozen=True, slots=True)
class ChannelsConfig:
    webhook: WebhookSettings | None = None
    email: EmailSettings | None = None
    sms: SmsSettings | None = None
    mqtt: MqttSettings | None = None
    outbox: OutboxSettings = field(default_factory=OutboxSettings)

    @property
    def types(self) -> frozenset[str]:
        """The channel types a contact can be reached on."""
        return frozenset(
            name for name in CHANNEL_TYPES if getattr(self, name) is not None
        )


def build_notifiers_config(root: Section) -> ChannelsConfig:
    """Read ``[channels]`` and ``[outbox]`` from the top-level section; problems
    are recorded in `root.problems` and defaults stand in for bad values."""
    channels = root.section("channels")
    for name in list(channels.names()):
        if name not in CHANNEL_TYPES:
            # raw() marks the key as read, so finish() does not report it twice.
            channels.raw(name)
            channels.error(
                name, f"is not a channel type; use one of {', '.join(CHANNEL_TYPES)}"
            )
    config = ChannelsConfig(
        webhook=_webhook(channels.section("webhook"))
        if channels.has("webhook")
        else None,
        email=_email(channels.section("email")) if channels.has("email") else None,
        sms=_sms(channels.section("sms")) if channels.has("sms") else None,
        mqtt=_mqtt(channels.section("mqtt")) if channels.has("mqtt") else None,
        outbox=_outbox(root.section("outbox")),
    )
    channels.finish()
    return config


async def create_notifiers(cfg: ChannelsConfig) -> dict[str, Notifier]:
    """One notifier per configured channel; the caller closes them. Each
    channel's module (and its library) is imported only when configured."""
    notifiers: dict[str, Notifier] = {}
    if cfg.webhook is not None:
        from escalation.notifiers.webhook import WebhookNotifier  # noqa: PLC0415

        notifiers["webhook"] = WebhookNotifier(cfg.webhook)
    if cfg.email is not None:
        from escalation.notifiers.email import EmailNotifier  # noqa: PLC0415

        notifiers["email"] = EmailNotifier(cfg.email)
    if cfg.sms is not None:
        from escalation.notifiers.sms import SmsNotifier  # noqa: PLC0415

        notifiers["sms"] = SmsNotifier(cfg.sms)
    if cfg.mqtt is not None:
        from escalation.notifiers.mqtt import MqttNotifier  # noqa: PLC0415

        notifiers["mqtt"] = MqttNotifier(cfg.mqtt)
    return notifiers


def _timeout(section: Section, default_s: float) -> float:
    value: float = section.duration(
        "timeout", default_s, min_s=_MIN_TIMEOUT_S, max_s=_MAX_TIMEOUT_S
    )
    return value


def _port(section: Section, default: int) -> int:
    value: int = section.int("port", default, min=1, max=65535)
    return value


def _optional_str(section: Section, name: str) -> str | None:
    value = section.str(name, None)
    return value if isinstance(value, str) and value else None


def _webhook(section: Section) -> WebhookSettings:
    settings = WebhookSettings(
        timeout_s=_timeout(section, 5.0), secret=section.secret("secret")
    )
    section.finish()
    return settings


def _email(section: Section) -> EmailSettings:
    host = section.str("host") or "localhost"
    security = section.choice("security", EMAIL_SECURITY, "starttls") or "starttls"
    port = _port(section, _EMAIL_DEFAULT_PORT[security])
    sender = section.str("from") or "sentinel@localhost"
    if section.has("from") and "@" not in parseaddr(sender)[1]:
        section.error("from", f'"{sender}" is not an email address')
    username = _optional_str(section, "username")
    password = section.secret("password")
    if username and password is None:
        section.error("password", "is required when username is set (or password_file)")
    if password is not None and not username:
        section.error("username", "is required when a password is set")
    settings = EmailSettings(
        host=host,
        port=port,
        security=security,
        sender=sender,
        username=username,
        password=password,
        timeout_s=_timeout(section, 10.0),
    )
    section.finish()
    return settings


def _sms(section: Section) -> SmsSettings:
    region = section.str("region", "us-east-1") or "us-east-1"
    if not _AWS_REGION.match(region):
        section.error("region", f'"{region}" is not an AWS region such as "us-east-1"')
    endpoint_url = _optional_str(section, "endpoint_url")
    if endpoint_url and not endpoint_url.startswith(("http://", "https://")):
        section.error(
            "endpoint_url", f'"{endpoint_url}" is not an http:// or https:// URL'
        )
    access_key_id = _optional_str(section, "access_key_id")
    secret_access_key = section.secret("secret_access_key")
    if access_key_id and secret_access_key is None:
        section.error(
            "secret_access_key",
            "is required when access_key_id is set (or secret_access_key_file)",
        )
    if secret_access_key is not None and not access_key_id:
        section.error("access_key_id", "is required when secret_access_key is set")
    sender_id = _optional_str(section, "sender_id")
    if sender_id and not _SENDER_ID.match(sender_id):
        section.error(
            "sender_id",
            f'"{sender_id}" is not a sender id: 1 to 11 letters or digits, '
            "at least one letter",
        )
    settings = SmsSettings(
        region=region,
        endpoint_url=endpoint_url,
        access_key_id=access_key_id,
        secret_access_key=secret_access_key,
        sender_id=sender_id,
        timeout_s=_timeout(section, 10.0),
    )
    section.finish()
    return settings


def _mqtt(section: Section) -> MqttSettings:
    username = _optional_str(section, "username")
    password = section.secret("password")
    if password is not None and not username:
        section.error("username", "is required when a password is set")
    client_id = _optional_str(section, "client_id") or _default_client_id()
    if not _MQTT_CLIENT_ID.match(client_id):
        section.error(
            "client_id",
            f'"{client_id}" must be 1 to 64 letters, digits, "_", "." or "-"',
        )
    settings = MqttSettings(
        host=section.str("host") or "localhost",
        port=_port(section, 1883),
        username=username,
        password=password,
        tls=bool(section.bool("tls", False)),
        timeout_s=_timeout(section, 10.0),
        client_id=client_id,
    )
    section.finish()
    return settings


def _outbox(section: Section) -> OutboxSettings:
    defaults = OutboxSettings()
    initial_s = section.duration(
        "backoff_initial", defaults.backoff_initial_s, min_s=0.01, max_s=3600.0
    )
    max_s = section.duration(
        "backoff_max", defaults.backoff_max_s, min_s=0.01, max_s=86400.0
    )
    if initial_s is not None and max_s is not None and max_s < initial_s:
        section.error("backoff_max", "must not be shorter than backoff_initial")
        max_s = initial_s
    settings = OutboxSettings(
        max_attempts_per_channel=section.int(
            "max_attempts_per_channel",
            defaults.max_attempts_per_channel,
            min=1,
            max=100,
        ),
        backoff_initial_s=initial_s,
        backoff_max_s=max_s,
        concurrency=section.int("concurrency", defaults.concurrency, min=1, max=256),
    )
    section.finish()
    return settings
