"""The escalation configuration schema: a full example parses to the expected
records, and each kind of mistake yields a problem with its key path and a
message saying what was wrong."""

from __future__ import annotations

import tomllib
from collections.abc import Collection
from pathlib import Path

import pytest

from checks.result import Status
from checks.settings import Problem, Problems, Secret, Section
from escalation.config import (
    DEFAULT_PRIORITIES,
    EscalationConfig,
    build_escalation_config,
    parse_days,
)
from escalation.model import Priority
from escalation.policy import (
    BusinessHours,
    ChannelTarget,
    Contact,
    Policy,
    PrioritySettings,
    RateLimit,
    Step,
)
from escalation.rules import Condition, Rule, parse_condition

CHECKS = ("database", "api", "app", "disk", "queue")
ALL_CHANNELS = ("sms", "email", "webhook", "mqtt")
ENV = {"HOOK_SECRET": "hook-signing-secret", "ACK_SECRET": "0123456789abcdef0123"}

MINIMAL = """
[escalation]
public_url = "https://sentinel.example.com"

[escalation.policies.default]
business_hours = { timezone = "America/New_York", days = "mon-fri", start = "09:00", \
end = "18:00" }

[[escalation.policies.default.steps]]
delay = "0s"
contacts = ["support"]

[contacts.support]
name = "Support specialist on duty"
role = "support"
channels = [{ type = "sms", to = "+15550100001" }]

[rules.database_down]
checks = ["database"]
when = "critical"
category = "database_connectivity_loss"
summary = "Database unreachable: {message}"
"""


def load(
    text: str,
    *,
    checks: Collection[str] = CHECKS,
    channels: Collection[str] = ALL_CHANNELS,
) -> tuple[EscalationConfig, Problems]:
    problems = Problems()
    root = Section(tomllib.loads(text), "", problems, env=ENV)
    config = build_escalation_config(root, check_names=checks, channel_types=channels)
    return config, problems


def edit(text: str, old: str, new: str) -> str:
    assert old in text, f"the test's base config lacks {old!r}"
    return text.replace(old, new, 1)


def only_error(problems: Problems) -> Problem:
    assert len(problems.errors) == 1, [str(p) for p in problems.items]
    return problems.errors[0]


def test_minimal_example_is_clean() -> None:
    """The minimal configuration every mistake test starts from has no problem."""
    config, problems = load(MINIMAL)
    assert problems.items == []
    assert [rule.name for rule in config.rules] == ["database_down"]


