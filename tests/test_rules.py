"""Rule evaluation as timelines: results pushed at given instants, and the
exact transitions wanted at given instants (any other transition fails)."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Mapping
from typing import Any

import pytest

from checks.result import CheckResult, Status
from escalation.model import Priority
from escalation.rules import (
    Condition,
    Rule,
    RuleEvaluator,
    RuleTransition,
    TemplateError,
    compile_template,
    parse_condition,
    parse_status_floor,
)

OK, WARN, CRIT, UNKNOWN = Status.OK, Status.WARNING, Status.CRITICAL, Status.UNKNOWN
T0 = 1_700_000_000.0

# One point of a timeline: (seconds after T0, check, status or values).
Point = tuple[float, str, Status | Mapping[str, float]]


def result(
    check: str,
    at: float,
    status: Status = OK,
    *,
    message: str = "",
    values: Mapping[str, float] | None = None,
) -> CheckResult:
    return CheckResult(
        check=check,
        check_type="test",
        status=status,
        message=message or f"{check} is {status.label}",
        values=values or {},
        evidence=(),
        started_at=T0 + at,
        duration_s=0.01,
    )


def make_rule(name: str = "db_down", **overrides: Any) -> Rule:
    fields: dict[str, Any] = {
        "name": name,
        "checks": ("database",),
        "match": "any",
        "condition": parse_status_floor("critical"),
        "priority": Priority.P1,
        "category": "database_connectivity_loss",
        "summary_template": "{rule}: {message}",
    }
    fields.update(overrides)
    return Rule(**fields)


def run(
    evaluator: RuleEvaluator, points: Iterable[Point]
) -> list[tuple[float, str, bool]]:
    """Feed the points in order; (offset, rule, firing) of every transition."""
    seen = []
    for at, check, what in points:
        if isinstance(what, Status):
            res = result(check, at, what)
        else:
            res = result(check, at, OK, values=what)
        for transition in evaluator.observe(res):
            assert transition.at == res.started_at
            seen.append((at, transition.rule.name, transition.firing))
    return seen


def series(
    check: str, statuses: Iterable[Status], start: float = 0, step: float = 10
) -> list[Point]:
    return [(start + i * step, check, s) for i, s in enumerate(statuses)]


def test_consecutive_threshold_fires_on_the_nth_failure() -> None:
    """fail_after=3 fires on the third consecutive failure, not before."""
    evaluator = RuleEvaluator([make_rule(fail_after=3)])
    points = series("database", [CRIT, CRIT, OK, CRIT, CRIT, CRIT, CRIT, OK])
    assert run(evaluator, points) == [(50, "db_down", True), (70, "db_down", False)]


def test_consecutive_threshold_fires_once_while_failing() -> None:
    """A rule that keeps failing emits one firing transition, not one per result."""
    evaluator = RuleEvaluator([make_rule()])
    assert run(evaluator, series("database", [CRIT] * 20)) == [(0, "db_down", True)]
    assert evaluator.firing() == frozenset({"db_down"})


def test_window_flapping_opens_one_incident_not_ten() -> None:
    """1-0-1-0 with fail_window=(2,4), recover_after=3 gives one firing and,
    after three healthy results, one recovery."""
    rule = make_rule(fail_after=2, fail_window=(2, 4), recover_after=3)
    evaluator = RuleEvaluator([rule])
    flapping = [CRIT, OK] * 10
    points = series("database", [*flapping, OK, OK])
    assert run(evaluator, points) == [(20, "db_down", True), (210, "db_down", False)]


def test_window_without_hysteresis_flaps_for_contrast() -> None:
    """Without the window and recovery threshold the same input pages ten times:
    the flapping test above is not passing by accident."""
    evaluator = RuleEvaluator([make_rule()])
    transitions = run(evaluator, series("database", [CRIT, OK] * 10))
    assert [t for t in transitions if t[2]] == [
        (i * 20, "db_down", True) for i in range(10)
    ]


def test_window_counts_only_the_last_m_results() -> None:
    """Failures that slid out of the window no longer count."""
    rule = make_rule(fail_after=3, fail_window=(3, 5))
    evaluator = RuleEvaluator([rule])
    # Two failures, then enough OKs to push them out, then two more: never 3 of 5.
    points = series("database", [CRIT, CRIT, OK, OK, OK, OK, CRIT, OK, CRIT, OK])
    assert run(evaluator, points) == []
    # A third failure within the last five results does count.
    assert run(evaluator, [(100, "database", CRIT)]) == [(100, "db_down", True)]


def test_for_duration_fires_after_continuous_failure() -> None:
    """for=60s fires at the first result 60 s after the first failing instant."""
    evaluator = RuleEvaluator([make_rule(for_s=60)])
    points = series("database", [CRIT] * 8)
    assert run(evaluator, points) == [(60, "db_down", True)]


def test_for_duration_restarts_after_an_interruption() -> None:
    """A healthy result before `for` elapses resets the first failing instant,
    and recovering before firing emits nothing."""
    evaluator = RuleEvaluator([make_rule(for_s=60)])
    points = [
        *series("database", [CRIT] * 5),  # 0..40: pending
        (50, "database", OK),  # interrupted: no transition
        *series("database", [CRIT] * 8, start=60),  # 60..130: fires at 120
    ]
    assert run(evaluator, points) == [(120, "db_down", True)]


def test_for_duration_uses_result_timestamps_of_any_check() -> None:
    """For an "any" rule a healthy result of another check advances time too."""
    rule = make_rule(checks=("api", "app"), for_s=30)
    evaluator = RuleEvaluator([rule])
    points: list[Point] = [
        (0, "api", CRIT),
        (10, "app", OK),
        (20, "app", OK),
        (30, "app", OK),
    ]
    assert run(evaluator, points) == [(30, "db_down", True)]


def test_recovery_threshold_needs_consecutive_healthy_results() -> None:
    """recover_after=3: a failure between healthy results restarts the count."""
    evaluator = RuleEvaluator([make_rule(recover_after=3)])
    points = series("database", [CRIT, OK, OK, CRIT, OK, OK, OK, CRIT])
    assert run(evaluator, points) == [
        (0, "db_down", True),
        (60, "db_down", False),
        (70, "db_down", True),
    ]


def test_any_composite_fires_on_one_and_recovers_on_all() -> None:
    """match="any" fires when one check fails and recovers when none fails."""
    evaluator = RuleEvaluator([make_rule(checks=("api", "app"))])
    points: list[Point] = [
        (0, "api", OK),
        (1, "app", OK),
        (10, "api", CRIT),  # fires
        (11, "app", CRIT),
        (20, "api", OK),  # app still failing
        (21, "app", OK),  # recovers
    ]
    assert run(evaluator, points) == [(10, "db_down", True), (21, "db_down", False)]


def test_all_composite_fires_on_all_and_recovers_on_one() -> None:
    """match="all" fires when every check fails and recovers when one heals."""
    evaluator = RuleEvaluator([make_rule(checks=("api", "app"), match="all")])
    points: list[Point] = [
        (10, "api", CRIT),
        (11, "app", CRIT),  # fires
        (20, "api", CRIT),
        (21, "app", OK),  # recovers
        (30, "api", CRIT),
    ]
    assert run(evaluator, points) == [(11, "db_down", True), (21, "db_down", False)]


def test_all_composite_check_without_result_is_not_failing() -> None:
    """A check that never reported keeps an "all" rule from firing."""
    evaluator = RuleEvaluator([make_rule(checks=("api", "app"), match="all")])
    assert run(evaluator, series("api", [CRIT] * 10)) == []


@pytest.mark.parametrize(
    ("condition", "value", "failing"),
    [
        ("load1 > 4", 4.5, True),
        ("load1 > 4", 4.0, False),
        ("load1 >= 4", 4.0, True),
        ("load1 < 4", 3.9, True),
        ("load1 <= 4", 4.1, False),
        ("load1 == 0", 0.0, True),
        ("load1 != 0", 0.0, False),
        ("load1 > -1.5", -1.0, True),
    ],
)
def test_value_condition_compares(condition: str, value: float, failing: bool) -> None:
    """Each operator compares the named value with the threshold."""
    evaluator = RuleEvaluator([make_rule(condition=parse_condition(condition))])
    transitions = run(evaluator, [(0, "database", {"load1": value})])
    assert transitions == ([(0, "db_down", True)] if failing else [])


def test_value_condition_per_mount_name_and_missing_value() -> None:
    """`disk_used_percent:/var > 90` reads that value; a result without it is
    ignored: it neither fails nor recovers."""
    rule = make_rule(
        checks=("disk",), condition=parse_condition("disk_used_percent:/var > 90")
    )
    evaluator = RuleEvaluator([rule])
    var = "disk_used_percent:/var"
    points: list[Point] = [
        (0, "disk", {var: 85.0}),
        (10, "disk", {var: 95.0}),  # fires
        (20, "disk", {"disk_used_percent:/": 10.0}),  # /var missing: ignored
        (30, "disk", {var: float("nan")}),  # not a measurement: ignored
        (40, "disk", {var: 50.0}),  # recovers
    ]
    assert run(evaluator, points) == [(10, "db_down", True), (40, "db_down", False)]


def test_status_floor_warning_counts_warning_and_critical() -> None:
    """when="warning" fails on warning and on critical, not on ok."""
    evaluator = RuleEvaluator([make_rule(condition=parse_status_floor("warning"))])
    points = series("database", [OK, WARN, OK, CRIT])
    assert run(evaluator, points) == [
        (10, "db_down", True),
        (20, "db_down", False),
        (30, "db_down", True),
    ]


def test_unknown_is_ignored_by_default() -> None:
    """Unknown neither breaks a failing streak, nor fails, nor recovers."""
    evaluator = RuleEvaluator([make_rule(fail_after=2)])
    points = series("database", [CRIT, UNKNOWN, CRIT, UNKNOWN, UNKNOWN, UNKNOWN, OK])
    assert run(evaluator, points) == [(20, "db_down", True), (60, "db_down", False)]
    assert run(evaluator, series("database", [UNKNOWN] * 5, start=100)) == []


def test_unknown_is_failure_counts_unknown() -> None:
    """With unknown_is_failure an unknown result counts as a failure, also for
    a value condition."""
    status_rule = make_rule(fail_after=2, unknown_is_failure=True)
    value_rule = make_rule(
        "load_high", condition=parse_condition("load1 > 4"), unknown_is_failure=True
    )
    evaluator = RuleEvaluator([status_rule, value_rule])
    points = series("database", [UNKNOWN, UNKNOWN])
    assert run(evaluator, points) == [(0, "load_high", True), (10, "db_down", True)]


def test_only_rules_naming_the_check_are_touched() -> None:
    """A result of a check no rule names changes nothing."""
    evaluator = RuleEvaluator([make_rule()])
    assert run(evaluator, series("api", [CRIT] * 3)) == []
    assert evaluator.firing() == frozenset()


def test_templates_render_summary_and_dedup_key() -> None:
    """Summary and dedup key use the first failing check, its message, the
    failing checks and values; a missing value renders as n/a."""
    rule = make_rule(
        checks=("api", "app"),
        condition=parse_condition("latency_ms > 500"),
        summary_template=(
            "{priority} {category}: {check} is {status} ({message}); "
            "failing: {checks}; latency {value[latency_ms]} ms, "
            "{value[absent]} {{literal}}"
        ),
        dedup_key_template="{rule}/{check}",
    )
    evaluator = RuleEvaluator([rule])
    evaluator.observe(result("api", 0, values={"latency_ms": 20}))
    [firing] = evaluator.observe(
        result("app", 1, WARN, message="slow answers", values={"latency_ms": 812.25})
    )
    assert firing.summary == (
        "P1 database_connectivity_loss: app is warning (slow answers); failing: app; "
        "latency 812.25 ms, n/a {literal}"
    )
    assert firing.dedup_key == "db_down/app"


def test_templates_recovery_carries_the_firing_key() -> None:
    """The recovery has the dedup key and summary the rule fired with, even
    when the key template uses a field that changes."""
    rule = make_rule(dedup_key_template="{rule}-{check}-{status}")
    evaluator = RuleEvaluator([rule])
    [firing] = evaluator.observe(result("database", 0, CRIT, message="refused"))
    [recovery] = evaluator.observe(result("database", 10, OK))
    assert (firing.dedup_key, firing.summary) == (
        "db_down-database-critical",
        "db_down: refused",
    )
    assert (recovery.dedup_key, recovery.summary) == (firing.dedup_key, firing.summary)


def test_templates_evidence_is_latest_result_of_each_check() -> None:
    """Evidence holds the latest result of each check, in the rule's order."""
    evaluator = RuleEvaluator([make_rule(checks=("api", "app"))])
    evaluator.observe(result("app", 0, OK, message="old"))
    evaluator.observe(result("app", 5, OK, message="new"))
    [firing] = evaluator.observe(result("api", 6, CRIT, message="down"))
    assert [(r.check, r.message) for r in firing.evidence] == [
        ("api", "down"),
        ("app", "new"),
    ]


