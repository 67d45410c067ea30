"""Loading the TOML file: parse, hand each section to the package that owns
its schema, and put a file and line on every problem."""

from __future__ import annotations

import ipaddress
import os
import re
import secrets
import socket
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path

from checks.base import Check
from checks.config import build_checks
from checks.settings import ConfigError, Problem, Problems, Secret, Section
from escalation.config import EscalationConfig, build_escalation_config
from escalation.notifiers.config import ChannelsConfig, build_notifiers_config

LOG_FORMATS = ("auto", "json", "console")
LOG_LEVELS = ("debug", "info", "warning", "error")
STORE_BACKENDS = ("sqlite",)


@dataclass(frozen=True, slots=True)
class DaemonSettings:
    state_dir: Path
    node: str
    api_host: str
    api_port: int
    admin_token: Secret | None
    log_format: str
    log_level: str
    max_concurrent_checks: int
    shutdown_timeout_s: float
    sqlite_path: Path
    jitter_fraction: float


@dataclass(frozen=True, slots=True)
class Config:
    path: Path
    settings: DaemonSettings
    checks: dict[str, Check]
    escalation: EscalationConfig
    channels: ChannelsConfig
    warnings: list[Problem] = field(default_factory=list)
    configured_checks: int = 0
    """Checks in the file, the disabled ones included."""


def load_config(path: Path, env: Mapping[str, str] | None = None) -> Config:
    """Read and validate the whole file; raises ConfigError listing every
    problem, each located by file and line where it can be."""
    path = Path(path)
    text, root = _read_root(path, env)
    problems = root.problems
    settings = _read_daemon_settings(root)
    checks_table = root.section("checks")
    checks = build_checks(checks_table)
    channels = build_notifiers_config(root)
    escalation = build_escalation_config(
        root,
        # Names of checks that failed validation still count, so one bad
        # check does not cascade into "unknown check" errors in every rule.
        check_names=set(checks_table.names()),
        channel_types=channels.types,
    )
    root.finish()

    located = _locate_all(problems.items, path, text)
    if any(not p.warning for p in located):
        raise ConfigError(located)
    return Config(
        path=path,
        settings=settings,
        checks=checks,
        escalation=escalation,
        channels=channels,
        warnings=[p for p in located if p.warning],
        configured_checks=len(list(checks_table.names())),
    )


def load_daemon_settings(
    path: Path, env: Mapping[str, str] | None = None
) -> DaemonSettings:
    """Only the daemon's own sections ([daemon], [store], [api], [log]): what
    the CLI needs to reach a running daemon. The checks' and channels'
    secrets are not resolved, so a shell without their variables still works."""
    path = Path(path)
    text, root = _read_root(path, env)
    settings = _read_daemon_settings(root)
    located = _locate_all(root.problems.errors, path, text)
    if located:
        raise ConfigError(located)
    return settings


def admin_token(settings: DaemonSettings) -> str:
    """The configured admin token, else the one kept in the state directory
    (created on first use, readable by the owner only)."""
    if settings.admin_token is not None:
        return settings.admin_token.reveal()
    return state_secret(settings.state_dir / "admin.token", secrets.token_urlsafe(32))


def state_secret(path: Path, fresh: str) -> str:
    """The secret kept in `path`; on first use `fresh` is written there,
    readable by the owner only, so it survives restarts."""
    try:
        return path.read_text(encoding="ascii").strip()
    except FileNotFoundError:
        pass
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w", encoding="ascii") as handle:
        handle.write(fresh + "\n")
    return fresh


def _read_root(path: Path, env: Mapping[str, str] | None) -> tuple[str, Section]:
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(
            [Problem("", f"cannot read the file: {exc.strerror}", file=str(path))]
        ) from None
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError([_syntax_problem(path, exc)]) from None
    root = Section(
        data,
        "",
        Problems(),
        env=os.environ if env is None else env,
        base_dir=path.resolve().parent,
    )
    return text, root


