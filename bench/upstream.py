"""Upstream efficiency: Novita calls per 1,000 client requests for cached reads under concurrency, counted by the
fake Novita server, starting from a cold cache so a stampede of misses is part of the measurement."""

from __future__ import annotations

import math
from typing import Any

from app.core.cache import CACHE_PREFIX
from app.core.config import Settings
from bench import wrk_runner
from bench.http_load import auth_headers, wait_upstream_quiet
from bench.report import Report, Row
from bench.services import ServerProcess, Services

SECTION = "Upstream efficiency (fake Novita's call counters, cold cache at start)"
CONNECTIONS = 64
UNCACHED_CALLS_PER_1000 = 1000.0
# The Novita endpoints (as the fake counts them) each read may call; anything else is the app's background work.
PRODUCT_CALLS = frozenset({"GET /products", "GET /clusters"})
INSTANCE_CALLS = frozenset({"GET /gpu/instance", "GET /gpu/instances"})


def _default(name: str) -> float:
    return float(Settings.model_fields[name].default)


def run(services: Services, report: Report, api: ServerProcess, instance_id: str, seconds: float) -> None:
    """Load each cached read at CONNECTIONS connections and count the upstream calls it caused."""
    reads = (
        ("GET /api/products", "/api/products", _default("cache_ttl_products_seconds"), PRODUCT_CALLS),
        (
            "GET /api/instances/{id}",
            f"/api/instances/{instance_id}",
            _default("cache_ttl_instances_seconds"),
            INSTANCE_CALLS,
        ),
    )
    for label, path, ttl, upstream_endpoints in reads:
        wait_upstream_quiet(services)
        _forget_cache(services)
        services.http.delete(f"{services.novita.url}/_fake/calls").raise_for_status()
        result = wrk_runner.run_wrk(f"{api.url}{path}", CONNECTIONS, seconds, auth_headers(services))
        all_calls: dict[str, int] = services.http.get(f"{services.novita.url}/_fake/calls").json()["calls"]
        calls = {key: count for key, count in all_calls.items() if key in upstream_endpoints}
        background = {key: count for key, count in all_calls.items() if key not in upstream_endpoints}
        if background:
            report.note(
                f"{label} upstream run: calls not caused by this read (background work) left out of the "
                f"count: {_describe(background)}"
            )
        total = sum(calls.values())
        # One call per key per TTL window: a run of `seconds` spans at most floor(seconds / ttl) + 1 windows.
        windows = math.floor(result.seconds / ttl) + 1
        allowed = max(1, len(calls)) * windows
        if not result.requests:
            report.add(
                Row(
                    SECTION,
                    f"{label}, {CONNECTIONS} connections",
                    f"**no request completed** in {result.seconds:.0f} s ({total} calls: {_describe(calls)})",
                    met=False,
                )
            )
            continue
        per_1000 = total / result.requests * 1000
        report.add(
            Row(
                SECTION,
                f"{label}, {CONNECTIONS} connections, {result.seconds:.0f} s",
                f"{per_1000:.2f} calls per 1,000 requests ({total} calls / {result.requests:,} requests: "
                f"{_describe(calls)})",
                "1,000 (no cache: one call per request)",
                per_1000 / UNCACHED_CALLS_PER_1000,
                f"<= 1 call per key per TTL ({ttl:g} s): <= {allowed}",
                total <= allowed and result.errors == 0,
            )
        )


def _forget_cache(services: Services) -> None:
    with services.redis.client() as client:
        keys: list[Any] = list(client.scan_iter(f"{CACHE_PREFIX}*", count=1000))
        if keys:
            client.delete(*keys)


def _describe(calls: dict[str, int]) -> str:
    return ", ".join(f"{key} x{count}" for key, count in sorted(calls.items())) or "none"
