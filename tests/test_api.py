"""The HTTP API against a real aiohttp server, a real Engine and a real
SQLite store; only the scheduler's side (latest results, health) is a plain
data holder."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import io
import json
import re
from collections.abc import AsyncIterator
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry

from checks.clock import FakeClock
from checks.result import CheckResult, Status
from daemon.api import MAX_BODY_BYTES, build_app
from daemon.config import load_config
from escalation.ack import AckSigner
from escalation.engine import Engine
from escalation.metrics import EscalationMetrics
from escalation.model import IncidentState
from escalation.sqlite_store import SqliteStore

ADMIN_TOKEN = "test-admin-token-0123456789"
AUTH = {"Authorization": f"Bearer {ADMIN_TOKEN}"}

CONFIG = """
[api]
admin_token = "test-admin-token-0123456789"

[checks.api]
type = "http"
url = "http://127.0.0.1:9/healthz"

[checks.db]
type = "http"
url = "http://127.0.0.1:9/db"

[rules.api_down]
checks = ["api"]
when = "critical"
priority = "P1"
category = "complete_service_outage"
summary = "API down: {message}"

[escalation]
public_url = "https://sentinel.example.com"

[escalation.policies.default]
[[escalation.policies.default.steps]]
delay = "0s"
contacts = ["alice"]
[[escalation.policies.default.steps]]
delay = "15m"
contacts = ["bob"]

[contacts.alice]
name = "Alice"
channels = [{ type = "webhook", to = "http://127.0.0.1:9/hook" }]

[contacts.bob]
name = "Bob"
channels = [{ type = "webhook", to = "http://127.0.0.1:9/hook" }]

[channels.webhook]
"""


@dataclass
class Backend:
    """Stands in for the service's scheduler side; the engine is real."""

    engine: Engine
    signer: AckSigner
    clock: FakeClock
    registry: CollectorRegistry
    node: str = "web-1"
    admin_token: str = ADMIN_TOKEN
    results: dict[str, CheckResult] = field(default_factory=dict)
    names: list[str] = field(default_factory=lambda: ["api", "db"])
    alive: tuple[bool, str] = (True, "2 checks scheduled")

    def latest_results(self) -> dict[str, CheckResult]:
        return self.results

    def check_names(self) -> list[str]:
        return self.names

    def health(self) -> tuple[bool, str]:
        return self.alive


@dataclass
class Api:
    client: TestClient[web.Request, web.Application]
    backend: Backend
    app: web.Application

    @property
    def engine(self) -> Engine:
        return self.backend.engine

    async def open_incident(self, message: str = "connection refused") -> int:
        """Feed a critical result: the api_down rule opens an incident."""
        await self.engine.observe(
            make_result("api", Status.CRITICAL, message, self.backend.clock)
        )
        [incident] = await self.engine.store.open_incidents()
        return incident.id

    async def state(self, incident_id: int) -> IncidentState:
        incident = await self.engine.store.get_incident(incident_id)
        assert incident is not None
        return incident.state

    def link(
        self, incident_id: int, contact: str = "alice", ttl_s: float = 3600
    ) -> str:
        expires_at = self.backend.clock.wall() + ttl_s
        token = self.backend.signer.issue(incident_id, 0, contact, expires_at)
        return f"/ack/{token}"


def make_result(
    check: str, status: Status, message: str, clock: FakeClock
) -> CheckResult:
    return CheckResult(
        check=check,
        check_type="http",
        status=status,
        message=message,
        values={"latency_s": 0.25},
        evidence=(),
        started_at=clock.wall(),
        duration_s=0.25,
    )


@contextlib.asynccontextmanager
async def real_backend(config_path: Path, clock: FakeClock) -> AsyncIterator[Backend]:
    """A Backend around a real Engine on a SqliteStore beside the config."""
    config = load_config(config_path)
    for check in config.checks.values():
        await check.close()
    store = SqliteStore(config_path.parent / "sentinel.db")
    await store.open()
    registry = CollectorRegistry()
    signer = AckSigner(b"0123456789abcdef0123456789abcdef")
    engine = Engine(
        store,
        config.escalation,
        clock,
        signer=signer,
        metrics=EscalationMetrics(registry),
    )
    await engine.start()
    try:
        yield Backend(engine=engine, signer=signer, clock=clock, registry=registry)
    finally:
        await store.close()


