"""Rules: when check results count as failing, for how long, and what
incident that opens.

A rule watches one or more checks. Each (rule, check) pair keeps a short
history of failing/healthy verdicts and a hysteresis state: it turns failing
after ``fail_after`` consecutive failures or ``N`` of the last ``M`` results
(``fail_window``), and healthy again only after ``recover_after`` consecutive
healthy results. The rule combines its checks with ``match`` ("any"/"all"),
waits ``for_s`` of continuous failure, then emits one firing transition, and
one recovery transition when the combination stops failing.
"""

from __future__ import annotations

import math
import operator
import re
from collections import deque
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass

import structlog

from checks.result import CheckResult, Status
from escalation.model import Priority

log = structlog.get_logger(__name__)


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


# --- conditions ---------------------------------------------------------------

OPERATORS: dict[str, Callable[[float, float], bool]] = {
    ">": operator.gt,
    ">=": operator.ge,
    "<": operator.lt,
    "<=": operator.le,
    "==": operator.eq,
    "!=": operator.ne,
}

_CONDITION_FORM = '"<value_name> <op> <number>" (e.g. "disk_used_percent > 90")'
_STATUS_FLOORS = (Status.WARNING, Status.CRITICAL)


def parse_condition(text: str) -> Condition:
    """A value comparison such as ``"disk_used_percent:/var >= 90"``.

    Raises ValueError naming the text and the expected form."""
    parts = text.split()
    if len(parts) != 3:
        hint = ""
        if len(parts) < 3 and any(op in text for op in OPERATORS):
            hint = "; put spaces around the operator"
        raise ValueError(f'"{text}" is not of the form {_CONDITION_FORM}{hint}')
    name, op, number = parts
    if op not in OPERATORS:
        raise ValueError(
            f'"{text}": "{op}" is not an operator; use one of {", ".join(OPERATORS)}'
        )
    try:
        threshold = float(number)
    except ValueError:
        raise ValueError(
            f'"{text}": "{number}" is not a number; the form is {_CONDITION_FORM}'
        ) from None
    if not math.isfinite(threshold):
        raise ValueError(f'"{text}": the threshold must be a finite number')
    return Condition(value_name=name, operator=op, threshold=threshold, text=text)


def parse_status_floor(text: str) -> Condition:
    """A status floor such as ``"critical"``: the result fails at that status
    or worse. Raises ValueError naming the text and the choices."""
    choices = " or ".join(f'"{s.label}"' for s in _STATUS_FLOORS)
    try:
        status = Status.parse(text)
    except ValueError:
        raise ValueError(f'"{text}" is not a status floor; use {choices}') from None
    if status not in _STATUS_FLOORS:
        reason = (
            "set unknown_is_failure = true to count unknown results"
            if status is Status.UNKNOWN
            else "every result would fail"
        )
        raise ValueError(f'"{text}" cannot be a status floor ({reason}); use {choices}')
    return Condition(status_at_least=status, text=text)


# Verdict on one result: True fails, False is healthy, None is ignored (the
# probe could not tell, so it must neither page nor clear a page).
Assessor = Callable[[CheckResult], bool | None]


def make_assessor(condition: Condition, *, unknown_is_failure: bool) -> Assessor:
    """A fast verdict function for one condition; ValueError if the condition
    names neither a status floor nor a complete value comparison."""
    unknown_verdict = True if unknown_is_failure else None
    floor = condition.status_at_least
    if floor is not None:

        def assess_status(result: CheckResult) -> bool | None:
            status = result.status
            if status is Status.UNKNOWN:
                return unknown_verdict
            return status >= floor

        return assess_status

    name, op, threshold = condition.value_name, condition.operator, condition.threshold
    if name is None or op not in OPERATORS or threshold is None:
        raise ValueError(
            f"condition {condition.text!r} has neither a status floor nor a "
            "complete value comparison"
        )
    compare = OPERATORS[op]

    def assess_value(result: CheckResult) -> bool | None:
        if result.status is Status.UNKNOWN:
            return unknown_verdict
        value = result.values.get(name)
        # A missing (or NaN) value says as little as an unknown status.
        if value is None or math.isnan(value):
            return unknown_verdict
        return compare(value, threshold)

    return assess_value


# --- templates ----------------------------------------------------------------

TEMPLATE_FIELDS = (
    "rule",
    "check",
    "checks",
    "status",
    "message",
    "category",
    "priority",
)
_TEMPLATE_TOKEN = re.compile(r"\{\{|\}\}|\{([^{}]*)\}|[{}]")
_VALUE_FIELD = re.compile(r"^value\[([^\[\]\s]+)\]$")
_MISSING_VALUE = "n/a"


