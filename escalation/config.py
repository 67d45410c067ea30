"""The escalation sections of the configuration: ``[escalation]``,
``[contacts.<name>]`` and ``[rules.<name>]``.

`build_escalation_config` walks them with `Section` getters, records every
problem on the sections (it never raises) and cross-checks what refers to
what: rules to checks and categories, steps to contacts, priorities to
policies, contacts to the channel types configured under ``[channels]``.
"""

from __future__ import annotations

import difflib
import re
import zoneinfo
from collections.abc import Collection, Iterable
from dataclasses import dataclass, field
from urllib.parse import urlsplit

from checks.result import Status
from checks.settings import Secret, SecretUnavailable, Section
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
from escalation.rules import (
    Condition,
    Rule,
    Template,
    TemplateContext,
    TemplateError,
    compile_template,
    parse_condition,
    parse_status_floor,
)


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


PROTOCOL_CATEGORIES: dict[str, Priority] = {
    "complete_service_outage": Priority.P1,
    "database_connectivity_loss": Priority.P1,
    "payment_system_failure": Priority.P1,
    "security_breach": Priority.P1,
    "api_degradation": Priority.P2,
    "scheduled_post_failures": Priority.P2,
    "performance_issues": Priority.P2,
    "authentication_problems": Priority.P2,
    "non_critical_feature_issues": Priority.P3,
    "reporting_delays": Priority.P3,
    "ui_ux_problems": Priority.P3,
    "minor_functionality_bugs": Priority.P3,
}
"""The emergency response protocol's categories and their priorities."""

DEFAULT_POLICY = "default"
DEFAULT_PRIORITIES: dict[Priority, PrioritySettings] = {
    Priority.P1: PrioritySettings(DEFAULT_POLICY, 15 * 60.0, 30 * 60.0),
    Priority.P2: PrioritySettings(DEFAULT_POLICY, 30 * 60.0, 3600.0),
    Priority.P3: PrioritySettings(DEFAULT_POLICY, 2 * 3600.0, 4 * 3600.0),
}
DEFAULT_SUMMARY = "{rule}: {check} is {status}: {message}"

CHANNEL_TYPES = ("sms", "email", "webhook", "mqtt")
CHANNEL_OPTIONS: dict[str, tuple[str, ...]] = {
    "webhook": ("body_template", "content_type")
}
_SECRET_CHANNELS = ("webhook",)

# AckSigner refuses shorter keys.
_MIN_ACK_SECRET_BYTES = 16
# Bounds the per-(rule, check) history a rule keeps in memory.
_MAX_HISTORY = 1000

_NAME = re.compile(r"^[A-Za-z0-9_.-]{1,64}$")
_NAME_RULE = "letters, digits, '_', '-' and '.' (64 at most)"
_E164 = re.compile(r"^\+[1-9][0-9]{7,14}$")
_EMAIL = re.compile(r"^[^@\s<>(),;:\"]+@[^@\s<>(),;:\"]+\.[^@\s<>(),;:\".]+$")
_CONTENT_TYPE = re.compile(r"^[\w.+-]+/[\w.+-]+(\s*;.*)?$")
_HH_MM = re.compile(r"^([01][0-9]|2[0-3]):([0-5][0-9])$")
_WEEKDAYS = {"mon": 1, "tue": 2, "wed": 3, "thu": 4, "fri": 5, "sat": 6, "sun": 7}
_PRIORITY_NAMES = tuple(p.value for p in Priority)