@pytest.fixture
async def api(tmp_path: Path, clock: FakeClock) -> AsyncIterator[Api]:
    config_path = tmp_path / "config.toml"
    config_path.write_text(CONFIG)
    async with real_backend(config_path, clock) as backend:
        app = build_app(backend)
        client = TestClient(TestServer(app))
        await client.start_server()
        try:
            yield Api(client, backend, app)
        finally:
            await client.close()


async def _error(response: Any, status: int) -> dict[str, Any]:
    """The response is a JSON error with this status; returns its body."""
    assert response.status == status, await response.text()
    assert response.content_type == "application/json"
    body: dict[str, Any] = await response.json()
    assert set(body) == {"error", "detail"}
    assert body["error"]
    return body


# Authentication ------------------------------------------------------------

MUTATIONS = [
    ("POST", "/api/v1/incidents/INC-1/ack", {"by": "mallory"}),
    ("POST", "/api/v1/incidents/INC-1/resolve", {"by": "mallory", "root_cause": "x"}),
    ("POST", "/api/v1/incidents/INC-1/notes", {"by": "mallory", "text": "hi"}),
    (
        "POST",
        "/api/v1/silences",
        {
            "matcher": "check",
            "value": "api",
            "duration": "1h",
            "reason": "r",
            "created_by": "mallory",
        },
    ),
    ("DELETE", "/api/v1/silences/S-1", None),
]


@pytest.mark.parametrize(
    "headers",
    [
        {},
        {"Authorization": "Bearer wrong-token"},
        {"Authorization": f"Basic {ADMIN_TOKEN}"},
        {"Authorization": f"Bearer {ADMIN_TOKEN}x"},
        {"Authorization": "Bearer "},
    ],
    ids=["none", "wrong", "basic-scheme", "longer", "empty"],
)
async def test_api_mutations_refused_without_the_admin_token(
    api: Api, headers: dict[str, str]
) -> None:
    """Every mutating route answers 401 JSON and changes nothing."""
    incident_id = await api.open_incident()
    for method, path, body in MUTATIONS:
        response = await api.client.request(method, path, json=body, headers=headers)
        error = await _error(response, 401)
        assert "token" in error["error"]
        assert response.headers["WWW-Authenticate"].startswith("Bearer")
    assert await api.state(incident_id) is IncidentState.TRIGGERED
    assert await api.engine.store.list_silences() == []
    timeline = await api.engine.store.timeline(incident_id)
    assert [e.kind for e in timeline if e.actor == "mallory"] == []


async def test_api_non_utf8_authorization_is_401(api: Api) -> None:
    """Raw bytes that are not UTF-8 in the token are refused, not a 500."""
    assert api.client.port is not None
    reader, writer = await asyncio.open_connection("127.0.0.1", api.client.port)
    writer.write(
        b"POST /api/v1/silences HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\n"
        b"Authorization: Bearer \xff\xfe\xc3\xa9\r\nConnection: close\r\n\r\n{}"
    )
    answer = await reader.read()
    writer.close()
    await writer.wait_closed()
    assert answer.startswith(b"HTTP/1.1 401 ")
    assert b"missing or wrong admin token" in answer


async def test_api_reads_open_on_loopback_but_not_through_a_proxy(api: Api) -> None:
    """Loopback reads need no token; a forwarded request does."""
    response = await api.client.get("/api/v1/incidents")
    assert response.status == 200
    forwarded = {"X-Forwarded-For": "203.0.113.9"}
    response = await api.client.get("/api/v1/incidents", headers=forwarded)
    await _error(response, 401)
    response = await api.client.get("/api/v1/incidents", headers={**forwarded, **AUTH})
    assert response.status == 200


async def test_api_refused_token_is_logged_without_secrets(
    api: Api, log_output: io.StringIO
) -> None:
    """A refusal is logged with the route; neither token ever appears."""
    await api.client.post(
        "/api/v1/silences", json={}, headers={"Authorization": "Bearer guessed-secret"}
    )
    incident_id = await api.open_incident()
    link = api.link(incident_id)
    forged = link[:-3] + ("AAA" if link[-3:] != "AAA" else "BBB")
    await api.client.post(forged)
    await api.client.post("/api/v1/incidents/1/ack", json={"by": "ann"}, headers=AUTH)

    text = log_output.getvalue()
    events = [json.loads(line) for line in text.splitlines()]
    names = [e["event"] for e in events]
    assert "api_token_refused" in names
    assert "ack_link_refused" in names
    assert "incident_acknowledged" in names
    for secret in ("guessed-secret", ADMIN_TOKEN, link[5:], forged[5:]):
        assert secret not in text
    refused = next(e for e in events if e["event"] == "api_token_refused")
    assert refused["route"] == "/api/v1/silences"


