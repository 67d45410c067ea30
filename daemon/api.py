"""The HTTP API: health, metrics, checks, incidents, silences and the pages
behind acknowledgement links.

Access: mutating ``/api/v1`` calls need ``Authorization: Bearer <admin
token>``. Reads (GET) are open to clients on loopback, which is where the API
listens by default; from any other address, or through a proxy that adds
``X-Forwarded-For``, they need the token too. ``/healthz``, ``/metrics`` and
``/api/v1/openapi.json`` are open, for the service manager and Prometheus.
``/ack/<token>`` is the only part meant for the internet (through nginx): its
token is its own proof.

Errors are JSON ``{"error": "...", "detail": ...}``: 400 for a request that is
malformed, 401 without a valid token, 404 for what does not exist, 409 for a
closed incident, 413 for a body over 64 KiB.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import ipaddress
import json
import math
import re
from collections.abc import Awaitable, Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Protocol

import structlog
from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest

from checks.clock import Clock
from checks.result import CheckResult
from checks.settings import parse_duration
from daemon import ack_pages
from escalation.ack import AckClaim, AckSigner, AckTokenError
from escalation.engine import Engine
from escalation.errors import (
    IncidentClosed,
    IncidentNotFound,
    InvalidRequest,
    SilenceNotFound,
)
from escalation.model import (
    Incident,
    IncidentState,
    OutboxPage,
    Silence,
    TimelineEvent,
)

log = structlog.get_logger(__name__)

MAX_BODY_BYTES = 64 * 1024
MAX_NAME_CHARS = 100
MAX_TEXT_CHARS = 4000
DEFAULT_LIST_LIMIT = 100
MAX_LIST_LIMIT = 1000
INCIDENT_STATES = ("open", "triggered", "acknowledged", "resolved", "all")
SILENCE_MATCHERS = ("check", "rule", "category")
OPENAPI_PATH = "/api/v1/openapi.json"

# Store ids are SQLite/MySQL 64-bit integers; longer digit strings cannot
# name anything (and int() of thousands of digits costs real CPU).
_MAX_ID_DIGITS = 18
# [0-9], not \d: int() would also accept other scripts' digits.
_INCIDENT_REF = re.compile(r"(?:INC-)?([0-9]+)", re.IGNORECASE)
_SILENCE_REF = re.compile(r"(?:S-)?([0-9]+)", re.IGNORECASE)
# Longer than any token AckSigner issues for a sane contact name.
_MAX_ACK_TOKEN_CHARS = 512


class ApiBackend(Protocol):
    """What the API needs from the running daemon (daemon.service.Service)."""

    node: str
    engine: Engine
    registry: CollectorRegistry
    signer: AckSigner
    admin_token: str

    @property
    def clock(self) -> Clock: ...

    def latest_results(self) -> Mapping[str, CheckResult]: ...

    def check_names(self) -> list[str]: ...

    def health(self) -> tuple[bool, str]:
        """(alive, reason): False when the scheduler or a task stopped."""
        ...


class ApiError(Exception):
    """An answer other than success, rendered as the JSON error body."""

    def __init__(
        self,
        status: int,
        error: str,
        detail: Any = None,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__(error)
        self.status = status
        self.error = error
        self.detail = detail
        self.headers = dict(headers or {})


_BACKEND = web.AppKey("backend", ApiBackend)


def build_app(backend: ApiBackend) -> web.Application:
    app = web.Application(
        client_max_size=MAX_BODY_BYTES,
        middlewares=[_error_middleware, _auth_middleware],
    )
    app[_BACKEND] = backend
    api = _Handlers(backend)
    for method, path, handler in (
        ("GET", "/healthz", api.healthz),
        ("GET", "/metrics", api.metrics),
        ("GET", OPENAPI_PATH, api.openapi),
        ("GET", "/api/v1/checks", api.list_checks),
        ("GET", "/api/v1/incidents", api.list_incidents),
        ("GET", "/api/v1/incidents/{ref}", api.get_incident),
        ("POST", "/api/v1/incidents/{ref}/ack", api.acknowledge),
        ("POST", "/api/v1/incidents/{ref}/resolve", api.resolve),
        ("POST", "/api/v1/incidents/{ref}/notes", api.add_note),
        ("GET", "/api/v1/silences", api.list_silences),
        ("POST", "/api/v1/silences", api.add_silence),
        ("DELETE", "/api/v1/silences/{ref}", api.expire_silence),
        ("GET", "/ack/{token}", api.ack_form),
        ("POST", "/ack/{token}", api.ack_confirm),
    ):
        app.router.add_route(method, path, handler)
    return app


# Middlewares ---------------------------------------------------------------

_Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


@web.middleware
async def _error_middleware(
    request: web.Request, handler: _Handler
) -> web.StreamResponse:
    """Every failure leaves as JSON (HTML on the ack pages), never as
    aiohttp's plain-text page or a traceback."""
    try:
        return await handler(request)
    except ApiError as exc:
        return _json_error(exc.status, exc.error, exc.detail, exc.headers)
    except _AckRefused as exc:
        return _ack_response(exc.status, ack_pages.refused_page(exc.title, exc.reason))
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        return _http_exception(request, exc)
    except Exception:
        log.exception(
            "api_request_failed", method=request.method, route=_route(request)
        )
        if _is_ack_path(request):
            return _ack_response(
                500, ack_pages.refused_page("Something went wrong", "Please try again.")
            )
        return _json_error(500, "internal error", "see the daemon's log")