def test_full_example_parses_to_records(tmp_path: Path) -> None:
    """Every key of the schema lands in the expected record."""
    secret_file = tmp_path / "ack_secret"
    secret_file.write_text("s" * 32 + "\n", encoding="utf-8")
    text = f"""
[escalation]
public_url = "https://sentinel.example.com/"
ack_secret_file = "{secret_file}"
ack_link_ttl = "12h"

[escalation.priorities.P1]
policy = "default"
response_target = "10m"
ack_timeout = "20m"

[escalation.priorities.P3]
policy = "office"

[escalation.categories]
checkout_errors = "P2"

[escalation.policies.default]

[[escalation.policies.default.steps]]
delay = "0s"
contacts = ["support"]
repeat = 2
repeat_interval = "5m"

[[escalation.policies.default.steps]]
delay = "15m"
contacts = ["lead", "owner"]

[escalation.policies.office]

[escalation.policies.office.business_hours]
timezone = "America/New_York"
days = "mon,wed,fri"
start = "09:00"
end = "18:00"

[[escalation.policies.office.steps]]
delay = "1s"
contacts = ["lead"]

[contacts.support]
name = "Support specialist on duty"
role = "support"
channels = [
  {{ type = "sms", to = "+15550100001" }},
  {{ type = "email", to = "support@copysai.com" }},
]
rate_limit = {{ pages = 5, per = "10m" }}

[contacts.lead]
role = "lead developer"

[[contacts.lead.channels]]
type = "webhook"
to = "https://hooks.example/x"
secret = "${{HOOK_SECRET}}"
body_template = '{{"text": "page"}}'
content_type = "application/json"

[[contacts.lead.channels]]
type = "mqtt"
to = "sentinel/pages/lead"

[contacts.owner]
name = "Business owner"
channels = [{{ type = "email", to = "owner@copysai.com" }}]

[rules.database_down]
checks = ["database"]
match = "any"
when = "critical"
for = "1m"
fail_after = 3
fail_window = [3, 5]
recover_after = 3
resolve_after = "5m"
reopen_within = "30m"
unknown_is_failure = true
category = "database_connectivity_loss"
summary = "Database unreachable: {{message}}"
dedup_key = "{{rule}}"
inhibits = ["queue_backlog", "category:performance_issues"]

[rules.queue_backlog]
checks = ["queue", "app"]
match = "all"
condition = "queue_depth > 1000"
category = "checkout_errors"
summary = "Queue backlog: {{value[queue_depth]}} jobs"

[rules.disk_full]
checks = ["disk"]
condition = "disk_used_percent:/var >= 90"
category = "disk_space"
priority = "P3"
"""
    config, problems = load(text)
    assert problems.items == []

    assert config.public_url == "https://sentinel.example.com"
    assert config.ack_secret == Secret(file=secret_file)
    assert config.ack_link_ttl_s == 12 * 3600
    assert config.categories == {"checkout_errors": Priority.P2}
    assert config.priorities == {
        Priority.P1: PrioritySettings("default", 600.0, 1200.0),
        Priority.P2: DEFAULT_PRIORITIES[Priority.P2],
        Priority.P3: PrioritySettings("office", 7200.0, 4 * 3600.0),
    }
    assert config.policies == {
        "default": Policy(
            name="default",
            steps=(
                Step(
                    delay_s=0.0,
                    contacts=("support",),
                    repeat=2,
                    repeat_interval_s=300.0,
                ),
                Step(delay_s=900.0, contacts=("lead", "owner")),
            ),
        ),
        "office": Policy(
            name="office",
            steps=(Step(delay_s=1.0, contacts=("lead",)),),
            business_hours=BusinessHours(
                timezone="America/New_York",
                days=(1, 3, 5),
                start_minute=9 * 60,
                end_minute=18 * 60,
            ),
        ),
    }
    assert config.contacts == {
        "support": Contact(
            name="support",
            display_name="Support specialist on duty",
            role="support",
            channels=(
                ChannelTarget("sms", "+15550100001"),
                ChannelTarget("email", "support@copysai.com"),
            ),
            rate_limit=RateLimit(pages=5, per_s=600.0),
        ),
        "lead": Contact(
            name="lead",
            display_name="lead",
            role="lead developer",
            channels=(
                ChannelTarget(
                    "webhook",
                    "https://hooks.example/x",
                    options={
                        "body_template": '{"text": "page"}',
                        "content_type": "application/json",
                    },
                    secret=Secret("hook-signing-secret"),
                ),
                ChannelTarget("mqtt", "sentinel/pages/lead"),
            ),
        ),
        "owner": Contact(
            name="owner",
            display_name="Business owner",
            role="",
            channels=(ChannelTarget("email", "owner@copysai.com"),),
        ),
    }
    assert config.rules == (
        Rule(
            name="database_down",
            checks=("database",),
            match="any",
            condition=Condition(status_at_least=Status.CRITICAL, text="critical"),
            priority=Priority.P1,
            category="database_connectivity_loss",
            summary_template="Database unreachable: {message}",
            dedup_key_template="{rule}",
            for_s=60.0,
            fail_after=3,
            fail_window=(3, 5),
            recover_after=3,
            resolve_after_s=300.0,
            reopen_within_s=1800.0,
            inhibits=("queue_backlog", "category:performance_issues"),
            unknown_is_failure=True,
        ),
        Rule(
            name="queue_backlog",
            checks=("queue", "app"),
            match="all",
            condition=parse_condition("queue_depth > 1000"),
            priority=Priority.P2,
            category="checkout_errors",
            summary_template="Queue backlog: {value[queue_depth]} jobs",
        ),
        Rule(
            name="disk_full",
            checks=("disk",),
            match="any",
            condition=parse_condition("disk_used_percent:/var >= 90"),
            priority=Priority.P3,
            category="disk_space",
            summary_template="{rule}: {check} is {status}: {message}",
        ),
    )


