"""Fixtures shared by every test module. Area-specific fixtures live in the
modules that use them; those for real peers are registered as plugins."""

from __future__ import annotations

import io
import logging
from collections.abc import Iterator

import pytest
import structlog

from checks.clock import FakeClock
from daemon.logs import configure_logging

pytest_plugins = ("tests.moto_fixture", "tests.smtp_fixture")


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def log_output() -> Iterator[io.StringIO]:
    """The daemon's JSON log lines, captured; logging is restored after."""
    out = io.StringIO()
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    configure_logging("json", "info", out)
    yield out
    for handler in list(root.handlers):
        if handler not in handlers:
            root.removeHandler(handler)
    root.setLevel(level)
    structlog.reset_defaults()