@web.middleware
async def _auth_middleware(
    request: web.Request, handler: _Handler
) -> web.StreamResponse:
    if _needs_admin_token(request):
        backend = request.app[_BACKEND]
        if not _has_admin_token(request, backend.admin_token):
            log.warning(
                "api_token_refused",
                method=request.method,
                route=_route(request),
                remote=request.remote,
            )
            raise ApiError(
                401,
                "missing or wrong admin token",
                "send the header Authorization: Bearer <admin token>",
                {"WWW-Authenticate": 'Bearer realm="sentinel"'},
            )
    return await handler(request)


def _needs_admin_token(request: web.Request) -> bool:
    if not request.path.startswith("/api/"):
        return False
    if request.method not in ("GET", "HEAD"):
        return True
    if request.path == OPENAPI_PATH:
        return False
    return not _from_loopback(request)


def _from_loopback(request: web.Request) -> bool:
    # A proxy on this host (nginx) connects from loopback on behalf of
    # someone else: its forwarding headers mean the reader is not local.
    if "X-Forwarded-For" in request.headers or "Forwarded" in request.headers:
        return False
    try:
        address = ipaddress.ip_address(request.remote or "")
    except ValueError:
        return False
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped:
        address = address.ipv4_mapped
    return address.is_loopback


def _has_admin_token(request: web.Request, expected: str) -> bool:
    scheme, _, presented = request.headers.get("Authorization", "").partition(" ")
    if scheme.lower() != "bearer" or not presented.strip() or not expected:
        return False
    # aiohttp keeps undecodable header bytes as surrogates; they must compare
    # unequal, not raise.
    given = presented.strip().encode("utf-8", "surrogateescape")
    return hmac.compare_digest(given, expected.encode())


def _http_exception(request: web.Request, exc: web.HTTPException) -> web.Response:
    headers = {k: v for k, v in exc.headers.items() if k in ("Allow",)}
    if exc.status == 413:
        error, detail = "request body too large", f"the limit is {MAX_BODY_BYTES} bytes"
    elif exc.status == 404:
        error, detail = "not found", f"no such path: {request.method} {_route(request)}"
    elif exc.status == 405:
        error, detail = "method not allowed", f"allowed: {exc.headers.get('Allow', '')}"
    else:
        error, detail = (exc.reason or "request refused").lower(), exc.text or ""
    if _is_ack_path(request):
        return _ack_response(
            exc.status, ack_pages.refused_page(error.capitalize(), detail)
        )
    return _json_error(exc.status, error, detail, headers)


def _route(request: web.Request) -> str:
    """The route pattern, never the concrete path: an ack path holds a token."""
    info = request.match_info
    resource = info.route.resource if info.route is not None else None
    if resource is not None and resource.canonical:
        return resource.canonical
    return "/ack/..." if _is_ack_path(request) else request.path[:200]


def _is_ack_path(request: web.Request) -> bool:
    return request.path.startswith("/ack/")


# Handlers ------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Field:
    kind: str
    """"name" (short text), "text", "choice", "duration" or "instant"."""
    required: bool = False
    choices: tuple[str, ...] = ()


_ACK_FIELDS = {"by": _Field("name", required=True)}
_RESOLVE_FIELDS = {"by": _Field("name", required=True), "root_cause": _Field("text")}
_NOTE_FIELDS = {
    "by": _Field("name", required=True),
    "text": _Field("text", required=True),
}
_SILENCE_FIELDS = {
    "matcher": _Field("choice", required=True, choices=SILENCE_MATCHERS),
    "value": _Field("name", required=True),
    "duration": _Field("duration"),
    "ends_at": _Field("instant"),
    "starts_at": _Field("instant"),
    "reason": _Field("text", required=True),
    "created_by": _Field("name", required=True),
}


