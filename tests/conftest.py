"""Fixtures shared by every test module. Area-specific fixtures live in the
modules that use them."""

from __future__ import annotations

import pytest

from checks.clock import FakeClock


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()