# Incidents -----------------------------------------------------------------


async def test_api_ack_acknowledges_and_is_idempotent(api: Api) -> None:
    """POST ack with the token acknowledges; a second ack keeps the first."""
    incident_id = await api.open_incident()
    response = await api.client.post(
        f"/api/v1/incidents/INC-{incident_id}/ack", json={"by": "ann"}, headers=AUTH
    )
    assert response.status == 200
    body = await response.json()
    assert body["incident"]["state"] == "acknowledged"
    assert body["incident"]["acked_by"] == "ann"
    assert body["incident"]["acked_via"] == "api"

    response = await api.client.post(
        f"/api/v1/incidents/{incident_id}/ack", json={"by": "bo"}, headers=AUTH
    )
    assert response.status == 200
    assert (await response.json())["incident"]["acked_by"] == "ann"


async def test_api_resolve_then_ack_or_resolve_is_409(api: Api) -> None:
    """A resolved incident cannot be acknowledged or resolved again."""
    incident_id = await api.open_incident()
    path = f"/api/v1/incidents/INC-{incident_id}"
    response = await api.client.post(
        f"{path}/resolve", json={"by": "ann", "root_cause": "bad deploy"}, headers=AUTH
    )
    assert response.status == 200
    incident = (await response.json())["incident"]
    assert incident["state"] == "resolved"
    assert incident["root_cause"] == "bad deploy"

    response = await api.client.post(f"{path}/ack", json={"by": "ann"}, headers=AUTH)
    error = await _error(response, 409)
    assert "already resolved" in error["detail"]
    response = await api.client.post(
        f"{path}/resolve", json={"by": "ann"}, headers=AUTH
    )
    await _error(response, 409)


async def test_api_note_appears_in_the_timeline(api: Api) -> None:
    """A note is 201 and shows in the incident's timeline with its author."""
    incident_id = await api.open_incident()
    response = await api.client.post(
        f"/api/v1/incidents/INC-{incident_id}/notes",
        json={"by": "ann", "text": "restarted php-fpm"},
        headers=AUTH,
    )
    assert response.status == 201
    assert (await response.json())["note"]["detail"] == {"text": "restarted php-fpm"}

    detail = await (await api.client.get(f"/api/v1/incidents/{incident_id}")).json()
    kinds = [(e["kind"], e["actor"]) for e in detail["timeline"]]
    assert ("triggered", "sentinel") in kinds
    assert ("note", "ann") in kinds


async def test_api_incident_detail_hides_page_payloads(api: Api) -> None:
    """The incident shows page deliveries but never their ack links."""
    incident_id = await api.open_incident()
    pages = await api.engine.store.pages_for_incident(incident_id)
    assert pages, "the first ladder step should have queued a page"
    response = await api.client.get(f"/api/v1/incidents/INC-{incident_id}")
    assert response.status == 200
    text = await response.text()
    detail = json.loads(text)
    assert detail["id"] == f"INC-{incident_id}"
    assert [p["contact"] for p in detail["pages"]] == [p.contact for p in pages]
    assert "payload" not in detail["pages"][0]
    assert "/ack/" not in text


async def test_api_list_incidents_by_state(api: Api) -> None:
    """state= filters open, acknowledged, resolved and all; limit bounds it."""
    incident_id = await api.open_incident()

    async def listed(query: str) -> list[str]:
        response = await api.client.get(f"/api/v1/incidents{query}")
        assert response.status == 200
        return [i["id"] for i in (await response.json())["incidents"]]

    ref = f"INC-{incident_id}"
    assert await listed("") == [ref]
    assert await listed("?state=triggered") == [ref]
    assert await listed("?state=resolved") == []
    await api.client.post(
        f"/api/v1/incidents/{ref}/resolve", json={"by": "ann"}, headers=AUTH
    )
    assert await listed("?state=open") == []
    assert await listed("?state=resolved&limit=1") == [ref]
    assert await listed("?state=all") == [ref]