def _read_daemon_settings(root: Section) -> DaemonSettings:
    daemon = root.section("daemon")
    state_dir = Path(daemon.str("state_dir", ".state"))
    if not state_dir.is_absolute():
        state_dir = root.base_dir / state_dir
    node = daemon.str("node", socket.gethostname())
    max_concurrent = daemon.int("max_concurrent_checks", 256, min=1, max=10_000)
    shutdown_timeout_s = daemon.duration("shutdown_timeout", 4.0, min_s=0.1, max_s=60)
    jitter = daemon.float("jitter", 0.1, min=0.0, max=0.5)
    daemon.finish()

    store = root.section("store")
    store.choice("backend", STORE_BACKENDS, "sqlite")
    sqlite_path = Path(store.str("path", "sentinel.db"))
    if not sqlite_path.is_absolute():
        sqlite_path = state_dir / sqlite_path
    store.finish()

    api = root.section("api")
    api_host = api.str("host", "127.0.0.1")
    api_port = api.int("port", 8765, min=0, max=65535)
    token = api.secret("admin_token")
    if isinstance(api_host, str) and not _is_loopback(api_host):
        api.warn(
            "host",
            f'"{api_host}" is not a loopback address: the whole API is reachable '
            "from the network; expose only /ack through nginx instead",
        )
    api.finish()

    log = root.section("log")
    log_format = log.choice("format", LOG_FORMATS, "auto")
    log_level = log.choice("level", LOG_LEVELS, "info")
    log.finish()

    return DaemonSettings(
        state_dir=state_dir,
        node=node,
        api_host=api_host,
        api_port=api_port,
        admin_token=token,
        log_format=log_format,
        log_level=log_level,
        max_concurrent_checks=max_concurrent,
        shutdown_timeout_s=shutdown_timeout_s,
        sqlite_path=sqlite_path,
        jitter_fraction=jitter,
    )


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


_TOML_POSITION = re.compile(r"\(at line (\d+), column \d+\)")


def _syntax_problem(path: Path, exc: tomllib.TOMLDecodeError) -> Problem:
    message = str(exc)
    match = _TOML_POSITION.search(message)
    line = int(match.group(1)) if match else None
    reason = _TOML_POSITION.sub("", message).strip()
    return Problem("", f"not valid TOML: {reason}", file=str(path), line=line)


# Locating keys -------------------------------------------------------------

_HEADER = re.compile(r"^\s*(\[\[?)\s*([^\]]+?)\s*\]\]?\s*(?:#.*)?$")
_ASSIGNMENT = re.compile(
    r"""^\s*((?:[A-Za-z0-9_-]+|"[^"]*"|'[^']*')(?:\s*\.\s*(?:[A-Za-z0-9_-]+|"[^"]*"|'[^']*'))*)\s*="""
)
_KEY_PART = re.compile(r"""[A-Za-z0-9_-]+|"[^"]*"|'[^']*'""")


def key_lines(text: str) -> dict[str, int]:
    """Dotted key path (array-of-tables items as ``name[i]``) to the line
    that defines it. Good enough for error messages: it reads headers and
    ``key =`` lines, not the full TOML grammar."""
    lines: dict[str, int] = {}
    array_counts: dict[str, int] = {}
    table = ""
    for number, line in enumerate(text.splitlines(), start=1):
        header = _HEADER.match(line)
        if header:
            name = ".".join(_split_key(header.group(2)))
            if header.group(1) == "[[":
                index = array_counts.get(name, 0)
                array_counts[name] = index + 1
                name = f"{name}[{index}]"
            else:
                # A sub-table of the latest array item: [a.b] after [[a]].
                name = _inside_arrays(name, array_counts)
            table = name
            lines.setdefault(table, number)
            continue
        assignment = _ASSIGNMENT.match(line)
        if assignment:
            key = ".".join(_split_key(assignment.group(1)))
            lines.setdefault(f"{table}.{key}" if table else key, number)
    return lines


def _split_key(raw: str) -> list[str]:
    return [part.strip("\"'") for part in _KEY_PART.findall(raw)]


def _inside_arrays(name: str, array_counts: dict[str, int]) -> str:
    for array, count in sorted(array_counts.items(), key=lambda kv: -len(kv[0])):
        if name.startswith(array + "."):
            return f"{array}[{count - 1}]{name[len(array) :]}"
    return name


def _locate_all(problems: list[Problem], path: Path, text: str) -> list[Problem]:
    lines = key_lines(text)
    return [replace(p, file=str(path), line=_find_line(p.key, lines)) for p in problems]


def _find_line(key: str, lines: dict[str, int]) -> int | None:
    """The line of the key, else of its closest enclosing key or table."""
    candidate = key
    while candidate:
        if candidate in lines:
            return lines[candidate]
        cut = max(candidate.rfind("."), candidate.rfind("["))
        candidate = candidate[:cut] if cut > 0 else ""
    return None
