"""The running daemon: checks feed the escalation engine, the engine feeds the
outbox, and the API, metrics, signals and systemd see all of it.

Every background task is owned here, named, and cancelled and awaited on
stop; the whole stop is bounded by the configured shutdown timeout.
"""

from __future__ import annotations

import asyncio
import gc
import os
import secrets
import signal
import sys
from collections.abc import Callable, Coroutine, Mapping
from pathlib import Path
from typing import Any

import structlog
from aiohttp import web
from prometheus_client import CollectorRegistry

from checks.clock import Clock, SystemClock
from checks.result import CheckResult
from checks.settings import ConfigError
from daemon.api import build_app
from daemon.config import Config, admin_token, load_config, state_secret
from daemon.logs import configure_logging
from daemon.metrics import DaemonMetrics, sentinel_version
from daemon.scheduler import Scheduler
from daemon.sdnotify import SystemdNotifier
from escalation.ack import AckSigner
from escalation.engine import Engine, validate_config
from escalation.errors import StoreError
from escalation.metrics import EscalationMetrics
from escalation.notifiers.base import Notifier
from escalation.notifiers.config import create_notifiers
from escalation.outbox import OutboxWorker
from escalation.rules import RuleTransition
from escalation.sqlite_store import SqliteStore

log = structlog.get_logger(__name__)