def test_defaults_priorities_and_rule_settings() -> None:
    """Unset priorities take the protocol's targets; a rule's priority comes
    from its category and fail_after from its window."""
    config, _ = load(
        edit(MINIMAL, 'when = "critical"', 'when = "critical"\nfail_window = [2, 4]')
    )
    assert config.priorities == DEFAULT_PRIORITIES
    assert config.priorities[Priority.P1] == PrioritySettings("default", 900.0, 1800.0)
    assert config.priorities[Priority.P3] == PrioritySettings(
        "default", 7200.0, 14400.0
    )
    [rule] = config.rules
    assert (rule.priority, rule.fail_after, rule.fail_window) == (
        Priority.P1,
        2,
        (2, 4),
    )
    assert config.ack_secret is None
    assert config.ack_link_ttl_s == 86400.0


def test_ack_secret_from_environment() -> None:
    """ack_secret = "${ENV}" reads the variable."""
    config, problems = load(
        edit(MINIMAL, "[escalation]\n", '[escalation]\nack_secret = "${ACK_SECRET}"\n')
    )
    assert problems.items == []
    assert config.ack_secret == Secret(ENV["ACK_SECRET"])


MISTAKES = [
    pytest.param(
        'summary = "Database',
        'for = "5 minutes"\nsummary = "Database',
        "rules.database_down.for",
        '"5 minutes" is not a duration; use e.g. "30s"',
        id="bad-duration",
    ),
    pytest.param(
        'summary = "Database',
        'threshold = 3\nsummary = "Database',
        "rules.database_down.threshold",
        "unknown setting",
        id="unknown-rule-key",
    ),
    pytest.param(
        'delay = "0s"',
        'dealy = "0s"',
        "escalation.policies.default.steps[0].dealy",
        "unknown setting",
        id="unknown-step-key",
    ),
    pytest.param(
        "[escalation]\n",
        '[escalation]\nack_link_tll = "1h"\n',
        "escalation.ack_link_tll",
        "unknown setting",
        id="unknown-escalation-key",
    ),
    pytest.param(
        'category = "database_connectivity_loss"',
        'category = "database_conectivity_loss"',
        "rules.database_down.category",
        '"database_conectivity_loss" is not one of the protocol\'s categories nor '
        "declared under [escalation.categories], so it has no default priority; "
        'declare it or give priority = "P1", "P2" or "P3"; did you mean '
        "database_connectivity_loss?",
        id="bad-category",
    ),
    pytest.param(
        'contacts = ["support"]',
        'contacts = ["suport"]',
        "escalation.policies.default.steps[0].contacts",
        'contact "suport" is not configured under [contacts]; did you mean support?',
        id="missing-contact",
    ),
    pytest.param(
        'to = "+15550100001"',
        'to = "555-0100"',
        "contacts.support.channels[0].to",
        '"555-0100" is not an E.164 phone number',
        id="bad-e164",
    ),
    pytest.param(
        'to = "+15550100001"',
        'to = "+05550100001"',
        "contacts.support.channels[0].to",
        '"+05550100001" is not an E.164 phone number',
        id="e164-leading-zero",
    ),
    pytest.param(
        'summary = "Database unreachable: {message}"',
        'summary = "Database unreachable: {mesage}"',
        "rules.database_down.summary",
        "unknown placeholder {mesage}",
        id="unknown-placeholder",
    ),
    pytest.param(
        'summary = "Database',
        'dedup_key = "{rule}-{host}"\nsummary = "Database',
        "rules.database_down.dedup_key",
        "unknown placeholder {host}",
        id="unknown-placeholder-dedup",
    ),
    pytest.param(
        'timezone = "America/New_York"',
        'timezone = "America/New_Yrok"',
        "escalation.policies.default.business_hours.timezone",
        '"America/New_Yrok" is not a known time zone',
        id="unknown-timezone",
    ),
    pytest.param(
        'days = "mon-fri"',
        'days = "mon-fry"',
        "escalation.policies.default.business_hours.days",
        '"mon-fry" in "mon-fry" is not a day or day range',
        id="bad-days",
    ),
    pytest.param(
        'start = "09:00"',
        'start = "9am"',
        "escalation.policies.default.business_hours.start",
        '"9am" is not a time of day; use HH:MM',
        id="bad-time",
    ),
    pytest.param(
        'end = "18:00"',
        'end = "08:00"',
        "escalation.policies.default.business_hours.end",
        "must be later than start (09:00)",
        id="window-backwards",
    ),
    pytest.param(
        'checks = ["database"]',
        'checks = ["databse"]',
        "rules.database_down.checks",
        'check "databse" is not configured under [checks]; did you mean database?',
        id="unknown-check-close",
    ),
    pytest.param(
        'checks = ["database"]',
        'checks = ["zzz"]',
        "rules.database_down.checks",
        'check "zzz" is not configured under [checks]; configured checks: api, app, '
        "database, disk, queue",
        id="unknown-check-listed",
    ),
    pytest.param(
        'summary = "Database',
        'inhibits = ["queue_backlog"]\nsummary = "Database',
        "rules.database_down.inhibits",
        '"queue_backlog" is not a rule',
        id="inhibits-unknown-rule",
    ),
    pytest.param(
        'summary = "Database',
        'inhibits = ["category:performance_issue"]\nsummary = "Database',
        "rules.database_down.inhibits",
        'category "performance_issue" is used by no rule and declared nowhere; did '
        "you mean performance_issues?",
        id="inhibits-unknown-category",
    ),
    pytest.param(
        'summary = "Database',
        'inhibits = ["database_down"]\nsummary = "Database',
        "rules.database_down.inhibits",
        "rule database_down cannot inhibit itself",
        id="inhibits-itself",
    ),
    pytest.param(
        "[escalation.policies.default]\n",
        '[escalation.priorities.P2]\npolicy = "daytime"\n'
        "\n[escalation.policies.default]\n",
        "escalation.priorities.P2.policy",
        'P2 uses policy "daytime", which is not configured; '
        "configured policies: default",
        id="priority-missing-policy",
    ),
    pytest.param(
        "[escalation.policies.default]\n",
        '[escalation.priorities.P4]\npolicy = "default"\n'
        "\n[escalation.policies.default]\n",
        "escalation.priorities.P4",
        '"P4" is not a priority; use P1, P2, P3',
        id="unknown-priority",
    ),
    pytest.param(
        'when = "critical"',
        'when = "critical"\ncondition = "load1 > 4"',
        "rules.database_down.condition",
        "give either when (a status) or condition (a value test), not both",
        id="when-and-condition",
    ),
    pytest.param(
        'when = "critical"',
        'match = "any"',
        "rules.database_down",
        'needs when = "critical" (a status floor) or condition',
        id="no-condition",
    ),
    pytest.param(
        'when = "critical"',
        'condition = "load1>4"',
        "rules.database_down.condition",
        '"load1>4" is not of the form "<value_name> <op> <number>"',
        id="bad-condition",
    ),
    pytest.param(
        'when = "critical"',
        'when = "ok"',
        "rules.database_down.when",
        '"ok" cannot be a status floor',
        id="useless-floor",
    ),
    pytest.param(
        'when = "critical"',
        'when = "critical"\nfail_window = [5, 3]',
        "rules.database_down.fail_window",
        "[5, 3] is not [N, M]: N failing of the last M results, 1 <= N <= M",
        id="bad-window",
    ),
    pytest.param(
        'when = "critical"',
        'when = "critical"\nmatch = "most"',
        "rules.database_down.match",
        '"most" is not one of any, all',
        id="bad-match",
    ),
    pytest.param(
        'public_url = "https://sentinel.example.com"',
        'public_url = "ftp://sentinel.example.com"',
        "escalation.public_url",
        '"ftp://sentinel.example.com" is not an http(s) URL',
        id="public-url-scheme",
    ),
    pytest.param(
        'public_url = "https://sentinel.example.com"',
        'public_url = "https://sentinel.example.com/?x=1"',
        "escalation.public_url",
        '"https://sentinel.example.com/?x=1" must be the site root, since ack '
        'links are <public_url>/ack/<token>; drop "/?x=1"',
        id="public-url-query",
    ),
    pytest.param(
        'public_url = "https://sentinel.example.com"',
        'public_url = "https://sentinel.example.com/ack/"',
        "escalation.public_url",
        'drop "/ack/"',
        id="public-url-path",
    ),
    pytest.param(
        'public_url = "https://sentinel.example.com"\n',
        "",
        "escalation.public_url",
        "is required: the base of the ack links in pages",
        id="public-url-missing",
    ),
    pytest.param(
        "[escalation]\n",
        '[escalation]\nack_secret = "short"\n',
        "escalation.ack_secret",
        "the ack signing key needs at least 16 bytes",
        id="ack-secret-short",
    ),
    pytest.param(
        "[escalation]\n",
        '[escalation]\nack_secret = "${NOT_SET}"\n',
        "escalation.ack_secret",
        "environment variable NOT_SET is not set",
        id="ack-secret-env-missing",
    ),
    pytest.param(
        '{ type = "sms", to = "+15550100001" }',
        '{ type = "email", to = "support at copysai" }',
        "contacts.support.channels[0].to",
        '"support at copysai" is not an email address',
        id="bad-email",
    ),
    pytest.param(
        '{ type = "sms", to = "+15550100001" }',
        '{ type = "webhook", to = "hooks.example/x" }',
        "contacts.support.channels[0].to",
        '"hooks.example/x" is not an http(s) URL',
        id="bad-webhook-url",
    ),
    pytest.param(
        '{ type = "sms", to = "+15550100001" }',
        '{ type = "mqtt", to = "sentinel/pages/#" }',
        "contacts.support.channels[0].to",
        "contains a wildcard (+ or #)",
        id="mqtt-wildcard",
    ),
    pytest.param(
        '{ type = "sms", to = "+15550100001" }',
        '{ type = "pager", to = "+15550100001" }',
        "contacts.support.channels[0].type",
        '"pager" is not one of sms, email, webhook, mqtt',
        id="unknown-channel-type",
    ),
    pytest.param(
        '{ type = "sms", to = "+15550100001" }',
        '{ type = "sms", to = "+15550100001", secret = "x" }',
        "contacts.support.channels[0].secret",
        "only webhook channels take a secret",
        id="secret-on-sms",
    ),
    pytest.param(
        '{ type = "sms", to = "+15550100001" }',
        '{ type = "sms", to = "+15550100001", body_template = "x" }',
        "contacts.support.channels[0].body_template",
        "applies to webhook channels only, not sms",
        id="webhook-option-on-sms",
    ),
    pytest.param(
        '{ type = "sms", to = "+15550100001" }',
        '{ type = "webhook", to = "https://h.example/x", method = "PUT" }',
        "contacts.support.channels[0].method",
        "unknown setting",
        id="unknown-channel-option",
    ),
    pytest.param(
        'channels = [{ type = "sms", to = "+15550100001" }]',
        "channels = []",
        "contacts.support.channels",
        "a contact needs at least one channel",
        id="no-channels",
    ),
    pytest.param(
        'channels = [{ type = "sms", to = "+15550100001" }]',
        'channels = [{ type = "sms", to = "+15550100001" }]\n'
        'rate_limit = { pages = 0, per = "1m" }',
        "contacts.support.rate_limit.pages",
        "0 is below the minimum 1",
        id="bad-rate-limit",
    ),
    pytest.param(
        'contacts = ["support"]',
        "contacts = []",
        "escalation.policies.default.steps[0].contacts",
        "a step needs at least one contact",
        id="step-without-contacts",
    ),
    pytest.param(
        'delay = "0s"',
        'delay = "-5s"',
        "escalation.policies.default.steps[0].delay",
        '"-5s" is not a duration',
        id="negative-delay",
    ),
]


