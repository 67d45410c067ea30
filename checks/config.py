"""The ``[checks.<name>]`` tables: common keys here, type-specific keys in
each check type's `configure`."""

from __future__ import annotations

import json
import re

from checks.base import Check, CheckSpec, freeze
from checks.registry import UnknownCheckType, load_check_class
from checks.settings import Section

_NAME = re.compile(r"^[A-Za-z0-9_.-]{1,64}$")


def build_checks(checks_table: Section) -> dict[str, Check]:
    """Every configured and enabled check; problems are recorded on the
    section's collector, and a check with problems is left out of the result.
    A disabled check is still validated, so turning it on cannot surprise,
    but its warnings (a credentials file not there yet) are not shown."""
    built: dict[str, Check] = {}
    problems = checks_table.problems
    for name, section in _children(checks_table):
        enabled = section.bool("enabled", True)
        recorded = len(problems.items)
        check = build_check(name, section)
        # Checks open nothing before their first probe, so a disabled one
        # is simply left out of the schedule.
        if check is not None and enabled:
            built[name] = check
        elif not enabled:
            problems.items[recorded:] = [
                p for p in problems.items[recorded:] if not p.warning
            ]
    return built


def _children(table: Section) -> list[tuple[str, Section]]:
    return [(name, table.section(name)) for name in list(table.names())]


def build_check(name: str, section: Section) -> Check | None:
    errors_before = len(section.problems.errors)
    if not _NAME.match(name):
        section.problems.error(
            section.path,
            "a check name may use letters, digits, '_', '-' and '.' (64 at most)",
        )
    type_name = section.str("type")
    if type_name is None:
        return None
    try:
        cls = load_check_class(type_name)
    except UnknownCheckType as exc:
        section.error("type", str(exc))
        return None
    interval_s = section.duration("interval", cls.default_interval_s, min_s=0.1)
    timeout_s = section.duration(
        "timeout", min(cls.default_timeout_s, interval_s), min_s=0.01
    )
    if timeout_s > interval_s:
        section.warn(
            "timeout",
            f"{timeout_s:g} s is longer than the interval ({interval_s:g} s); "
            "overlapping runs are skipped",
        )
    description = section.str("description", "", nonempty=False)
    spec = CheckSpec(
        name=name,
        type=type_name,
        interval_s=interval_s,
        timeout_s=timeout_s,
        description=description,
        fingerprint=json.dumps(freeze(dict(section.data)), default=str),
    )
    check = cls.configure(spec, section)
    section.finish()
    if len(section.problems.errors) > errors_before:
        return None
    return check