class Service:
    """Implements daemon.api.ApiBackend."""

    def __init__(
        self, config_path: Path, config: Config, clock: Clock | None = None
    ) -> None:
        self.config_path = config_path
        self.config = config
        self.clock = clock or SystemClock()
        self.node = config.settings.node
        self.registry = CollectorRegistry()
        self.metrics = DaemonMetrics(self.registry)
        self.escalation_metrics = EscalationMetrics(self.registry)
        self.admin_token = admin_token(config.settings)
        self.signer = AckSigner(self._ack_key())
        self.store = SqliteStore(config.settings.sqlite_path)
        self.systemd = SystemdNotifier()
        self._transitions: asyncio.Queue[list[RuleTransition]] = asyncio.Queue()
        self._reload_requested = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []
        self._notifiers: Mapping[str, Notifier] = {}
        self._runner: web.AppRunner | None = None
        self.scheduler = Scheduler(
            self.clock,
            self._evaluate,
            max_concurrent=config.settings.max_concurrent_checks,
            jitter_fraction=config.settings.jitter_fraction,
            metrics=self.metrics,
        )
        self.engine: Engine
        self.outbox: OutboxWorker

    # ApiBackend ----------------------------------------------------------------

    def latest_results(self) -> Mapping[str, CheckResult]:
        return self.scheduler.latest_results()

    def check_names(self) -> list[str]:
        return sorted(self.scheduler.checks)

    def health(self) -> tuple[bool, str]:
        for task in self._tasks:
            if task.done():
                return False, f"task {task.get_name()} has stopped"
        return self.scheduler.health()

    # Lifecycle -----------------------------------------------------------------

    async def start(self) -> None:
        settings = self.config.settings
        settings.state_dir.mkdir(parents=True, exist_ok=True)
        await self.store.open()
        self._notifiers = await create_notifiers(self.config.channels)
        self.outbox = OutboxWorker(
            self.store,
            self._notifiers,
            lambda: self.config.escalation.contacts,
            self.clock,
            settings=self.config.channels.outbox,
            metrics=self.escalation_metrics,
        )
        self.engine = Engine(
            self.store,
            self.config.escalation,
            self.clock,
            signer=self.signer,
            metrics=self.escalation_metrics,
            on_pages_queued=self.outbox.wake,
        )
        await self.engine.start()

        self._runner = web.AppRunner(
            build_app(self), shutdown_timeout=1.0, access_log=None
        )
        await self._runner.setup()
        site = web.TCPSite(self._runner, settings.api_host, settings.api_port)
        await site.start()

        self.metrics.track_checks(self.config.checks)
        self.scheduler.start(self.config.checks)
        self._spawn(self.engine.run(), "engine")
        self._spawn(self.outbox.run(), "outbox")
        self._spawn(self._feed_engine(), "results")
        self._spawn(self._reload_loop(), "reload")
        if self.systemd.watchdog_interval_s is not None:
            self._spawn(
                self._watchdog_loop(self.systemd.watchdog_interval_s), "watchdog"
            )
        self.metrics.reloaded(True, self.clock.wall())
        self.systemd.ready()

    async def stop(self) -> None:
        """Stop taking work, give probes and sends a bounded time, then cancel."""
        self.systemd.stopping()
        budget_s = self.config.settings.shutdown_timeout_s
        await self.scheduler.stop(timeout_s=max(0.1, budget_s - 1.5))
        for task in self._tasks:
            task.cancel()
        if self._tasks:
            await asyncio.wait(self._tasks, timeout=1.0)
        if self._runner is not None:
            await self._runner.cleanup()
        await asyncio.gather(
            *(_close_quietly(n.close(), n.channel) for n in self._notifiers.values())
        )
        await self.store.close()

    def request_reload(self) -> None:
        # One slot: several SIGHUPs in a row collapse into one reload.
        self._reload_requested.set()

    async def reload(self) -> bool:
        """Apply the file as it is now; on any problem keep the running
        configuration and say why."""
        self.systemd.reloading()
        try:
            new = await asyncio.to_thread(load_config, self.config_path)
            # The engine's own checks too, before anything is applied: a
            # reload lands whole or not at all.
            validate_config(new.escalation)
        except ConfigError as exc:
            return self._refuse_reload([str(p) for p in exc.problems if not p.warning])
        except ValueError as exc:
            return self._refuse_reload([str(exc)])
        for warning in new.warnings:
            log.warning("config_warning", problem=str(warning))
        self.metrics.track_checks(new.checks)
        added, changed, removed = self.scheduler.update(new.checks)
        self.engine.reload(new.escalation)
        if new.channels != self.config.channels:
            old_notifiers = self._notifiers
            self._notifiers = await create_notifiers(new.channels)
            self.outbox.reload(self._notifiers, new.channels.outbox)
            for notifier in old_notifiers.values():
                await _close_quietly(notifier.close(), notifier.channel)
        restart_needed = [
            name
            for name in ("api_host", "api_port", "sqlite_path", "state_dir")
            if getattr(new.settings, name) != getattr(self.config.settings, name)
        ]
        if restart_needed:
            log.warning("config_change_needs_restart", settings=restart_needed)
        self.config = new
        self.metrics.reloaded(True, self.clock.wall())
        self.systemd.ready()
        log.info("config_reloaded", added=added, changed=changed, removed=removed)
        return True

    def _refuse_reload(self, problems: list[str]) -> bool:
        self.systemd.ready()
        log.error("config_reload_failed", file=str(self.config_path), problems=problems)
        self.metrics.reloaded(False, self.clock.wall())
        return False

    # Tasks ---------------------------------------------------------------------

    def _spawn(self, coro: Coroutine[Any, Any, None], name: str) -> None:
        self._tasks.append(asyncio.create_task(coro, name=name))

    def _evaluate(self, result: CheckResult) -> None:
        """Called by the scheduler with every result. The rules judge it on
        the spot; only what changes something waits for the engine, so a
        busy engine never holds up a probe."""
        try:
            transitions = self.engine.evaluate(result)
        except Exception:
            # A bug in one evaluation must not stop the check's loop.
            log.exception("rule_evaluation_failed", check=result.check)
            return
        if transitions:
            self._transitions.put_nowait(transitions)

    async def _feed_engine(self) -> None:
        while True:
            transitions = await self._transitions.get()
            try:
                await self.engine.apply_transitions(transitions)
            except Exception:
                # A bug in one transition must not stop every later one.
                log.exception(
                    "transitions_failed", rules=[t.rule.name for t in transitions]
                )

    async def _reload_loop(self) -> None:
        while True:
            await self._reload_requested.wait()
            self._reload_requested.clear()
            try:
                await self.reload()
            except Exception:
                # A bug in applying one reload must not end reloading.
                log.exception("config_reload_crashed", file=str(self.config_path))
                self.metrics.reloaded(False, self.clock.wall())

    async def _watchdog_loop(self, interval_s: float) -> None:
        while True:
            healthy, reason = self.health()
            if healthy:
                self.systemd.watchdog()
            else:
                log.error("watchdog_withheld", reason=reason)
            await asyncio.sleep(interval_s)

    def _ack_key(self) -> bytes:
        secret = self.config.escalation.ack_secret
        if secret is not None:
            return secret.reveal().encode("utf-8")
        # Kept across restarts, so links already sent stay valid.
        key_file = self.config.settings.state_dir / "ack.key"
        return bytes.fromhex(state_secret(key_file, secrets.token_hex(32)))