class TemplateError(ValueError):
    """A summary or dedup key template cannot be used; the message says why."""


@dataclass(frozen=True, slots=True)
class TemplateContext:
    rule: str
    check: str
    checks: str
    status: str
    message: str
    category: str
    priority: str
    values: Mapping[str, float]


@dataclass(frozen=True, slots=True)
class _ValueRef:
    name: str


@dataclass(frozen=True, slots=True)
class _FieldRef:
    name: str


class Template:
    """A compiled template; `render` never raises."""

    __slots__ = ("_parts", "text")

    def __init__(self, text: str, parts: tuple[str | _FieldRef | _ValueRef, ...]):
        self.text = text
        self._parts = parts

    @classmethod
    def literal(cls, text: str) -> Template:
        return cls(text, (text,))

    @property
    def placeholders(self) -> tuple[str, ...]:
        """The fields used, as written: ``"message"``, ``"value[load1]"``."""
        return tuple(
            part.name if isinstance(part, _FieldRef) else f"value[{part.name}]"
            for part in self._parts
            if not isinstance(part, str)
        )

    def render(self, context: TemplateContext) -> str:
        out: list[str] = []
        for part in self._parts:
            if isinstance(part, str):
                out.append(part)
            elif isinstance(part, _FieldRef):
                out.append(getattr(context, part.name))
            else:
                value = context.values.get(part.name)
                out.append(_MISSING_VALUE if value is None else format_value(value))
        return "".join(out)


def compile_template(text: str) -> Template:
    """Parse ``{rule}``, ``{value[disk_used_percent]}`` and ``{{``/``}}``
    escapes. Raises TemplateError naming the bad placeholder."""
    parts: list[str | _FieldRef | _ValueRef] = []
    pos = 0
    for token in _TEMPLATE_TOKEN.finditer(text):
        if token.start() > pos:
            parts.append(text[pos : token.start()])
        pos = token.end()
        raw = token.group(0)
        if raw in ("{{", "}}"):
            parts.append(raw[0])
        elif raw in ("{", "}"):
            raise TemplateError(
                f'unmatched "{raw}" at position {token.start()} in "{text}"; '
                f'write "{raw}{raw}" for a literal brace'
            )
        else:
            parts.append(_field(token.group(1), text))
    if pos < len(text):
        parts.append(text[pos:])
    return Template(text, tuple(parts))


def _field(name: str, text: str) -> _FieldRef | _ValueRef:
    if name in TEMPLATE_FIELDS:
        return _FieldRef(name)
    value = _VALUE_FIELD.match(name)
    if value:
        return _ValueRef(value.group(1))
    known = ", ".join(f"{{{f}}}" for f in TEMPLATE_FIELDS)
    raise TemplateError(
        f'unknown placeholder {{{name}}} in "{text}"; use {known} or {{value[<name>]}}'
    )


def format_value(value: float) -> str:
    """A measurement as a person reads it: ``93``, ``93.4``, ``0.00123``."""
    try:
        number = float(value)
    except (TypeError, ValueError):
        # A plugin put something odd in its values; show it rather than fail.
        return str(value)
    if math.isfinite(number) and number.is_integer() and abs(number) < 1e15:
        return str(int(number))
    return f"{number:.6g}"


# --- evaluation ---------------------------------------------------------------


class _Track:
    """One check as one rule sees it."""

    __slots__ = (
        "consecutive_failures",
        "consecutive_healthy",
        "failing",
        "latest",
        "window",
        "window_failures",
    )

    def __init__(self, window_size: int) -> None:
        self.window: deque[bool] | None = (
            deque(maxlen=window_size) if window_size else None
        )
        self.window_failures = 0
        self.consecutive_failures = 0
        self.consecutive_healthy = 0
        self.failing = False
        self.latest: CheckResult | None = None


