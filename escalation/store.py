"""The one async interface every store implements: SQLite now, MySQL later.

Writes that record a page or a ladder step go through one call that commits
the incident, its new timeline events and its new outbox pages together, so
a crash leaves either all of them or none.
"""

from __future__ import annotations

import abc
from collections.abc import Sequence

from escalation.model import Incident, OutboxPage, Silence, TimelineEvent


class Store(abc.ABC):
    @abc.abstractmethod
    async def open(self) -> None:
        """Create or migrate the schema."""

    @abc.abstractmethod
    async def close(self) -> None: ...

    # Incidents -------------------------------------------------------------

    @abc.abstractmethod
    async def create_incident(
        self,
        incident: Incident,
        events: Sequence[TimelineEvent] = (),
        pages: Sequence[OutboxPage] = (),
    ) -> Incident:
        """Insert with a new id (events' and pages' incident_id are set to it)
        atomically; returns the incident with its id."""

    @abc.abstractmethod
    async def save_incident(
        self,
        incident: Incident,
        events: Sequence[TimelineEvent] = (),
        pages: Sequence[OutboxPage] = (),
    ) -> None:
        """Update the incident, append events, insert pages (a page whose id
        exists already is left as it is), all in one transaction."""

    @abc.abstractmethod
    async def get_incident(self, incident_id: int) -> Incident | None: ...

    @abc.abstractmethod
    async def open_incidents(self) -> list[Incident]: ...

    @abc.abstractmethod
    async def latest_by_dedup_key(self, dedup_key: str) -> Incident | None: ...

    @abc.abstractmethod
    async def list_incidents(
        self, *, state: str | None = None, limit: int = 100
    ) -> list[Incident]:
        """Newest first."""

    @abc.abstractmethod
    async def timeline(self, incident_id: int) -> list[TimelineEvent]: ...

    @abc.abstractmethod
    async def add_events(self, events: Sequence[TimelineEvent]) -> None: ...

    # Outbox ----------------------------------------------------------------

    @abc.abstractmethod
    async def due_pages(self, now: float, limit: int = 100) -> list[OutboxPage]:
        """Pending pages whose not_before has come, oldest first."""

    @abc.abstractmethod
    async def next_page_due(self) -> float | None:
        """The smallest not_before among pending pages."""

    @abc.abstractmethod
    async def update_page(
        self, page: OutboxPage, events: Sequence[TimelineEvent] = ()
    ) -> None:
        """Store the page's delivery state and append events, atomically."""

    @abc.abstractmethod
    async def pages_for_incident(self, incident_id: int) -> list[OutboxPage]: ...

    @abc.abstractmethod
    async def get_page(self, page_id: str) -> OutboxPage | None: ...

    @abc.abstractmethod
    async def outbox_depth(self) -> int:
        """Pending pages."""

    # Acknowledgement tokens ------------------------------------------------

    @abc.abstractmethod
    async def use_nonce(self, nonce: str, now: float) -> bool:
        """Mark an ack token's nonce used; False if it was used before."""

    # Silences --------------------------------------------------------------

    @abc.abstractmethod
    async def add_silence(self, silence: Silence) -> Silence: ...

    @abc.abstractmethod
    async def list_silences(
        self, *, active_at: float | None = None
    ) -> list[Silence]: ...

    @abc.abstractmethod
    async def expire_silence(self, silence_id: int, now: float) -> Silence | None: ...