@pytest.mark.parametrize(
    ("text", "fragment"),
    [
        ("{rule} {chek}", "unknown placeholder {chek}"),
        ("{value}", "unknown placeholder {value}"),
        ("{message:>10}", "unknown placeholder {message:>10}"),
        ("{rule", 'unmatched "{"'),
        ("rule}", 'unmatched "}"'),
    ],
)
def test_templates_reject_bad_placeholders(text: str, fragment: str) -> None:
    """An unknown placeholder or stray brace is an error naming it."""
    with pytest.raises(TemplateError) as caught:
        compile_template(text)
    assert fragment in str(caught.value)


def test_templates_invalid_in_record_never_raise_at_runtime() -> None:
    """A rule built without validation renders its template text as written."""
    evaluator = RuleEvaluator([make_rule(summary_template="down {oops}")])
    [firing] = evaluator.observe(result("database", 0, CRIT))
    assert firing.summary == "down {oops}"


@pytest.mark.parametrize(
    ("text", "fragment"),
    [
        ("disk_used_percent>90", "put spaces around the operator"),
        ("disk_used_percent ~ 90", '"~" is not an operator'),
        ("disk_used_percent > ninety", '"ninety" is not a number'),
        ("disk_used_percent > nan", "finite number"),
        ("disk_used_percent >", '"<value_name> <op> <number>"'),
    ],
)
def test_value_condition_parse_errors_name_text_and_form(
    text: str, fragment: str
) -> None:
    """A malformed condition names the text and what was expected."""
    with pytest.raises(ValueError) as caught:
        parse_condition(text)
    assert f'"{text}"' in str(caught.value)
    assert fragment in str(caught.value)