@pytest.mark.parametrize(("old", "new", "key", "message"), MISTAKES)
def test_mistake_yields_one_precise_error(
    old: str, new: str, key: str, message: str
) -> None:
    """The mistake is reported once, at its key path, saying what is wrong."""
    _, problems = load(edit(MINIMAL, old, new))
    problem = only_error(problems)
    assert problem.key == key
    assert message in problem.message


def test_policy_without_steps_is_an_error() -> None:
    """A policy must have at least one step."""
    text = edit(
        MINIMAL,
        '[[escalation.policies.default.steps]]\ndelay = "0s"\ncontacts = ["support"]\n',
        "",
    )
    _, problems = load(text)
    problem = only_error(problems)
    assert (problem.key, problem.message) == (
        "escalation.policies.default.steps",
        "a policy needs at least one step ([[...steps]])",
    )


def test_unreachable_contact_warns_on_contact_and_step() -> None:
    """A contact whose channels are not configured warns, and so does each
    step that pages it; neither is an error."""
    config, problems = load(MINIMAL, channels=("email",))
    assert problems.errors == []
    assert [(p.key, p.message) for p in problems.warnings] == [
        (
            "contacts.support.channels",
            "contact support has no usable channel: "
            "sms is not configured under [channels]",
        ),
        (
            "escalation.policies.default.steps[0]",
            "contact support cannot be reached (no usable channel); "
            "this step pages nobody",
        ),
    ]
    assert "support" in config.contacts


