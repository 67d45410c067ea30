"""Escalation's Prometheus metrics, created in an injected registry with every
bounded label combination present from the start."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from escalation.model import Priority

CHANNELS = ("sms", "email", "webhook", "mqtt")
PAGE_RESULTS = ("sent", "failed", "retried", "fallback", "dead")
_LATENCY_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300)
_ACK_BUCKETS = (30, 60, 120, 300, 600, 900, 1800, 3600, 7200, 14400, 43200)


class EscalationMetrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        self.incidents_opened = Counter(
            "sentinel_incidents_opened_total",
            "Incidents opened or reopened, by priority.",
            ["priority"],
            registry=registry,
        )
        self.incidents_open = Gauge(
            "sentinel_incidents_open",
            "Incidents not yet resolved, by priority.",
            ["priority"],
            registry=registry,
        )
        self.sla_breaches = Counter(
            "sentinel_response_target_breaches_total",
            "Incidents not acknowledged within their priority's response target.",
            ["priority"],
            registry=registry,
        )
        self.time_to_ack = Histogram(
            "sentinel_time_to_acknowledge_seconds",
            "From trigger to acknowledgement, by priority.",
            ["priority"],
            buckets=_ACK_BUCKETS,
            registry=registry,
        )
        self.trigger_to_first_page = Histogram(
            "sentinel_trigger_to_first_page_seconds",
            "From an incident's trigger to its first page confirmed sent.",
            buckets=_LATENCY_BUCKETS,
            registry=registry,
        )
        self.pages = Counter(
            "sentinel_pages_total",
            "Page delivery attempts by channel and result.",
            ["channel", "result"],
            registry=registry,
        )
        self.outbox_depth = Gauge(
            "sentinel_outbox_pending_pages",
            "Pages written to the outbox and not yet confirmed.",
            registry=registry,
        )
        for priority in Priority:
            self.incidents_opened.labels(priority.value)
            self.incidents_open.labels(priority.value)
            self.sla_breaches.labels(priority.value)
            self.time_to_ack.labels(priority.value)
        for channel in CHANNELS:
            for result in PAGE_RESULTS:
                self.pages.labels(channel, result)