def build_escalation_config(
    root: Section, *, check_names: Collection[str], channel_types: Collection[str]
) -> EscalationConfig:
    """Read the escalation sections of the whole file (`root`, path "").

    Problems are recorded on the sections; the result holds whatever parsed
    cleanly and is only meant to be used when no error was recorded."""
    escalation = root.section("escalation")
    rule_tables = root.data.get("rules")
    has_rules = isinstance(rule_tables, dict) and bool(rule_tables)
    pages_possible = has_rules or bool(root.data.get("contacts"))

    public_url = _read_public_url(escalation, required=pages_possible)
    ack_secret = _read_ack_secret(escalation)
    ack_link_ttl_s = escalation.duration(
        "ack_link_ttl", 86400.0, min_s=60.0, max_s=30 * 86400.0
    )
    categories = _read_categories(escalation.section("categories"))

    contact_tables = root.tables("contacts")
    contacts = _read_contacts(contact_tables, channel_types)
    policy_tables = escalation.tables("policies")
    policies = _read_policies(policy_tables, contact_tables, contacts, channel_types)
    priorities = _read_priorities(escalation, policies, policy_tables, has_rules)

    rules = _read_rules(root, check_names, {**PROTOCOL_CATEGORIES, **categories})

    escalation.finish()
    return EscalationConfig(
        rules=rules,
        policies=policies,
        priorities=priorities,
        contacts=contacts,
        public_url=public_url,
        ack_secret=ack_secret,
        ack_link_ttl_s=ack_link_ttl_s,
        categories=categories,
    )


# --- [escalation] -------------------------------------------------------------


def _read_public_url(section: Section, *, required: bool) -> str:
    example = '"https://sentinel.example.com"'
    if not section.has("public_url"):
        section.raw("public_url")
        if required:
            section.error(
                "public_url",
                f"is required: the base of the ack links in pages, e.g. {example}",
            )
        return ""
    text = section.str("public_url")
    if not isinstance(text, str) or not text:
        return ""
    parts = urlsplit(text)
    if parts.username is not None or parts.password is not None:
        # Do not echo the value: it holds a credential.
        section.error("public_url", "must not carry a user name or password")
        return ""
    problem = _http_url_problem(text)
    if problem:
        section.error("public_url", f'"{text}" {problem}, e.g. {example}')
        return ""
    if parts.path.rstrip("/") or parts.query or parts.fragment:
        junk = text[len(f"{parts.scheme}://{parts.netloc}") :]
        # nginx (deploy/nginx) and the API serve /ack/<token> at the root.
        section.error(
            "public_url",
            f'"{text}" must be the site root, since ack links are '
            f'<public_url>/ack/<token>; drop "{junk}"',
        )
        return ""
    return text.rstrip("/")


def _http_url_problem(text: str) -> str | None:
    """Why `text` is not an absolute http(s) URL, or None."""
    if any(c.isspace() for c in text):
        return "contains white space"
    parts = urlsplit(text)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        return "is not an http(s) URL"
    try:
        parts.port  # noqa: B018 - parsing the port is the check
    except ValueError:
        return "has an invalid port"
    return None


def _read_ack_secret(section: Section) -> Secret | None:
    secret = section.secret("ack_secret")
    if secret is None:
        return None
    try:
        value = secret.reveal()
    except SecretUnavailable:
        # Section.secret already warned that the file is not readable now.
        return secret
    if len(value.encode("utf-8")) < _MIN_ACK_SECRET_BYTES:
        name = "ack_secret_file" if section.has("ack_secret_file") else "ack_secret"
        section.error(
            name,
            f"the ack signing key needs at least {_MIN_ACK_SECRET_BYTES} bytes "
            "(e.g. the output of `openssl rand -hex 32`)",
        )
    return secret


def _read_categories(section: Section) -> dict[str, Priority]:
    categories: dict[str, Priority] = {}
    for name in list(section.names()):
        priority = section.choice(name, _PRIORITY_NAMES)
        if not _NAME.match(name):
            section.error(name, f"a category name may use {_NAME_RULE}")
        elif priority is not None:
            categories[name] = Priority(priority)
    section.finish()
    return categories


