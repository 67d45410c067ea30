"""The command check running real shell scripts written to tmp_path."""

from __future__ import annotations

import asyncio
import stat
import time
from pathlib import Path
from typing import Any

import pytest

from checks.base import Check, run_once
from checks.clock import SystemClock
from checks.command import parse_plugin_output, snake_case
from checks.config import build_check
from checks.result import CheckResult, Status
from checks.settings import Problems, Section

DISK_OUTPUT = (
    "DISK OK - free space: / 3326 MB (56%); | /=2643MB;5948;5958;0;5968\n"
    "/ 15272 MB (77%);\n"
    "/boot 68 MB (69%);\n"
    "/home 69357 MB (27%);\n"
    "/var/log 819 MB (84%); | /boot=68MB;88;93;0;98\n"
    "/home=69357MB;253404;253409;0;253414\n"
    "/var/log=818MB;970;975;0;980\n"
)


def script(directory: Path, body: str, name: str = "plugin.sh") -> Path:
    path = directory / name
    path.write_text("#!/bin/sh\n" + body)
    path.chmod(0o755)
    return path


def build(table: dict[str, Any]) -> tuple[Check | None, Problems]:
    problems = Problems()
    section = Section({"type": "command", **table}, "checks.plugin", problems)
    return build_check("plugin", section), problems


async def probe(table: dict[str, Any]) -> CheckResult:
    check, problems = build(table)
    assert check is not None, [str(p) for p in problems.items]
    return await run_once(check, SystemClock())


