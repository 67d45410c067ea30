"""The daemon's metrics: names, pre-created series, removal, promtool lint."""

from __future__ import annotations

import platform
import shutil
import subprocess

import pytest
from prometheus_client import CollectorRegistry, generate_latest

from checks.result import CheckResult, Status
from daemon.metrics import DaemonMetrics, sentinel_version
from escalation.metrics import EscalationMetrics


def _result(check: str, status: Status, duration_s: float = 0.2) -> CheckResult:
    return CheckResult(
        check=check,
        check_type="http",
        status=status,
        message="",
        values={},
        evidence=(),
        started_at=1_700_000_000.0,
        duration_s=duration_s,
    )


def _value(
    registry: CollectorRegistry, name: str, labels: dict[str, str] | None = None
) -> float | None:
    return registry.get_sample_value(name, labels or {})


def test_metrics_observe_result_sets_status_runs_duration() -> None:
    """A result sets the status gauge and last-run time and counts the run."""
    registry = CollectorRegistry()
    metrics = DaemonMetrics(registry)
    metrics.observe_result(_result("api", Status.CRITICAL, 1.5))
    metrics.observe_result(_result("api", Status.OK, 0.1))

    check = {"check": "api"}
    assert _value(registry, "sentinel_check_status", check) == 0
    assert _value(registry, "sentinel_check_last_run_timestamp_seconds", check) == 1.7e9
    assert _value(registry, "sentinel_check_runs_total", {**check, "status": "ok"}) == 1
    runs_critical = {**check, "status": "critical"}
    assert _value(registry, "sentinel_check_runs_total", runs_critical) == 1
    assert _value(registry, "sentinel_check_duration_seconds_count", check) == 2
    assert _value(registry, "sentinel_check_duration_seconds_sum", check) == 1.6


def test_metrics_track_checks_precreates_every_status_at_zero() -> None:
    """Configured checks have run counters for all four statuses before any run,
    and no status gauge (a 0 would claim ok)."""
    registry = CollectorRegistry()
    DaemonMetrics(registry).track_checks(["db", "queue"])
    for check in ("db", "queue"):
        for status in ("ok", "warning", "critical", "unknown"):
            labels = {"check": check, "status": status}
            assert _value(registry, "sentinel_check_runs_total", labels) == 0
        assert (
            _value(registry, "sentinel_scheduler_overruns_total", {"check": check}) == 0
        )
        assert _value(registry, "sentinel_check_status", {"check": check}) is None


def test_metrics_forget_check_removes_all_its_series() -> None:
    """A check removed by a reload leaves no series behind; others stay."""
    registry = CollectorRegistry()
    metrics = DaemonMetrics(registry)
    metrics.observe_result(_result("old", Status.WARNING))
    metrics.observe_result(_result("kept", Status.OK))
    metrics.overrun("old")
    metrics.forget_check("old")
    metrics.forget_check("never-seen")

    text = generate_latest(registry).decode()
    assert 'check="old"' not in text
    assert 'check="kept"' in text


def test_metrics_lag_overrun_reload_and_build_info() -> None:
    """Scheduler lag, overruns, reload state and build info are exported."""
    registry = CollectorRegistry()
    metrics = DaemonMetrics(registry)
    metrics.observe_lag(0.003)
    metrics.observe_lag(-0.001)  # clock noise counts as on time
    metrics.overrun("slow")
    metrics.reloaded(True, 1_700_000_100.0)
    metrics.reloaded(False, 1_700_000_200.0)

    assert _value(registry, "sentinel_scheduler_lag_seconds_count") == 2
    assert _value(registry, "sentinel_scheduler_lag_seconds_sum") == 0.003
    assert _value(registry, "sentinel_scheduler_overruns_total", {"check": "slow"}) == 1
    assert _value(registry, "sentinel_config_last_reload_success") == 0
    stamp = "sentinel_config_last_reload_success_timestamp_seconds"
    assert _value(registry, stamp) == 1_700_000_100.0
    build = {"version": sentinel_version(), "python": platform.python_version()}
    assert _value(registry, "sentinel_build_info", build) == 1


def test_metrics_have_no_created_series_and_sentinel_prefix() -> None:
    """No *_created series; every metric name starts with sentinel_."""
    registry = CollectorRegistry()
    DaemonMetrics(registry).observe_result(_result("api", Status.OK))
    EscalationMetrics(registry)
    text = generate_latest(registry).decode()
    assert "_created" not in text
    names = {line.split()[2] for line in text.splitlines() if line.startswith("# TYPE")}
    assert names
    assert all(name.startswith("sentinel_") for name in names), names


def test_metrics_promtool_check_metrics_is_clean() -> None:
    """promtool finds nothing to lint in the daemon's plus escalation's output."""
    promtool = shutil.which("promtool")
    if promtool is None:
        pytest.skip("promtool is not installed (Debian package prometheus)")
    registry = CollectorRegistry()
    daemon = DaemonMetrics(registry)
    escalation = EscalationMetrics(registry)
    daemon.track_checks(["api", "db"])
    daemon.observe_result(_result("api", Status.WARNING, 0.4))
    daemon.observe_result(_result("db", Status.UNKNOWN, 10.0))
    daemon.observe_lag(0.02)
    daemon.overrun("db")
    daemon.reloaded(True, 1_700_000_000.0)
    escalation.incidents_opened.labels("P1").inc()
    escalation.incidents_open.labels("P1").set(1)
    escalation.time_to_ack.labels("P1").observe(300)
    escalation.trigger_to_first_page.observe(0.8)
    escalation.pages.labels("sms", "sent").inc()
    escalation.outbox_depth.set(2)

    done = subprocess.run(
        [promtool, "check", "metrics"],
        input=generate_latest(registry),
        capture_output=True,
        timeout=30,
        check=False,
    )
    assert done.stdout.decode() + done.stderr.decode() == ""
    assert done.returncode == 0