def _read_priorities(
    escalation: Section,
    policies: dict[str, Policy],
    policy_tables: dict[str, Section],
    has_rules: bool,
) -> dict[Priority, PrioritySettings]:
    table = escalation.section("priorities")
    priorities = dict(DEFAULT_PRIORITIES)
    for name in list(table.names()):
        if name not in _PRIORITY_NAMES:
            table.raw(name)
            table.error(
                name, f'"{name}" is not a priority; use {", ".join(_PRIORITY_NAMES)}'
            )
            continue
        priority = Priority(name)
        defaults = DEFAULT_PRIORITIES[priority]
        section = table.section(name)
        priorities[priority] = PrioritySettings(
            policy=section.str("policy", defaults.policy),
            response_target_s=section.duration(
                "response_target", defaults.response_target_s, min_s=1.0
            ),
            ack_timeout_s=section.duration(
                "ack_timeout", defaults.ack_timeout_s, min_s=1.0
            ),
        )
        section.finish()
    table.finish()

    if not policies:
        # A checks-only configuration pages nobody and needs no ladder.
        if has_rules and not policy_tables:
            escalation.error(
                "policies",
                "no escalation policy is configured, but rules are: add "
                f"[escalation.policies.{DEFAULT_POLICY}] with at least one step",
            )
        return priorities

    for priority, settings in priorities.items():
        if settings.policy in policy_tables:
            continue
        given = table.data.get(priority.value)
        explicit = isinstance(given, dict) and "policy" in given
        key = f"{table.key(priority.value)}.policy"
        how = "" if explicit else " (the default)"
        table.problems.error(
            key,
            f'{priority.value} uses policy "{settings.policy}"{how}, which is not '
            f"configured; configured policies: {', '.join(sorted(policy_tables))}",
        )
    used = {settings.policy for settings in priorities.values()}
    for name in policies:
        if name not in used:
            policy_tables[name].problems.warn(
                policy_tables[name].path, f"policy {name} is used by no priority"
            )
    return priorities


# --- [escalation.policies.<name>] ---------------------------------------------


def _read_policies(
    tables: dict[str, Section],
    contact_tables: dict[str, Section],
    contacts: dict[str, Contact],
    channel_types: Collection[str],
) -> dict[str, Policy]:
    policies: dict[str, Policy] = {}
    for name, section in tables.items():
        errors_before = len(section.problems.errors)
        if not _NAME.match(name):
            section.problems.error(section.path, f"a policy name may use {_NAME_RULE}")
        hours = (
            _read_business_hours(section.section("business_hours"))
            if section.has("business_hours")
            else None
        )
        if section.has("steps"):
            step_sections = section.table_list("steps")
            steps = [
                _read_step(step, contact_tables, contacts, channel_types)
                for step in step_sections
            ]
        else:
            section.raw("steps")
            steps = []
        if not steps:
            section.error("steps", "a policy needs at least one step ([[...steps]])")
        section.finish()
        if len(section.problems.errors) == errors_before:
            policies[name] = Policy(
                name=name,
                steps=tuple(s for s in steps if s is not None),
                business_hours=hours,
            )
    return policies


def _read_step(
    section: Section,
    contact_tables: dict[str, Section],
    contacts: dict[str, Contact],
    channel_types: Collection[str],
) -> Step | None:
    delay_s = section.duration("delay", 0.0, min_s=0.0)
    names = section.str_list("contacts")
    repeat = section.int("repeat", 0, min=0, max=1000)
    repeat_interval_s = section.duration("repeat_interval", None, min_s=1.0)
    if repeat_interval_s is not None and repeat == 0:
        section.warn("repeat_interval", "has no effect while repeat = 0")
    section.finish()
    if not isinstance(names, list):
        return None
    if not names:
        section.error("contacts", "a step needs at least one contact")
        return None

    missing = [n for n in names if n not in contact_tables]
    for name in missing:
        section.error(
            "contacts",
            f'contact "{name}" is not configured under [contacts]'
            + _suggest(name, contact_tables),
        )
    if len(set(names)) != len(names):
        section.error("contacts", "lists a contact twice")
    unreachable = [
        n for n in names if n in contacts and not _usable(contacts[n], channel_types)
    ]
    if unreachable:
        nobody = len(unreachable) == len(names)
        section.problems.warn(
            section.path,
            f"contact{'s' if len(unreachable) > 1 else ''} {', '.join(unreachable)} "
            "cannot be reached (no usable channel)"
            + ("; this step pages nobody" if nobody else ""),
        )
    if missing or not isinstance(delay_s, float):
        return None
    return Step(
        delay_s=delay_s,
        contacts=tuple(dict.fromkeys(names)),
        repeat=repeat,
        repeat_interval_s=repeat_interval_s,
    )


