"""Nagios-style plugins: run a program, judge it by its exit code, and read
the performance data it prints.

`run_process` (bounded output, its own process group, killed as a group) is
also what the systemd check runs ``systemctl`` with.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import shutil
import signal
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Self

from checks.base import Check, CheckSpec, ProbeSetupError
from checks.result import Outcome, Status
from checks.settings import Section

DEFAULT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
_STDERR_LIMIT_BYTES = 4096
# After the program exits, how long leftover holders of its pipes (children
# that left its process group) may keep them open before we stop listening.
_PIPE_GRACE_S = 0.5
_EVIDENCE_LINES = 20
_LINE_CHARS = 300
_MESSAGE_CHARS = 500

_EXIT_STATUS = {0: Status.OK, 1: Status.WARNING, 2: Status.CRITICAL, 3: Status.UNKNOWN}


@dataclass(frozen=True, slots=True)
class ProcessResult:
    pid: int
    returncode: int | None
    """None when the program was killed at its deadline; negative: the
    signal that ended it."""
    stdout: bytes
    stderr: bytes
    stdout_dropped_bytes: int
    """Output beyond the limit: read (so the program never blocks on a full
    pipe) and thrown away."""

    @property
    def timed_out(self) -> bool:
        return self.returncode is None


class _Collector(asyncio.SubprocessProtocol):
    def __init__(self, loop: asyncio.AbstractEventLoop, stdout_limit: int) -> None:
        self.exited: asyncio.Future[None] = loop.create_future()
        self.pipes_closed: asyncio.Future[None] = loop.create_future()
        self.output = {1: bytearray(), 2: bytearray()}
        self._limits = {1: stdout_limit, 2: _STDERR_LIMIT_BYTES}
        self.dropped = {1: 0, 2: 0}
        self._open = {1, 2}

    def pipe_data_received(self, fd: int, data: bytes) -> None:
        buffer = self.output[fd]
        room = self._limits[fd] - len(buffer)
        if room > 0:
            buffer += data[:room]
        if len(data) > room:
            self.dropped[fd] += len(data) - max(room, 0)

    def pipe_connection_lost(self, fd: int, exc: Exception | None) -> None:
        self._open.discard(fd)
        if not self._open and not self.pipes_closed.done():
            self.pipes_closed.set_result(None)

    def process_exited(self) -> None:
        if not self.exited.done():
            self.exited.set_result(None)


async def run_process(
    argv: list[str],
    *,
    env: dict[str, str],
    cwd: str | None,
    deadline_s: float,
    max_output_bytes: int,
) -> ProcessResult:
    """Run `argv` (no shell) in a new session and collect its output.

    At `deadline_s`, on cancellation, and once the program itself has
    exited, its whole process group is killed with SIGKILL, so neither a
    hung plugin nor children it left behind outlive the probe; the program
    is always reaped. Raises ProbeSetupError when it cannot be started.
    """
    loop = asyncio.get_running_loop()
    collector = _Collector(loop, max_output_bytes)
    try:
        transport, _ = await loop.subprocess_exec(
            lambda: collector,
            *argv,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            env=env,
            cwd=cwd,
            start_new_session=True,
        )
    except OSError as exc:
        reason = exc.strerror or str(exc)
        if cwd is not None and exc.filename == cwd:
            raise ProbeSetupError(f"cannot change to cwd {cwd}: {reason}") from None
        raise ProbeSetupError(f"cannot run {argv[0]}: {reason}") from None

    pid = transport.get_pid()
    timed_out = False
    try:
        try:
            async with asyncio.timeout(deadline_s):
                # Shielded: a cancelled wait must not mark the exit as seen.
                await asyncio.shield(collector.exited)
                _kill_group(pid)
                await asyncio.wait([collector.pipes_closed], timeout=_PIPE_GRACE_S)
        except TimeoutError:
            timed_out = True
    finally:
        try:
            if not collector.exited.done():
                _kill_group(pid)
                await asyncio.shield(collector.exited)
        finally:
            transport.close()
    return ProcessResult(
        pid=pid,
        returncode=None if timed_out else transport.get_returncode(),
        stdout=bytes(collector.output[1]),
        stderr=bytes(collector.output[2]),
        stdout_dropped_bytes=collector.dropped[1],
    )


def _kill_group(pgid: int) -> None:
    # ESRCH: nothing is left in the group.
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, signal.SIGKILL)


@dataclass(frozen=True, slots=True)
class CommandSettings:
    argv: list[str]
    env: dict[str, str]
    cwd: str | None
    max_output_bytes: int

    @classmethod
    def read(cls, section: Section) -> CommandSettings:
        argv = section.str_list("argv")
        if isinstance(argv, list) and (not argv or not argv[0]):
            section.error("argv", "must start with the program to run")
        argv = list(argv or [""])
        program = argv[0]
        if "/" in program and not os.path.isabs(program):
            program = str(section.base_dir / program)
            argv[0] = program

        env = {"PATH": DEFAULT_PATH, "LC_ALL": "C.UTF-8"}
        table = section.section("env")
        for name in table.names():
            value = table.str(name, nonempty=False)
            if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", name):
                table.error(name, "is not an environment variable name")
            elif isinstance(value, str):
                env[name] = value

        cwd = section.str("cwd", None)
        if isinstance(cwd, str):
            path = Path(cwd) if os.path.isabs(cwd) else section.base_dir / cwd
            cwd = str(path)
            if not path.is_dir():
                section.error("cwd", f"{path} is not a directory")

        if program and not shutil.which(program, path=env["PATH"]):
            # Only a warning: the plugin may be installed after the daemon
            # starts; until then the check reports unknown.
            section.warn("argv", f"{program} is not an executable file now")
        return cls(
            argv=argv,
            env=env,
            cwd=cwd,
            max_output_bytes=section.int(
                "max_output_bytes", 64 * 1024, min=256, max=16 * 1024 * 1024
            ),
        )


class CommandCheck(Check):
    """Run a monitoring plugin and judge it as Nagios does.

    Exit 0 is OK, 1 WARNING, 2 CRITICAL, 3 UNKNOWN; any other exit code or
    death by a signal is UNKNOWN. The message is the first line of output
    (before any ``|``); further lines are evidence. At its timeout the
    plugin's whole process group is killed and the result is CRITICAL.

    Values: the plugin's performance data (``'label'=value[unit];warn;crit;
    min;max``, on the first line and after a ``|`` in the long output),
    named by the label in snake_case with the unit folded in:
    ``s``/``ms``/``us`` become ``<label>_seconds`` (in seconds), ``%``
    ``<label>_percent``, ``B``/``KB``/``MB``/``GB``/``TB``
    ``<label>_bytes`` (in bytes, 1 KB = 1024 B), ``c`` ``<label>_total``;
    a unitless value keeps the bare label and any other unit is appended
    (``<label>_<unit>``).

    The plugin runs without a shell, in an environment of only ``PATH``
    (the standard directories) and ``LC_ALL=C.UTF-8`` plus the ``env``
    table. Children it leaves behind in its process group are killed when
    it exits.
    """

    type_name = "command"
    default_interval_s = 60.0
    default_timeout_s = 10.0

    def __init__(self, spec: CheckSpec, settings: CommandSettings) -> None:
        super().__init__(spec)
        self.settings = settings

    @classmethod
    def configure(cls, spec: CheckSpec, section: Section) -> Self:
        return cls(spec, CommandSettings.read(section))

    async def probe(self) -> Outcome:
        settings = self.settings
        deadline_s = deadline_within(self.spec.timeout_s)
        result = await run_process(
            settings.argv,
            env=settings.env,
            cwd=settings.cwd,
            deadline_s=deadline_s,
            max_output_bytes=settings.max_output_bytes,
        )
        stdout = result.stdout.decode("utf-8", "replace")
        message, long_lines, values = parse_plugin_output(stdout)
        evidence = [_cut(line) for line in long_lines[:_EVIDENCE_LINES]]
        stderr = result.stderr.decode("utf-8", "replace").strip()
        if stderr:
            evidence.append(_cut("stderr: " + " | ".join(stderr.splitlines())))
        if result.stdout_dropped_bytes:
            evidence.append(f"output cut: {result.stdout_dropped_bytes} bytes dropped")
        if not message and stderr:
            message = stderr.splitlines()[0]
        program = os.path.basename(settings.argv[0])

        if result.returncode is None:
            return Outcome(
                Status.CRITICAL,
                f"{program} timed out after {deadline_s:g} s; "
                f"killed its process group {result.pid}",
                values,
                tuple(evidence),
            )
        if result.returncode < 0:
            name = _signal_name(-result.returncode)
            return Outcome(
                Status.UNKNOWN,
                f"{program} was killed by {name}" + (f": {message}" if message else ""),
                values,
                tuple(evidence),
            )
        status = _EXIT_STATUS.get(result.returncode)
        if status is None:
            return Outcome(
                Status.UNKNOWN,
                f"{program} exited with {result.returncode}, not a plugin status "
                f"(0-3)" + (f": {message}" if message else ""),
                values,
                tuple(evidence),
            )
        if not message:
            message = f"{program} exited with {result.returncode} and printed nothing"
        return Outcome(status, message[:_MESSAGE_CHARS], values, tuple(evidence))


def deadline_within(timeout_s: float) -> float:
    """Our own deadline, a little inside the runner's timeout, so the group
    is killed and reaped by us and the result can say so."""
    return timeout_s - min(0.25, timeout_s * 0.1)


def _signal_name(number: int) -> str:
    try:
        return signal.Signals(number).name
    except ValueError:
        return f"signal {number}"


def _cut(line: str) -> str:
    return line if len(line) <= _LINE_CHARS else line[: _LINE_CHARS - 3] + "..."


def parse_plugin_output(text: str) -> tuple[str, list[str], dict[str, float]]:
    """(first line, further text lines, values) from a plugin's output.

    Per the plugin guidelines, text before ``|`` on the first line is the
    status; in the long output, the first ``|`` starts performance data that
    runs to the end.
    """
    lines = text.splitlines()
    if not lines:
        return "", [], {}
    first, _, perfdata = lines[0].partition("|")
    perf_parts = [perfdata]
    long_lines: list[str] = []
    in_perfdata = False
    for line in lines[1:]:
        if in_perfdata:
            perf_parts.append(line)
            continue
        text_part, bar, perf_part = line.partition("|")
        if text_part.strip():
            long_lines.append(text_part.rstrip())
        if bar:
            in_perfdata = True
            perf_parts.append(perf_part)
    values: dict[str, float] = {}
    for part in perf_parts:
        parse_perfdata(part, values)
    return first.strip(), long_lines, values


_PERF_ITEM = re.compile(r"""(?:'((?:[^']|'')+)'|([^\s'=]+))=(\S*)""")
_PERF_VALUE = re.compile(
    r"^([-+]?(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][-+]?\d+)?)([A-Za-z%]*)$"
)
_UNITS: dict[str, tuple[float, str]] = {
    "s": (1.0, "_seconds"),
    "ms": (1e-3, "_seconds"),
    "us": (1e-6, "_seconds"),
    "%": (1.0, "_percent"),
    "B": (1.0, "_bytes"),
    "KB": (1024.0, "_bytes"),
    "MB": (1024.0**2, "_bytes"),
    "GB": (1024.0**3, "_bytes"),
    "TB": (1024.0**4, "_bytes"),
    "c": (1.0, "_total"),
    "": (1.0, ""),
}


def parse_perfdata(text: str, values: dict[str, float]) -> None:
    """Add each ``label=value[unit];...`` item of `text` to `values`. Items
    that are malformed or undetermined (``U``) are skipped: a plugin's
    sloppy perfdata must not fail an otherwise good check."""
    for match in _PERF_ITEM.finditer(text):
        quoted, bare, rest = match.groups()
        label = quoted.replace("''", "'") if quoted is not None else bare
        number = _PERF_VALUE.match(rest.split(";", 1)[0].replace(",", "."))
        if number is None:
            continue
        amount = float(number.group(1))
        unit = number.group(2)
        conversion = _UNITS.get(unit) or _UNITS.get(unit.upper())
        scale, suffix = conversion or (1.0, "_" + snake_case(unit))
        name = snake_case(label)
        if not name.endswith(suffix):
            name += suffix
        unique = name
        counter = 2
        while unique in values:
            unique = f"{name}_{counter}"
            counter += 1
        values[unique] = amount * scale


def snake_case(label: str) -> str:
    """``'Rta Time'`` -> ``rta_time``, ``"queueDepth"`` -> ``queue_depth``,
    ``"/var"`` -> ``var``; a label with no letters or digits is ``value``."""
    spaced = re.sub(r"([a-z0-9])([A-Z])", r"\1_\2", label)
    name = re.sub(r"[^A-Za-z0-9]+", "_", spaced).strip("_").lower()
    return name or "value"
