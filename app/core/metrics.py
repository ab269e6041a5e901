"""Prometheus metrics of one app instance, on its own registry (tests build many apps in one process).

The Novita client keeps its counters on the process-wide default registry; `/metrics` serves both.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

__all__ = ["CONTENT_TYPE_LATEST", "Metrics"]


class Metrics:
    """Every metric the service exports; pass it to whatever records something."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        r = self.registry
        self.http_requests = Counter(
            "http_requests_total",
            "HTTP requests by route template and status",
            ["method", "route", "status"],
            registry=r,
        )
        self.http_latency = Histogram(
            "http_request_duration_seconds", "HTTP request latency", ["method", "route"], registry=r
        )
        self.jobs_processed = Counter(
            "jobs_processed_total",
            "Jobs handled by kind and outcome (succeeded, retried, rescheduled, failed, dead, interrupted)",
            ["kind", "outcome"],
            registry=r,
        )
        self.job_duration = Histogram("job_duration_seconds", "Handler run time by job kind", ["kind"], registry=r)
        self.queue_depth = Gauge("job_queue_depth", "Jobs waiting in the stream, not yet delivered", registry=r)
        self.queue_pending = Gauge(
            "job_queue_pending", "Jobs delivered to a worker and not yet acknowledged", registry=r
        )
        self.queue_scheduled = Gauge(
            "job_queue_scheduled", "Jobs waiting for their due time (retries, polls)", registry=r
        )
        self.queue_dead = Gauge("job_queue_dead_letters", "Jobs that exhausted their attempts", registry=r)
        self.cache_requests = Counter(
            "cache_requests_total", "Cache lookups by outcome (hit, miss, bypass)", ["outcome"], registry=r
        )
        self.valkey_up = Gauge("valkey_up", "1 when the last Valkey check succeeded", registry=r)
        self.rate_limit_decisions = Counter(
            "rate_limit_decisions_total",
            "Per-key rate limit checks by outcome (allowed, limited, failed_open when Valkey could not count)",
            ["outcome"],
            registry=r,
        )

        self.spend = Counter(
            "novita_spend_usd_total",
            "Our estimate of USD spent on Novita per team (billed intervals this replica closed; sum over replicas)",
            ["team"],
            registry=r,
        )

    def render(self) -> bytes:
        """The registry in the Prometheus text format."""
        return generate_latest(self.registry)