def _read_business_hours(section: Section) -> BusinessHours | None:
    errors_before = len(section.problems.errors)
    timezone = section.str("timezone")
    if isinstance(timezone, str) and timezone:
        try:
            zoneinfo.ZoneInfo(timezone)
        except (zoneinfo.ZoneInfoNotFoundError, ValueError):
            section.error(
                "timezone",
                f'"{timezone}" is not a known time zone; use an IANA name such as '
                '"America/New_York" or "UTC"',
            )
    days: tuple[int, ...] = ()
    days_text = section.str("days", "mon-fri")
    if isinstance(days_text, str):
        try:
            days = parse_days(days_text)
        except ValueError as exc:
            section.error("days", str(exc))
    start = _read_clock_time(section, "start", "09:00", allow_midnight_end=False)
    end = _read_clock_time(section, "end", "17:00", allow_midnight_end=True)
    if start is not None and end is not None and start >= end:
        section.error(
            "end",
            f"must be later than start ({section.data.get('start', '09:00')}); "
            "a window across midnight is not supported",
        )
    section.finish()
    if len(section.problems.errors) > errors_before or start is None or end is None:
        return None
    return BusinessHours(
        timezone=timezone, days=days, start_minute=start, end_minute=end
    )


def parse_days(text: str) -> tuple[int, ...]:
    """ISO weekdays from ``"mon-fri"``, ``"mon,wed,fri"``, ``"sat-sun"`` (a
    range may wrap: ``"fri-mon"``). Raises ValueError naming the bad part."""
    names = ", ".join(_WEEKDAYS)
    days: set[int] = set()
    for raw in text.split(","):
        part = raw.strip().lower()
        first, dash, last = part.partition("-")
        first, last = first.strip(), last.strip()
        if first not in _WEEKDAYS or (dash and last not in _WEEKDAYS):
            raise ValueError(
                f'"{raw.strip()}" in "{text}" is not a day or day range; use day '
                f'names ({names}) as in "mon-fri" or "mon,wed,fri"'
            )
        day = _WEEKDAYS[first]
        stop = _WEEKDAYS[last] if dash else day
        days.add(day)
        while day != stop:
            day = day % 7 + 1
            days.add(day)
    return tuple(sorted(days))


def _read_clock_time(
    section: Section, name: str, default: str, *, allow_midnight_end: bool
) -> int | None:
    text = section.str(name, default)
    if not isinstance(text, str):
        return None
    if allow_midnight_end and text == "24:00":
        return 24 * 60
    match = _HH_MM.match(text)
    if not match:
        upper = "24:00" if allow_midnight_end else "23:59"
        section.error(
            name, f'"{text}" is not a time of day; use HH:MM, 00:00 to {upper}'
        )
        return None
    return int(match.group(1)) * 60 + int(match.group(2))


# --- [contacts.<name>] --------------------------------------------------------


def _read_contacts(
    tables: dict[str, Section], channel_types: Collection[str]
) -> dict[str, Contact]:
    contacts: dict[str, Contact] = {}
    for name, section in tables.items():
        contact = _read_contact(name, section, channel_types)
        if contact is not None:
            contacts[name] = contact
    return contacts


def _read_contact(
    name: str, section: Section, channel_types: Collection[str]
) -> Contact | None:
    errors_before = len(section.problems.errors)
    if not _NAME.match(name):
        section.problems.error(section.path, f"a contact name may use {_NAME_RULE}")
    display_name = section.str("name", name)
    role = section.str("role", "", nonempty=False)
    if section.has("channels"):
        channels = [
            _read_channel(channel, channel_types)
            for channel in section.table_list("channels")
        ]
        if not channels and isinstance(section.data.get("channels"), list):
            section.error("channels", "a contact needs at least one channel")
    else:
        section.raw("channels")
        section.error(
            "channels", 'is required, e.g. [{ type = "sms", to = "+15550100001" }]'
        )
        channels = []
    rate_limit = (
        _read_rate_limit(section.section("rate_limit"))
        if section.has("rate_limit")
        else None
    )
    section.finish()
    if len(section.problems.errors) > errors_before:
        return None

    contact = Contact(
        name=name,
        display_name=display_name,
        role=role,
        channels=tuple(c for c in channels if c is not None),
        rate_limit=rate_limit,
    )
    if not _usable(contact, channel_types):
        missing = sorted({c.type for c in contact.channels})
        verb = "is" if len(missing) == 1 else "are"
        section.warn(
            "channels",
            f"contact {name} has no usable channel: {', '.join(missing)} {verb} "
            "not configured under [channels]",
        )
    return contact