class _RuleState:
    __slots__ = (
        "assess",
        "failing_count",
        "failing_since",
        "fired",
        "fired_key",
        "fired_summary",
        "key_template",
        "match_all",
        "rule",
        "summary_template",
        "tracks",
        "window_needed",
    )

    def __init__(self, rule: Rule) -> None:
        if rule.match not in ("any", "all"):
            raise ValueError(f'rule {rule.name}: match must be "any" or "all"')
        if not rule.checks:
            raise ValueError(f"rule {rule.name} watches no checks")
        if rule.fail_after < 1 or rule.recover_after < 1:
            raise ValueError(f"rule {rule.name}: fail_after and recover_after are >= 1")
        if rule.fail_window is not None and not (
            1 <= rule.fail_window[0] <= rule.fail_window[1]
        ):
            raise ValueError(
                f"rule {rule.name}: fail_window must be (N, M), 1 <= N <= M"
            )
        self.rule = rule
        self.assess = make_assessor(
            rule.condition, unknown_is_failure=rule.unknown_is_failure
        )
        self.match_all = rule.match == "all"
        self.window_needed = rule.fail_window[0] if rule.fail_window else 0
        window_size = rule.fail_window[1] if rule.fail_window else 0
        self.tracks = {check: _Track(window_size) for check in rule.checks}
        self.failing_count = 0
        self.failing_since: float | None = None
        self.fired = False
        self.fired_key: str | None = None
        self.fired_summary: str | None = None
        self.summary_template = _safe_template(rule, "summary", rule.summary_template)
        self.key_template = _safe_template(rule, "dedup_key", rule.dedup_key_template)

    def observe(self, result: CheckResult) -> RuleTransition | None:
        track = self.tracks[result.check]
        track.latest = result
        verdict = self.assess(result)
        if verdict is None:
            # Not even the `for` clock moves: a result that could not tell
            # must not be what turns a pending rule into a page.
            return None
        was_failing = track.failing
        self._update(track, verdict)
        if track.failing is not was_failing:
            self.failing_count += 1 if track.failing else -1

        now = result.started_at
        if self._composite_failing():
            if self.failing_since is None:
                self.failing_since = now
            if not self.fired and now - self.failing_since >= self.rule.for_s:
                return self._fire(now)
            return None
        self.failing_since = None
        if self.fired:
            return self._recover(now)
        return None

    def _update(self, track: _Track, failing: bool) -> None:
        rule = self.rule
        window = track.window
        if window is not None:
            if len(window) == window.maxlen and window[0]:
                track.window_failures -= 1
            window.append(failing)
            if failing:
                track.window_failures += 1
        if failing:
            track.consecutive_failures += 1
            track.consecutive_healthy = 0
            if not track.failing and (
                track.consecutive_failures >= rule.fail_after
                or (window is not None and track.window_failures >= self.window_needed)
            ):
                track.failing = True
        else:
            track.consecutive_healthy += 1
            track.consecutive_failures = 0
            if track.failing and track.consecutive_healthy >= rule.recover_after:
                track.failing = False

    def _composite_failing(self) -> bool:
        if self.match_all:
            return self.failing_count == len(self.tracks)
        return self.failing_count > 0

    def _fire(self, now: float) -> RuleTransition:
        context = self.context()
        self.fired = True
        self.fired_key = self.key_template.render(context)
        self.fired_summary = self.summary_template.render(context)
        log.info("rule_firing", rule=self.rule.name, dedup_key=self.fired_key)
        return RuleTransition(
            self.rule, True, now, self.fired_key, self.fired_summary, self.evidence()
        )

    def _recover(self, now: float) -> RuleTransition:
        # The recovery carries the key the rule fired with, so the engine finds
        # the incident even when the key template uses {check} or {status}.
        context = self.context()
        key = self.fired_key or self.key_template.render(context)
        summary = self.fired_summary or self.summary_template.render(context)
        self.fired = False
        self.fired_key = self.fired_summary = None
        log.info("rule_recovered", rule=self.rule.name, dedup_key=key)
        return RuleTransition(self.rule, False, now, key, summary, self.evidence())

    def restore(self, dedup_key: str | None, summary: str | None) -> None:
        """Firing without a new transition. Every check is assumed failing,
        so recovery needs `recover_after` healthy results from each as the
        match requires."""
        for track in self.tracks.values():
            if not track.failing:
                track.failing = True
                self.failing_count += 1
            track.consecutive_healthy = 0
        self.fired = True
        self.fired_key = dedup_key
        self.fired_summary = summary

    def evidence(self) -> tuple[CheckResult, ...]:
        return tuple(t.latest for t in self.tracks.values() if t.latest is not None)

    def context(self) -> TemplateContext:
        failing = [name for name, t in self.tracks.items() if t.failing]
        with_result = [name for name in failing if self.tracks[name].latest is not None]
        first = (with_result or failing or list(self.tracks))[0]
        latest = self.tracks[first].latest
        # {value[...]} looks in the first failing check, then the others.
        sources = [latest.values] if latest is not None else []
        sources += [
            t.latest.values
            for name, t in self.tracks.items()
            if name != first and t.latest is not None
        ]
        rule = self.rule
        return TemplateContext(
            rule=rule.name,
            check=first,
            checks=", ".join(failing or rule.checks),
            status=latest.status.label if latest is not None else "",
            message=latest.message if latest is not None else "",
            category=rule.category,
            priority=str(rule.priority),
            values=_merged(sources),
        )