def test_partly_unreachable_step_names_the_contact() -> None:
    """A step with one unreachable contact among reachable ones still warns."""
    text = edit(MINIMAL, 'contacts = ["support"]', 'contacts = ["support", "lead"]')
    text += (
        '\n[contacts.lead]\nchannels = [{ type = "email", to = "lead@copysai.com" }]\n'
    )
    _, problems = load(text, channels=("email",))
    assert problems.errors == []
    assert (
        "escalation.policies.default.steps[0]",
        "contact support cannot be reached (no usable channel)",
    ) in [(p.key, p.message) for p in problems.warnings]


def test_rules_without_policy_is_an_error_but_checks_only_is_fine() -> None:
    """No policy at all is fine until a rule exists."""
    _, problems = load("")
    assert problems.items == []

    _, problems = load(
        """
[escalation]
public_url = "https://sentinel.example.com"

[rules.database_down]
checks = ["database"]
when = "critical"
category = "database_connectivity_loss"
"""
    )
    problem = only_error(problems)
    assert problem.key == "escalation.policies"
    assert "no escalation policy is configured, but rules are" in problem.message


def test_default_priority_policy_missing_says_it_is_the_default() -> None:
    """Priorities use policy "default" unless told; naming another policy
    only leaves all three pointing at a policy that does not exist."""
    text = MINIMAL.replace("policies.default", "policies.oncall")
    _, problems = load(text)
    assert [(p.key, p.message) for p in problems.errors] == [
        (
            f"escalation.priorities.{p}.policy",
            f'{p} uses policy "default" (the default), which is not configured; '
            "configured policies: oncall",
        )
        for p in ("P1", "P2", "P3")
    ]