class _Handlers:
    def __init__(self, backend: ApiBackend) -> None:
        self._backend = backend

    @property
    def _engine(self) -> Engine:
        # Read on each call: the service creates its engine when it starts.
        return self._backend.engine

    def _now(self) -> float:
        return self._backend.clock.wall()

    # Health and metrics --------------------------------------------------

    async def healthz(self, request: web.Request) -> web.Response:
        healthy, reason = self._backend.health()
        body = {"status": "ok" if healthy else "unhealthy", "node": self._backend.node}
        body["detail"] = reason
        return _json(body, 200 if healthy else 503)

    async def metrics(self, request: web.Request) -> web.Response:
        return web.Response(
            # Rendering a thousand checks' series takes tens of milliseconds;
            # in a thread it shares the GIL instead of stalling every probe.
            body=await asyncio.to_thread(generate_latest, self._backend.registry),
            headers={"Content-Type": CONTENT_TYPE_LATEST},
        )

    async def openapi(self, request: web.Request) -> web.Response:
        return _json(openapi_document())

    # Checks ----------------------------------------------------------------

    async def list_checks(self, request: web.Request) -> web.Response:
        _no_query(request)
        latest = self._backend.latest_results()
        checks: list[dict[str, object]] = []
        for name in self._backend.check_names():
            result = latest.get(name)
            if result is None:
                checks.append({"check": name, "status": "pending"})
            else:
                checks.append(result.to_json())
        return _json({"node": self._backend.node, "checks": checks})

    # Incidents -------------------------------------------------------------

    async def list_incidents(self, request: web.Request) -> web.Response:
        state = _query_choice(request, "state", INCIDENT_STATES, "open")
        limit = _query_int(request, "limit", DEFAULT_LIST_LIMIT, 1, MAX_LIST_LIMIT)
        _no_query(request, allowed=("state", "limit"))
        if state == "open":
            # The store has no "open" state: it is triggered or acknowledged.
            open_now = await self._engine.store.open_incidents()
            incidents = sorted(open_now, key=lambda i: i.id, reverse=True)[:limit]
        else:
            incidents = await self._engine.store.list_incidents(
                state=None if state == "all" else state, limit=limit
            )
        return _json({"incidents": [i.to_json() for i in incidents]})

    async def get_incident(self, request: web.Request) -> web.Response:
        _no_query(request)
        incident = await self._incident(request)
        store = self._engine.store
        body = incident.to_json()
        body["timeline"] = [_event_json(e) for e in await store.timeline(incident.id)]
        body["pages"] = [
            _page_json(p) for p in await store.pages_for_incident(incident.id)
        ]
        return _json(body)

    async def acknowledge(self, request: web.Request) -> web.Response:
        incident_id = _incident_id(request.match_info["ref"])
        fields = await _read_body(request, _ACK_FIELDS)
        with _engine_errors():
            incident = await self._engine.acknowledge(
                incident_id, by=fields["by"], via="api"
            )
        return _json({"incident": incident.to_json()})

    async def resolve(self, request: web.Request) -> web.Response:
        incident_id = _incident_id(request.match_info["ref"])
        fields = await _read_body(request, _RESOLVE_FIELDS)
        with _engine_errors():
            incident = await self._engine.resolve(
                incident_id,
                by=fields["by"],
                via="api",
                root_cause=fields.get("root_cause"),
            )
        return _json({"incident": incident.to_json()})

    async def add_note(self, request: web.Request) -> web.Response:
        incident_id = _incident_id(request.match_info["ref"])
        fields = await _read_body(request, _NOTE_FIELDS)
        with _engine_errors():
            event = await self._engine.add_note(
                incident_id, by=fields["by"], text=fields["text"]
            )
        return _json({"note": _event_json(event)}, 201)

    async def _incident(self, request: web.Request) -> Incident:
        incident_id = _incident_id(request.match_info["ref"])
        incident = await self._engine.store.get_incident(incident_id)
        if incident is None:
            raise ApiError(404, "no such incident", f"INC-{incident_id} does not exist")
        return incident

    # Silences --------------------------------------------------------------

    async def list_silences(self, request: web.Request) -> web.Response:
        show = _query_choice(request, "state", ("current", "all"), "current")
        _no_query(request, allowed=("state",))
        now = self._now()
        silences = await self._engine.store.list_silences()
        if show == "current":
            silences = [s for s in silences if _silence_end(s) > now]
        return _json(
            {"silences": [{**s.to_json(), "active": s.active(now)} for s in silences]}
        )

    async def add_silence(self, request: web.Request) -> web.Response:
        fields = await _read_body(request, _SILENCE_FIELDS)
        now = self._now()
        starts_at = fields.get("starts_at", now)
        if ("duration" in fields) == ("ends_at" in fields):
            raise ApiError(
                400,
                "give either duration or ends_at",
                "exactly one of the two is needed",
            )
        if "ends_at" in fields:
            ends_at = fields["ends_at"]
        else:
            ends_at = starts_at + fields["duration"]
        # The engine refuses an end before the start or in the past, and a
        # target no rule uses, naming what is wrong.
        with _engine_errors():
            silence = await self._engine.add_silence(
                matcher=fields["matcher"],
                value=fields["value"],
                starts_at=starts_at,
                ends_at=ends_at,
                reason=fields["reason"],
                created_by=fields["created_by"],
            )
        return _json(
            {"silence": {**silence.to_json(), "active": silence.active(now)}},
            201,
            {"Location": f"/api/v1/silences/{silence.ref}"},
        )

    async def expire_silence(self, request: web.Request) -> web.Response:
        silence_id = _silence_id(request.match_info["ref"])
        by = request.query.get("by", "api")
        _no_query(request, allowed=("by",))
        by = _check_text("by", by, MAX_NAME_CHARS)
        with _engine_errors():
            silence = await self._engine.expire_silence(silence_id, by=by)
        return _json({"silence": {**silence.to_json(), "active": False}})

    # Acknowledgement links -------------------------------------------------

    async def ack_form(self, request: web.Request) -> web.Response:
        """Show the incident and a confirm button; never acknowledges, so a
        link previewer or a mail scanner that fetches the link changes nothing."""
        claim = self._verify_link(request)
        incident = await self._engine.store.get_incident(claim.incident_id)
        if incident is None:
            return _gone_incident()
        if incident.state is not IncidentState.TRIGGERED:
            return _ack_response(
                200, ack_pages.already_handled_page(incident, claim.step)
            )
        return _ack_response(200, ack_pages.confirm_page(incident, claim.step))

    async def ack_confirm(self, request: web.Request) -> web.Response:
        claim = self._verify_link(request)
        ref = f"INC-{claim.incident_id}"
        if not await self._engine.store.use_nonce(claim.nonce, self._now()):
            log.warning("ack_link_refused", reason="already used", incident=ref)
            return _ack_response(
                409,
                ack_pages.refused_page(
                    "Link already used",
                    "This acknowledgement link was used before; each link works once.",
                ),
            )
        try:
            incident = await self._engine.acknowledge(
                claim.incident_id, by=claim.contact, via="link"
            )
        except IncidentNotFound:
            return _gone_incident()
        except IncidentClosed:
            resolved = await self._engine.store.get_incident(claim.incident_id)
            if resolved is None:
                return _gone_incident()
            return _ack_response(
                409, ack_pages.already_handled_page(resolved, claim.step)
            )
        # The engine keeps the first acknowledgement; an earlier one by
        # someone else (or through the API) is reported as such.
        if incident.acked_by != claim.contact or incident.acked_via != "link":
            return _ack_response(
                200, ack_pages.already_handled_page(incident, claim.step)
            )
        return _ack_response(200, ack_pages.acknowledged_page(incident, claim.step))

    def _verify_link(self, request: web.Request) -> AckClaim:
        token = request.match_info["token"]
        try:
            if len(token) > _MAX_ACK_TOKEN_CHARS:
                raise AckTokenError("the link is malformed")
            return self._backend.signer.verify(token, self._now())
        except AckTokenError as exc:
            reason = str(exc)
            # AckSigner says "expired" for an authentic link past its time:
            # 410 Gone; anything else is a broken or forged link.
            expired = "expired" in reason
            log.warning(
                "ack_link_refused",
                reason=reason,
                method=request.method,
                remote=request.remote,
            )
            raise _AckRefused(
                410 if expired else 400,
                "Link expired" if expired else "Link not valid",
                reason[0].upper()
                + reason[1:]
                + "."
                + (
                    " Use the link in a newer page, or acknowledge with the CLI."
                    if expired
                    else ""
                ),
            ) from None