def is_dead(pid: int) -> bool:
    """Gone, or a zombie waiting for its (new) parent to reap it."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except FileNotFoundError:
        return True
    return fields[0] == "Z"


async def wait_dead(pid: int, within_s: float = 3.0) -> bool:
    deadline = time.monotonic() + within_s
    while time.monotonic() < deadline:
        if is_dead(pid):
            return True
        await asyncio.sleep(0.02)
    return is_dead(pid)


@pytest.mark.parametrize(
    ("code", "status"),
    [
        (0, Status.OK),
        (1, Status.WARNING),
        (2, Status.CRITICAL),
        (3, Status.UNKNOWN),
    ],
)
async def test_command_exit_codes_follow_plugin_convention(
    tmp_path: Path, code: int, status: Status
) -> None:
    """Exit 0-3 map to OK, WARNING, CRITICAL and UNKNOWN; the first line is
    the message."""
    plugin = script(
        tmp_path, f"echo 'QUEUE {status.name} - 12 jobs|jobs=12'\nexit {code}\n"
    )
    result = await probe({"argv": [str(plugin)]})
    assert result.status is status
    assert result.message == f"QUEUE {status.name} - 12 jobs"
    assert result.values == {"jobs": 12.0}


async def test_command_other_exit_code_is_unknown(tmp_path: Path) -> None:
    """An exit code outside 0-3 is unknown and says so."""
    plugin = script(tmp_path, "echo 'something odd'\nexit 4\n")
    result = await probe({"argv": [str(plugin)]})
    assert result.status is Status.UNKNOWN
    assert result.message == (
        "plugin.sh exited with 4, not a plugin status (0-3): something odd"
    )


async def test_command_death_by_signal_is_unknown(tmp_path: Path) -> None:
    """A plugin killed by a signal is unknown, naming the signal."""
    plugin = script(tmp_path, "echo 'about to crash'\nkill -SEGV $$\n")
    result = await probe({"argv": [str(plugin)]})
    assert result.status is Status.UNKNOWN
    assert result.message == "plugin.sh was killed by SIGSEGV: about to crash"


async def test_command_timeout_kills_the_whole_group(tmp_path: Path) -> None:
    """A plugin that sleeps forever is critical at the timeout, and a child it
    spawned dies with it."""
    pid_file = tmp_path / "child.pid"
    plugin = script(
        tmp_path, f"sleep 300 &\necho $! > {pid_file}\necho started\nsleep 300\n"
    )
    began = time.monotonic()
    result = await probe({"argv": [str(plugin)], "timeout": "600ms"})
    assert time.monotonic() - began < 1.0
    assert result.status is Status.CRITICAL
    assert result.message.startswith(
        "plugin.sh timed out after 0.54 s; killed its process group "
    )
    leader = int(result.message.rsplit(" ", 1)[1])
    assert await wait_dead(leader)
    assert await wait_dead(int(pid_file.read_text()))


async def test_command_leftover_child_does_not_hold_the_probe(tmp_path: Path) -> None:
    """A plugin that exits leaving a child on its stdout is judged at once,
    and the child is killed rather than left to pile up."""
    pid_file = tmp_path / "child.pid"
    plugin = script(tmp_path, f"sleep 300 &\necho $! > {pid_file}\necho 'OK - done'\n")
    began = time.monotonic()
    result = await probe({"argv": [str(plugin)], "timeout": "5s"})
    assert time.monotonic() - began < 1.0
    assert result.status is Status.OK
    assert result.message == "OK - done"
    assert await wait_dead(int(pid_file.read_text()))


async def test_command_long_output_and_perfdata_end_to_end(tmp_path: Path) -> None:
    """Long output lines become evidence; perfdata on every line is read."""
    plugin = script(tmp_path, f"cat <<'EOF'\n{DISK_OUTPUT}EOF\n")
    result = await probe({"argv": [str(plugin)]})
    assert result.status is Status.OK
    assert result.message == "DISK OK - free space: / 3326 MB (56%);"
    assert result.evidence == (
        "/ 15272 MB (77%);",
        "/boot 68 MB (69%);",
        "/home 69357 MB (27%);",
        "/var/log 819 MB (84%);",
    )
    mib = 1024.0 * 1024.0
    assert result.values == {
        "value_bytes": 2643 * mib,
        "boot_bytes": 68 * mib,
        "home_bytes": 69357 * mib,
        "var_log_bytes": 818 * mib,
    }


@pytest.mark.parametrize(
    ("output", "values"),
    [
        ("OK | time=0.012s", {"time_seconds": 0.012}),
        ("OK | 'rta time'=12.5ms;10;20;0;100", {"rta_time_seconds": 0.0125}),
        ("OK | latency=250us", {"latency_seconds": 0.00025}),
        ("OK | 'CPU Load'=37%;80;90", {"cpu_load_percent": 37.0}),
        (
            "OK | size=2KB used=1.5GB free=10B",
            {
                "size_bytes": 2048.0,
                "used_bytes": 1.5 * 1024**3,
                "free_bytes": 10.0,
            },
        ),
        ("OK | requests=1234c", {"requests_total": 1234.0}),
        ("OK | queueDepth=7 temp=21.5degC", {"queue_depth": 7.0, "temp_deg_c": 21.5}),
        ("OK | 'it''s'=1 response_seconds=2s", {"it_s": 1.0, "response_seconds": 2.0}),
        ("OK | a=U b=;1;2 c=abc d=-3.5e2", {"d": -350.0}),
        ("OK | x=1 x=2", {"x": 1.0, "x_2": 2.0}),
        ("OK no perfdata", {}),
    ],
)
def test_command_perfdata_parsed(output: str, values: dict[str, float]) -> None:
    """Perfdata labels become snake_case value names with the unit folded in;
    malformed or undetermined items are skipped."""
    message, _, parsed = parse_plugin_output(output)
    assert parsed == pytest.approx(values)
    assert message == output.split("|", maxsplit=1)[0].strip()


def test_command_snake_case_labels() -> None:
    """Labels with spaces, camel case and slashes turn into plain names."""
    assert snake_case("label with spaces") == "label_with_spaces"
    assert snake_case("rtaTime") == "rta_time"
    assert snake_case("/var/log") == "var_log"
    assert snake_case("/") == "value"


async def test_command_huge_output_bounded(tmp_path: Path) -> None:
    """Output past max_output_bytes is drained and dropped, not kept."""
    plugin = script(
        tmp_path, "echo 'OK - chatty'\nyes 'more output' | head -n 1000000\n"
    )
    result = await probe({"argv": [str(plugin)], "max_output_bytes": 4096})
    assert result.status is Status.OK
    assert result.message == "OK - chatty"
    total = len("OK - chatty\n") + 1_000_000 * len("more output\n")
    assert result.evidence[-1] == f"output cut: {total - 4096} bytes dropped"
    assert len(result.evidence) == 21  # 20 long-output lines and the cut note


async def test_command_stderr_is_evidence_and_fallback_message(tmp_path: Path) -> None:
    """A plugin that only writes to stderr still gets a message."""
    plugin = script(tmp_path, "echo 'cannot reach api' >&2\nexit 2\n")
    result = await probe({"argv": [str(plugin)]})
    assert result.status is Status.CRITICAL
    assert result.message == "cannot reach api"
    assert result.evidence == ("stderr: cannot reach api",)


async def test_command_no_output_message(tmp_path: Path) -> None:
    """A silent plugin gets a message saying so."""
    plugin = script(tmp_path, "exit 1\n")
    result = await probe({"argv": [str(plugin)]})
    assert result.status is Status.WARNING
    assert result.message == "plugin.sh exited with 1 and printed nothing"


async def test_command_environment_is_minimal_plus_env(tmp_path: Path) -> None:
    """The plugin sees only PATH, LC_ALL and the configured env, in its cwd."""
    workdir = tmp_path / "work"
    workdir.mkdir()
    plugin = script(tmp_path, 'echo "home=${HOME-unset} token=$API_TOKEN cwd=$(pwd)"\n')
    result = await probe(
        {"argv": [str(plugin)], "env": {"API_TOKEN": "abc"}, "cwd": str(workdir)}
    )
    assert result.message == f"home=unset token=abc cwd={workdir}"


async def test_command_not_executable_is_unknown(tmp_path: Path) -> None:
    """A plugin without the execute bit is unknown: the probe could not run."""
    plugin = script(tmp_path, "echo OK\n")
    # No execute bit at all: exec fails with EACCES even for root.
    plugin.chmod(stat.S_IRUSR | stat.S_IWUSR)
    check, problems = build({"argv": [str(plugin)]})
    assert check is not None
    assert any("is not an executable file now" in str(p) for p in problems.warnings)
    result = await run_once(check, SystemClock())
    assert result.status is Status.UNKNOWN
    assert result.message == f"cannot run {plugin}: Permission denied"


async def test_command_missing_binary_is_unknown(tmp_path: Path) -> None:
    """A plugin that does not exist is unknown and named."""
    missing = tmp_path / "check_nothing"
    result = await probe({"argv": [str(missing), "-w", "1"]})
    assert result.status is Status.UNKNOWN
    assert result.message == f"cannot run {missing}: No such file or directory"


async def test_command_bare_name_found_on_path() -> None:
    """A program named without a slash is looked up on the standard PATH."""
    result = await probe({"argv": ["sh", "-c", "echo 'OK via PATH'"]})
    assert result.status is Status.OK
    assert result.message == "OK via PATH"


@pytest.mark.parametrize(
    ("table", "key"),
    [
        ({}, "argv"),
        ({"argv": []}, "argv"),
        ({"argv": "check_disk -w 10%"}, "argv"),
        ({"argv": ["sh"], "env": {"BAD NAME": "x"}}, "env.BAD NAME"),
        ({"argv": ["sh"], "env": {"N": 1}}, "env.N"),
        ({"argv": ["sh"], "cwd": "/no/such/dir"}, "cwd"),
        ({"argv": ["sh"], "max_output_bytes": 10}, "max_output_bytes"),
        ({"argv": ["sh"], "shell": True}, "shell"),
    ],
)
def test_command_config_errors_name_the_key(table: dict[str, Any], key: str) -> None:
    """Bad settings leave the check out and name the key."""
    check, problems = build(table)
    assert check is None
    assert any(p.key == f"checks.plugin.{key}" for p in problems.errors), [
        str(p) for p in problems.items
    ]