def test_value_condition_parse_reads_the_parts() -> None:
    """The three parts land in the Condition record."""
    assert parse_condition("disk_used_percent:/var >= 90.5") == Condition(
        value_name="disk_used_percent:/var",
        operator=">=",
        threshold=90.5,
        text="disk_used_percent:/var >= 90.5",
    )


@pytest.mark.parametrize("text", ["ok", "unknown", "bad"])
def test_status_floor_parse_rejects_useless_floors(text: str) -> None:
    """Only warning and critical make sense as a floor."""
    with pytest.raises(ValueError, match='use "warning" or "critical"'):
        parse_status_floor(text)


def test_reload_keeps_state_of_unchanged_rules() -> None:
    """An unchanged rule keeps its history across replace_rules; a changed one
    starts afresh; a removed one is dropped."""
    same = make_rule("same", fail_after=3)
    changed = make_rule("changed", fail_after=3)
    removed = make_rule("removed")
    evaluator = RuleEvaluator([same, changed, removed])
    assert run(evaluator, series("database", [CRIT, CRIT])) == [(0, "removed", True)]

    evaluator.replace_rules([same, dataclasses.replace(changed, fail_after=2)])
    assert evaluator.firing() == frozenset()
    # "same" had two failures already; "changed" needs two new ones.
    assert run(evaluator, [(20, "database", CRIT)]) == [(20, "same", True)]
    assert run(evaluator, [(30, "database", CRIT)]) == [(30, "changed", True)]