class _AckRefused(Exception):
    """An ack link that cannot be used; the error middleware renders it."""

    def __init__(self, status: int, title: str, reason: str) -> None:
        super().__init__(title)
        self.status = status
        self.title = title
        self.reason = reason


def _gone_incident() -> web.Response:
    return _ack_response(
        404,
        ack_pages.refused_page(
            "Incident not found",
            "The incident this link was sent for no longer exists.",
        ),
    )


def _ack_response(status: int, html: str) -> web.Response:
    return web.Response(
        status=status,
        text=html,
        content_type="text/html",
        charset="utf-8",
        headers=ack_pages.SECURITY_HEADERS,
    )


@contextlib.contextmanager
def _engine_errors() -> Iterator[None]:
    """Turns the engine's refusals into API errors."""
    try:
        yield
    except (IncidentNotFound, SilenceNotFound) as exc:
        raise ApiError(404, "not found", str(exc)) from None
    except IncidentClosed as exc:
        raise ApiError(409, "incident is closed", str(exc)) from None
    except InvalidRequest as exc:
        raise ApiError(400, "invalid request", str(exc)) from None


# Request parsing -----------------------------------------------------------


def _incident_id(ref: str) -> int:
    return _parse_ref(ref, _INCIDENT_REF, "INC", "an incident")


def _silence_id(ref: str) -> int:
    return _parse_ref(ref, _SILENCE_REF, "S", "a silence")


def _parse_ref(ref: str, pattern: re.Pattern[str], prefix: str, what: str) -> int:
    match = pattern.fullmatch(ref)
    if match is None:
        raise ApiError(
            400,
            f"not {what} reference",
            f'"{ref[:40]}" is not {prefix}-<number> or <number>',
        )
    digits = match.group(1).lstrip("0") or "0"
    if len(digits) > _MAX_ID_DIGITS or digits == "0":
        raise ApiError(404, "not found", f"{prefix}-{digits[:20]} does not exist")
    return int(digits)


async def _read_body(
    request: web.Request, schema: Mapping[str, _Field]
) -> dict[str, Any]:
    """The JSON object in the body, checked against `schema`: unknown fields,
    missing ones and wrong types are refused with the field's name."""
    raw = await request.read()
    if not raw.strip():
        raise ApiError(400, "empty body", "send a JSON object")
    try:
        data = json.loads(raw)
    except UnicodeDecodeError:
        raise ApiError(400, "malformed JSON", "the body is not UTF-8") from None
    except json.JSONDecodeError as exc:
        raise ApiError(
            400, "malformed JSON", f"{exc.msg} at line {exc.lineno} column {exc.colno}"
        ) from None
    except (ValueError, RecursionError) as exc:
        raise ApiError(
            400, "malformed JSON", str(exc)[:200] or "nested too deeply"
        ) from None
    if not isinstance(data, dict):
        raise ApiError(
            400, "malformed body", f"expected a JSON object, got {_json_type(data)}"
        )

    unknown = sorted(set(data) - set(schema))
    if unknown:
        raise ApiError(
            400,
            "unknown fields",
            {"unknown": [u[:100] for u in unknown[:20]], "allowed": sorted(schema)},
        )
    missing = [
        name for name, f in schema.items() if f.required and data.get(name) is None
    ]
    if missing:
        raise ApiError(400, "missing fields", {"missing": missing})
    return {
        name: _check_field(name, spec, data[name])
        for name, spec in schema.items()
        if data.get(name) is not None
    }