@pytest.mark.parametrize(
    "query",
    ["?state=bogus", "?limit=0", "?limit=abc", "?limit=1001", "?limit=-1", "?sort=id"],
)
async def test_api_bad_query_parameters_are_400(api: Api, query: str) -> None:
    """A bad state, limit or unknown parameter is a 400 naming it."""
    response = await api.client.get(f"/api/v1/incidents{query}")
    error = await _error(response, 400)
    assert "parameter" in error["error"]


@pytest.mark.parametrize(
    ("ref", "status"),
    [
        ("INC-abc", 400),
        ("..", 404),
        ("INC-1.5", 400),
        ("INC-\u0663", 400),
        ("-1", 400),
        ("INC-" + "9" * 40, 404),
        ("9" * 5000, 404),
        ("INC-0", 404),
        ("INC-424242", 404),
        ("..%2F..%2Fetc%2Fpasswd", 400),
    ],
)
async def test_api_hostile_incident_refs(api: Api, ref: str, status: int) -> None:
    """Malformed refs are 400, refs that cannot exist 404, never 500."""
    for method, suffix, body in (
        ("GET", "", None),
        ("POST", "/ack", {"by": "ann"}),
        ("POST", "/resolve", {"by": "ann"}),
    ):
        response = await api.client.request(
            method, f"/api/v1/incidents/{ref}{suffix}", json=body, headers=AUTH
        )
        await _error(response, status)


# Bodies --------------------------------------------------------------------


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        (b"", "empty body"),
        (b"{", "malformed JSON"),
        (b"\xff\xfe{}", "malformed JSON"),
        (b"[1, 2]", "malformed body"),
        (b'"by"', "malformed body"),
        (b"[" * 30_000 + b"]" * 30_000, "malformed JSON"),
        (b'{"by": ' + b"9" * 5000 + b"}", "malformed JSON"),
        (b'{"by": 5}', "invalid field: by"),
        (b'{"by": ["ann"]}', "invalid field: by"),
        (b'{"by": "   "}', "invalid field: by"),
        (b'{"by": "' + b"a" * 200 + b'"}', "invalid field: by"),
        (b'{"by": "ann\\u0000"}', "invalid field: by"),
        (b"{}", "missing fields"),
        (b'{"by": null}', "missing fields"),
        (b'{"by": "ann", "admin": true}', "unknown fields"),
    ],
)
async def test_api_malformed_bodies_are_400(
    api: Api, body: bytes, expected: str
) -> None:
    """Bad JSON, wrong types and unknown fields are 400 naming the problem."""
    incident_id = await api.open_incident()
    response = await api.client.post(
        f"/api/v1/incidents/{incident_id}/ack",
        data=body,
        headers={**AUTH, "Content-Type": "application/json"},
    )
    error = await _error(response, 400)
    assert error["error"] == expected
    assert await api.state(incident_id) is IncidentState.TRIGGERED


async def test_api_unknown_field_error_lists_allowed_fields(api: Api) -> None:
    """The detail of an unknown field names it and what is allowed."""
    response = await api.client.post(
        "/api/v1/incidents/1/resolve",
        json={"by": "ann", "rootcause": "typo"},
        headers=AUTH,
    )
    error = await _error(response, 400)
    assert error["detail"] == {
        "unknown": ["rootcause"],
        "allowed": ["by", "root_cause"],
    }


async def test_api_oversized_body_is_413_json(api: Api) -> None:
    """A body over 64 KiB is refused as JSON, not a plain-text page."""
    incident_id = await api.open_incident()
    huge = json.dumps({"by": "ann", "text": "x" * (MAX_BODY_BYTES + 1)})
    response = await api.client.post(
        f"/api/v1/incidents/{incident_id}/notes",
        data=huge,
        headers={**AUTH, "Content-Type": "application/json"},
    )
    error = await _error(response, 413)
    assert str(MAX_BODY_BYTES) in error["detail"]


async def test_api_unknown_route_and_method_are_json(api: Api) -> None:
    """404 and 405 from the router are JSON errors too."""
    await _error(await api.client.get("/api/v1/nothing"), 404)
    response = await api.client.put("/api/v1/incidents", headers=AUTH)
    error = await _error(response, 405)
    assert "GET" in error["detail"]


