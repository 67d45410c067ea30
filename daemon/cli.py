"""The ``sentinel`` command: run the daemon, validate its configuration, run
the checks once, and act on a running daemon through its HTTP API.

Exit codes: 0 success; 1 a failing check, an invalid configuration or a
request the daemon refused; 2 a usage error or a daemon that cannot be
reached.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import ipaddress
import json
import os
import socket
import sys
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from checks.base import Check, run_once
from checks.clock import SystemClock
from checks.result import CheckResult
from checks.settings import ConfigError, SecretUnavailable, parse_duration
from daemon.config import (
    Config,
    DaemonSettings,
    admin_token,
    load_config,
    load_daemon_settings,
)
from daemon.logs import configure_logging
from daemon.metrics import sentinel_version

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_UNREACHABLE = 2
DEFAULT_CONFIG = "config.toml"
DEFAULT_TIMEOUT_S = 10.0
_MESSAGE_WIDTH = 70


class CliError(Exception):
    """Ends the command with a message on stderr and an exit code."""

    def __init__(self, message: str, code: int = EXIT_FAILED) -> None:
        super().__init__(message)
        self.code = code


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    command: Callable[[argparse.Namespace], int] = args.command
    try:
        return command(args)
    except CliError as exc:
        print(f"sentinel: {exc}", file=sys.stderr)
        return exc.code
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        # `sentinel incidents | head`: the reader left; say nothing more.
        sys.stdout = open(os.devnull, "w")  # noqa: SIM115 - replaces stdout to exit
        return EXIT_OK


# Arguments -----------------------------------------------------------------


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="sentinel",
        description="Sentinel watches the platform and pages people until one answers.",
        epilog="Exit codes: 0 ok; 1 failed or refused; 2 usage error or no daemon.",
    )
    parser.add_argument(
        "--version", action="version", version=f"sentinel {sentinel_version()}"
    )

    config = argparse.ArgumentParser(add_help=False)
    config.add_argument(
        "--config",
        type=Path,
        metavar="PATH",
        default=Path(os.environ.get("SENTINEL_CONFIG") or DEFAULT_CONFIG),
        help="configuration file (default: $SENTINEL_CONFIG or ./config.toml)",
    )
    remote = argparse.ArgumentParser(add_help=False, parents=[config])
    remote.add_argument(
        "--timeout",
        type=_positive_seconds,
        default=DEFAULT_TIMEOUT_S,
        metavar="SECONDS",
        help=f"how long to wait for the daemon (default: {DEFAULT_TIMEOUT_S:g})",
    )
    remote.add_argument("--json", action="store_true", help="print JSON for machines")

    verbs = parser.add_subparsers(dest="verb", required=True, metavar="VERB")

    def verb(
        name: str, help: str, parent: argparse.ArgumentParser
    ) -> argparse.ArgumentParser:
        return verbs.add_parser(name, help=help, description=help, parents=[parent])

    verb(
        "run", "run the daemon in the foreground (systemd runs this)", config
    ).set_defaults(command=_cmd_run)
    verb(
        "check-config", "validate the configuration file and list every problem", config
    ).set_defaults(command=_cmd_check_config)

    checks = verb("checks", "run every check once and print a table", config)
    checks.add_argument("names", nargs="*", metavar="CHECK", help="only these checks")
    checks.add_argument("--json", action="store_true", help="print JSON for machines")
    checks.set_defaults(command=_cmd_checks)

    verb(
        "status", "health, check states and open incidents of the daemon", remote
    ).set_defaults(command=_cmd_status)

    incidents = verb("incidents", "list incidents, newest first", remote)
    incidents.add_argument(
        "--state",
        choices=("open", "triggered", "acknowledged", "resolved", "all"),
        default="open",
        help="which incidents (default: open)",
    )
    incidents.add_argument(
        "--limit", type=int, default=50, metavar="N", help="at most N (default: 50)"
    )
    incidents.set_defaults(command=_cmd_incidents)

    ack = verb("ack", "acknowledge an incident: stops its escalation", remote)
    ack.add_argument("ref", metavar="INCIDENT", help="e.g. INC-7")
    ack.add_argument("--by", required=True, metavar="NAME", help="who acknowledges")
    ack.set_defaults(command=_cmd_ack)

    resolve = verb("resolve", "resolve an incident", remote)
    resolve.add_argument("ref", metavar="INCIDENT", help="e.g. INC-7")
    resolve.add_argument("--by", required=True, metavar="NAME", help="who resolves")
    resolve.add_argument(
        "--root-cause",
        required=True,
        metavar="TEXT",
        help="what caused it, for the report",
    )
    resolve.set_defaults(command=_cmd_resolve)

    note = verb("note", "add a note to an incident's timeline", remote)
    note.add_argument("ref", metavar="INCIDENT", help="e.g. INC-7")
    note.add_argument("text", metavar="TEXT", help="the note")
    note.add_argument("--by", required=True, metavar="NAME", help="who writes it")
    note.set_defaults(command=_cmd_note)

    # The actions carry --config: given on `silence` too, argparse would let
    # the action's default overwrite it.
    silence = verb("silence", "add, list or expire silences", _no_options())
    actions = silence.add_subparsers(dest="action", required=True, metavar="ACTION")
    add = actions.add_parser(
        "add",
        help="silence a check, rule or category for a while",
        description="Silence a check, rule or category for a while.",
        parents=[remote],
    )
    target = add.add_mutually_exclusive_group(required=True)
    target.add_argument("--check", metavar="NAME")
    target.add_argument("--rule", metavar="NAME")
    target.add_argument("--category", metavar="NAME")
    add.add_argument(
        "--duration",
        required=True,
        type=_duration,
        metavar="DURATION",
        help="e.g. 2h, 30m",
    )
    add.add_argument("--reason", required=True, metavar="TEXT")
    add.add_argument("--by", required=True, metavar="NAME", help="who adds it")
    add.set_defaults(command=_cmd_silence_add)
    listing = actions.add_parser(
        "list", help="list silences", description="List silences.", parents=[remote]
    )
    listing.add_argument("--all", action="store_true", help="include ended silences")
    listing.set_defaults(command=_cmd_silence_list)
    expire = actions.add_parser(
        "expire",
        help="end a silence now",
        description="End a silence now.",
        parents=[remote],
    )
    expire.add_argument("ref", metavar="SILENCE", help="e.g. S-3")
    expire.add_argument(
        "--by", metavar="NAME", help="who ends it (default: your login)"
    )
    expire.set_defaults(command=_cmd_silence_expire)
    return parser


def _no_options() -> argparse.ArgumentParser:
    return argparse.ArgumentParser(add_help=False)


def _positive_seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f'"{text}" is not a number of seconds'
        ) from None
    if not 0 < value <= 3600:
        raise argparse.ArgumentTypeError(f"{text} is not between 0 and 3600 seconds")
    return value


def _duration(text: str) -> str:
    try:
        parse_duration(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
    return text


# Local verbs ---------------------------------------------------------------


def _cmd_run(args: argparse.Namespace) -> int:
    # Imported here: the other verbs need none of the daemon's machinery.
    from daemon.service import event_loop_factory, run_daemon  # noqa: PLC0415

    with asyncio.Runner(loop_factory=event_loop_factory()) as runner:
        return runner.run(run_daemon(args.config))


def _checks_summary(enabled: int, configured: int) -> str:
    if enabled == configured:
        return _count(enabled, "check")
    return f"{enabled} of {configured} checks enabled"


def _cmd_check_config(args: argparse.Namespace) -> int:
    try:
        config = load_config(args.config)
    except ConfigError as exc:
        for problem in exc.problems:
            print(problem, file=sys.stderr)
        return EXIT_FAILED
    try:
        escalation = config.escalation
        summary = ", ".join(
            (
                _checks_summary(len(config.checks), config.configured_checks),
                _count(len(escalation.rules), "rule"),
                _count(len(escalation.contacts), "contact"),
                _count(len(escalation.policies), "policy", "policies"),
            )
        )
        print(f"{args.config}: ok — {summary}")
        for warning in config.warnings:
            print(warning, file=sys.stderr)
    finally:
        _close_checks_now(config.checks)
    return EXIT_OK


def _cmd_checks(args: argparse.Namespace) -> int:
    config = _load(args.config)
    selected = dict(config.checks)
    if args.names:
        unknown = [n for n in args.names if n not in selected]
        if unknown:
            _close_checks_now(selected)
            known = ", ".join(sorted(selected)) or "none"
            raise CliError(
                f"no enabled check is named {', '.join(unknown)}; known: {known}"
            )
        selected = {n: selected[n] for n in args.names}
        _close_checks_now({n: c for n, c in config.checks.items() if n not in selected})

    _quiet_logging()
    results = asyncio.run(_run_all(selected))
    if args.json:
        _print_json([r.to_json() for r in results])
    else:
        rows = [
            [
                r.check,
                r.check_type,
                r.status.label,
                f"{r.duration_s * 1000:.0f}",
                _clip(r.message),
            ]
            for r in results
        ]
        _print_table(["CHECK", "TYPE", "STATUS", "MS", "MESSAGE"], rows)
    return EXIT_OK if all(r.ok for r in results) else EXIT_FAILED


async def _run_all(checks: Mapping[str, Check]) -> list[CheckResult]:
    """Every check once, concurrently, each under its own timeout."""
    clock = SystemClock()
    try:
        return list(
            await asyncio.gather(*(run_once(c, clock) for c in checks.values()))
        )
    finally:
        await asyncio.gather(
            *(c.close() for c in checks.values()), return_exceptions=True
        )


def _close_checks_now(checks: Mapping[str, Check]) -> None:
    # A check may hold resources from the moment it is built (a plugin's
    # pool, say): close the ones that will not run.
    if checks:

        async def close_all() -> None:
            await asyncio.gather(
                *(c.close() for c in checks.values()), return_exceptions=True
            )

        asyncio.run(close_all())


def _quiet_logging() -> None:
    """Probes log through structlog; keep stdout for the table."""
    configure_logging("auto", "warning", sys.stderr)


# Verbs that talk to the daemon ---------------------------------------------


def _cmd_status(args: argparse.Namespace) -> int:
    api = _api(args)
    health = api.call("GET", "/healthz", accept=(503,))
    checks = api.call("GET", "/api/v1/checks")["checks"]
    incidents = api.call("GET", "/api/v1/incidents?state=open")["incidents"]
    healthy = health.get("status") == "ok"
    if args.json:
        _print_json({"health": health, "checks": checks, "incidents": incidents})
        return EXIT_OK if healthy else EXIT_FAILED

    node, state = health.get("node", "?"), health.get("status")
    print(f"Sentinel on {node}: {state} ({health.get('detail', '')})")
    counts: dict[str, int] = {}
    for check in checks:
        counts[check["status"]] = counts.get(check["status"], 0) + 1
    order = ("ok", "warning", "critical", "unknown", "pending")
    print(
        "Checks: "
        + (", ".join(f"{counts[s]} {s}" for s in order if s in counts) or "none")
    )
    failing = [c for c in checks if c["status"] not in ("ok", "pending")]
    if failing:
        _print_table(
            ["CHECK", "STATUS", "MESSAGE"],
            [[c["check"], c["status"], _clip(c.get("message", ""))] for c in failing],
            indent="  ",
        )
    print(f"Open incidents: {len(incidents)}")
    if incidents:
        _print_incidents(incidents, indent="  ")
    return EXIT_OK if healthy else EXIT_FAILED


def _cmd_incidents(args: argparse.Namespace) -> int:
    if not 1 <= args.limit <= 1000:
        raise CliError("--limit must be from 1 to 1000", EXIT_UNREACHABLE)
    query = urllib.parse.urlencode({"state": args.state, "limit": args.limit})
    incidents = _api(args).call("GET", f"/api/v1/incidents?{query}")["incidents"]
    if args.json:
        _print_json(incidents)
    elif incidents:
        _print_incidents(incidents)
    else:
        print(f"no {args.state} incidents" if args.state != "all" else "no incidents")
    return EXIT_OK


def _cmd_ack(args: argparse.Namespace) -> int:
    body = _api(args).call("POST", _incident_path(args.ref, "ack"), {"by": args.by})
    incident = body["incident"]
    if args.json:
        _print_json(incident)
    elif incident["acked_by"] == args.by:
        print(f"{incident['id']} acknowledged by {args.by}")
    else:
        print(
            f"{incident['id']} was already acknowledged by {incident['acked_by']} "
            f"at {_when(incident['acked_at'])}"
        )
    return EXIT_OK


def _cmd_resolve(args: argparse.Namespace) -> int:
    payload = {"by": args.by, "root_cause": args.root_cause}
    incident = _api(args).call("POST", _incident_path(args.ref, "resolve"), payload)[
        "incident"
    ]
    if args.json:
        _print_json(incident)
    else:
        print(f"{incident['id']} resolved by {args.by}")
    return EXIT_OK


def _cmd_note(args: argparse.Namespace) -> int:
    payload = {"by": args.by, "text": args.text}
    note = _api(args).call("POST", _incident_path(args.ref, "notes"), payload)["note"]
    if args.json:
        _print_json(note)
    else:
        print(f"note added to INC-{_plain_ref(args.ref)} at {_when(note['at'])}")
    return EXIT_OK


def _cmd_silence_add(args: argparse.Namespace) -> int:
    matcher, value = next(
        (m, getattr(args, m)) for m in ("check", "rule", "category") if getattr(args, m)
    )
    payload = {
        "matcher": matcher,
        "value": value,
        "duration": args.duration,
        "reason": args.reason,
        "created_by": args.by,
    }
    silence = _api(args).call("POST", "/api/v1/silences", payload)["silence"]
    if args.json:
        _print_json(silence)
    else:
        until = _when(silence["ends_at"])
        print(f"{silence['id']} silences {matcher} {value} until {until}")
    return EXIT_OK


def _cmd_silence_list(args: argparse.Namespace) -> int:
    state = "all" if args.all else "current"
    silences = _api(args).call("GET", f"/api/v1/silences?state={state}")["silences"]
    if args.json:
        _print_json(silences)
    elif silences:
        rows = [
            [
                s["id"],
                f"{s['matcher']} {s['value']}",
                _when(s["starts_at"]),
                _when(s["expired_early_at"] or s["ends_at"]),
                "yes" if s["active"] else "no",
                s["created_by"],
                _clip(s["reason"], 40),
            ]
            for s in silences
        ]
        _print_table(
            ["ID", "MATCHES", "STARTS", "ENDS", "ACTIVE", "BY", "REASON"], rows
        )
    else:
        print("no silences" if args.all else "no current silences")
    return EXIT_OK


def _cmd_silence_expire(args: argparse.Namespace) -> int:
    by = args.by or _login()
    ref = urllib.parse.quote(args.ref, safe="")
    query = urllib.parse.urlencode({"by": by})
    silence = _api(args).call("DELETE", f"/api/v1/silences/{ref}?{query}")["silence"]
    if args.json:
        _print_json(silence)
    else:
        print(f"{silence['id']} ended")
    return EXIT_OK


def _incident_path(ref: str, action: str) -> str:
    return f"/api/v1/incidents/{urllib.parse.quote(ref, safe='')}/{action}"


def _plain_ref(ref: str) -> str:
    return ref.upper().removeprefix("INC-")


def _login() -> str:
    try:
        return os.getlogin()
    except OSError:
        return os.environ.get("USER") or "cli"


# The API client ------------------------------------------------------------


class ApiClient:
    """JSON over HTTP to the daemon with the stdlib: the CLI needs no event loop."""

    def __init__(self, base_url: str, token: str, timeout_s: float) -> None:
        self.base_url = base_url
        self._token = token
        self._timeout_s = timeout_s
        # The daemon is on this host: an http_proxy in the environment must
        # not carry the admin token elsewhere.
        self._opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))

    def call(
        self,
        method: str,
        path: str,
        body: Mapping[str, Any] | None = None,
        *,
        accept: Sequence[int] = (),
    ) -> Any:
        data = json.dumps(body).encode() if body is not None else None
        request = urllib.request.Request(
            self.base_url + path,
            data=data,
            method=method,
            headers={
                "Authorization": f"Bearer {self._token}",
                "Accept": "application/json",
                "Content-Type": "application/json",
                "User-Agent": f"sentinel-cli/{sentinel_version()}",
            },
        )
        try:
            with self._opener.open(request, timeout=self._timeout_s) as response:
                return _decode(response.read())
        except urllib.error.HTTPError as exc:
            with exc:
                payload = _decode(exc.read(), strict=False)
            if exc.code in accept:
                return payload
            raise CliError(_refusal(exc.code, payload)) from None
        except urllib.error.URLError as exc:
            raise self._unreachable(exc.reason) from None
        except (TimeoutError, ConnectionError) as exc:
            raise self._unreachable(exc) from None

    def _unreachable(self, reason: object) -> CliError:
        if isinstance(reason, ConnectionRefusedError):
            why = "connection refused"
        elif isinstance(reason, TimeoutError | socket.timeout):
            why = f"no answer within {self._timeout_s:g} s"
        elif isinstance(reason, OSError) and reason.strerror:
            why = reason.strerror.lower()
        else:
            why = str(reason)
        return CliError(
            f"cannot reach the Sentinel API at {self.base_url}: {why}; "
            "is the daemon running?",
            EXIT_UNREACHABLE,
        )


def _decode(raw: bytes, *, strict: bool = True) -> Any:
    try:
        return json.loads(raw)
    except ValueError:
        if strict:
            raise CliError(
                "the daemon answered with something that is not JSON"
            ) from None
        return {"error": raw.decode("utf-8", "replace")[:200], "detail": None}


def _refusal(status: int, payload: Any) -> str:
    if not isinstance(payload, dict):
        return f"the daemon refused the request (HTTP {status})"
    error, detail = payload.get("error", f"HTTP {status}"), payload.get("detail")
    if isinstance(detail, dict | list):
        detail = json.dumps(detail)
    return f"{error}: {detail}" if detail else str(error)


def _api(args: argparse.Namespace) -> ApiClient:
    try:
        settings = load_daemon_settings(args.config)
    except ConfigError as exc:
        raise _listed(exc, args.config) from None
    token = _admin_token(settings)
    return ApiClient(
        _base_url(settings.api_host, settings.api_port), token, args.timeout
    )


def _admin_token(settings: DaemonSettings) -> str:
    token_file = settings.state_dir / "admin.token"
    # admin_token() creates the file when it is missing; created here, by
    # whoever runs the CLI (root, say), the daemon could not read it.
    if settings.admin_token is None and not token_file.exists():
        raise CliError(
            f"no admin token: api.admin_token is not set and {token_file} does not "
            "exist yet (the daemon creates it when it starts)",
            EXIT_UNREACHABLE,
        )
    try:
        return admin_token(settings)
    except (OSError, SecretUnavailable) as exc:
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
        raise CliError(
            f"cannot read the admin token ({reason}); run as the daemon's user or root"
        ) from None


def _base_url(host: str, port: int) -> str:
    """Where to connect: a wildcard listen address is reached on loopback."""
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        return f"http://{host}:{port}"
    if address.is_unspecified:
        address = ipaddress.ip_address("::1" if address.version == 6 else "127.0.0.1")
    shown = f"[{address}]" if address.version == 6 else str(address)
    return f"http://{shown}:{port}"


def _load(path: Path) -> Config:
    try:
        return load_config(path)
    except ConfigError as exc:
        raise _listed(exc, path) from None


def _listed(exc: ConfigError, path: Path) -> CliError:
    """Print every problem; the error to raise says where they are."""
    for problem in exc.problems:
        print(problem, file=sys.stderr)
    return CliError(f"{path} has problems (listed above); fix them first")


# Output --------------------------------------------------------------------


def _print_incidents(incidents: Sequence[Mapping[str, Any]], indent: str = "") -> None:
    rows = [
        [
            i["id"],
            i["priority"],
            i["state"],
            _when(i["opened_at"]),
            i.get("acked_by") or "",
            _clip(i["summary"], 60),
        ]
        for i in incidents
    ]
    _print_table(
        ["ID", "PRI", "STATE", "OPENED", "ACKED BY", "SUMMARY"], rows, indent=indent
    )


def _print_table(
    headers: Sequence[str], rows: Sequence[Sequence[str]], indent: str = ""
) -> None:
    widths = [
        max(len(str(cell)) for cell in column)
        for column in zip(headers, *rows, strict=False)
    ]
    for row in (headers, *rows):
        cells = [
            str(cell).ljust(width) for cell, width in zip(row, widths, strict=True)
        ]
        print((indent + "  ".join(cells)).rstrip())


def _print_json(data: Any) -> None:
    print(json.dumps(data, indent=2))


def _clip(text: str, width: int = _MESSAGE_WIDTH) -> str:
    flat = " ".join(str(text).split())
    return flat if len(flat) <= width else flat[: width - 1] + "…"


def _when(at: float | None) -> str:
    if at is None:
        return "-"
    return dt.datetime.fromtimestamp(at, dt.UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def _count(n: int, singular: str, plural: str | None = None) -> str:
    return f"{n} {singular if n == 1 else plural or singular + 's'}"
