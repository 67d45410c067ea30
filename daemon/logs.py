"""Logging setup: structlog JSON lines for journald, a readable console on a
terminal, and the standard library's loggers (aiohttp, asyncio, APScheduler)
rendered by the same chain so every line on stdout has the same shape."""

from __future__ import annotations

import datetime as dt
import enum
import logging
import re
import sys
from collections.abc import Mapping
from decimal import Decimal
from pathlib import PurePath
from typing import Any, TextIO

import structlog
from structlog.typing import EventDict, Processor, WrappedLogger

LEVELS = ("debug", "info", "warning", "error", "critical")
FORMATS = ("auto", "json", "console")
REDACTED = "***"

# A key is secret when a word of its name says so. "key" alone is not enough:
# dedup_key and check keys are what a responder searches the logs for.
_SECRET_WORD = re.compile(
    r"password|passwd|secret|token|authorization|credential|cookie|api_?key"
    r"|private_?key|access_?key|signing_?key|^key$",
    re.IGNORECASE,
)


class _SentinelHandler(logging.StreamHandler):  # type: ignore[type-arg]
    """Marks the handler this module installed, so a second call replaces it
    and leaves other handlers (pytest's capture, say) alone."""


def configure_logging(
    format: str = "auto", level: str = "info", stream: TextIO | None = None
) -> None:
    """Send structlog events and stdlib log records to `stream` as JSON lines
    (``format="json"``, or ``"auto"`` when `stream` is not a terminal) or as
    coloured console lines. Safe to call again, e.g. after a reload."""
    if format not in FORMATS:
        raise ValueError(f'log format "{format}" is not one of {", ".join(FORMATS)}')
    if level.lower() not in LEVELS:
        raise ValueError(f'log level "{level}" is not one of {", ".join(LEVELS)}')
    out = sys.stdout if stream is None else stream
    as_json = format == "json" or (format == "auto" and not _is_tty(out))

    shared: list[Processor] = [
        structlog.contextvars.merge_contextvars,
        structlog.stdlib.add_log_level,
        structlog.stdlib.add_logger_name,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
        structlog.processors.StackInfoRenderer(),
        redact_secrets,
    ]
    if as_json:
        final: list[Processor] = [
            structlog.processors.format_exc_info,
            json_safe,
            structlog.processors.JSONRenderer(),
        ]
    else:
        final = [structlog.dev.ConsoleRenderer(colors=_is_tty(out))]

    formatter = structlog.stdlib.ProcessorFormatter(
        foreign_pre_chain=shared,
        processors=[structlog.stdlib.ProcessorFormatter.remove_processors_meta, *final],
    )
    handler = _SentinelHandler(out)
    handler.setFormatter(formatter)

    root = logging.getLogger()
    for old in [h for h in root.handlers if isinstance(h, _SentinelHandler)]:
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level.upper())
    # aiohttp logs every request at info: each Prometheus scrape would add a
    # line, and a routine success is not worth one.
    logging.getLogger("aiohttp.access").setLevel(logging.WARNING)

    structlog.configure(
        processors=[
            structlog.stdlib.filter_by_level,
            *shared,
            structlog.stdlib.ProcessorFormatter.wrap_for_formatter,
        ],
        logger_factory=structlog.stdlib.LoggerFactory(),
        wrapper_class=structlog.stdlib.BoundLogger,
        # Not cached: module-level loggers must follow a later reconfiguration.
        cache_logger_on_first_use=False,
    )


def redact_secrets(_: WrappedLogger, __: str, event_dict: EventDict) -> EventDict:
    """Replace the value of every field whose name marks it as a secret, at
    any depth, so a mapping logged whole cannot leak one either."""
    return _redact(event_dict)


def _redact(mapping: Mapping[str, Any]) -> dict[str, Any]:
    clean: dict[str, Any] = {}
    for key, value in mapping.items():
        if isinstance(key, str) and key != "event" and _SECRET_WORD.search(key):
            clean[key] = REDACTED
        elif isinstance(value, Mapping):
            clean[key] = _redact(value)
        else:
            clean[key] = value
    return clean


def json_safe(_: WrappedLogger, __: str, event_dict: EventDict) -> EventDict:
    """Turn values the JSON renderer would show as ``repr()`` (Decimal from
    MySQL, datetimes, bytes, paths) into plain JSON values."""
    return {key: _plain(value) for key, value in event_dict.items()}


def _plain(value: Any) -> Any:
    if value is None or isinstance(value, bool | int | float | str):
        return value.value if isinstance(value, enum.Enum) else value
    if isinstance(value, Decimal):
        return float(value) if value.is_finite() else str(value)
    if isinstance(value, dt.datetime | dt.date | dt.time):
        return value.isoformat()
    if isinstance(value, dt.timedelta):
        return value.total_seconds()
    if isinstance(value, bytes | bytearray | memoryview):
        return bytes(value).decode("utf-8", errors="backslashreplace")
    if isinstance(value, PurePath):
        return str(value)
    if isinstance(value, enum.Enum):
        return _plain(value.value)
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple | set | frozenset):
        return [_plain(v) for v in value]
    # Exceptions and the logging record internals are handled further down
    # the chain; anything else keeps its value for the renderer.
    return value


def _is_tty(stream: TextIO) -> bool:
    isatty = getattr(stream, "isatty", None)
    try:
        return bool(isatty()) if isatty is not None else False
    except ValueError:  # a closed stream
        return False