def _usable(contact: Contact, channel_types: Collection[str]) -> bool:
    return any(channel.type in channel_types for channel in contact.channels)


def _read_channel(
    section: Section, channel_types: Collection[str]
) -> ChannelTarget | None:
    errors_before = len(section.problems.errors)
    kinds = tuple(dict.fromkeys([*CHANNEL_TYPES, *sorted(channel_types)]))
    kind = section.choice("type", kinds)
    to = section.str("to")
    if isinstance(kind, str) and isinstance(to, str) and to:
        problem = _destination_problem(kind, to)
        if problem:
            section.error("to", problem)

    secret = None
    if kind in _SECRET_CHANNELS:
        secret = section.secret("secret")
    elif isinstance(kind, str):
        for key in ("secret", "secret_file"):
            if section.has(key):
                section.raw(key)
                section.error(
                    key, f"only {', '.join(_SECRET_CHANNELS)} channels take a secret"
                )

    options: dict[str, str] = {}
    for option in CHANNEL_OPTIONS.get(kind, ()) if isinstance(kind, str) else ():
        value = section.str(option, None)
        if isinstance(value, str):
            options[option] = value
    content_type = options.get("content_type")
    if content_type is not None and not _CONTENT_TYPE.match(content_type):
        section.error(
            "content_type",
            f'"{content_type}" is not a media type such as "application/json"',
        )
    if isinstance(kind, str):
        _reject_foreign_options(section, kind)
    section.finish()
    if len(section.problems.errors) > errors_before or not isinstance(kind, str):
        return None
    return ChannelTarget(type=kind, to=to, options=options, secret=secret)


def _reject_foreign_options(section: Section, kind: str) -> None:
    """A clearer message than "unknown setting" for an option that
    belongs to another channel type."""
    for other, names in CHANNEL_OPTIONS.items():
        if other == kind:
            continue
        for name in names:
            if section.has(name):
                section.raw(name)
                section.error(name, f"applies to {other} channels only, not {kind}")


def _destination_problem(kind: str, to: str) -> str | None:
    if kind == "sms" and not _E164.match(to):
        return (
            f'"{to}" is not an E.164 phone number: "+", the country code and '
            'number, 8 to 15 digits without spaces, e.g. "+15550100001"'
        )
    if kind == "email" and not _EMAIL.match(to):
        return f'"{to}" is not an email address such as "oncall@example.com"'
    if kind == "webhook":
        problem = _http_url_problem(to)
        if problem:
            return f'"{to}" {problem} such as "https://hooks.example.com/sentinel"'
    if kind == "mqtt":
        if "+" in to or "#" in to:
            return f'"{to}" contains a wildcard (+ or #); a page goes to one topic'
        if to.startswith("$") or "\x00" in to or len(to.encode("utf-8")) > 65535:
            return f'"{to}" is not a topic a client may publish to'
    return None


def _read_rate_limit(section: Section) -> RateLimit | None:
    pages = section.int("pages", min=1)
    per_s = section.duration("per", min_s=1.0)
    section.finish()
    if not isinstance(pages, int) or pages < 1 or not isinstance(per_s, float):
        return None
    return RateLimit(pages=pages, per_s=per_s)


# --- [rules.<name>] -----------------------------------------------------------


