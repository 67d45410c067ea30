"""Fixtures shared by every test module. Area-specific fixtures live in the
modules that use them; those for real peers are registered as plugins."""

from __future__ import annotations

import pytest

from checks.clock import FakeClock

pytest_plugins = ("tests.moto_fixture", "tests.smtp_fixture")


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()