def test_reload_changed_firing_rule_still_recovers() -> None:
    """A rule edited while firing does not fire again and recovers with the
    key it fired with."""
    rule = make_rule(dedup_key_template="{rule}-v1")
    evaluator = RuleEvaluator([rule])
    [firing] = evaluator.observe(result("database", 0, CRIT))
    evaluator.replace_rules(
        [dataclasses.replace(rule, dedup_key_template="{rule}-v2", recover_after=2)]
    )
    assert evaluator.firing() == frozenset({"db_down"})
    assert run(evaluator, series("database", [CRIT, OK], start=10)) == []
    [recovery] = evaluator.observe(result("database", 30, OK))
    assert (recovery.firing, recovery.dedup_key) == (False, firing.dedup_key)


def test_restore_firing_neither_refires_nor_misses_recovery() -> None:
    """After restore_firing a failing rule stays quiet and a healthy one
    recovers after recover_after results, with the incident's key."""
    evaluator = RuleEvaluator(
        [make_rule(recover_after=2), make_rule("other", checks=("api",))]
    )
    evaluator.restore_firing(
        ["db_down", "no_longer_configured"], dedup_keys={"db_down": "db_down#7"}
    )
    assert evaluator.firing() == frozenset({"db_down"})
    assert run(evaluator, series("database", [CRIT, CRIT, OK])) == []
    [recovery] = evaluator.observe(result("database", 30, OK))
    assert (recovery.firing, recovery.dedup_key, recovery.at) == (
        False,
        "db_down#7",
        T0 + 30,
    )
    assert evaluator.firing() == frozenset()