def _read_rules(
    root: Section, check_names: Collection[str], categories: dict[str, Priority]
) -> tuple[Rule, ...]:
    tables = root.tables("rules")
    rules: list[Rule] = []
    inhibits: list[tuple[str, Section, list[str]]] = []
    for name, section in tables.items():
        rule, targets = _read_rule(name, section, check_names, categories)
        if rule is not None:
            rules.append(rule)
        inhibits.append((name, section, targets))

    known_categories = set(categories) | {rule.category for rule in rules}
    for name, section, targets in inhibits:
        _check_inhibits(name, section, targets, tables, known_categories)
    return tuple(rules)


def _read_rule(
    name: str,
    section: Section,
    check_names: Collection[str],
    categories: dict[str, Priority],
) -> tuple[Rule | None, list[str]]:
    errors_before = len(section.problems.errors)
    if not _NAME.match(name):
        section.problems.error(section.path, f"a rule name may use {_NAME_RULE}")
    checks = _read_rule_checks(section, check_names)
    match = section.choice("match", ("any", "all"), "any")
    condition = _read_condition(section)
    for_s = section.duration("for", 0.0, min_s=0.0)
    fail_window = _read_fail_window(section)
    fail_after = section.int(
        "fail_after", fail_window[0] if fail_window else 1, min=1, max=_MAX_HISTORY
    )
    if fail_window and isinstance(fail_after, int) and fail_after < fail_window[0]:
        section.warn(
            "fail_window",
            f"has no effect: fail_after = {fail_after} already counts as failing "
            f"before {fail_window[0]} of {fail_window[1]} results fail",
        )
    recover_after = section.int("recover_after", 1, min=1, max=_MAX_HISTORY)
    resolve_after_s = section.duration("resolve_after", 300.0, min_s=0.0)
    reopen_within_s = section.duration("reopen_within", 1800.0, min_s=0.0)
    unknown_is_failure = section.bool("unknown_is_failure", False)
    category, priority = _read_category(section, categories)
    summary = _read_template(section, "summary", DEFAULT_SUMMARY)
    dedup_key = _read_template(section, "dedup_key", "{rule}")
    volatile = [
        p
        for p in (dedup_key.placeholders if dedup_key else ())
        if p in ("status", "message") or p.startswith("value[")
    ]
    if volatile:
        section.warn(
            "dedup_key",
            f"uses {{{volatile[0]}}}, which changes from one result to the next: "
            "incidents of this rule will not be deduplicated or reopened",
        )
    targets = section.str_list("inhibits", [])
    section.finish()

    if (
        len(section.problems.errors) > errors_before
        or checks is None
        or condition is None
        or category is None
        or priority is None
        or summary is None
        or dedup_key is None
    ):
        return None, targets if isinstance(targets, list) else []
    rule = Rule(
        name=name,
        checks=checks,
        match=match,
        condition=condition,
        priority=priority,
        category=category,
        summary_template=summary.text,
        dedup_key_template=dedup_key.text,
        for_s=for_s,
        fail_after=fail_after,
        fail_window=fail_window,
        recover_after=recover_after,
        resolve_after_s=resolve_after_s,
        reopen_within_s=reopen_within_s,
        inhibits=tuple(targets),
        unknown_is_failure=unknown_is_failure,
    )
    return rule, targets


def _read_rule_checks(
    section: Section, check_names: Collection[str]
) -> tuple[str, ...] | None:
    checks = section.str_list("checks")
    if not isinstance(checks, list):
        return None
    if not checks:
        section.error("checks", "a rule needs at least one check")
        return None
    ok = True
    for check in checks:
        if check not in check_names:
            ok = False
            section.error(
                "checks",
                f'check "{check}" is not configured under [checks]'
                + _suggest(check, check_names, kind="checks"),
            )
    if len(set(checks)) != len(checks):
        ok = False
        section.error("checks", "lists a check twice")
    return tuple(checks) if ok else None