def _check_field(name: str, spec: _Field, value: Any) -> Any:
    if spec.kind == "name":
        return _check_text(name, value, MAX_NAME_CHARS)
    if spec.kind == "text":
        return _check_text(name, value, MAX_TEXT_CHARS)
    if spec.kind == "choice":
        if value not in spec.choices:
            raise ApiError(
                400,
                f"invalid field: {name}",
                f"{_shown(value)} is not one of {', '.join(spec.choices)}",
            )
        return value
    if spec.kind == "duration":
        if not isinstance(value, str):
            raise ApiError(
                400,
                f"invalid field: {name}",
                f'expected a duration string such as "2h", got {_json_type(value)}',
            )
        try:
            seconds = parse_duration(value)
        except ValueError as exc:
            raise ApiError(400, f"invalid field: {name}", str(exc)) from None
        if seconds <= 0:
            raise ApiError(400, f"invalid field: {name}", "must be longer than zero")
        return seconds
    return _check_instant(name, value)


def _check_text(name: str, value: Any, max_chars: int) -> str:
    if not isinstance(value, str):
        raise ApiError(
            400, f"invalid field: {name}", f"expected a string, got {_json_type(value)}"
        )
    text = value.strip()
    if not text:
        raise ApiError(400, f"invalid field: {name}", "must not be empty")
    if len(text) > max_chars:
        raise ApiError(
            400, f"invalid field: {name}", f"longer than {max_chars} characters"
        )
    if any(ord(c) < 32 and c not in "\n\t" for c in text):
        raise ApiError(400, f"invalid field: {name}", "contains control characters")
    return text


def _check_instant(name: str, value: Any) -> float:
    """Seconds since the epoch, from a number or an RFC 3339 string with an
    offset (``2025-03-01T14:00:00Z``)."""
    if isinstance(value, bool) or not isinstance(value, int | float | str):
        raise ApiError(
            400,
            f"invalid field: {name}",
            "expected seconds since the epoch or an RFC 3339 time, "
            f"got {_json_type(value)}",
        )
    if isinstance(value, str):
        try:
            parsed = datetime.fromisoformat(value)
        except ValueError:
            raise ApiError(
                400,
                f"invalid field: {name}",
                f"{_shown(value)} is not an RFC 3339 time",
            ) from None
        if parsed.tzinfo is None:
            raise ApiError(
                400,
                f"invalid field: {name}",
                f"{_shown(value)} has no UTC offset; add Z or +hh:mm",
            )
        return parsed.timestamp()
    seconds = float(value)
    # Before 2001 or after 2286: a unit mistake (milliseconds), not a plan.
    if not math.isfinite(seconds) or not 1e9 <= seconds < 1e10:
        raise ApiError(
            400,
            f"invalid field: {name}",
            f"{value!r} is not a time in seconds since the epoch",
        )
    return seconds


def _query_choice(
    request: web.Request, name: str, choices: Sequence[str], default: str
) -> str:
    value = request.query.get(name, default)
    if value not in choices:
        raise ApiError(
            400,
            f"invalid parameter: {name}",
            f"{_shown(value)} is not one of {', '.join(choices)}",
        )
    return value


def _query_int(
    request: web.Request, name: str, default: int, low: int, high: int
) -> int:
    raw = request.query.get(name)
    if raw is None:
        return default
    if not raw.isdigit() or len(raw) > 9 or not low <= int(raw) <= high:
        raise ApiError(
            400,
            f"invalid parameter: {name}",
            f"{_shown(raw)} is not a whole number from {low} to {high}",
        )
    return int(raw)


def _no_query(request: web.Request, allowed: Sequence[str] = ()) -> None:
    unknown = sorted(set(request.query) - set(allowed))
    if unknown:
        raise ApiError(
            400,
            "unknown parameters",
            {"unknown": [u[:100] for u in unknown[:20]], "allowed": list(allowed)},
        )


def _shown(value: Any) -> str:
    text = json.dumps(value) if not isinstance(value, str) else f'"{value}"'
    return text if len(text) <= 60 else text[:57] + "..."


def _json_type(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int | float):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list):
        return "an array"
    return "an object"


# Responses -----------------------------------------------------------------


def _json(
    data: Any, status: int = 200, headers: Mapping[str, str] | None = None
) -> web.Response:
    try:
        text = json.dumps(data, allow_nan=False, default=str)
    except ValueError:
        # A probe reported NaN or infinity; JSON has no such numbers.
        text = json.dumps(_finite(data), default=str)
    return web.Response(
        text=text, status=status, content_type="application/json", headers=headers
    )


def _json_error(
    status: int,
    error: str,
    detail: Any = None,
    headers: Mapping[str, str] | None = None,
) -> web.Response:
    return _json({"error": error, "detail": detail}, status, headers)


def _finite(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, Mapping):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_finite(v) for v in value]
    return value


def _event_json(event: TimelineEvent) -> dict[str, Any]:
    return {
        "at": event.at,
        "kind": event.kind.value,
        "actor": event.actor,
        "detail": event.detail,
    }


