"""The scheduler: every check on its own interval, none delaying another."""

from __future__ import annotations

import asyncio
import time
from typing import Self

from checks.base import Check, CheckSpec
from checks.clock import SystemClock
from checks.result import CheckResult, Outcome, Status
from checks.settings import Section
from daemon.scheduler import Scheduler


class SleepCheck(Check):
    """A probe that takes a set time: a stand-in target with known latency."""

    type_name = "sleep"

    def __init__(self, spec: CheckSpec, sleep_s: float) -> None:
        super().__init__(spec)
        self.sleep_s = sleep_s
        self.closed = False

    @classmethod
    def configure(cls, spec: CheckSpec, section: Section) -> Self:
        return cls(spec, section.float("sleep", 0.0))

    async def probe(self) -> Outcome:
        await asyncio.sleep(self.sleep_s)
        return Outcome(Status.OK, f"slept {self.sleep_s}")

    async def close(self) -> None:
        self.closed = True


def make_check(
    name: str,
    interval_s: float,
    timeout_s: float,
    sleep_s: float,
    fingerprint: str = "",
) -> SleepCheck:
    spec = CheckSpec(
        name=name,
        type="sleep",
        interval_s=interval_s,
        timeout_s=timeout_s,
        description="",
        fingerprint=fingerprint or f"{interval_s}/{timeout_s}/{sleep_s}",
    )
    return SleepCheck(spec, sleep_s)


class RecordingMetrics:
    def __init__(self) -> None:
        self.lags: list[float] = []
        self.overruns: dict[str, int] = {}
        self.forgotten: list[str] = []

    def observe_result(self, result: CheckResult) -> None:
        pass

    def observe_lag(self, seconds: float) -> None:
        self.lags.append(seconds)

    def overrun(self, check: str) -> None:
        self.overruns[check] = self.overruns.get(check, 0) + 1

    def forget_check(self, name: str) -> None:
        self.forgotten.append(name)


def collect() -> tuple[list[CheckResult], Scheduler, RecordingMetrics]:
    results: list[CheckResult] = []
    metrics = RecordingMetrics()
    scheduler = Scheduler(
        SystemClock(), results.append, jitter_fraction=0.0, metrics=metrics
    )
    return results, scheduler, metrics


async def test_hung_check_does_not_delay_another() -> None:
    """A probe that hangs until its timeout leaves a fast check on schedule."""
    results, scheduler, _ = collect()
    scheduler.start(
        {
            "hung": make_check("hung", interval_s=0.2, timeout_s=0.15, sleep_s=60),
            "fast": make_check("fast", interval_s=0.1, timeout_s=0.1, sleep_s=0),
        }
    )
    await asyncio.sleep(1.05)
    await scheduler.stop(timeout_s=0.5)

    fast = [r for r in results if r.check == "fast"]
    hung = [r for r in results if r.check == "hung"]
    # Ten slots of 0.1 s in the window, less the initial spread of one interval.
    assert len(fast) >= 8
    assert hung
    assert all(r.status is Status.CRITICAL for r in hung)
    assert "timeout" in hung[0].message


async def test_overlapping_run_is_skipped_and_counted() -> None:
    """A probe longer than its interval skips the slots it covers."""
    results, scheduler, metrics = collect()
    check = make_check("slow", interval_s=0.1, timeout_s=1.0, sleep_s=0.25)
    scheduler.start({"slow": check})
    await asyncio.sleep(1.0)
    await scheduler.stop(timeout_s=0.5)

    assert 2 <= len(results) <= 4
    assert metrics.overruns["slow"] >= 4


async def test_update_keeps_unchanged_checks_and_replaces_changed() -> None:
    """A reload keeps the schedule and state of a check whose settings did
    not change, restarts a changed one and closes a removed one."""
    _, scheduler, metrics = collect()
    kept = make_check("kept", 0.05, 0.05, 0, fingerprint="a")
    changed = make_check("changed", 0.05, 0.05, 0, fingerprint="b")
    removed = make_check("removed", 0.05, 0.05, 0, fingerprint="c")
    scheduler.start({"kept": kept, "changed": changed, "removed": removed})
    await asyncio.sleep(0.2)

    kept_again = make_check("kept", 0.05, 0.05, 0, fingerprint="a")
    changed_new = make_check("changed", 0.05, 0.05, 0, fingerprint="b2")
    added = make_check("added", 0.05, 0.05, 0, fingerprint="d")
    outcome = scheduler.update(
        {"kept": kept_again, "changed": changed_new, "added": added}
    )
    assert outcome == (["added"], ["changed"], ["removed"])
    await asyncio.sleep(0.2)

    assert scheduler.checks["kept"] is kept
    assert scheduler.checks["changed"] is changed_new
    assert kept_again.closed and removed.closed and changed.closed
    assert "removed" not in scheduler.latest_results()
    assert metrics.forgotten == ["removed", "changed"]
    await scheduler.stop(timeout_s=0.5)
    assert kept.closed and changed_new.closed and added.closed


async def test_health_reports_a_dead_loop() -> None:
    """/healthz relies on this: a stopped loop makes the scheduler unhealthy."""
    _, scheduler, _ = collect()
    scheduler.start({"a": make_check("a", 0.05, 0.05, 0)})
    await asyncio.sleep(0.1)
    assert scheduler.health()[0]
    task = scheduler._entries["a"].task
    assert task is not None
    task.cancel()
    await asyncio.sleep(0)
    healthy, reason = scheduler.health()
    assert not healthy
    assert "a" in reason
    await scheduler.stop(timeout_s=0.5)


async def test_stop_is_bounded_with_hung_probes() -> None:
    """Stop returns within its timeout even when probes hang, and closes
    every check."""
    _, scheduler, _ = collect()
    checks = {
        f"hung{i}": make_check(f"hung{i}", 0.01, 30, sleep_s=60) for i in range(20)
    }
    scheduler.start(checks)
    await asyncio.sleep(0.1)
    began = time.monotonic()
    await scheduler.stop(timeout_s=0.3)
    elapsed = time.monotonic() - began
    assert elapsed < 2.0
    assert all(c.closed for c in checks.values())


async def test_lag_is_measured_per_run() -> None:
    """Every run reports how late it started against its slot."""
    results, scheduler, metrics = collect()
    scheduler.start({f"c{i}": make_check(f"c{i}", 0.05, 0.05, 0) for i in range(50)})
    await asyncio.sleep(0.5)
    await scheduler.stop(timeout_s=0.5)
    assert len(metrics.lags) == len(results) > 200
    assert all(lag >= 0 for lag in metrics.lags)
