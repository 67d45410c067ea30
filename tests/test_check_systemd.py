"""The systemd check.

This machine runs no systemd, so the "not running" path is tested for real.
Unit states are read from tests/data/check_fake_systemctl, an executable
stand-in that prints what `systemctl show` prints: systemd itself cannot run
here.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pytest

from checks.base import Check, run_once
from checks.clock import SystemClock
from checks.config import build_check
from checks.result import CheckResult, Status
from checks.settings import Problems, Section
from checks.systemd import DEFAULT_RUNTIME_DIR, parse_show_output

FAKE_SYSTEMCTL = Path(__file__).parent / "data" / "check_fake_systemctl"


def build(table: dict[str, Any]) -> tuple[Check | None, Problems]:
    problems = Problems()
    section = Section({"type": "systemd", **table}, "checks.units", problems)
    return build_check("units", section), problems


async def probe(table: dict[str, Any]) -> CheckResult:
    check, problems = build(table)
    assert check is not None, [str(p) for p in problems.items]
    return await run_once(check, SystemClock())


async def probe_fake(units: list[str], tmp_path: Path, **table: Any) -> CheckResult:
    """Probe with the fake systemctl, `tmp_path` standing in for
    /run/systemd/system."""
    return await probe(
        {
            "units": units,
            "systemctl": str(FAKE_SYSTEMCTL),
            "systemd_runtime_dir": str(tmp_path),
            **table,
        }
    )


async def test_systemd_not_running_is_unknown() -> None:
    """Without systemd as PID 1 the check is unknown and says why."""
    if Path(DEFAULT_RUNTIME_DIR).exists():
        pytest.skip("systemd runs on this host")
    result = await probe({"units": ["nginx.service"]})
    assert result.status is Status.UNKNOWN
    assert result.message == (
        "systemd is not running on this host (no /run/systemd/system)"
    )


async def test_systemd_all_active_is_ok(tmp_path: Path) -> None:
    """Active units are OK, including a unit named by an alias."""
    result = await probe_fake(["nginx", "sshd.service"], tmp_path)
    assert result.status is Status.OK, result.message
    assert result.message == "all 2 units active"
    assert result.values == {"units_active": 2, "units_failed": 0, "units_total": 2}
    assert result.evidence[1] == ("ssh.service: load=loaded active=active sub=running")


async def test_systemd_failed_and_inactive_are_critical(tmp_path: Path) -> None:
    """Failed and inactive units make the check critical, naming them."""
    result = await probe_fake(
        ["nginx.service", "php8.2-fpm.service", "cron.service"], tmp_path
    )
    assert result.status is Status.CRITICAL
    assert result.message == (
        "php8.2-fpm.service failed (failed); cron.service inactive (dead)"
    )
    assert result.values == {"units_active": 1, "units_failed": 2, "units_total": 3}


async def test_systemd_transitional_states_warn(tmp_path: Path) -> None:
    """A unit activating or reloading is a warning, not yet a failure."""
    result = await probe_fake(
        ["queue-worker@1.service", "redis-server.service"], tmp_path
    )
    assert result.status is Status.WARNING
    assert result.message == (
        "queue-worker@1.service activating (auto-restart); "
        "redis-server.service reloading (reload)"
    )
    assert result.values["units_failed"] == 0


async def test_systemd_missing_and_masked_units_are_critical(tmp_path: Path) -> None:
    """A unit that does not exist or is masked is critical."""
    result = await probe_fake(["nginx", "sentinel-typo.service", "snapd"], tmp_path)
    assert result.status is Status.CRITICAL
    assert result.message == "sentinel-typo.service not-found; snapd masked"
    assert result.values["units_failed"] == 2


async def test_systemd_hung_systemctl_is_killed(tmp_path: Path) -> None:
    """A systemctl that never answers is killed at the timeout."""
    began = time.monotonic()
    result = await probe_fake(["hang.service"], tmp_path, timeout="500ms")
    assert time.monotonic() - began < 1.0
    assert result.status is Status.CRITICAL
    assert "did not answer within 0.45 s" in result.message


async def test_systemd_systemctl_error_is_unknown(tmp_path: Path) -> None:
    """A systemctl that fails says why, and the state is unknown."""
    result = await probe_fake(["no-bus.service"], tmp_path)
    assert result.status is Status.UNKNOWN
    assert result.message == (
        "systemctl show failed with exit 1: "
        "Failed to connect to bus: No such file or directory"
    )


async def test_systemd_missing_systemctl_is_unknown(tmp_path: Path) -> None:
    """A systemctl path that does not exist is unknown and named."""
    missing = tmp_path / "bin" / "systemctl"
    result = await probe(
        {
            "units": ["nginx"],
            "systemctl": str(missing),
            "systemd_runtime_dir": str(tmp_path),
        }
    )
    assert result.status is Status.UNKNOWN
    assert result.message == f"cannot run {missing}: No such file or directory"


def test_systemd_show_output_parsed() -> None:
    """Blocks split on blank lines; values may contain '='."""
    text = (
        "Id=a.service\nActiveState=active\n\n\n"
        "Id=b.service\nDescription=x=y\nActiveState=failed\n\n"
    )
    assert parse_show_output(text) == [
        {"Id": "a.service", "ActiveState": "active"},
        {"Id": "b.service", "Description": "x=y", "ActiveState": "failed"},
    ]


@pytest.mark.parametrize(
    ("table", "key"),
    [
        ({}, "units"),
        ({"units": []}, "units"),
        ({"units": ["--host=db1"]}, "units"),
        ({"units": ["nginx service"]}, "units"),
        ({"units": ["nginx"], "systemctl": 5}, "systemctl"),
        ({"units": ["nginx"], "unit": "nginx"}, "unit"),
    ],
)
def test_systemd_config_errors_name_the_key(table: dict[str, Any], key: str) -> None:
    """Bad settings leave the check out and name the key."""
    check, problems = build(table)
    assert check is None
    assert any(p.key == f"checks.units.{key}" for p in problems.errors), [
        str(p) for p in problems.items
    ]