def _page_json(page: OutboxPage) -> dict[str, Any]:
    # Not the payload: it holds the ack link, which is a credential.
    return {
        "page_id": page.page_id,
        "contact": page.contact,
        "kind": page.kind.value,
        "step": page.step,
        "state": page.state.value,
        "attempts": page.attempts,
        "created_at": page.created_at,
        "sent_at": page.sent_at,
        "sent_channel": page.sent_channel,
        "last_error": page.last_error,
    }


def _silence_end(silence: Silence) -> float:
    return float(
        silence.ends_at
        if silence.expired_early_at is None
        else silence.expired_early_at
    )


# OpenAPI -------------------------------------------------------------------


def _ref(name: str) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{name}"}


def _json_content(schema: Mapping[str, Any]) -> dict[str, Any]:
    return {"content": {"application/json": {"schema": schema}}}


def _ok(description: str, schema: Mapping[str, Any]) -> dict[str, Any]:
    return {"description": description, **_json_content(schema)}


def _errors(*statuses: int) -> dict[str, Any]:
    meaning = {
        400: "The request is malformed; `error` and `detail` name what.",
        401: "Missing or wrong admin token.",
        404: "No such incident or silence.",
        409: "The incident is already resolved.",
        413: f"The body is larger than {MAX_BODY_BYTES} bytes.",
    }
    return {
        str(s): {"description": meaning[s], **_json_content(_ref("Error"))}
        for s in statuses
    }


def _object(
    properties: Mapping[str, Any], required: Sequence[str] = (), *, closed: bool = True
) -> dict[str, Any]:
    schema: dict[str, Any] = {"type": "object", "properties": dict(properties)}
    if required:
        schema["required"] = list(required)
    if closed:
        schema["additionalProperties"] = False
    return schema


_STR = {"type": "string"}
_NAME = {"type": "string", "minLength": 1, "maxLength": MAX_NAME_CHARS}
_TEXT = {"type": "string", "minLength": 1, "maxLength": MAX_TEXT_CHARS}
_EPOCH = {"type": "number", "description": "Seconds since the epoch (UTC)."}
_EPOCH_OR_NULL = {"type": ["number", "null"], "description": "Seconds since the epoch."}
_INSTANT = {
    "oneOf": [
        _EPOCH,
        {
            "type": "string",
            "format": "date-time",
            "description": "RFC 3339 with offset.",
        },
    ]
}
_INCIDENT_REF_PARAM = {
    "name": "ref",
    "in": "path",
    "required": True,
    "description": "The incident: `INC-7` or `7`.",
    "schema": {"type": "string", "pattern": "^([Ii][Nn][Cc]-)?[0-9]+$"},
}
_ADMIN: list[dict[str, list[str]]] = [{"adminToken": []}]
# The empty requirement: reads need no token from a loopback client.
_ADMIN_OR_LOOPBACK: list[dict[str, list[str]]] = [{"adminToken": []}, {}]


def _incident_schema() -> dict[str, Any]:
    nullable_str = {"type": ["string", "null"]}
    return _object(
        {
            "id": {"type": "string", "examples": ["INC-7"]},
            "number": {"type": "integer"},
            "dedup_key": _STR,
            "rule": _STR,
            "priority": {"enum": ["P1", "P2", "P3"]},
            "category": _STR,
            "summary": _STR,
            "state": {"enum": [s.value for s in IncidentState]},
            "opened_at": _EPOCH,
            "checks": {"type": "array", "items": _STR},
            "evidence": {"type": "array", "items": {"type": "object"}},
            "step": {"type": "integer", "description": "Next ladder step to page."},
            "next_deadline": _EPOCH_OR_NULL,
            "suppressed": nullable_str,
            "acked_at": _EPOCH_OR_NULL,
            "acked_by": nullable_str,
            "acked_via": nullable_str,
            "resolved_at": _EPOCH_OR_NULL,
            "resolved_by": nullable_str,
            "root_cause": nullable_str,
            "recovered_at": _EPOCH_OR_NULL,
            "response_target_s": {"type": ["number", "null"]},
            "sla_breached": {"type": "boolean"},
            "reopen_count": {"type": "integer"},
        },
        ["id", "number", "priority", "category", "summary", "state", "opened_at"],
        closed=False,
    )


def _silence_schema() -> dict[str, Any]:
    return _object(
        {
            "id": {"type": "string", "examples": ["S-3"]},
            "matcher": {"enum": list(SILENCE_MATCHERS)},
            "value": _STR,
            "starts_at": _EPOCH,
            "ends_at": _EPOCH,
            "reason": _STR,
            "created_by": _STR,
            "created_at": _EPOCH,
            "expired_early_at": _EPOCH_OR_NULL,
            "active": {"type": "boolean", "description": "In force right now."},
        },
        ["id", "matcher", "value", "starts_at", "ends_at", "active"],
    )


