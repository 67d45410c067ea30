"""The escalation sections of the configuration. (Parser to be written; the
record is fixed.)"""

from __future__ import annotations

from dataclasses import dataclass, field

from checks.settings import Secret
from escalation.model import Priority
from escalation.policy import Contact, Policy, PrioritySettings
from escalation.rules import Rule


@dataclass(frozen=True, slots=True)
class EscalationConfig:
    rules: tuple[Rule, ...]
    policies: dict[str, Policy]
    priorities: dict[Priority, PrioritySettings]
    contacts: dict[str, Contact]
    public_url: str
    """Base of the ack links in pages, e.g. https://sentinel.copysai.com."""
    ack_secret: Secret | None = None
    """Signs ack links; when unset the daemon keeps a random key in its state
    directory."""
    ack_link_ttl_s: float = 86400.0
    categories: dict[str, Priority] = field(default_factory=dict)
