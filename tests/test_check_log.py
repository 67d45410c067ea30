"""The log check following real files in tmp_path, on a fake clock."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest

from checks.base import run_once
from checks.clock import FakeClock
from checks.config import build_check
from checks.log import LogCheck
from checks.result import CheckResult, Status
from checks.settings import Problems, Section


def build(table: dict[str, Any]) -> tuple[LogCheck | None, Problems]:
    problems = Problems()
    section = Section({"type": "log", **table}, "checks.applog", problems)
    check = build_check("applog", section)
    assert check is None or isinstance(check, LogCheck)
    return check, problems


class Follower:
    """A log check on `path` with a fake clock, probed the daemon's way."""

    def __init__(self, path: Path, clock: FakeClock, **table: Any) -> None:
        check, problems = build({"path": str(path), "patterns": ["ERROR"], **table})
        assert check is not None, [str(p) for p in problems.items]
        check.clock = clock
        self.check = check
        self.clock = clock

    async def probe(self) -> CheckResult:
        return await run_once(self.check, self.clock)


def append(path: Path, text: str) -> None:
    with path.open("a") as file:
        file.write(text)


@pytest.fixture
def log_path(tmp_path: Path) -> Path:
    path = tmp_path / "laravel.log"
    path.write_text("ERROR old line one\nERROR old line two\n")
    return path


async def test_log_first_probe_starts_at_end(log_path: Path, clock: FakeClock) -> None:
    """Lines already in the file are not counted by default."""
    result = await Follower(log_path, clock).probe()
    assert result.status is Status.OK
    assert result.values["matches_in_window"] == 0
    assert result.message == "no matching lines in the last 5m (0 new lines read)"


async def test_log_from_start_counts_existing_lines(
    log_path: Path, clock: FakeClock
) -> None:
    """With from_start, the existing lines are read on the first probe."""
    result = await Follower(log_path, clock, from_start=True).probe()
    assert result.values["matches_in_window"] == 2
    assert result.values["lines_read"] == 2


async def test_log_appended_lines_counted(log_path: Path, clock: FakeClock) -> None:
    """Each probe counts only what was appended since the previous one."""
    follower = Follower(log_path, clock)
    await follower.probe()
    append(log_path, "INFO fine\nERROR SQLSTATE[HY000] [2002] Connection refused\n")
    result = await follower.probe()
    assert result.status is Status.WARNING
    assert result.values["lines_read"] == 2
    assert result.values["matches_in_window"] == 1
    assert result.message == (
        '1 matching line in the last 5m; last: "ERROR SQLSTATE[HY000] [2002] '
        'Connection refused"'
    )
    append(log_path, "INFO still fine\n")
    result = await follower.probe()
    assert result.values["lines_read"] == 1
    assert result.values["matches_in_window"] == 1


async def test_log_critical_at_threshold(log_path: Path, clock: FakeClock) -> None:
    """Reaching the critical count makes the check critical."""
    follower = Follower(log_path, clock, warning=2, critical=3)
    await follower.probe()
    append(log_path, "ERROR a\nERROR b\nERROR c\n")
    result = await follower.probe()
    assert result.status is Status.CRITICAL
    assert result.values["matches_in_window"] == 3


async def test_log_partial_line_waits_for_newline(
    log_path: Path, clock: FakeClock
) -> None:
    """A line without its newline is read only once complete, and whole."""
    follower = Follower(log_path, clock)
    await follower.probe()
    append(log_path, "ERROR payment gateway time")
    result = await follower.probe()
    assert result.values["lines_read"] == 0
    assert result.values["matches_in_window"] == 0
    append(log_path, "out after 30s\n")
    result = await follower.probe()
    assert result.values["lines_read"] == 1
    assert result.evidence == ("ERROR payment gateway timeout after 30s",)


async def test_log_rotation_follows_new_file(log_path: Path, clock: FakeClock) -> None:
    """After rename-and-recreate rotation, the new file is read from its start:
    nothing is counted twice and no line of the new file is lost."""
    follower = Follower(log_path, clock)
    await follower.probe()
    append(log_path, "ERROR before rotation\n")
    assert (await follower.probe()).values["matches_in_window"] == 1

    log_path.rename(log_path.with_suffix(".log.1"))
    log_path.write_text("ERROR first after rotation\nINFO ok\n")
    result = await follower.probe()
    assert result.values["lines_read"] == 2
    assert result.values["matches_in_window"] == 2

    append(log_path, "ERROR second after rotation\n")
    result = await follower.probe()
    assert result.values["lines_read"] == 1
    assert result.values["matches_in_window"] == 3


async def test_log_truncation_reads_from_start(
    log_path: Path, clock: FakeClock
) -> None:
    """A file truncated in place (copytruncate) is read again from the start."""
    follower = Follower(log_path, clock, from_start=True)
    assert (await follower.probe()).values["matches_in_window"] == 2
    with log_path.open("w") as file:
        file.write("ERROR after truncate\n")
    result = await follower.probe()
    assert result.values["lines_read"] == 1
    assert result.values["matches_in_window"] == 3