def _schemas() -> dict[str, Any]:
    return {
        "Error": _object(
            {
                "error": {"type": "string", "description": "What was wrong, briefly."},
                "detail": {"description": "The field, value or limit involved."},
            },
            ["error", "detail"],
        ),
        "Health": _object(
            {
                "status": {"enum": ["ok", "unhealthy"]},
                "node": _STR,
                "detail": _STR,
            },
            ["status"],
        ),
        "CheckResult": _object(
            {
                "check": _STR,
                "type": _STR,
                "status": {"enum": ["ok", "warning", "critical", "unknown", "pending"]},
                "message": _STR,
                "values": {
                    "type": "object",
                    "additionalProperties": {"type": ["number", "null"]},
                },
                "evidence": {"type": "array", "items": _STR},
                "started_at": _EPOCH,
                "duration_s": {"type": "number"},
            },
            ["check", "status"],
            closed=False,
        ),
        "Incident": _incident_schema(),
        "TimelineEvent": _object(
            {"at": _EPOCH, "kind": _STR, "actor": _STR, "detail": {"type": "object"}},
            ["at", "kind", "actor", "detail"],
        ),
        "PageDelivery": _object(
            {
                "page_id": _STR,
                "contact": _STR,
                "kind": _STR,
                "step": {"type": "integer"},
                "state": {"enum": ["pending", "sent", "dead"]},
                "attempts": {"type": "integer"},
                "created_at": _EPOCH,
                "sent_at": _EPOCH_OR_NULL,
                "sent_channel": {"type": ["string", "null"]},
                "last_error": {"type": ["string", "null"]},
            },
            ["page_id", "contact", "state"],
        ),
        "IncidentDetail": {
            "allOf": [
                _ref("Incident"),
                _object(
                    {
                        "timeline": {"type": "array", "items": _ref("TimelineEvent")},
                        "pages": {"type": "array", "items": _ref("PageDelivery")},
                    },
                    ["timeline", "pages"],
                    closed=False,
                ),
            ]
        },
        "Silence": _silence_schema(),
    }


