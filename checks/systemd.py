"""systemd units: are the services this host needs running?"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Self

from checks.base import Check, CheckSpec
from checks.command import DEFAULT_PATH, deadline_within, run_process
from checks.result import Outcome, Status
from checks.settings import Section

# sd_booted(3): systemd is PID 1 exactly when this directory exists.
DEFAULT_RUNTIME_DIR = "/run/systemd/system"
_MAX_OUTPUT_BYTES = 256 * 1024
_PROPERTIES = "Id,LoadState,ActiveState,SubState"
# Letters, digits and ":-_.\@" as systemd allows; never a leading "-",
# which systemctl would read as an option.
_UNIT_NAME = re.compile(r"^[A-Za-z0-9:_.\\@][A-Za-z0-9:_.\\@-]{0,255}$")

_TRANSITIONAL = frozenset({"activating", "reloading", "deactivating", "refreshing"})
_DOWN = frozenset({"failed", "inactive"})
_BAD_LOAD_STATES = frozenset({"not-found", "masked", "error", "bad-setting"})


@dataclass(frozen=True, slots=True)
class SystemdSettings:
    units: tuple[str, ...]
    systemctl: str
    runtime_dir: Path

    @classmethod
    def read(cls, section: Section) -> SystemdSettings:
        units = section.str_list("units")
        if isinstance(units, list):
            if not units:
                section.error("units", "must name at least one unit")
            for unit in units:
                if not _UNIT_NAME.match(unit):
                    section.error("units", f'"{unit}" is not a unit name')
        systemctl = section.str("systemctl", "systemctl")
        runtime_dir = section.str("systemd_runtime_dir", DEFAULT_RUNTIME_DIR)
        return cls(
            units=tuple(dict.fromkeys(units or ())),
            systemctl=systemctl,
            runtime_dir=Path(runtime_dir),
        )


class SystemdCheck(Check):
    """The state of systemd units, read with one ``systemctl show`` call.

    ``active`` is OK; a unit on its way (``activating``, ``reloading``,
    ``deactivating``, ``refreshing``) is a WARNING; ``failed``,
    ``inactive``, or a unit that is not found, masked or broken is
    CRITICAL. On a host where systemd is not running, the result is UNKNOWN.

    Keys: ``units`` (required), ``systemctl`` (the program, default
    ``systemctl`` on the standard PATH) and ``systemd_runtime_dir``, the
    directory whose existence means systemd runs (default
    ``/run/systemd/system``, as sd_booted(3) tests); change it only to test
    this check on a host without systemd.

    Values: ``units_active`` (units in the active state), ``units_failed``
    (units that are failed, inactive, not found, masked or broken) and
    ``units_total``.
    """

    type_name = "systemd"
    default_interval_s = 30.0
    default_timeout_s = 5.0

    def __init__(self, spec: CheckSpec, settings: SystemdSettings) -> None:
        super().__init__(spec)
        self.settings = settings

    @classmethod
    def configure(cls, spec: CheckSpec, section: Section) -> Self:
        return cls(spec, SystemdSettings.read(section))

    async def probe(self) -> Outcome:
        settings = self.settings
        if not settings.runtime_dir.is_dir():
            return Outcome(
                Status.UNKNOWN,
                f"systemd is not running on this host (no {settings.runtime_dir})",
            )
        argv = [settings.systemctl, "show", f"--property={_PROPERTIES}", "--"]
        result = await run_process(
            [*argv, *settings.units],
            env={"PATH": DEFAULT_PATH, "LC_ALL": "C.UTF-8", "SYSTEMD_COLORS": "0"},
            cwd=None,
            deadline_s=deadline_within(self.spec.timeout_s),
            max_output_bytes=_MAX_OUTPUT_BYTES,
        )
        if result.returncode is None:
            return Outcome(
                Status.CRITICAL,
                f"systemctl show did not answer within "
                f"{deadline_within(self.spec.timeout_s):g} s (is systemd hung?)",
            )
        stderr = result.stderr.decode("utf-8", "replace").strip()
        if result.returncode != 0:
            reason = stderr.splitlines()[0] if stderr else "no message"
            return Outcome(
                Status.UNKNOWN,
                f"systemctl show failed with exit {result.returncode}: {reason}",
            )
        blocks = parse_show_output(result.stdout.decode("utf-8", "replace"))
        if len(blocks) != len(settings.units) or result.stdout_dropped_bytes:
            return Outcome(
                Status.UNKNOWN,
                f"systemctl show printed {len(blocks)} unit blocks for "
                f"{len(settings.units)} units",
                evidence=(stderr,) if stderr else (),
            )
        return self._judge(blocks)

    def _judge(self, blocks: list[dict[str, str]]) -> Outcome:
        status = Status.OK
        active, failed = 0, 0
        troubles: list[str] = []
        evidence: list[str] = []
        # systemctl prints one block per argument, in order; the Id may be
        # the canonical name of an alias (sshd -> ssh.service).
        for name, props in zip(self.settings.units, blocks, strict=True):
            unit = props.get("Id") or name
            load = props.get("LoadState", "")
            state = props.get("ActiveState", "")
            sub = props.get("SubState", "")
            shown = f"{name} {state} ({sub})" if sub else f"{name} {state}"
            evidence.append(f"{unit}: load={load} active={state} sub={sub}")
            if load in _BAD_LOAD_STATES:
                failed += 1
                status = status.worst(Status.CRITICAL)
                troubles.append(f"{name} {load}")
            elif state == "active":
                active += 1
            elif state in _DOWN:
                failed += 1
                status = status.worst(Status.CRITICAL)
                troubles.append(shown)
            elif state in _TRANSITIONAL:
                status = status.worst(Status.WARNING)
                troubles.append(shown)
            else:
                status = status.worst(Status.UNKNOWN)
                troubles.append(f"{name} in unexpected state {state or 'none'!r}")
        values = {
            "units_active": float(active),
            "units_failed": float(failed),
            "units_total": float(len(blocks)),
        }
        if not troubles:
            return Outcome(
                Status.OK, f"all {len(blocks)} units active", values, tuple(evidence)
            )
        return Outcome(status, "; ".join(troubles), values, tuple(evidence))


def parse_show_output(text: str) -> list[dict[str, str]]:
    """``systemctl show`` output: one block of ``Key=Value`` lines per unit,
    blocks separated by blank lines."""
    blocks: list[dict[str, str]] = []
    current: dict[str, str] = {}
    for line in text.splitlines():
        if not line.strip():
            if current:
                blocks.append(current)
                current = {}
            continue
        key, sep, value = line.partition("=")
        if sep:
            current[key.strip()] = value.strip()
    if current:
        blocks.append(current)
    return blocks