# Silences ------------------------------------------------------------------


async def test_api_silence_add_list_expire(api: Api) -> None:
    """A silence is created with a duration, listed, and ended early."""
    response = await api.client.post(
        "/api/v1/silences",
        json={
            "matcher": "check",
            "value": "api",
            "duration": "2h",
            "reason": "planned maintenance",
            "created_by": "ann",
        },
        headers=AUTH,
    )
    assert response.status == 201
    silence = (await response.json())["silence"]
    assert silence["id"] == "S-1"
    assert silence["active"] is True
    assert silence["ends_at"] - silence["starts_at"] == 7200
    assert response.headers["Location"] == "/api/v1/silences/S-1"

    listed = await (await api.client.get("/api/v1/silences")).json()
    assert [s["id"] for s in listed["silences"]] == ["S-1"]

    response = await api.client.delete("/api/v1/silences/S-1?by=ann", headers=AUTH)
    assert response.status == 200
    assert (await response.json())["silence"]["expired_early_at"] is not None

    listed = await (await api.client.get("/api/v1/silences")).json()
    assert listed["silences"] == []
    listed = await (await api.client.get("/api/v1/silences?state=all")).json()
    assert [s["active"] for s in listed["silences"]] == [False]


async def test_api_silence_with_rfc3339_end(api: Api, clock: FakeClock) -> None:
    """ends_at may be an RFC 3339 time with an offset, starts_at epoch seconds."""
    start = clock.wall() + 60
    response = await api.client.post(
        "/api/v1/silences",
        json={
            "matcher": "rule",
            "value": "api_down",
            "starts_at": start,
            "ends_at": "2023-11-15T00:00:00Z",
            "reason": "r",
            "created_by": "ann",
        },
        headers=AUTH,
    )
    assert response.status == 201, await response.text()
    silence = (await response.json())["silence"]
    assert silence["starts_at"] == start
    assert silence["ends_at"] == 1_700_006_400
    assert silence["active"] is False


@pytest.mark.parametrize(
    ("change", "error"),
    [
        ({"duration": None}, "give either duration or ends_at"),
        ({"ends_at": 1_700_009_000}, "give either duration or ends_at"),
        ({"duration": "2 hours"}, "invalid field: duration"),
        ({"duration": 7200}, "invalid field: duration"),
        ({"duration": "0s"}, "invalid field: duration"),
        (
            {"duration": None, "ends_at": "2023-11-15T00:00:00"},
            "invalid field: ends_at",
        ),
        ({"duration": None, "ends_at": 1_700_000_000_000}, "invalid field: ends_at"),
        ({"duration": None, "ends_at": 1_600_000_000}, "invalid request"),
        ({"matcher": "host"}, "invalid field: matcher"),
        ({"value": "no_such_check"}, "invalid request"),
        ({"reason": ""}, "invalid field: reason"),
        ({"created_by": None}, "missing fields"),
    ],
)
async def test_api_bad_silences_are_400(
    api: Api, change: dict[str, Any], error: str
) -> None:
    """Each malformed silence is refused with an error naming the field."""
    body: dict[str, Any] = {
        "matcher": "check",
        "value": "api",
        "duration": "2h",
        "reason": "maintenance",
        "created_by": "ann",
    }
    body.update(change)
    body = {k: v for k, v in body.items() if v is not None or k == "created_by"}
    response = await api.client.post("/api/v1/silences", json=body, headers=AUTH)
    assert (await _error(response, 400))["error"] == error


async def test_api_expire_unknown_or_malformed_silence(api: Api) -> None:
    """An unknown silence is 404, a malformed reference 400."""
    await _error(await api.client.delete("/api/v1/silences/S-99", headers=AUTH), 404)
    await _error(await api.client.delete("/api/v1/silences/S-x", headers=AUTH), 400)
    await _error(await api.client.delete("/api/v1/silences/INC-1", headers=AUTH), 400)


# Checks, health, metrics, OpenAPI -------------------------------------------


