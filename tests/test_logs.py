"""Log output: JSON lines for journald, stdlib records included, secrets out."""

from __future__ import annotations

import datetime as dt
import io
import json
import logging
from collections.abc import Iterator
from decimal import Decimal

import pytest
import structlog

from daemon.logs import configure_logging


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


@pytest.fixture
def restore_logging() -> Iterator[None]:
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    yield
    for handler in list(root.handlers):
        if handler not in handlers:
            root.removeHandler(handler)
    root.setLevel(level)
    structlog.reset_defaults()


def _lines(stream: io.StringIO) -> list[dict[str, object]]:
    return [json.loads(line) for line in stream.getvalue().splitlines()]


def test_logs_structlog_event_is_one_json_line(restore_logging: None) -> None:
    """A structlog event is one JSON object with ISO UTC time, level, event, logger."""
    out = io.StringIO()
    configure_logging("json", "info", out)
    structlog.get_logger("daemon.example").info("check_status_changed", check="api")

    [line] = _lines(out)
    assert line["event"] == "check_status_changed"
    assert line["level"] == "info"
    assert line["logger"] == "daemon.example"
    assert line["check"] == "api"
    stamp = dt.datetime.fromisoformat(str(line["timestamp"]))
    assert stamp.utcoffset() == dt.timedelta(0)


def test_logs_stdlib_record_comes_out_as_json(restore_logging: None) -> None:
    """A plain logging call (aiohttp, asyncio) is rendered as JSON too."""
    out = io.StringIO()
    configure_logging("json", "info", out)
    logging.getLogger("aiohttp.server").warning(
        "Error handling request from %s", "1.2.3.4"
    )

    [line] = _lines(out)
    assert line["event"] == "Error handling request from 1.2.3.4"
    assert line["level"] == "warning"
    assert line["logger"] == "aiohttp.server"
    assert "timestamp" in line


def test_logs_secret_fields_are_redacted(restore_logging: None) -> None:
    """Fields named like secrets are masked at any depth; dedup_key is not."""
    out = io.StringIO()
    configure_logging("json", "info", out)
    structlog.get_logger("t").warning(
        "login",
        password="hunter2",
        admin_token="abc",
        Authorization="Bearer xyz",
        api_key="k",
        dedup_key="db-down",
        request={"headers": {"authorization": "Bearer xyz"}, "path": "/x"},
    )
    text = out.getvalue()
    for secret in ("hunter2", "abc", "xyz", '"k"'):
        assert secret not in text
    [line] = _lines(out)
    assert line["password"] == "***"
    assert line["dedup_key"] == "db-down"
    assert line["request"] == {"headers": {"authorization": "***"}, "path": "/x"}


def test_logs_decimal_datetime_bytes_become_json_values(restore_logging: None) -> None:
    """Decimal, datetime and bytes are rendered as JSON values, not repr()."""
    out = io.StringIO()
    configure_logging("json", "info", out)
    when = dt.datetime(2025, 3, 1, 14, 0, tzinfo=dt.UTC)
    structlog.get_logger("t").info(
        "slow_query", time_ms=Decimal("1500.250"), at=when, raw=b"caf\xc3\xa9\xff"
    )
    [line] = _lines(out)
    assert line["time_ms"] == 1500.25
    assert line["at"] == "2025-03-01T14:00:00+00:00"
    assert line["raw"] == "café\\xff"


def test_logs_level_filters_structlog_and_stdlib(restore_logging: None) -> None:
    """Below the configured level nothing is written, from either side."""
    out = io.StringIO()
    configure_logging("json", "warning", out)
    structlog.get_logger("t").info("routine")
    logging.getLogger("other").info("routine too")
    structlog.get_logger("t").error("bad")
    assert [line["event"] for line in _lines(out)] == ["bad"]


def test_logs_exception_is_in_the_json_line(restore_logging: None) -> None:
    """log.exception puts the traceback in the same JSON object."""
    out = io.StringIO()
    configure_logging("json", "info", out)
    try:
        raise RuntimeError("boom")
    except RuntimeError:
        structlog.get_logger("t").exception("probe_crashed")
    [line] = _lines(out)
    assert "RuntimeError: boom" in str(line["exception"])


def test_logs_auto_uses_console_on_a_terminal(restore_logging: None) -> None:
    """format=auto renders for people on a TTY and still redacts there."""
    out = _Terminal()
    configure_logging("auto", "info", out)
    structlog.get_logger("t").info("started", token="s3cret")
    text = out.getvalue()
    assert "started" in text
    assert "s3cret" not in text
    with pytest.raises(json.JSONDecodeError):
        json.loads(text.splitlines()[0])


def test_logs_reconfigure_replaces_its_own_handler(restore_logging: None) -> None:
    """Calling configure_logging twice writes each line once, to the new stream."""
    first, second = io.StringIO(), io.StringIO()
    configure_logging("json", "info", first)
    configure_logging("json", "info", second)
    structlog.get_logger("t").info("once")
    assert first.getvalue() == ""
    assert len(_lines(second)) == 1


def test_logs_bad_format_or_level_is_refused() -> None:
    """An unknown format or level names the value and the choices."""
    with pytest.raises(ValueError, match='"xml" is not one of auto, json, console'):
        configure_logging("xml", "info")
    with pytest.raises(ValueError, match='"loud"'):
        configure_logging("json", "loud")
