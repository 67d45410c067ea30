"""The system check against this host's real disks, memory, CPU and load."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import psutil  # type: ignore[import-untyped]
import pytest

from checks.base import Check, run_once
from checks.clock import SystemClock
from checks.config import build_check
from checks.result import CheckResult, Status
from checks.settings import Problems, Section

RESOURCES = ("disk", "inodes", "memory", "swap", "cpu", "load")


def build(table: dict[str, Any]) -> tuple[Check | None, Problems]:
    problems = Problems()
    section = Section({"type": "system", **table}, "checks.host", problems)
    return build_check("host", section), problems


async def probe(table: dict[str, Any]) -> CheckResult:
    check, problems = build(table)
    assert check is not None, [str(p) for p in problems.items]
    # The first probe measures CPU from the moment the check was built.
    await asyncio.sleep(0.05)
    return await run_once(check, SystemClock())


async def test_system_values_present_and_sane() -> None:
    """Every documented value is reported, within its possible range."""
    result = await probe({"mounts": ["/"]})
    values = result.values
    for name in (
        "disk_used_percent",
        "disk_used_percent:/",
        "inodes_used_percent",
        "inodes_used_percent:/",
        "memory_used_percent",
        "swap_used_percent",
        "cpu_percent",
    ):
        assert 0 <= values[name] <= 100, (name, values[name])
    assert values["load1_per_core"] >= 0
    assert values["disk_used_percent"] == values["disk_used_percent:/"]
    usage = psutil.disk_usage("/")
    assert values["disk_used_percent"] == pytest.approx(usage.percent, abs=0.5)
    assert values["memory_used_percent"] == pytest.approx(
        psutil.virtual_memory().percent, abs=5
    )


async def test_system_default_mounts_are_real_local_filesystems() -> None:
    """Without `mounts`, every real local filesystem is measured."""
    result = await probe({})
    expected = {p.mountpoint for p in psutil.disk_partitions(all=False)}
    measured = {
        name.split(":", 1)[1]
        for name in result.values
        if name.startswith("disk_used_percent:")
    }
    assert measured == expected


async def test_system_zero_thresholds_force_critical() -> None:
    """Thresholds of 0 put every resource over its critical line."""
    table = {f"{r}_{level}": 0 for r in RESOURCES for level in ("warning", "critical")}
    result = await probe({"mounts": ["/"], **table})
    assert result.status is Status.CRITICAL
    for fragment in ("disk / ", "inodes / ", "memory ", "swap ", "cpu ", "load "):
        assert fragment in result.message
    assert "(critical at 0.0%)" in result.message


async def test_system_full_thresholds_are_ok() -> None:
    """Thresholds of 100% (and an unreachable load) leave the host OK with a
    one-line summary."""
    table: dict[str, Any] = {
        f"{r}_{level}": 100 for r in RESOURCES[:5] for level in ("warning", "critical")
    }
    table |= {"load_warning": 10_000, "load_critical": 10_000}
    result = await probe({"mounts": ["/"], **table})
    # A saturated box can read exactly 100% CPU over a short window; that
    # reaching the threshold is then the right answer.
    if result.values.get("cpu_percent") == 100:
        assert result.status is Status.CRITICAL
        assert result.message.startswith("cpu 100.0%")
    else:
        assert result.status is Status.OK, result.message
        assert result.message.startswith("disk ")
        assert "/core" in result.message


async def test_system_warning_between_thresholds() -> None:
    """A value between the warning and critical lines is a warning."""
    result = await probe(
        {
            "mounts": ["/"],
            "disk_warning": 0,
            "disk_critical": 100,
            **{f"{r}_critical": 100 for r in ("inodes", "memory", "swap", "cpu")},
            **{f"{r}_warning": 100 for r in ("inodes", "memory", "swap", "cpu")},
            "load_warning": 10_000,
            "load_critical": 10_000,
        }
    )
    assert "disk / " in result.message
    assert "(warning at 0.0%)" in result.message
    # Only a saturated CPU (exactly 100% over the window) may add a critical.
    expected = (
        Status.CRITICAL if result.values["cpu_percent"] == 100 else Status.WARNING
    )
    assert result.status is expected, result.message


async def test_system_missing_mount_is_unknown(tmp_path: Path) -> None:
    """A configured mount that does not exist, or is a plain directory, is
    unknown and named; the others are still measured."""
    result = await probe(
        {
            "mounts": ["/", "/no/such/mount", str(tmp_path)],
            **{f"{r}_critical": 100 for r in RESOURCES[:5]},
            **{f"{r}_warning": 100 for r in RESOURCES[:5]},
            "load_warning": 10_000,
            "load_critical": 10_000,
        }
    )
    expected = (
        Status.CRITICAL if result.values["cpu_percent"] == 100 else Status.UNKNOWN
    )
    assert result.status is expected, result.message
    assert "mount /no/such/mount does not exist" in result.message
    assert f"mount {tmp_path} is not mounted" in result.message
    assert "disk_used_percent:/" in result.values


async def test_system_cpu_window_is_per_check() -> None:
    """The CPU reading covers the time since this check's previous probe;
    another caller of psutil does not reset it."""
    check, _ = build({"mounts": ["/"]})
    assert check is not None
    end = asyncio.get_running_loop().time() + 0.2
    while asyncio.get_running_loop().time() < end:  # keep one core busy
        sum(range(10_000))
        psutil.cpu_percent(interval=None)
    result = await run_once(check, SystemClock())
    cores = psutil.cpu_count() or 1
    assert result.values["cpu_percent"] >= 100 / cores * 0.5


@pytest.mark.parametrize(
    ("table", "key"),
    [
        ({"mounts": ["var"]}, "mounts"),
        ({"mounts": []}, "mounts"),
        ({"disk_warning": 101}, "disk_warning"),
        ({"memory_warning": 96}, "memory_warning"),
        ({"load_critical": "high"}, "load_critical"),
        ({"cpu": 90}, "cpu"),
    ],
)
def test_system_config_errors_name_the_key(table: dict[str, Any], key: str) -> None:
    """Bad settings leave the check out and name the key."""
    check, problems = build(table)
    assert check is None
    assert any(p.key == f"checks.host.{key}" for p in problems.errors), [
        str(p) for p in problems.items
    ]
