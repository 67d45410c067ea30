"""Rules: when check results count as failing, for how long, and what
incident that opens. (Evaluator to be written; the records are fixed.)"""

from __future__ import annotations

from dataclasses import dataclass

from checks.result import CheckResult, Status
from escalation.model import Priority


@dataclass(frozen=True, slots=True)
class Condition:
    """Either a status floor (``when = "critical"``) or a value comparison
    (``condition = "disk_used_percent > 90"``)."""

    status_at_least: Status | None = None
    value_name: str | None = None
    operator: str | None = None
    """One of >, >=, <, <=, ==, !=."""
    threshold: float | None = None
    text: str = ""


@dataclass(frozen=True, slots=True)
class Rule:
    name: str
    checks: tuple[str, ...]
    match: str
    """"any" or "all" of the checks failing makes the rule fail."""
    condition: Condition
    priority: Priority
    category: str
    summary_template: str
    dedup_key_template: str = "{rule}"
    for_s: float = 0.0
    """The rule must fail continuously this long before it fires."""
    fail_after: int = 1
    """Consecutive failing results (per check) that count as failing."""
    fail_window: tuple[int, int] | None = None
    """(N, M): N failing of the last M results also counts (catches flapping)."""
    recover_after: int = 1
    """Consecutive healthy results (per check) that count as recovered."""
    resolve_after_s: float = 300.0
    """Healthy this long after recovery: the incident resolves by itself."""
    reopen_within_s: float = 1800.0
    """A failure this soon after resolution reopens the incident."""
    inhibits: tuple[str, ...] = ()
    """Rule names (or ``category:<name>``) held back while this rule's
    incident is open."""
    unknown_is_failure: bool = False


@dataclass(frozen=True, slots=True)
class RuleTransition:
    rule: Rule
    firing: bool
    """True: the rule started failing (open or reopen); False: recovered."""
    at: float
    dedup_key: str
    summary: str
    evidence: tuple[CheckResult, ...]
    """The latest result of each of the rule's checks."""
