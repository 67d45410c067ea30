"""The daemon's own Prometheus metrics: check outcomes, scheduler health,
build and reload state. The scheduler and the service call the `observe_*`
methods; the ``check`` label only ever holds configured check names."""

from __future__ import annotations

import contextlib
import platform
from collections.abc import Iterable
from dataclasses import dataclass
from importlib.metadata import PackageNotFoundError, version

import prometheus_client
from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    ProcessCollector,
)

from checks.result import CheckResult, Status

_DURATION_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)
_LAG_BUCKETS = (0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10)

# `_created` series double the series count and nothing here reads them.
# The switch is process-wide in prometheus_client; this module is the only
# place that sets it.
prometheus_client.disable_created_metrics()  # type: ignore[no-untyped-call]


def sentinel_version() -> str:
    try:
        return version("sentinel")
    except PackageNotFoundError:  # run from a source tree without install
        return "unknown"


@dataclass(slots=True)
class _CheckSeries:
    last_run: Gauge
    duration: Histogram
    runs: dict[Status, Counter]
    status: Gauge | None = None
    """Created by the first result: a status of 0 before it would claim ok."""


class DaemonMetrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        self.check_status = Gauge(
            "sentinel_check_status",
            "Latest status of each check: 0 ok, 1 warning, 2 critical, 3 unknown.",
            ["check"],
            registry=registry,
        )
        self.check_last_run = Gauge(
            "sentinel_check_last_run_timestamp_seconds",
            "When each check's latest run started, seconds since the epoch.",
            ["check"],
            registry=registry,
        )
        self.check_runs = Counter(
            "sentinel_check_runs_total",
            "Check runs by resulting status.",
            ["check", "status"],
            registry=registry,
        )
        self.check_duration = Histogram(
            "sentinel_check_duration_seconds",
            "How long each check's probe took, including timeouts.",
            ["check"],
            buckets=_DURATION_BUCKETS,
            registry=registry,
        )
        self.scheduler_lag = Histogram(
            "sentinel_scheduler_lag_seconds",
            "How late a check run started compared with its schedule.",
            buckets=_LAG_BUCKETS,
            registry=registry,
        )
        self.overruns = Counter(
            "sentinel_scheduler_overruns_total",
            "Check runs skipped because the previous run was still going.",
            ["check"],
            registry=registry,
        )
        self.build_info = Gauge(
            "sentinel_build_info",
            "Always 1; the labels say which Sentinel and Python run.",
            ["version", "python"],
            registry=registry,
        )
        self.reload_success = Gauge(
            "sentinel_config_last_reload_success",
            "1 if the latest configuration load or reload succeeded, else 0.",
            registry=registry,
        )
        self.reload_success_time = Gauge(
            "sentinel_config_last_reload_success_timestamp_seconds",
            "When the configuration was last loaded successfully.",
            registry=registry,
        )
        ProcessCollector(namespace="sentinel", registry=registry)

        self.build_info.labels(sentinel_version(), platform.python_version()).set(1)
        self._checks: dict[str, _CheckSeries] = {}

    def track_checks(self, names: Iterable[str]) -> None:
        """Make the series of these checks exist (at zero) before their
        first run, so rate() and absent() work from the first scrape. The
        status gauge waits for a real result: a 0 would claim "ok"."""
        for name in names:
            if name not in self._checks:
                self._series(name)

    def forget_check(self, name: str) -> None:
        """Drop every series of a check that a reload removed."""
        if self._checks.pop(name, None) is None:
            return
        for metric in (
            self.check_status,
            self.check_last_run,
            self.check_duration,
            self.overruns,
        ):
            _remove(metric, name)
        for status in Status:
            _remove(self.check_runs, name, status.label)

    def observe_result(self, result: CheckResult) -> None:
        series = self._checks.get(result.check) or self._series(result.check)
        if series.status is None:
            series.status = self.check_status.labels(result.check)
        series.status.set(int(result.status))
        series.last_run.set(result.started_at)
        series.runs[result.status].inc()
        series.duration.observe(result.duration_s)

    def _series(self, name: str) -> _CheckSeries:
        # Looking up labelled children costs more than the update itself, and
        # every result updates four: keep them per check.
        series = _CheckSeries(
            last_run=self.check_last_run.labels(name),
            duration=self.check_duration.labels(name),
            runs={
                status: self.check_runs.labels(name, status.label) for status in Status
            },
        )
        self.overruns.labels(name)
        self._checks[name] = series
        return series

    def observe_lag(self, seconds: float) -> None:
        self.scheduler_lag.observe(max(seconds, 0.0))

    def overrun(self, check: str) -> None:
        self.track_checks((check,))
        self.overruns.labels(check).inc()

    def reloaded(self, ok: bool, at: float) -> None:
        """Record a configuration load or reload attempt finishing at `at`."""
        self.reload_success.set(1 if ok else 0)
        if ok:
            self.reload_success_time.set(at)


def _remove(metric: Gauge | Counter | Histogram, *labels: str) -> None:
    # A series that was never created (status before the first run) is fine.
    with contextlib.suppress(KeyError):
        metric.remove(*labels)