async def _close_quietly(closing: Coroutine[Any, Any, None], what: str) -> None:
    try:
        await asyncio.wait_for(closing, timeout=1.0)
    except Exception as exc:
        log.warning(
            "close_failed", component=what, error=str(exc) or type(exc).__name__
        )


def event_loop_factory() -> Callable[[], asyncio.AbstractEventLoop] | None:
    """uvloop when it is installed, else the standard loop.

    The probes spend most of their CPU in the event loop's own plumbing
    (connect, transport, timers); uvloop does that work in C, and bench/
    shows about a fifth less CPU per probe with it. SENTINEL_EVENT_LOOP=asyncio
    forces the standard loop, to rule uvloop out when chasing a bug.
    """
    if os.environ.get("SENTINEL_EVENT_LOOP", "auto") == "asyncio":
        return None
    try:
        import uvloop  # noqa: PLC0415 - optional, and only the daemon wants it
    except ImportError:
        return None
    factory: Callable[[], asyncio.AbstractEventLoop] = uvloop.new_event_loop
    return factory


async def run_daemon(config_path: Path) -> int:
    """`sentinel run`: start, serve until SIGTERM or SIGINT, stop. Exit codes:
    0 after a clean stop, 1 when the configuration or start-up fails."""
    try:
        config = load_config(config_path)
    except ConfigError as exc:
        for problem in exc.problems:
            print(problem, file=sys.stderr)
        return 1
    configure_logging(config.settings.log_format, config.settings.log_level)
    for warning in config.warnings:
        log.warning("config_warning", problem=str(warning))

    loop = asyncio.get_running_loop()
    stop_requested = asyncio.Event()
    try:
        service = Service(config_path, config)
    except OSError as exc:
        # The state directory holds the admin token and the ack key.
        log.error(
            "startup_failed", error=str(exc), state_dir=str(config.settings.state_dir)
        )
        return 1
    loop.add_signal_handler(signal.SIGTERM, stop_requested.set)
    loop.add_signal_handler(signal.SIGINT, stop_requested.set)
    loop.add_signal_handler(signal.SIGHUP, service.request_reload)
    try:
        await service.start()
    except (OSError, StoreError) as exc:
        log.error("startup_failed", error=str(exc))
        await service.stop()
        return 1
    # Everything built so far lives as long as the daemon: keep it out of
    # the collector's way, or each full collection walks it all again.
    gc.freeze()
    settings = config.settings
    base = f"http://{settings.api_host}:{settings.api_port}"
    log.info(
        "sentinel_started",
        version=sentinel_version(),
        event_loop=type(loop).__module__.split(".")[0],
        node=settings.node,
        checks=len(config.checks),
        api=f"{base}/api/v1",
        metrics=f"{base}/metrics",
        status=f"{base}/healthz",
        store=str(settings.sqlite_path),
    )
    await stop_requested.wait()
    log.info("sentinel_stopping")
    await service.stop()
    log.info("sentinel_stopped")
    return 0
