"""Scheduler benchmark: N http checks at a 1 s interval against one local
aiohttp target, a fresh connection per probe, for a fixed time.

The daemon runs as its own process (`sentinel run`), the target in another,
so the CPU figure is the whole daemon's and nothing else's. Prints probes per
second, daemon CPU per probe, p50/p99 scheduling lag (from the daemon's own
histogram) and peak RSS.

    python bench/scheduler_bench.py [--checks 1000] [--seconds 60]
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import sys
import tempfile
import time
from pathlib import Path

import psutil  # type: ignore[import-untyped]

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import (
    cpu_seconds,
    daemon_process,
    free_port,
    histogram_quantile,
    machine,
    peak_rss_mib,
    samples,
    scrape,
    wait_http,
)


def serve_target(port: int) -> None:
    from aiohttp import web  # noqa: PLC0415 - only the target process needs it

    async def health(_request: web.Request) -> web.Response:
        return web.Response(text='{"status": "ok"}', content_type="application/json")

    app = web.Application()
    app.router.add_get("/health", health)
    # A deep accept queue: a dropped SYN is retried only after a second,
    # which would show as a probe timeout that is the target's, not ours.
    web.run_app(
        app, host="127.0.0.1", port=port, print=None, access_log=None, backlog=4096
    )


def write_config(directory: Path, checks: int, target_port: int, api_port: int) -> Path:
    lines = [
        "[daemon]",
        f'state_dir = "{directory / "state"}"',
        "max_concurrent_checks = 2000",
        "[api]",
        f"port = {api_port}",
        "[log]",
        'format = "json"',
        "[escalation]",
        'public_url = "http://127.0.0.1"',
    ]
    for index in range(checks):
        lines += [
            f"[checks.http{index}]",
            'type = "http"',
            f'url = "http://127.0.0.1:{target_port}/health"',
            'interval = "1s"',
            'timeout = "900ms"',
        ]
    path = directory / "bench.toml"
    path.write_text("\n".join(lines) + "\n")
    return path


def failure_messages(log_path: Path) -> dict[str, int]:
    """Distinct messages of checks that turned not-ok, with counts."""
    found: dict[str, int] = {}
    for line in log_path.read_text().splitlines():
        if '"check_status_changed"' in line:
            event = json.loads(line)
            if event.get("new") != "ok":
                message = str(event.get("message"))[:100]
                found[message] = found.get(message, 0) + 1
    return found


def started_event_loop(log_path: Path) -> str:
    for line in log_path.read_text().splitlines():
        if '"sentinel_started"' in line:
            return str(json.loads(line).get("event_loop", "unknown"))
    return "unknown"


def runs_total(text: str) -> float:
    return sum(value for _, value in samples(text, "sentinel_check_runs_total"))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checks", type=int, default=1000)
    parser.add_argument("--seconds", type=float, default=60.0)
    parser.add_argument("--warmup", type=float, default=8.0)
    args = parser.parse_args()

    target_port, api_port = free_port(), free_port()
    target = multiprocessing.Process(
        target=serve_target, args=(target_port,), daemon=True
    )
    target.start()
    wait_http(f"http://127.0.0.1:{target_port}/health")

    with tempfile.TemporaryDirectory() as tmp:
        config = write_config(Path(tmp), args.checks, target_port, api_port)
        metrics_url = f"http://127.0.0.1:{api_port}/metrics"
        with daemon_process(config, Path(tmp) / "daemon.log") as proc:
            wait_http(metrics_url)
            process = psutil.Process(proc.pid)
            time.sleep(args.warmup)
            before_text = scrape(metrics_url)
            before_cpu, began = cpu_seconds(process), time.monotonic()
            before_times = process.cpu_times()
            time.sleep(args.seconds)
            after_cpu, ended = cpu_seconds(process), time.monotonic()
            after_times = process.cpu_times()
            after_text = scrape(metrics_url)
            rss = peak_rss_mib(proc.pid)
            event_loop = started_event_loop(Path(tmp) / "daemon.log")
            failures = failure_messages(Path(tmp) / "daemon.log")
            statuses = samples(after_text, "sentinel_check_runs_total")

    target.terminate()
    target.join()

    probes = runs_total(after_text) - runs_total(before_text)
    elapsed = ended - began
    cpu = after_cpu - before_cpu
    not_ok = sum(v for labels, v in statuses if 'status="ok"' not in labels)
    print(f"machine: {machine()}")
    print(
        f"checks: {args.checks} http at 1 s, {elapsed:.0f} s measured "
        f"after {args.warmup:g} s of warm-up"
    )
    print(f"probes per second: {probes / elapsed:.0f}")
    print(f"daemon CPU: {cpu:.1f} s = {cpu / probes * 1000:.3f} ms per probe")
    print(f"CPU seconds per 1,000 probes: {cpu / probes * 1000:.3f}")
    user = after_times.user - before_times.user
    system = after_times.system - before_times.system
    print(
        f"  of which user {user / probes * 1000:.3f} ms, "
        f"kernel {system / probes * 1000:.3f} ms"
    )
    lag = "sentinel_scheduler_lag_seconds"
    p50 = histogram_quantile(after_text, lag, 0.5, before_text)
    p99 = histogram_quantile(after_text, lag, 0.99, before_text)
    print(f"scheduling lag: p50 {p50 * 1000:.1f} ms, p99 {p99 * 1000:.1f} ms")
    print(f"event loop: {event_loop}")
    print(f"peak RSS: {rss:.1f} MiB")
    print(f"results not ok during the run: {not_ok:.0f}")
    for message, count in sorted(failures.items(), key=lambda kv: -kv[1])[:5]:
        print(f"  {count} x {message}")


if __name__ == "__main__":
    main()