async def test_api_checks_show_latest_or_pending(api: Api, clock: FakeClock) -> None:
    """Every configured check is listed; one without a run yet is pending."""
    api.backend.results["api"] = make_result("api", Status.WARNING, "slow", clock)
    body = await (await api.client.get("/api/v1/checks")).json()
    assert body["node"] == "web-1"
    by_name = {c["check"]: c for c in body["checks"]}
    assert by_name["api"]["status"] == "warning"
    assert by_name["api"]["message"] == "slow"
    assert by_name["db"] == {"check": "db", "status": "pending"}


async def test_api_checks_with_nan_value_stay_valid_json(
    api: Api, clock: FakeClock
) -> None:
    """A NaN a probe reported becomes null, not invalid JSON."""
    result = make_result("api", Status.OK, "ok", clock)
    api.backend.results["api"] = replace(result, values={"ratio": float("nan")})
    text = await (await api.client.get("/api/v1/checks")).text()
    body = json.loads(text, parse_constant=lambda c: pytest.fail(f"{c} in JSON"))
    assert body["checks"][0]["values"] == {"ratio": None}


async def test_api_unexpected_failure_is_500_json_and_logged(
    api: Api, log_output: io.StringIO
) -> None:
    """A bug behind a route answers 500 JSON without a traceback, and is logged."""

    def broken() -> dict[str, CheckResult]:
        raise RuntimeError("results table corrupted")

    api.backend.latest_results = broken  # type: ignore[method-assign]
    response = await api.client.get("/api/v1/checks")
    body = await _error(response, 500)
    assert body == {"error": "internal error", "detail": "see the daemon's log"}
    [event] = [json.loads(line) for line in log_output.getvalue().splitlines()]
    assert event["event"] == "api_request_failed"
    assert event["route"] == "/api/v1/checks"
    assert "results table corrupted" in event["exception"]


async def test_api_healthz_reports_the_reason(api: Api) -> None:
    """200 while alive; 503 with the reason when the scheduler stopped."""
    response = await api.client.get("/healthz")
    assert response.status == 200
    assert (await response.json())["status"] == "ok"
    api.backend.alive = (False, "the loop of check db has stopped")
    response = await api.client.get("/healthz")
    assert response.status == 503
    body = await response.json()
    assert body["status"] == "unhealthy"
    assert body["detail"] == "the loop of check db has stopped"


async def test_api_metrics_content_type(api: Api) -> None:
    """/metrics is Prometheus text with its exact content type."""
    await api.open_incident()
    response = await api.client.get("/metrics")
    assert response.status == 200
    assert response.headers["Content-Type"] == CONTENT_TYPE_LATEST
    text = await response.text()
    assert 'sentinel_incidents_opened_total{priority="P1"} 1.0' in text


async def test_api_openapi_describes_every_route(api: Api) -> None:
    """openapi.json is valid OpenAPI 3.1 and lists exactly the served routes."""
    response = await api.client.get("/api/v1/openapi.json")
    assert response.status == 200
    document = await response.json()
    assert document["openapi"] == "3.1.0"

    described = {
        (path, method.upper())
        for path, item in document["paths"].items()
        for method in item
        if method != "parameters"
    }
    served = {
        (route.resource.canonical, route.method)
        for route in api.app.router.routes()
        if route.method != "HEAD" and route.resource is not None
    }
    assert described == served

    validator = pytest.importorskip("openapi_spec_validator")
    validator.validate(document)


# Acknowledgement links -----------------------------------------------------


async def test_api_ack_link_get_shows_a_form_and_changes_nothing(api: Api) -> None:
    """Opening the link (a previewer would) shows the incident and a confirm
    button, with protective headers, and does not acknowledge."""
    incident_id = await api.open_incident()
    link = api.link(incident_id)
    for _ in range(2):
        response = await api.client.get(link)
        assert response.status == 200
        html = await response.text()
        assert '<form method="post">' in html
        assert f"INC-{incident_id}" in html
        assert "API down: connection refused" in html
        assert "P1" in html
    assert await api.state(incident_id) is IncidentState.TRIGGERED

    assert response.content_type == "text/html"
    assert response.headers["Cache-Control"] == "no-store"
    assert response.headers["X-Frame-Options"] == "DENY"
    assert response.headers["Referrer-Policy"] == "no-referrer"
    csp = response.headers["Content-Security-Policy"]
    assert "default-src 'none'" in csp
    assert "frame-ancestors 'none'" in csp
    # The page's one stylesheet is allowed by its hash, or browsers drop it.
    style = re.search(r"<style>(.*?)</style>", html, re.S)
    assert style is not None
    digest = base64.b64encode(hashlib.sha256(style.group(1).encode()).digest())
    assert f"'sha256-{digest.decode()}'" in csp


