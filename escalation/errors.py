"""Errors the escalation engine and its store raise to their callers (the
HTTP API and the CLI turn them into 404, 409 and 400 answers)."""

from __future__ import annotations


class IncidentNotFound(LookupError):
    """No incident has this number."""

    def __init__(self, incident_id: int) -> None:
        super().__init__(f"INC-{incident_id} does not exist")
        self.incident_id = incident_id


class IncidentClosed(Exception):
    """The incident is resolved: it can no longer be acknowledged or resolved."""

    def __init__(self, incident_id: int, action: str) -> None:
        super().__init__(f"cannot {action} INC-{incident_id}: it is already resolved")
        self.incident_id = incident_id
        self.action = action


class SilenceNotFound(LookupError):
    """No silence has this number."""

    def __init__(self, silence_id: int) -> None:
        super().__init__(f"S-{silence_id} does not exist")
        self.silence_id = silence_id


class InvalidRequest(ValueError):
    """An operator's request is malformed; the message names the field."""


class StoreError(RuntimeError):
    """The store cannot be used: not open, or its file is from a newer Sentinel."""