def _read_condition(section: Section) -> Condition | None:
    when = section.str("when", None)
    text = section.str("condition", None)
    if section.has("when") and section.has("condition"):
        section.error(
            "condition",
            "give either when (a status) or condition (a value test), not both",
        )
        return None
    if not section.has("when") and not section.has("condition"):
        section.problems.error(
            section.path,
            'needs when = "critical" (a status floor) or condition = '
            '"disk_used_percent > 90" (a value test)',
        )
        return None
    try:
        if isinstance(when, str):
            return parse_status_floor(when)
        if isinstance(text, str):
            return parse_condition(text)
    except ValueError as exc:
        section.error("when" if isinstance(when, str) else "condition", str(exc))
    return None


def _read_fail_window(section: Section) -> tuple[int, int] | None:
    value = section.raw("fail_window")
    if value is None:
        return None
    form = "[N, M]: N failing of the last M results, 1 <= N <= M"
    if (
        not isinstance(value, list)
        or len(value) != 2
        or not all(isinstance(v, int) and not isinstance(v, bool) for v in value)
    ):
        section.error("fail_window", f"{value!r} is not {form}")
        return None
    needed, size = value
    if not 1 <= needed <= size:
        section.error("fail_window", f"{value!r} is not {form}")
        return None
    if size > _MAX_HISTORY:
        section.error("fail_window", f"M = {size} is above the maximum {_MAX_HISTORY}")
        return None
    return needed, size


def _read_category(
    section: Section, categories: dict[str, Priority]
) -> tuple[str | None, Priority | None]:
    category = section.str("category")
    explicit = section.choice("priority", _PRIORITY_NAMES, None)
    if not isinstance(category, str) or not category:
        return None, None
    if not _NAME.match(category):
        section.error("category", f"a category name may use {_NAME_RULE}")
        return None, None
    if explicit is not None:
        if category not in categories:
            close = difflib.get_close_matches(category, categories, n=1, cutoff=0.8)
            if close:
                section.warn(
                    "category",
                    f'"{category}" is not a known category; did you mean {close[0]}?',
                )
        return category, Priority(explicit)
    default = categories.get(category)
    if default is None:
        if section.has("priority"):  # the priority was given but invalid
            return category, None
        section.error(
            "category",
            f'"{category}" is not one of the protocol\'s categories nor declared '
            "under [escalation.categories], so it has no default priority; "
            'declare it or give priority = "P1", "P2" or "P3"'
            + _suggest(category, categories, listing=False),
        )
        return category, None
    return category, default


_DUMMY_CONTEXT = TemplateContext(
    rule="rule",
    check="check",
    checks="check, other",
    status=Status.CRITICAL.label,
    message="message",
    category="category",
    priority=Priority.P1.value,
    values={},
)


def _read_template(section: Section, name: str, default: str) -> Template | None:
    text = section.str(name, default)
    if not isinstance(text, str):
        return None
    try:
        template = compile_template(text)
        template.render(_DUMMY_CONTEXT)
    except TemplateError as exc:
        section.error(name, str(exc))
        return None
    return template


def _check_inhibits(
    name: str,
    section: Section,
    targets: list[str],
    rules: dict[str, Section],
    categories: set[str],
) -> None:
    for target in targets:
        if target.startswith("category:"):
            category = target.removeprefix("category:")
            if category not in categories:
                section.error(
                    "inhibits",
                    f'"{target}": category "{category}" is used by no rule and '
                    "declared nowhere" + _suggest(category, categories, listing=False),
                )
        elif target == name:
            section.error("inhibits", f"rule {name} cannot inhibit itself")
        elif target not in rules:
            section.error(
                "inhibits",
                f'"{target}" is not a rule (write "category:<name>" for a category)'
                + _suggest(target, rules, kind="rules"),
            )


def _suggest(
    name: str, known: Iterable[str], *, kind: str = "names", listing: bool = True
) -> str:
    """ "; did you mean x?" or, when nothing is close, the configured names."""
    names = sorted(known)
    close = difflib.get_close_matches(name, names, n=3, cutoff=0.6)
    if close:
        return f"; did you mean {' or '.join(close)}?"
    if not listing:
        return ""
    if not names:
        return f"; no {kind} are configured"
    shown = ", ".join(names[:10]) + (", ..." if len(names) > 10 else "")
    return f"; configured {kind}: {shown}"
