"""Follow a log file and count the lines that match, over a sliding window."""

from __future__ import annotations

import asyncio
import os
import re
import stat
from collections import deque
from dataclasses import dataclass
from pathlib import Path
from typing import Self

import structlog

from checks.base import Check, CheckSpec, ProbeSetupError, threshold_status
from checks.clock import Clock, SystemClock
from checks.result import Outcome, Status
from checks.settings import Section, format_duration

_log = structlog.get_logger(__name__)

_EVIDENCE_CHARS = 300
_MESSAGE_LINE_CHARS = 200
# Bytes before the read offset remembered to notice a file truncated and
# rewritten past our offset between two probes (copytruncate, then a burst).
_TAIL_BYTES = 64
# How far back from the end the first probe looks for a line start.
_START_SCAN_BYTES = 64 * 1024


@dataclass(frozen=True, slots=True)
class _Position:
    device: int
    inode: int
    offset: int
    """Always at a line start: a partial last line is read again once whole."""
    tail: bytes


@dataclass(frozen=True, slots=True)
class _Read:
    position: _Position | None
    matches: list[str]
    lines_read: int
    skipped_bytes: int
    reopened: str | None
    """Why reading started over: "rotated" or "truncated"."""

    @property
    def missing(self) -> bool:
        return self.position is None


@dataclass(frozen=True, slots=True)
class LogSettings:
    path: Path
    patterns: tuple[re.Pattern[str], ...]
    window_s: float
    warning: int
    critical: int
    evidence_lines: int
    from_start: bool
    max_read_bytes: int

    @classmethod
    def read(cls, section: Section) -> LogSettings:
        path_text = section.str("path")
        path = Path(path_text) if isinstance(path_text, str) else Path()
        if not path.is_absolute():
            path = section.base_dir / path
        patterns = []
        texts = section.str_list("patterns")
        if isinstance(texts, list) and not texts:
            section.error("patterns", "must list at least one regular expression")
        for text in texts or ():
            try:
                patterns.append(re.compile(text))
            except re.error as exc:
                section.error(
                    "patterns", f'"{text}" is not a valid regular expression: {exc}'
                )
        warning = section.int("warning", 1, min=1)
        critical = section.int("critical", 10, min=1)
        if (
            isinstance(warning, int)
            and isinstance(critical, int)
            and warning > critical
        ):
            section.error("warning", f"{warning} is above critical ({critical})")
        return cls(
            path=path,
            patterns=tuple(patterns),
            window_s=section.duration("window", 300.0, min_s=1.0),
            warning=warning,
            critical=critical,
            evidence_lines=section.int("evidence_lines", 5, min=0, max=100),
            from_start=section.bool("from_start", False),
            max_read_bytes=section.int(
                "max_read_bytes", 4 * 1024 * 1024, min=4096, max=256 * 1024 * 1024
            ),
        )


class LogCheck(Check):
    """Count log lines matching any of `patterns` within a sliding window.

    Each probe reads what was appended since the last one (the first probe
    starts at the end of the file unless ``from_start``). A rotated file
    (renamed away and replaced, so its device or inode changed) is followed
    from the start of the new file, without going back to the old one (no
    file is held open between probes, so lines the old file received after
    the last probe are not read); a truncated file is read again from the
    start. An unfinished last line
    waits until its newline arrives. Matches are stamped with the probe's
    time, from `clock`. More than ``max_read_bytes`` appended since the last
    probe: the older part is skipped, so a flood is reported now rather than
    minutes late.

    A truncation that regrows past the old offset before the next probe is
    noticed by comparing the bytes just before the offset; a rewrite that
    reproduces those bytes exactly is not.

    Values: ``matches_in_window``, ``lines_read`` (this probe) and
    ``bytes_skipped`` (this probe).
    """

    type_name = "log"
    default_interval_s = 30.0
    default_timeout_s = 10.0

    def __init__(
        self, spec: CheckSpec, settings: LogSettings, clock: Clock | None = None
    ) -> None:
        super().__init__(spec)
        self.settings = settings
        self.clock: Clock = clock or SystemClock()
        self._position: _Position | None = None
        self._probed = False
        self._counts: deque[tuple[float, int]] = deque()
        self._evidence: deque[tuple[float, str]] = deque(maxlen=settings.evidence_lines)

    @classmethod
    def configure(cls, spec: CheckSpec, section: Section) -> Self:
        return cls(spec, LogSettings.read(section))

    async def probe(self) -> Outcome:
        settings = self.settings
        start_at_end = not self._probed and not settings.from_start
        read = await asyncio.to_thread(
            _read_appended, settings, self._position, start_at_end
        )
        self._probed = True
        now = self.clock.wall()
        if read.missing:
            # Matches already counted stay in the window; a file that comes
            # back is a new file and is read from its start.
            self._position = None
            return Outcome(
                Status.UNKNOWN,
                f"no such file: {settings.path}",
                {"matches_in_window": float(self._in_window(now))},
            )
        if read.reopened:
            _log.info(
                "log_check_reopened",
                check=self.name,
                path=str(settings.path),
                reason=read.reopened,
            )
        self._position = read.position

        if read.matches:
            self._counts.append((now, len(read.matches)))
            if settings.evidence_lines:
                for line in read.matches[-settings.evidence_lines :]:
                    self._evidence.append((now, _cut(line, _EVIDENCE_CHARS)))
        count = self._in_window(now)
        values = {
            "matches_in_window": float(count),
            "lines_read": float(read.lines_read),
            "bytes_skipped": float(read.skipped_bytes),
        }
        window = format_duration(settings.window_s)
        evidence = tuple(
            line for at, line in self._evidence if at > now - settings.window_s
        )
        if count:
            last = _cut(evidence[-1], _MESSAGE_LINE_CHARS) if evidence else ""
            plural = "line" if count == 1 else "lines"
            message = f"{count} matching {plural} in the last {window}"
            if last:
                message += f'; last: "{last}"'
        else:
            message = (
                f"no matching lines in the last {window} "
                f"({read.lines_read} new lines read)"
            )
        if read.skipped_bytes:
            message += (
                f"; skipped {read.skipped_bytes} bytes: the log grew by more than "
                f"max_read_bytes since the last probe"
            )
        status = threshold_status(count, settings.warning, settings.critical)
        return Outcome(status, message, values, evidence)

    def _in_window(self, now: float) -> int:
        horizon = now - self.settings.window_s
        counts = self._counts
        while counts and counts[0][0] <= horizon:
            counts.popleft()
        return sum(n for _, n in counts)


