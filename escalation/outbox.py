"""The outbox worker: takes due pages from the store and sends them.

A page reaches this worker already written to the store, so nothing here
can lose it: a page leaves the PENDING state only through `update_page`,
after its channel confirmed it (SENT) or after every channel of its contact
failed past its bound (DEAD). A crash between a send and that write means
the page is sent again by the next worker, under the same page id, which
receivers use to drop the repeat.

Per page: try the contact's channel at `channel_index`; retry a retryable
failure with capped exponential backoff and full jitter; after
`max_attempts_per_channel` (or at once on a permanent failure) move to the
contact's next channel; with none left the page is DEAD. A contact's rate
limit holds pages back and then sends everything held as one digest.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import hashlib
import random
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import structlog

from checks.clock import Clock
from escalation.metrics import CHANNELS, EscalationMetrics
from escalation.model import EventKind, OutboxPage, PageKind, PageState, TimelineEvent
from escalation.notifiers.base import DeliveryError, Notifier
from escalation.policy import ChannelTarget, Contact, RateLimit
from escalation.store import Store

log = structlog.get_logger(__name__)

MAX_SLEEP_S = 1.0
"""The longest the worker sleeps between passes, whatever the store says:
bounds the damage of a missed wake-up or a wall clock that jumped."""
_BATCH = 100
_SEND_GRACE_S = 5.0
"""On top of a notifier's own timeout: a backstop for a notifier that does
not honour it, so a bug cannot hold a concurrency slot forever."""
_FIRST_PAGE_MEMORY = 10_000
_DIGEST_REFS_SHOWN = 5


@dataclass(frozen=True, slots=True)
class OutboxSettings:
    max_attempts_per_channel: int = 4
    backoff_initial_s: float = 2.0
    backoff_max_s: float = 300.0
    concurrency: int = 8
    """Sends in flight at once (a digest counts as one)."""


@dataclass(slots=True)
class _Delivery:
    """One page on its way out through one resolved channel."""

    page: OutboxPage
    contact: Contact
    target: ChannelTarget
    notifier: Notifier
    events: list[TimelineEvent] = field(default_factory=list)
    """Channel fallbacks found while resolving, written with the outcome."""


class OutboxWorker:
    def __init__(
        self,
        store: Store,
        notifiers: Mapping[str, Notifier],
        contacts: Callable[[], Mapping[str, Contact]],
        clock: Clock,
        *,
        settings: OutboxSettings,
        metrics: EscalationMetrics | None = None,
        rng: random.Random | None = None,
    ) -> None:
        self._store = store
        self._notifiers = dict(notifiers)
        self._contacts = contacts
        self._clock = clock
        self._settings = settings
        self._metrics = metrics
        self._rng = rng or random.Random()
        self._wake = asyncio.Event()
        self._slots = asyncio.Semaphore(settings.concurrency)
        self._tasks: dict[asyncio.Task[int], tuple[str, ...]] = {}
        self._inflight: set[str] = set()
        self._windows: dict[tuple[str, str, str], collections.deque[float]] = {}
        self._first_paged: collections.OrderedDict[int, None] = (
            collections.OrderedDict()
        )
        self._last_pass_error: str | None = None

    def wake(self) -> None:
        """Look for due pages now rather than at the next timer."""
        self._wake.set()

    def reload(
        self, notifiers: Mapping[str, Notifier], settings: OutboxSettings
    ) -> None:
        """Use new notifiers and settings from the next send on. Sends in
        flight finish on the notifier they started with; the caller closes
        the old notifiers (a send cut short by that is retried)."""
        self._notifiers = dict(notifiers)
        if settings.concurrency != self._settings.concurrency:
            self._slots = asyncio.Semaphore(settings.concurrency)
        self._settings = settings
        self.wake()

    async def run(self) -> None:
        """Deliver pages until cancelled; in-flight sends are then cancelled
        and their pages stay PENDING for the next start."""
        try:
            while True:
                self._wake.clear()
                now = self._clock.wall()
                try:
                    await self._dispatch(now)
                    await self._publish_depth()
                    delay_s = await self._sleep_s(now)
                except Exception as exc:
                    # The outbox is what keeps "no page is lost": a store
                    # hiccup must cost one pass, not the worker.
                    self._log_pass_error(exc)
                    delay_s = MAX_SLEEP_S
                else:
                    self._last_pass_error = None
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(delay_s):
                        await self._wake.wait()
        finally:
            await self._cancel_all()

    async def deliver_due(self) -> int:
        """One pass: send every page due now and wait for the outcomes.
        Returns how many pages got an outcome (sent, retry, fallback, dead);
        pages held back by a rate limit are not counted."""
        tasks, handled = await self._dispatch(self._clock.wall())
        if tasks:
            try:
                await asyncio.wait(tasks)
            except asyncio.CancelledError:
                for task in tasks:
                    task.cancel()
                await asyncio.gather(*tasks, return_exceptions=True)
                raise
        for task in tasks:
            handled += task.result()
        await self._publish_depth()
        return handled

    # Planning ---------------------------------------------------------------

    async def _dispatch(self, now: float) -> tuple[list[asyncio.Task[int]], int]:
        """Start a send task for every due page not already in flight.
        Returns the tasks and how many pages were settled without a send
        (dead for want of a contact or channel)."""
        settled = 0
        due = await self._store.due_pages(now, limit=_BATCH + len(self._inflight))
        contacts = self._contacts()
        tasks: list[asyncio.Task[int]] = []
        held: dict[tuple[str, str, str], list[_Delivery]] = {}
        for page in due:
            if page.page_id in self._inflight:
                continue
            delivery = await self._route(page, contacts, now)
            if delivery is None:
                settled += 1
                continue
            if delivery.contact.rate_limit is None:
                tasks.append(self._spawn([delivery]))
            else:
                held.setdefault(_rate_key(delivery), []).append(delivery)
        for key, group in held.items():
            tasks.extend(await self._release(key, group, now))
        self._prune_windows(now)
        return tasks, settled

    async def _route(
        self, page: OutboxPage, contacts: Mapping[str, Contact], now: float
    ) -> _Delivery | None:
        """The channel this page goes out on, skipping channels that have no
        notifier. None when the page is dead instead (its contact is gone, or
        none of its remaining channels has a notifier)."""
        contact = contacts.get(page.contact)
        if contact is None:
            await self._kill(
                page,
                None,
                f"contact {page.contact} is no longer in the configuration",
                [],
                now,
            )
            return None
        events: list[TimelineEvent] = []
        while page.channel_index < len(contact.channels):
            target = contact.channels[page.channel_index]
            notifier = self._notifiers.get(target.type)
            if notifier is not None:
                return _Delivery(page, contact, target, notifier, events)
            reason = f"no [channels.{target.type}] is configured"
            if page.channel_index + 1 >= len(contact.channels):
                await self._kill(page, target.type, reason, events, now)
                return None
            self._fall_back(page, contact, reason, events, now)
        reason = (
            f"contact {contact.name} has no channel #{page.channel_index + 1} "
            f"(it has {len(contact.channels)})"
        )
        await self._kill(page, None, reason, events, now)
        return None

    async def _release(
        self, key: tuple[str, str, str], group: list[_Delivery], now: float
    ) -> list[asyncio.Task[int]]:
        """Send a rate-limited contact's due pages: one by one while the
        limit allows all of them, as one digest when it allows fewer, and
        not at all (they wait for the window) when it allows none."""
        limit = group[0].contact.rate_limit
        assert limit is not None
        window = self._window(key, limit, now)
        free = limit.pages - len(window)
        if len(group) <= free:
            window.extend(now for _ in group)
            return [self._spawn([delivery]) for delivery in group]
        if free >= 1:
            window.append(now)
            return [self._spawn(group)]
        until = window[0] + limit.per_s
        for delivery in group:
            delivery.page.not_before = until
            await self._store.update_page(delivery.page, delivery.events)
            delivery.events = []
        first = group[0]
        log.info(
            "pages_rate_limited",
            contact=first.contact.name,
            channel=first.target.type,
            waiting=len(group),
            limit_pages=limit.pages,
            limit_per_s=limit.per_s,
            until=until,
        )
        return []

    def _window(
        self, key: tuple[str, str, str], limit: RateLimit, now: float
    ) -> collections.deque[float]:
        window = self._windows.setdefault(key, collections.deque())
        while window and window[0] <= now - limit.per_s:
            window.popleft()
        return window

    def _prune_windows(self, now: float) -> None:
        contacts = self._contacts()
        for key in list(self._windows):
            contact = contacts.get(key[0])
            limit = contact.rate_limit if contact else None
            if limit is None or not self._window(key, limit, now):
                del self._windows[key]

    # Sending ----------------------------------------------------------------

    def _spawn(self, deliveries: list[_Delivery]) -> asyncio.Task[int]:
        ids = tuple(d.page.page_id for d in deliveries)
        task = asyncio.create_task(self._send(deliveries), name=f"outbox-send-{ids[0]}")
        self._tasks[task] = ids
        self._inflight.update(ids)
        task.add_done_callback(self._sent)
        return task

    def _sent(self, task: asyncio.Task[int]) -> None:
        self._inflight.difference_update(self._tasks.pop(task, ()))
        if not task.cancelled() and task.exception() is not None:
            # The outcome was not stored: the page stays PENDING and goes out
            # again on the next pass.
            log.error("outbox_send_crashed", exc_info=task.exception())
        self._wake.set()

    async def _send(self, deliveries: list[_Delivery]) -> int:
        first = deliveries[0]
        if len(deliveries) == 1:
            page, digest_id = first.page, None
        else:
            page = self._digest(deliveries)
            digest_id = page.page_id
        async with self._slots:
            error = await self._attempt(first.notifier, page, first.target)
        now = self._clock.wall()
        fields = {
            "page_id": page.page_id,
            "incident": _ref(page),
            "contact": page.contact,
            "channel": first.target.type,
            "attempt": first.page.attempts + 1,
            "pages": len(deliveries),
        }
        if error is None:
            for delivery in deliveries:
                await self._record_sent(delivery, now, digest_id, len(deliveries))
            log.info("page_sent", **fields)
            return len(deliveries)

        # A channel down for an hour repeats the same error on every retry:
        # the timeline keeps each attempt, the log only each new reason.
        if error.message != first.page.last_error:
            log.warning(
                "page_failed", retryable=error.retryable, error=error.message, **fields
            )
        # One draw for the whole send: the pages of a failed digest wait
        # alike and go out together again as a digest.
        jitter = self._rng.random()
        for delivery in deliveries:
            await self._record_failure(delivery, error, now, jitter)
        return len(deliveries)

    async def _attempt(
        self, notifier: Notifier, page: OutboxPage, target: ChannelTarget
    ) -> DeliveryError | None:
        try:
            async with asyncio.timeout(notifier.timeout_s + _SEND_GRACE_S):
                await notifier.send(page, target)
        except DeliveryError as exc:
            return exc
        except TimeoutError:
            return DeliveryError(
                f"{target.type} notifier did not return within "
                f"{notifier.timeout_s + _SEND_GRACE_S:g} s",
                retryable=True,
            )
        except Exception as exc:
            # A notifier bug must not strand the page: it counts as a failed
            # attempt, so the page still falls back to the next channel.
            log.exception("notifier_crashed", channel=target.type, page_id=page.page_id)
            return DeliveryError(
                f"{target.type} notifier failed: {type(exc).__name__}", retryable=True
            )
        return None

    # Outcomes -----------------------------------------------------------------

    async def _record_sent(
        self, delivery: _Delivery, now: float, digest_id: str | None, digest_size: int
    ) -> None:
        page, channel = delivery.page, delivery.target.type
        page.attempts += 1
        page.state = PageState.SENT
        page.sent_at = now
        page.sent_channel = channel
        page.last_error = None
        detail: dict[str, Any] = {"channel": channel, "attempt": page.attempts}
        if digest_id is not None:
            detail.update(digest=True, digest_id=digest_id, digest_size=digest_size)
        event = _event(page, now, EventKind.PAGE_SENT, detail)
        await self._store.update_page(page, [*delivery.events, event])
        self._count(channel, "sent")
        await self._observe_first_page(page, now)

    async def _record_failure(
        self, delivery: _Delivery, error: DeliveryError, now: float, jitter: float
    ) -> None:
        """Count a failed attempt: retry later on the same channel, or move
        to the next channel, or give the page up. `jitter` in [0, 1) picks
        the point in the backoff interval ("full jitter")."""
        page, channel = delivery.page, delivery.target.type
        settings = self._settings
        page.attempts += 1
        page.last_error = error.message
        events = [
            *delivery.events,
            _event(
                page,
                now,
                EventKind.PAGE_FAILED,
                {
                    "channel": channel,
                    "attempt": page.attempts,
                    "error": error.message,
                    "retryable": error.retryable,
                },
            ),
        ]
        self._count(channel, "failed")
        if error.retryable and page.attempts < settings.max_attempts_per_channel:
            cap_s = min(
                settings.backoff_max_s,
                settings.backoff_initial_s * 2 ** (page.attempts - 1),
            )
            delay_s = jitter * cap_s
            page.not_before = now + delay_s
            events.append(
                _event(
                    page,
                    now,
                    EventKind.PAGE_RETRY,
                    {
                        "channel": channel,
                        "attempt": page.attempts + 1,
                        "retry_in_s": round(delay_s, 3),
                    },
                )
            )
            self._count(channel, "retried")
            await self._store.update_page(page, events)
            return

        if error.retryable:
            reason = f"{page.attempts} attempts failed, the last with: {error.message}"
        else:
            reason = error.message
        if page.channel_index + 1 < len(delivery.contact.channels):
            self._fall_back(page, delivery.contact, reason, events, now)
            await self._store.update_page(page, events)
        else:
            await self._kill(page, channel, reason, events, now)

    def _fall_back(
        self,
        page: OutboxPage,
        contact: Contact,
        reason: str,
        events: list[TimelineEvent],
        now: float,
    ) -> None:
        """Move `page` to its contact's next channel, due at once; the
        caller writes the page with `events`."""
        old = contact.channels[page.channel_index].type
        page.channel_index += 1
        new = contact.channels[page.channel_index].type
        page.attempts = 0
        page.not_before = now
        events.append(
            _event(
                page,
                now,
                EventKind.CHANNEL_FALLBACK,
                {
                    "from_channel": old,
                    "to_channel": new,
                    "channel_index": page.channel_index,
                    "reason": reason,
                },
            )
        )
        self._count(old, "fallback")
        log.warning(
            "page_channel_fallback",
            page_id=page.page_id,
            incident=_ref(page),
            contact=page.contact,
            from_channel=old,
            to_channel=new,
            reason=reason,
        )

    async def _kill(
        self,
        page: OutboxPage,
        channel: str | None,
        reason: str,
        events: list[TimelineEvent],
        now: float,
    ) -> None:
        page.state = PageState.DEAD
        page.last_error = reason
        detail = {"channel": channel, "reason": reason}
        dead = _event(page, now, EventKind.PAGE_DEAD, detail)
        await self._store.update_page(page, [*events, dead])
        if channel is not None:
            self._count(channel, "dead")
        log.error(
            "page_dead",
            page_id=page.page_id,
            incident=_ref(page),
            contact=page.contact,
            channel=channel,
            reason=reason,
        )

    async def _observe_first_page(self, page: OutboxPage, now: float) -> None:
        """Trigger-to-first-page latency, once per incident: the first step's
        first page, unless another page of the incident was sent before."""
        payload = page.payload
        opened_at = payload.get("opened_at")
        if (
            self._metrics is None
            or page.kind is not PageKind.PAGE
            or payload.get("step") != 1
            or payload.get("repeat", 0) != 0
            or not isinstance(opened_at, int | float)
            or page.incident_id in self._first_paged
        ):
            return
        self._first_paged[page.incident_id] = None
        if len(self._first_paged) > _FIRST_PAGE_MEMORY:
            self._first_paged.popitem(last=False)
        # Covers a restart, which forgets `_first_paged`.
        for other in await self._store.pages_for_incident(page.incident_id):
            if other.page_id != page.page_id and other.state is PageState.SENT:
                return
        self._metrics.trigger_to_first_page.observe(max(0.0, now - opened_at))

    # Digests ------------------------------------------------------------------

    def _digest(self, deliveries: Sequence[_Delivery]) -> OutboxPage:
        """One message standing for several held-back pages; its id derives
        from theirs, so the same set sent again after a crash repeats it."""
        pages = sorted(
            (d.page for d in deliveries),
            key=lambda p: (str(p.payload.get("priority", "P9")), p.created_at),
        )
        ids = sorted(p.page_id for p in pages)
        digest_id = "digest-" + hashlib.sha256("\n".join(ids).encode()).hexdigest()[:24]
        items = [_digest_item(p) for p in pages]
        lead = next(
            (
                p
                for p in pages
                if p.payload.get("ack_url") and p.kind is not PageKind.RESOLVED
            ),
            pages[0],
        )
        refs = list(dict.fromkeys(str(item["incident"]) for item in items))
        shown = ", ".join(refs[:_DIGEST_REFS_SHOWN])
        if len(refs) > _DIGEST_REFS_SHOWN:
            shown += f" and {len(refs) - _DIGEST_REFS_SHOWN} more"
        contact = deliveries[0].contact
        first = lead.payload
        now = self._clock.wall()
        payload: dict[str, Any] = {
            "page_id": digest_id,
            "kind": PageKind.DIGEST.value,
            "incident": first.get("incident"),
            "incident_number": first.get("incident_number"),
            "priority": pages[0].payload.get("priority"),
            "category": first.get("category"),
            "summary": f"{len(pages)} pages held back by the rate limit: {shown}",
            "state": first.get("state"),
            "started_at": min(
                (
                    str(p.payload["started_at"])
                    for p in pages
                    if p.payload.get("started_at")
                ),
                default=None,
            ),
            "opened_at": first.get("opened_at"),
            "step": first.get("step"),
            "steps_total": first.get("steps_total"),
            "repeat": first.get("repeat"),
            "contact": contact.name,
            "contact_name": contact.display_name,
            "role": contact.role,
            "evidence": [],
            "ack_url": first.get("ack_url"),
            "ack_expires_at": first.get("ack_expires_at"),
            "count": len(pages),
            "pages": items,
        }
        return OutboxPage(
            page_id=digest_id,
            incident_id=lead.incident_id,
            contact=contact.name,
            kind=PageKind.DIGEST,
            step=lead.step,
            payload=payload,
            created_at=now,
            not_before=now,
            channel_index=deliveries[0].page.channel_index,
        )

    # Housekeeping -------------------------------------------------------------

    async def _sleep_s(self, now: float) -> float:
        next_due = await self._store.next_page_due()
        if next_due is None or next_due <= now:
            # Whatever is due is in flight; its completion wakes the loop.
            return MAX_SLEEP_S
        return min(MAX_SLEEP_S, next_due - now)

    async def _publish_depth(self) -> None:
        if self._metrics is not None:
            self._metrics.outbox_depth.set(await self._store.outbox_depth())

    def _count(self, channel: str, result: str) -> None:
        # Only the known channel names: a label must not take arbitrary values.
        if self._metrics is not None and channel in CHANNELS:
            self._metrics.pages.labels(channel, result).inc()

    def _log_pass_error(self, exc: Exception) -> None:
        text = f"{type(exc).__name__}: {exc}"
        if text != self._last_pass_error:
            log.error("outbox_pass_failed", error=text, exc_info=exc)
        self._last_pass_error = text

    async def _cancel_all(self) -> None:
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.gather(*tasks, return_exceptions=True)


def _event(
    page: OutboxPage, now: float, kind: EventKind, detail: dict[str, Any]
) -> TimelineEvent:
    """A page event; the page id and contact say which of the incident's
    pages it is about."""
    return TimelineEvent(
        page.incident_id,
        now,
        kind,
        detail={"page_id": page.page_id, "contact": page.contact, **detail},
    )


def _rate_key(delivery: _Delivery) -> tuple[str, str, str]:
    return (delivery.contact.name, delivery.target.type, delivery.target.to)


def _ref(page: OutboxPage) -> str:
    return f"INC-{page.incident_id}"


def _digest_item(page: OutboxPage) -> dict[str, Any]:
    payload = page.payload
    return {
        "page_id": page.page_id,
        "kind": page.kind.value,
        "incident": payload.get("incident", _ref(page)),
        "incident_number": payload.get("incident_number", page.incident_id),
        "priority": payload.get("priority"),
        "category": payload.get("category"),
        "summary": payload.get("summary"),
        "state": payload.get("state"),
        "step": payload.get("step"),
        "started_at": payload.get("started_at"),
        "ack_url": payload.get("ack_url"),
        "ack_expires_at": payload.get("ack_expires_at"),
    }
