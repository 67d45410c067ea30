"""What a check type is, and how one configured check is built and run once."""

from __future__ import annotations

import abc
import asyncio
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, ClassVar, Self

from checks.clock import Clock
from checks.result import CheckResult, Outcome, Status
from checks.settings import SecretUnavailable, Section


class ProbeSetupError(Exception):
    """The probe could not run at all (unreadable credentials, a typo'd host
    name, a missing plugin): the target's state is unknown, and the message
    says what the operator must fix."""


@dataclass(frozen=True, slots=True)
class CheckSpec:
    """Settings every check has, whatever its type."""

    name: str
    type: str
    interval_s: float
    timeout_s: float
    description: str
    fingerprint: str
    """Canonical form of the check's whole table: a reload keeps the state and
    schedule of a check whose fingerprint did not change."""


class Check(abc.ABC):
    """A check type. Subclasses read their own keys in `configure` and probe
    their target in `probe`, returning an `Outcome` rather than raising for
    anything the target did."""

    type_name: ClassVar[str]
    default_interval_s: ClassVar[float] = 30.0
    default_timeout_s: ClassVar[float] = 10.0

    def __init__(self, spec: CheckSpec) -> None:
        self.spec = spec

    @property
    def name(self) -> str:
        return self.spec.name

    @classmethod
    @abc.abstractmethod
    def configure(cls, spec: CheckSpec, section: Section) -> Self:
        """Read this type's keys from `section` (the common ones are already
        read); record problems on the section instead of raising."""

    @abc.abstractmethod
    async def probe(self) -> Outcome:
        """Probe the target once. A timeout is enforced by the caller."""

    async def close(self) -> None:
        """Release pools and files; called on shutdown and when a reload
        replaces or removes the check."""
        return


async def run_once(check: Check, clock: Clock) -> CheckResult:
    """Run one probe under its timeout. Never raises for what the probe or
    its target did: every failure becomes a result."""
    started_at = clock.wall()
    began = time.perf_counter()
    try:
        async with asyncio.timeout(check.spec.timeout_s):
            outcome = await check.probe()
    except TimeoutError:
        outcome = Outcome(
            Status.CRITICAL, f"no answer within the {check.spec.timeout_s:g} s timeout"
        )
    except (ProbeSetupError, SecretUnavailable) as exc:
        outcome = Outcome(Status.UNKNOWN, str(exc))
    except Exception as exc:  # a bug in a probe must not stop the others
        outcome = Outcome(Status.UNKNOWN, f"probe crashed: {type(exc).__name__}: {exc}")
    return CheckResult(
        check=check.spec.name,
        check_type=check.spec.type,
        status=outcome.status,
        message=outcome.message,
        values=outcome.values,
        evidence=outcome.evidence,
        started_at=started_at,
        duration_s=time.perf_counter() - began,
    )


def threshold_status(
    value: float, warning: float | None, critical: float | None
) -> Status:
    """OK, WARNING or CRITICAL for a value where higher is worse."""
    if critical is not None and value >= critical:
        return Status.CRITICAL
    if warning is not None and value >= warning:
        return Status.WARNING
    return Status.OK


@dataclass(frozen=True, slots=True)
class Limits:
    """A warning and a critical limit where higher is worse; either may be
    unset, and then never applies."""

    warning: float | None
    critical: float | None

    def status(self, value: float) -> Status:
        return threshold_status(value, self.warning, self.critical)

    def reached(self, status: Status) -> float:
        """The limit behind a warning or critical `status`."""
        limit = self.critical if status is Status.CRITICAL else self.warning
        assert limit is not None  # a status above OK came from a set limit
        return limit


def read_limits(
    section: Section,
    name: str,
    defaults: tuple[float | None, float | None] = (None, None),
    *,
    kind: str = "number",
    maximum: float | None = None,
) -> Limits:
    """``<name>_warning`` and ``<name>_critical``, each with its default,
    checked together. `kind` is "number", "count" (whole numbers) or
    "duration" (strings such as "5m", read as seconds)."""
    values: list[float | None] = []
    for level, default in zip(("warning", "critical"), defaults, strict=True):
        key = f"{name}_{level}"
        if kind == "duration":
            value = section.duration(key, default, min_s=0.0)
        elif kind == "count":
            value = section.int(key, None if default is None else int(default), min=0)
        else:
            value = section.float(key, default, min=0.0, max=maximum)
        values.append(float(value) if isinstance(value, int | float) else default)
    warning, critical = values
    if warning is not None and critical is not None and warning > critical:
        section.error(
            f"{name}_warning", f"{warning:g} is above {name}_critical ({critical:g})"
        )
    return Limits(warning, critical)


def freeze(value: Any) -> Any:
    """A hashable, ordered copy of a TOML value, for fingerprints."""
    if isinstance(value, Mapping):
        return tuple(sorted((k, freeze(v)) for k, v in value.items()))
    if isinstance(value, list):
        return tuple(freeze(v) for v in value)
    return value