def openapi_document() -> dict[str, Any]:
    """An OpenAPI 3.1 description of every route `build_app` serves."""
    incident_answer = _ok(
        "The incident after the change.",
        _object({"incident": _ref("Incident")}, ["incident"]),
    )
    silence_answer = _object({"silence": _ref("Silence")}, ["silence"])
    paths: dict[str, Any] = {
        "/healthz": {
            "get": {
                "summary": "Liveness of the scheduler and the daemon's tasks",
                "tags": ["operations"],
                "responses": {
                    "200": _ok("Healthy.", _ref("Health")),
                    "503": _ok(
                        "A task or check loop stopped; `detail` says which.",
                        _ref("Health"),
                    ),
                },
            }
        },
        "/metrics": {
            "get": {
                "summary": "Prometheus metrics (text exposition format 0.0.4)",
                "tags": ["operations"],
                "responses": {
                    "200": {
                        "description": "Every metric; names start with sentinel_.",
                        "content": {"text/plain": {"schema": _STR}},
                    }
                },
            }
        },
        OPENAPI_PATH: {
            "get": {
                "summary": "This document",
                "tags": ["operations"],
                "responses": {"200": _ok("OpenAPI 3.1.", {"type": "object"})},
            }
        },
        "/api/v1/checks": {
            "get": {
                "summary": "The latest result of every configured check",
                "description": "A check that has not run yet shows status `pending`.",
                "tags": ["checks"],
                "security": _ADMIN_OR_LOOPBACK,
                "responses": {
                    "200": _ok(
                        "Latest results.",
                        _object(
                            {
                                "node": _STR,
                                "checks": {
                                    "type": "array",
                                    "items": _ref("CheckResult"),
                                },
                            },
                            ["node", "checks"],
                        ),
                    ),
                    **_errors(400, 401),
                },
            }
        },
        "/api/v1/incidents": {
            "get": {
                "summary": "Incidents, newest first",
                "tags": ["incidents"],
                "security": _ADMIN_OR_LOOPBACK,
                "parameters": [
                    {
                        "name": "state",
                        "in": "query",
                        "description": "`open` is triggered or acknowledged.",
                        "schema": {"enum": list(INCIDENT_STATES), "default": "open"},
                    },
                    {
                        "name": "limit",
                        "in": "query",
                        "schema": {
                            "type": "integer",
                            "minimum": 1,
                            "maximum": MAX_LIST_LIMIT,
                            "default": DEFAULT_LIST_LIMIT,
                        },
                    },
                ],
                "responses": {
                    "200": _ok(
                        "The incidents.",
                        _object(
                            {"incidents": {"type": "array", "items": _ref("Incident")}},
                            ["incidents"],
                        ),
                    ),
                    **_errors(400, 401),
                },
            }
        },
        "/api/v1/incidents/{ref}": {
            "parameters": [_INCIDENT_REF_PARAM],
            "get": {
                "summary": "One incident with its timeline and page deliveries",
                "tags": ["incidents"],
                "security": _ADMIN_OR_LOOPBACK,
                "responses": {
                    "200": _ok("The incident.", _ref("IncidentDetail")),
                    **_errors(400, 401, 404),
                },
            },
        },
        "/api/v1/incidents/{ref}/ack": {
            "parameters": [_INCIDENT_REF_PARAM],
            "post": {
                "summary": "Acknowledge: stops the escalation ladder",
                "tags": ["incidents"],
                "security": _ADMIN,
                "requestBody": {
                    "required": True,
                    **_json_content(_object({"by": _NAME}, ["by"])),
                },
                "responses": {
                    "200": incident_answer,
                    **_errors(400, 401, 404, 409, 413),
                },
            },
        },
        "/api/v1/incidents/{ref}/resolve": {
            "parameters": [_INCIDENT_REF_PARAM],
            "post": {
                "summary": "Resolve: ends the incident and its ladder",
                "tags": ["incidents"],
                "security": _ADMIN,
                "requestBody": {
                    "required": True,
                    **_json_content(
                        _object({"by": _NAME, "root_cause": _TEXT}, ["by"])
                    ),
                },
                "responses": {
                    "200": incident_answer,
                    **_errors(400, 401, 404, 409, 413),
                },
            },
        },
        "/api/v1/incidents/{ref}/notes": {
            "parameters": [_INCIDENT_REF_PARAM],
            "post": {
                "summary": "Add a note to the incident's timeline",
                "tags": ["incidents"],
                "security": _ADMIN,
                "requestBody": {
                    "required": True,
                    **_json_content(
                        _object({"by": _NAME, "text": _TEXT}, ["by", "text"])
                    ),
                },
                "responses": {
                    "201": _ok(
                        "The note, as added to the timeline.",
                        _object({"note": _ref("TimelineEvent")}, ["note"]),
                    ),
                    **_errors(400, 401, 404, 413),
                },
            },
        },
        "/api/v1/silences": {
            "get": {
                "summary": "Silences",
                "tags": ["silences"],
                "security": _ADMIN_OR_LOOPBACK,
                "parameters": [
                    {
                        "name": "state",
                        "in": "query",
                        "description": "`current`: in force or scheduled; "
                        "`all`: also the ended ones.",
                        "schema": {"enum": ["current", "all"], "default": "current"},
                    }
                ],
                "responses": {
                    "200": _ok(
                        "The silences.",
                        _object(
                            {"silences": {"type": "array", "items": _ref("Silence")}},
                            ["silences"],
                        ),
                    ),
                    **_errors(400, 401),
                },
            },
            "post": {
                "summary": "Silence a check, a rule or a category for a while",
                "description": "Give exactly one of `duration` and `ends_at`.",
                "tags": ["silences"],
                "security": _ADMIN,
                "requestBody": {
                    "required": True,
                    **_json_content(
                        _object(
                            {
                                "matcher": {"enum": list(SILENCE_MATCHERS)},
                                "value": _NAME,
                                "duration": {
                                    "type": "string",
                                    "examples": ["2h", "30m"],
                                },
                                "ends_at": _INSTANT,
                                "starts_at": {
                                    **_INSTANT,
                                    "description": "Default: now.",
                                },
                                "reason": _TEXT,
                                "created_by": _NAME,
                            },
                            ["matcher", "value", "reason", "created_by"],
                        )
                    ),
                },
                "responses": {
                    "201": {
                        "description": "The new silence.",
                        "headers": {"Location": {"schema": _STR}},
                        **_json_content(silence_answer),
                    },
                    **_errors(400, 401, 413),
                },
            },
        },
        "/api/v1/silences/{ref}": {
            "delete": {
                "summary": "End a silence now",
                "tags": ["silences"],
                "security": _ADMIN,
                "parameters": [
                    {
                        "name": "ref",
                        "in": "path",
                        "required": True,
                        "description": "The silence: `S-3` or `3`.",
                        "schema": {"type": "string", "pattern": "^([Ss]-)?[0-9]+$"},
                    },
                    {
                        "name": "by",
                        "in": "query",
                        "description": "Who ends it, for the log. Default: api.",
                        "schema": _NAME,
                    },
                ],
                "responses": {
                    "200": _ok("The silence, ended.", silence_answer),
                    **_errors(400, 401, 404),
                },
            }
        },
        "/ack/{token}": {
            "parameters": [
                {
                    "name": "token",
                    "in": "path",
                    "required": True,
                    "description": "The signed, single-use token from a page.",
                    "schema": {"type": "string", "pattern": "^[A-Za-z0-9_-]+$"},
                }
            ],
            "get": {
                "summary": "Confirm page for an acknowledgement link (changes nothing)",
                "tags": ["acknowledgement links"],
                "responses": {
                    "200": _html("The incident and a confirm button."),
                    "400": _html("The link is malformed or its signature is wrong."),
                    "404": _html("The incident no longer exists."),
                    "410": _html("The link has expired."),
                },
            },
            "post": {
                "summary": "Acknowledge through the link (the confirm button)",
                "tags": ["acknowledgement links"],
                "responses": {
                    "200": _html("Acknowledged."),
                    "400": _html("The link is malformed or its signature is wrong."),
                    "404": _html("The incident no longer exists."),
                    "409": _html(
                        "The link was used before, or the incident is resolved."
                    ),
                    "410": _html("The link has expired."),
                },
            },
        },
    }
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "Sentinel API",
            "version": "1",
            "description": (
                "Mutating calls need `Authorization: Bearer <admin token>`. GET "
                "calls under /api/v1 are open to loopback clients and need the "
                "token from anywhere else. Errors are JSON objects with `error` "
                "and `detail`."
            ),
        },
        "paths": paths,
        "components": {
            "schemas": _schemas(),
            "securitySchemes": {
                "adminToken": {
                    "type": "http",
                    "scheme": "bearer",
                    "description": "The daemon's admin token (api.admin_token, or "
                    "admin.token in the state directory).",
                }
            },
        },
    }


def _html(description: str) -> dict[str, Any]:
    return {"description": description, "content": {"text/html": {"schema": _STR}}}