def test_restore_firing_any_rule_waits_for_every_check() -> None:
    """A restored "any" rule does not know which check failed, so it recovers
    only when each of them has reported healthy."""
    evaluator = RuleEvaluator([make_rule(checks=("api", "app"))])
    evaluator.restore_firing(["db_down"])
    assert run(evaluator, [(0, "api", OK)]) == []
    assert run(evaluator, [(1, "app", OK)]) == [(1, "db_down", False)]


def test_restore_firing_renders_key_without_given_keys() -> None:
    """Without dedup_keys the recovery key is rendered from the template."""
    evaluator = RuleEvaluator([make_rule()])
    evaluator.restore_firing(["db_down"])
    [recovery] = evaluator.observe(result("database", 0, OK))
    assert recovery.dedup_key == "db_down"


def test_evaluator_rejects_duplicate_rule_names() -> None:
    """Two rules with one name are a programming error, reported at once."""
    with pytest.raises(ValueError, match="db_down is defined twice"):
        RuleEvaluator([make_rule(), make_rule()])


def test_transition_record_is_complete() -> None:
    """A transition carries the rule, the instant and the evidence."""
    rule = make_rule()
    evaluator = RuleEvaluator([rule])
    res = result("database", 0, CRIT, message="connection refused")
    assert evaluator.observe(res) == [
        RuleTransition(
            rule=rule,
            firing=True,
            at=T0,
            dedup_key="db_down",
            summary="db_down: connection refused",
            evidence=(res,),
        )
    ]


@pytest.mark.parametrize(
    "overrides",
    [{"fail_window": (5, 3)}, {"fail_after": 0}, {"match": "most"}, {"checks": ()}],
)
def test_evaluator_rejects_impossible_rule_records(overrides: dict[str, Any]) -> None:
    """A record the configuration would have refused is refused here too."""
    with pytest.raises(ValueError, match="db_down"):
        RuleEvaluator([make_rule(**overrides)])


def test_unknown_does_not_advance_the_for_clock() -> None:
    """A pending rule does not fire on an unknown result, only on the next
    result that still fails."""
    evaluator = RuleEvaluator([make_rule(for_s=30)])
    points: list[Point] = [(0, "database", CRIT), (40, "database", UNKNOWN)]
    assert run(evaluator, points) == []
    assert run(evaluator, [(50, "database", CRIT)]) == [(50, "db_down", True)]
