"""Escalation benchmark, on the real engine, SQLite store, outbox worker and
webhook notifier (pages go over HTTP to a receiver in another process).

1. Trigger to first page: incidents opened one at a time; the time from the
   rule firing to the first page confirmed delivered, p50 and p99.
2. 10,000 open incidents: CPU and wall time to open them, RSS they cost,
   then CPU of the engine's steady work with all of them open (a tick, an
   observed result) and of a restart that re-arms them all.

    python bench/escalation_bench.py [--latency-incidents 200] [--open 10000]
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import multiprocessing
import statistics
import sys
import tempfile
import time
from pathlib import Path

import psutil  # type: ignore[import-untyped]
import structlog

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import free_port, machine, wait_http
from checks.clock import SystemClock
from checks.result import CheckResult, Status
from escalation.ack import AckSigner
from escalation.config import EscalationConfig
from escalation.engine import Engine
from escalation.model import PageKind, PageState, Priority
from escalation.notifiers.config import WebhookSettings
from escalation.notifiers.webhook import WebhookNotifier
from escalation.outbox import OutboxSettings, OutboxWorker
from escalation.policy import ChannelTarget, Contact, Policy, PrioritySettings, Step
from escalation.rules import Condition, Rule, RuleTransition
from escalation.sqlite_store import SqliteStore

KEY = b"bench-ack-key-0123456789abcdef!!"


def serve_receiver(port: int) -> None:
    from aiohttp import web  # noqa: PLC0415 - only the receiver process needs it

    async def hook(request: web.Request) -> web.Response:
        await request.read()
        return web.json_response({"ok": True})

    async def health(_request: web.Request) -> web.Response:
        return web.Response(text="ok")

    app = web.Application()
    app.router.add_post("/hook", hook)
    app.router.add_get("/health", health)
    web.run_app(app, host="127.0.0.1", port=port, print=None, access_log=None)


def bench_config(receiver_port: int) -> tuple[EscalationConfig, Rule]:
    rule = Rule(
        name="api_down",
        checks=("api",),
        match="any",
        condition=Condition(status_at_least=Status.CRITICAL, text="critical"),
        priority=Priority.P1,
        category="complete_service_outage",
        summary_template="{check} down",
        dedup_key_template="{check}",
    )
    contact = Contact(
        "support",
        "Support",
        "support",
        (ChannelTarget("webhook", f"http://127.0.0.1:{receiver_port}/hook"),),
    )
    ladder = Policy("default", (Step(0, ("support",)), Step(900, ("support",))))
    settings = PrioritySettings("default", response_target_s=900, ack_timeout_s=1800)
    config = EscalationConfig(
        rules=(rule,),
        policies={"default": ladder},
        priorities=dict.fromkeys(Priority, settings),
        contacts={"support": contact},
        public_url="http://127.0.0.1:8765",
    )
    return config, rule


def firing(rule: Rule, key: str) -> RuleTransition:
    return RuleTransition(
        rule=rule,
        firing=True,
        at=time.time(),
        dedup_key=key,
        summary=f"{key} down",
        evidence=(),
    )


async def trigger_to_first_page(
    workdir: Path, receiver_port: int, incidents: int
) -> list[float]:
    config, rule = bench_config(receiver_port)
    clock = SystemClock()
    store = SqliteStore(workdir / "latency.db")
    await store.open()
    notifier = WebhookNotifier(WebhookSettings(timeout_s=5.0, secret=None))
    outbox = OutboxWorker(
        store,
        {"webhook": notifier},
        lambda: config.contacts,
        clock,
        settings=OutboxSettings(),
    )
    engine = Engine(
        store, config, clock, signer=AckSigner(KEY), on_pages_queued=outbox.wake
    )
    await engine.start()
    tasks = [asyncio.create_task(engine.run()), asyncio.create_task(outbox.run())]
    latencies = []
    try:
        for index in range(incidents):
            began = time.time()
            await engine.apply_transition(firing(rule, f"latency-{index}"))
            incident = next(
                i
                for i in engine.open_incident_list()
                if i.dedup_key == f"latency-{index}"
            )
            while True:
                pages = await store.pages_for_incident(incident.id)
                sent = [
                    p
                    for p in pages
                    if p.kind is PageKind.PAGE and p.state is PageState.SENT
                ]
                if sent and sent[0].sent_at is not None:
                    latencies.append(sent[0].sent_at - began)
                    break
                await asyncio.sleep(0.002)
            await asyncio.sleep(0.02)  # one incident at a time, not a storm
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await notifier.close()
        await store.close()
    return latencies


async def open_incidents_cost(workdir: Path, receiver_port: int, count: int) -> None:
    config, rule = bench_config(receiver_port)
    process = psutil.Process()
    clock = SystemClock()
    store = SqliteStore(workdir / "many.db")
    await store.open()
    engine = Engine(store, config, clock, signer=AckSigner(KEY))
    await engine.start()

    rss_before = process.memory_info().rss
    cpu_before, wall_before = process.cpu_times(), time.monotonic()
    for index in range(count):
        await engine.apply_transition(firing(rule, f"open-{index}"))
    # The first ladder step of each is due now: page them all.
    await engine.tick()
    cpu_after, wall_after = process.cpu_times(), time.monotonic()
    rss_after = process.memory_info().rss
    opened = len(engine.open_incident_list())
    cpu_open = (cpu_after.user + cpu_after.system) - (
        cpu_before.user + cpu_before.system
    )
    print(f"opened {opened} incidents and paged step 1 of each:")
    print(f"  CPU {cpu_open:.1f} s ({cpu_open / opened * 1000:.2f} ms each)")
    print(
        f"  wall {wall_after - wall_before:.1f} s "
        "(one fsync'd transaction per incident and per step)"
    )
    print(
        f"  RSS +{(rss_after - rss_before) / 2**20:.1f} MiB "
        f"({(rss_after - rss_before) / opened / 1024:.1f} KiB each)"
    )

    ticks = 1000
    began = time.process_time()
    for _ in range(ticks):
        await engine.tick()
    tick_us = (time.process_time() - began) / ticks * 1e6
    print(f"  tick with {opened} open, nothing due: {tick_us:.0f} µs CPU")

    result = CheckResult("api", "http", Status.OK, "ok", {}, (), time.time(), 0.01)
    observations = 10_000
    began = time.process_time()
    for _ in range(observations):
        await engine.observe(result)
    observe_us = (time.process_time() - began) / observations * 1e6
    print(f"  observe() of a result with {opened} open: {observe_us:.1f} µs CPU")
    await store.close()

    restarted_store = SqliteStore(workdir / "many.db")
    await restarted_store.open()
    began_cpu, began_wall = time.process_time(), time.monotonic()
    restarted = Engine(restarted_store, config, clock, signer=AckSigner(KEY))
    await restarted.start()
    print(
        f"  restart re-arming {len(restarted.open_incident_list())} incidents: "
        f"{time.process_time() - began_cpu:.2f} s CPU, "
        f"{time.monotonic() - began_wall:.2f} s wall"
    )
    await restarted_store.close()
    print(f"  process RSS now {process.memory_info().rss / 2**20:.1f} MiB")


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--latency-incidents", type=int, default=200)
    parser.add_argument("--open", type=int, default=10_000)
    args = parser.parse_args()

    # Each incident logs its opening: a state change worth a line in
    # production, ten thousand lines of noise here.
    structlog.configure(
        wrapper_class=structlog.make_filtering_bound_logger(logging.WARNING)
    )
    port = free_port()
    receiver = multiprocessing.Process(target=serve_receiver, args=(port,), daemon=True)
    receiver.start()
    wait_http(f"http://127.0.0.1:{port}/health")
    print(f"machine: {machine()}")
    try:
        with tempfile.TemporaryDirectory() as tmp:
            latencies = asyncio.run(
                trigger_to_first_page(Path(tmp), port, args.latency_incidents)
            )
            print(
                f"trigger to first page delivered ({len(latencies)} incidents): "
                f"p50 {statistics.median(latencies) * 1000:.1f} ms, "
                f"p99 {percentile(latencies, 0.99) * 1000:.1f} ms, "
                f"max {max(latencies) * 1000:.1f} ms"
            )
            asyncio.run(open_incidents_cost(Path(tmp), port, args.open))
    finally:
        receiver.terminate()
        receiver.join()


if __name__ == "__main__":
    main()