async def test_api_ack_link_post_acknowledges_once(api: Api) -> None:
    """POST acknowledges as the link's contact; the same link again is 409."""
    incident_id = await api.open_incident()
    link = api.link(incident_id, contact="alice")
    response = await api.client.post(link)
    assert response.status == 200
    assert "acknowledged" in await response.text()
    incident = await api.engine.store.get_incident(incident_id)
    assert incident is not None
    assert (incident.state, incident.acked_by, incident.acked_via) == (
        IncidentState.ACKNOWLEDGED,
        "alice",
        "link",
    )

    again = await api.client.post(link)
    assert again.status == 409
    assert "already used" in (await again.text()).lower()
    assert again.headers["X-Frame-Options"] == "DENY"


async def test_api_ack_link_forged_is_refused_without_details(api: Api) -> None:
    """A link with one character changed is refused and shows no incident."""
    incident_id = await api.open_incident()
    link = api.link(incident_id)
    index = len("/ack/") + 3
    flipped = "B" if link[index] != "B" else "C"
    forged = link[:index] + flipped + link[index + 1 :]
    for method in ("GET", "POST"):
        response = await api.client.request(method, forged)
        assert response.status == 400
        html = await response.text()
        assert "signature is not valid" in html
        assert "API down" not in html
        assert f"INC-{incident_id}" not in html
    for junk in ("/ack/short", "/ack/" + "A" * 600, "/ack/%3Cscript%3E"):
        response = await api.client.post(junk)
        assert response.status == 400
        assert "<script>" not in await response.text()
    assert await api.state(incident_id) is IncidentState.TRIGGERED


async def test_api_ack_link_expired_is_410(api: Api, clock: FakeClock) -> None:
    """An authentic link past its expiry is Gone for GET and POST alike."""
    incident_id = await api.open_incident()
    link = api.link(incident_id, ttl_s=60)
    clock.advance(61)
    for method in ("GET", "POST"):
        response = await api.client.request(method, link)
        assert response.status == 410
        assert "expired" in await response.text()
    assert await api.state(incident_id) is IncidentState.TRIGGERED


async def test_api_ack_link_on_resolved_incident_says_so(api: Api) -> None:
    """After a resolve, the link's page says it is resolved; POST is 409."""
    incident_id = await api.open_incident()
    await api.client.post(
        f"/api/v1/incidents/{incident_id}/resolve",
        json={"by": "ann", "root_cause": "fixed"},
        headers=AUTH,
    )
    link = api.link(incident_id)
    response = await api.client.get(link)
    assert response.status == 200
    html = await response.text()
    assert "was resolved" in html
    assert "<form" not in html
    response = await api.client.post(link)
    assert response.status == 409
    assert "nothing to acknowledge" in await response.text()


async def test_api_ack_link_after_another_ack_says_who(api: Api) -> None:
    """When someone acknowledged first, the link reports them, not the clicker."""
    incident_id = await api.open_incident()
    await api.client.post(
        f"/api/v1/incidents/{incident_id}/ack", json={"by": "ann"}, headers=AUTH
    )
    response = await api.client.post(api.link(incident_id, contact="bob"))
    assert response.status == 200
    html = await response.text()
    assert "already acknowledged" in html
    assert "by ann" in html
    incident = await api.engine.store.get_incident(incident_id)
    assert incident is not None and incident.acked_by == "ann"


async def test_api_ack_link_for_missing_incident_is_404(api: Api) -> None:
    """A valid link to an incident that does not exist is 404, not 500."""
    link = api.link(4242)
    assert (await api.client.get(link)).status == 404
    assert (await api.client.post(link)).status == 404


async def test_api_ack_page_escapes_incident_text(api: Api) -> None:
    """Text from a probe reaches the page escaped, never as markup."""
    incident_id = await api.open_incident('<script>alert("x")</script>&')
    html = await (await api.client.get(api.link(incident_id))).text()
    assert "<script>" not in html
    assert "&lt;script&gt;alert(&quot;x&quot;)&lt;/script&gt;&amp;" in html