def _merged(sources: list[Mapping[str, float]]) -> dict[str, float]:
    """The first source wins for a name several sources hold."""
    merged: dict[str, float] = {}
    for source in reversed(sources):
        merged.update(source)
    return merged


def _safe_template(rule: Rule, what: str, text: str) -> Template:
    try:
        return compile_template(text)
    except TemplateError as exc:
        # The configuration rejects such templates; a rule built elsewhere
        # still pages, with the template text as written.
        log.warning("rule_template_invalid", rule=rule.name, field=what, error=str(exc))
        return Template.literal(text)


class RuleEvaluator:
    """Turns the stream of check results into rule transitions.

    Not thread-safe: one task feeds it. `observe` touches only the rules that
    name the result's check, in constant time per rule."""

    def __init__(self, rules: Sequence[Rule]) -> None:
        self._states: dict[str, _RuleState] = {}
        self._by_check: dict[str, tuple[_RuleState, ...]] = {}
        self._install({rule.name: _RuleState(rule) for rule in _unique(rules)})

    def observe(self, result: CheckResult) -> list[RuleTransition]:
        """Transitions caused by one result; its time is `result.started_at`."""
        states = self._by_check.get(result.check)
        if not states:
            return []
        transitions = []
        for state in states:
            transition = state.observe(result)
            if transition is not None:
                transitions.append(transition)
        return transitions

    def replace_rules(self, rules: Sequence[Rule]) -> None:
        """Reload. An unchanged rule keeps its state and history; a new or
        changed one starts afresh; a removed one is dropped.

        A changed rule that was firing stays firing (as after
        `restore_firing`): its incident is still open and must see the
        recovery, which carries the old dedup key."""
        old = self._states
        states: dict[str, _RuleState] = {}
        kept = changed = added = 0
        for rule in _unique(rules):
            previous = old.get(rule.name)
            if previous is not None and previous.rule == rule:
                states[rule.name] = previous
                kept += 1
                continue
            state = _RuleState(rule)
            if previous is None:
                added += 1
            else:
                changed += 1
                if previous.fired:
                    state.restore(previous.fired_key, previous.fired_summary)
            states[rule.name] = state
        removed = sorted(set(old) - set(states))
        self._install(states)
        if changed or added or removed:
            log.info(
                "rules_reloaded",
                kept=kept,
                changed=changed,
                added=added,
                removed=removed,
            )

    def firing(self) -> frozenset[str]:
        """Names of the rules that fired and have not recovered."""
        return frozenset(name for name, state in self._states.items() if state.fired)

    def restore_firing(
        self, names: Iterable[str], *, dedup_keys: Mapping[str, str] | None = None
    ) -> None:
        """Mark rules with open incidents as firing, at daemon start, so they
        neither fire again nor miss their recovery.

        `dedup_keys` (rule name to the open incident's key) lets the recovery
        carry that key; without it the key is rendered when the rule recovers,
        which matches as long as the template is stable (``{rule}``)."""
        keys = dedup_keys or {}
        restored: list[str] = []
        unknown: list[str] = []
        for name in names:
            state = self._states.get(name)
            if state is None:
                unknown.append(name)
            elif not state.fired:
                state.restore(keys.get(name), None)
                restored.append(name)
        if restored:
            log.info("rules_restored_firing", rules=restored)
        if unknown:
            # An incident of a rule since removed from the configuration:
            # nothing here will recover it; it needs a manual resolve.
            log.warning("rules_restore_unknown", rules=unknown)

    def rules(self) -> tuple[Rule, ...]:
        return tuple(state.rule for state in self._states.values())

    def _install(self, states: dict[str, _RuleState]) -> None:
        by_check: dict[str, list[_RuleState]] = {}
        for state in states.values():
            for check in state.tracks:
                by_check.setdefault(check, []).append(state)
        self._states = states
        self._by_check = {check: tuple(group) for check, group in by_check.items()}


def _unique(rules: Sequence[Rule]) -> list[Rule]:
    seen: set[str] = set()
    for rule in rules:
        if rule.name in seen:
            raise ValueError(f"rule {rule.name} is defined twice")
        seen.add(rule.name)
    return list(rules)
