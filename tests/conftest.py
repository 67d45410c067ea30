"""Fixtures shared by every test module. Area-specific fixtures live in the
modules that use them."""

from __future__ import annotations

from checks.clock import FakeClock
import pytest


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()