def _read_appended(
    settings: LogSettings, position: _Position | None, start_at_end: bool
) -> _Read:
    """Runs in a worker thread: the file and the loop never meet."""
    try:
        file = open(settings.path, "rb")  # noqa: SIM115 -- closed below
    except FileNotFoundError:
        return _Read(None, [], 0, 0, None)
    except OSError as exc:
        raise ProbeSetupError(f"cannot read {settings.path}: {exc.strerror}") from None
    with file:
        fd = file.fileno()
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise ProbeSetupError(f"{settings.path} is not a regular file")
        size = st.st_size
        reopened = None
        if position is None:
            offset = _last_line_start(fd, size) if start_at_end else 0
        elif (st.st_dev, st.st_ino) != (position.device, position.inode):
            offset, reopened = 0, "rotated"
        elif size < position.offset or not _tail_matches(fd, position):
            offset, reopened = 0, "truncated"
        else:
            offset = position.offset

        skipped = 0
        if size - offset > settings.max_read_bytes:
            skipped = size - offset - settings.max_read_bytes
            offset = size - settings.max_read_bytes
        data = os.pread(fd, size - offset, offset)
        if skipped:
            # The chunk starts mid-line: that piece is part of what was skipped.
            first_newline = data.find(b"\n")
            cut = first_newline + 1 if first_newline >= 0 else 0
            skipped += cut
            data = data[cut:]
            offset += cut

        end = data.rfind(b"\n") + 1
        if not end and len(data) >= settings.max_read_bytes:
            end = len(data)  # one line longer than a whole read: take it as is
        matches: list[str] = []
        lines = data[:end].split(b"\n")
        if lines and not lines[-1]:
            lines.pop()
        patterns = settings.patterns
        for raw in lines:
            line = raw.decode("utf-8", "replace").rstrip("\r")
            if any(p.search(line) for p in patterns):
                matches.append(line)
        new_offset = offset + end
        tail_start = max(0, new_offset - _TAIL_BYTES)
        tail = os.pread(fd, new_offset - tail_start, tail_start)
        return _Read(
            _Position(st.st_dev, st.st_ino, new_offset, tail),
            matches,
            len(lines),
            skipped,
            reopened,
        )


def _last_line_start(fd: int, size: int) -> int:
    """Where the first probe starts: after the last newline, so a line
    being written as we start is neither counted nor read as a fragment."""
    scan_from = max(0, size - _START_SCAN_BYTES)
    tail = os.pread(fd, size - scan_from, scan_from)
    newline = tail.rfind(b"\n")
    return scan_from + newline + 1 if newline >= 0 else size


def _tail_matches(fd: int, position: _Position) -> bool:
    tail = position.tail
    start = position.offset - len(tail)
    return os.pread(fd, len(tail), start) == tail


def _cut(line: str, limit: int) -> str:
    return line if len(line) <= limit else line[: limit - 3] + "..."