async def test_log_truncation_regrown_past_offset_noticed(
    log_path: Path, clock: FakeClock
) -> None:
    """A file truncated and regrown beyond the old offset before the next
    probe is still read from its start."""
    follower = Follower(log_path, clock, from_start=True)
    assert (await follower.probe()).values["matches_in_window"] == 2
    with log_path.open("w") as file:
        file.write("".join(f"INFO request {i} served\n" for i in range(20)))
        file.write("ERROR after copytruncate\n")
    result = await follower.probe()
    assert result.values["lines_read"] == 21
    assert result.values["matches_in_window"] == 3


async def test_log_window_slides(log_path: Path, clock: FakeClock) -> None:
    """Matches leave the count once they are older than the window."""
    follower = Follower(log_path, clock, window="5m")
    await follower.probe()
    append(log_path, "ERROR one\nERROR two\n")
    assert (await follower.probe()).values["matches_in_window"] == 2
    clock.advance(200)
    append(log_path, "ERROR three\n")
    assert (await follower.probe()).values["matches_in_window"] == 3
    clock.advance(150)  # the first two are now 350 s old
    result = await follower.probe()
    assert result.values["matches_in_window"] == 1
    assert result.evidence == ("ERROR three",)
    clock.advance(200)
    result = await follower.probe()
    assert result.status is Status.OK
    assert result.values["matches_in_window"] == 0
    assert result.evidence == ()


async def test_log_evidence_keeps_last_lines_cut(
    log_path: Path, clock: FakeClock
) -> None:
    """Evidence holds the last `evidence_lines` matches, each cut to 300 chars."""
    follower = Follower(log_path, clock, evidence_lines=2)
    await follower.probe()
    append(log_path, "ERROR a\nERROR b\nERROR c " + "x" * 1000 + "\n")
    result = await follower.probe()
    assert result.values["matches_in_window"] == 3
    assert len(result.evidence) == 2
    assert result.evidence[0] == "ERROR b"
    assert len(result.evidence[1]) == 300
    assert result.evidence[1].endswith("...")


async def test_log_flood_skips_to_newest(log_path: Path, clock: FakeClock) -> None:
    """More than max_read_bytes appended: the newest part is read whole
    lines only, and the skipped bytes are reported."""
    follower = Follower(log_path, clock, max_read_bytes=4096)
    await follower.probe()
    flood = "".join(f"ERROR flood line {i:05d}\n" for i in range(1000))
    append(log_path, flood)
    result = await follower.probe()
    read = int(result.values["lines_read"])
    assert 0 < read < 1000
    assert result.values["bytes_skipped"] == len(flood) - read * len(
        "ERROR flood line 00000\n"
    )
    assert result.evidence[-1] == "ERROR flood line 00999"
    assert "skipped" in result.message


async def test_log_missing_file_is_unknown_then_followed(
    tmp_path: Path, clock: FakeClock
) -> None:
    """A missing file is unknown; once it appears it is read from its start."""
    path = tmp_path / "worker.log"
    follower = Follower(path, clock)
    result = await follower.probe()
    assert result.status is Status.UNKNOWN
    assert result.message == f"no such file: {path}"
    path.write_text("ERROR queue worker died\n")
    result = await follower.probe()
    assert result.status is Status.WARNING
    assert result.values["matches_in_window"] == 1


async def test_log_rotated_away_then_back(log_path: Path, clock: FakeClock) -> None:
    """A file rotated away and recreated later is followed again."""
    follower = Follower(log_path, clock)
    await follower.probe()
    os.rename(log_path, log_path.with_suffix(".old"))
    assert (await follower.probe()).status is Status.UNKNOWN
    log_path.write_text("ERROR back again\n")
    result = await follower.probe()
    assert result.values["matches_in_window"] == 1


async def test_log_directory_path_is_unknown(tmp_path: Path, clock: FakeClock) -> None:
    """A path that cannot be read as a file is unknown and says why."""
    result = await Follower(tmp_path, clock).probe()
    assert result.status is Status.UNKNOWN
    assert result.message == f"cannot read {tmp_path}: Is a directory"


@pytest.mark.parametrize(
    ("table", "key", "fragment"),
    [
        ({"path": "/var/log/x.log"}, "patterns", "required"),
        ({"path": "/var/log/x.log", "patterns": []}, "patterns", "at least one"),
        (
            {"path": "/var/log/x.log", "patterns": ["ok", "ERROR (unclosed"]},
            "patterns",
            '"ERROR (unclosed" is not a valid regular expression',
        ),
        ({"path": "/x", "patterns": ["E"], "window": "5 minutes"}, "window", ""),
        ({"path": "/x", "patterns": ["E"], "warning": 20}, "warning", "above critical"),
        ({"path": "/x", "patterns": ["E"], "follow": True}, "follow", ""),
    ],
)
def test_log_config_errors_name_the_key(
    table: dict[str, Any], key: str, fragment: str
) -> None:
    """Bad settings leave the check out and name the key and the reason."""
    check, problems = build(table)
    assert check is None
    messages = [str(p) for p in problems.errors]
    assert any(f"checks.applog.{key}: " in m and fragment in m for m in messages), (
        messages
    )