def test_operator_category_with_explicit_priority_is_accepted() -> None:
    """A category of the operator's own needs no declaration when the rule
    gives its priority."""
    text = edit(
        MINIMAL,
        'category = "database_connectivity_loss"',
        'category = "warehouse"\npriority = "P3"',
    )
    config, problems = load(text)
    assert problems.items == []
    assert (config.rules[0].category, config.rules[0].priority) == (
        "warehouse",
        Priority.P3,
    )


def test_explicit_priority_overrides_category_default() -> None:
    """priority = "P2" wins over the category's P1."""
    text = edit(MINIMAL, 'when = "critical"', 'when = "critical"\npriority = "P2"')
    config, _ = load(text)
    assert config.rules[0].priority is Priority.P2


def test_volatile_dedup_key_warns() -> None:
    """A dedup key made of a result's message cannot deduplicate: a warning."""
    text = edit(
        MINIMAL,
        'when = "critical"',
        'when = "critical"\ndedup_key = "{rule}: {message}"',
    )
    config, problems = load(text)
    assert problems.errors == []
    assert [(p.key, p.message) for p in problems.warnings] == [
        (
            "rules.database_down.dedup_key",
            "uses {message}, which changes from one result to the next: incidents "
            "of this rule will not be deduplicated or reopened",
        )
    ]
    assert config.rules[0].dedup_key_template == "{rule}: {message}"


def test_ignored_fail_window_warns() -> None:
    """fail_after below the window's N makes the window useless: a warning."""
    text = edit(
        MINIMAL,
        'when = "critical"',
        'when = "critical"\nfail_after = 1\nfail_window = [3, 5]',
    )
    _, problems = load(text)
    assert problems.errors == []
    [warning] = problems.warnings
    assert warning.key == "rules.database_down.fail_window"
    assert warning.message.startswith("has no effect: fail_after = 1")


def test_unreadable_ack_secret_file_warns(tmp_path: Path) -> None:
    """A secret file that is not there yet is a warning (systemd may add it)."""
    missing = tmp_path / "absent"
    text = edit(
        MINIMAL, "[escalation]\n", f'[escalation]\nack_secret_file = "{missing}"\n'
    )
    config, problems = load(text)
    assert problems.errors == []
    assert [(p.key, p.message) for p in problems.warnings] == [
        ("escalation.ack_secret_file", f"{missing} is not readable now")
    ]
    assert config.ack_secret == Secret(file=missing)


def test_problems_never_show_secret_values() -> None:
    """A rejected secret is described, never echoed."""
    text = edit(MINIMAL, "[escalation]\n", '[escalation]\nack_secret = "hunter2"\n')
    text = edit(
        text,
        'public_url = "https://sentinel.example.com"',
        'public_url = "https://admin:s3cr3t@sentinel.example.com"',
    )
    _, problems = load(text)
    rendered = "\n".join(str(p) for p in problems.items)
    assert len(problems.errors) == 2
    assert "hunter2" not in rendered
    assert "s3cr3t" not in rendered


@pytest.mark.parametrize(
    ("text", "days"),
    [
        ("mon-fri", (1, 2, 3, 4, 5)),
        ("mon,wed,fri", (1, 3, 5)),
        ("sat-sun", (6, 7)),
        ("fri-mon", (1, 5, 6, 7)),
        ("Mon-Tue, thu", (1, 2, 4)),
        ("sun", (7,)),
    ],
)
def test_business_days_parse(text: str, days: tuple[int, ...]) -> None:
    """Day lists and ranges (wrapping too) become ISO weekdays."""
    assert parse_days(text) == days


def test_business_hours_end_of_day() -> None:
    """end = "24:00" closes the window at midnight."""
    text = edit(MINIMAL, 'end = "18:00"', 'end = "24:00"')
    config, problems = load(text)
    assert problems.items == []
    hours = config.policies["default"].business_hours
    assert hours is not None and hours.end_minute == 24 * 60
