"""Health endpoints (no auth), with the semantics of docs/architecture.md.

- `/livez`: the event loop answers; served by `app.health.liveness` before routing (the sources probe's target).
- `/readyz`: Valkey answers, the instance list index exists and the job consumer runs; 503 with the reason otherwise.
  It does not wait for reconciliation with Novita, which runs in the background (its progress is in `/health`).
- `/health`: the seed's format plus version, uptime, queue counts, reconciliation progress and the reason of each
  service that is down; 503 when a required service (Valkey, the job queue) is down, 200 "degraded" when only Novita
  is (a Novita problem is the same for every replica and no restart fixes it). It never calls Novita
  (`app.health.novita`).
- `/metrics`: Prometheus.
"""

from __future__ import annotations

import asyncio
from typing import Annotated, Literal

from fastapi import APIRouter, Depends, Response
from fastapi.responses import JSONResponse
from prometheus_client import REGISTRY, generate_latest
from redis.exceptions import RedisError

from app import __version__
from app.core.deps import provide
from app.core.errors import ServiceUnavailable
from app.core.metrics import CONTENT_TYPE_LATEST
from app.health.schemas import Health, Readiness
from app.health.sources import HealthSources
from app.jobs.queue import QueueStats

router = APIRouter(tags=["health"])

Sources = Annotated[HealthSources, Depends(provide(HealthSources))]
ServiceState = Literal["up", "down"]

# Bound on each dependency check, so a hung Valkey cannot hang the health endpoints.
_CHECK_TIMEOUT_SECONDS = 1.0


@router.get(
    "/readyz",
    response_model=Readiness,
    responses={503: {"model": Readiness, "description": "not ready, with the reason"}},
)
async def readyz(sources: Sources) -> JSONResponse:
    """200 when this replica can do its work, else 503 with the reason."""
    reason = await _not_ready_reason(sources)
    if reason is None:
        return JSONResponse({"status": "ready"})
    return JSONResponse({"status": "not ready", "reason": sources.redact(reason)}, status_code=503)


@router.get(
    "/health",
    response_model=Health,
    responses={503: {"model": Health, "description": "Valkey or the job queue is down"}},
)
async def health(sources: Sources) -> JSONResponse:
    """The seed's health document; 503 when Valkey or the job queue is down."""
    redis_up = await sources.redis.ping(_CHECK_TIMEOUT_SECONDS)
    stats = await _queue_stats(sources) if redis_up else None
    novita = await sources.novita_health.state()
    services: dict[str, ServiceState] = {
        "novitaApi": _up(novita.up),
        "jobQueue": _up(redis_up and sources.worker.running),
        "cache": _up(redis_up),
        "redis": _up(redis_up),
    }
    reasons = {"novitaApi": novita.reason} if novita.reason else {}
    if not redis_up:
        reasons["redis"] = f"Valkey unreachable ({sources.redis.last_error})"
    elif not sources.worker.running:
        reasons["jobQueue"] = "job queue consumer not running"
    if services["redis"] == "down" or services["jobQueue"] == "down":
        status, code = "unhealthy", 503
    elif "down" in services.values():
        status, code = "degraded", 200
    else:
        status, code = "healthy", 200
    body = {
        "status": status,
        "services": services,
        "version": __version__,
        "uptimeSeconds": round(sources.process.uptime_seconds, 1),
        "queue": None if stats is None else _stats_body(stats),
        "reasons": {service: sources.redact(reason) for service, reason in reasons.items()},
        "reconciliation": await _reconciliation(sources) if redis_up else None,
    }
    return JSONResponse(body, status_code=code)


@router.get(
    "/metrics",
    response_class=Response,
    responses={
        200: {"description": "Prometheus text format", "content": {"text/plain": {"schema": {"type": "string"}}}}
    },
)
async def metrics(sources: Sources) -> Response:
    """Prometheus text format: this app's metrics plus the process-wide registry (Novita client, process)."""
    measured = sources.metrics
    measured.valkey_up.set(1 if sources.redis.is_up else 0)
    stats = await _queue_stats(sources) if sources.redis.is_up else None
    if stats is not None:
        measured.queue_depth.set(stats.depth)
        measured.queue_pending.set(stats.pending)
        measured.queue_scheduled.set(stats.scheduled)
        measured.queue_dead.set(stats.dead)
    return Response(generate_latest(REGISTRY) + measured.render(), media_type=CONTENT_TYPE_LATEST)


async def _not_ready_reason(sources: HealthSources) -> str | None:
    if sources.process.shutting_down:
        return "shutting down"
    if not await sources.redis.ping(_CHECK_TIMEOUT_SECONDS):
        prefix = "Valkey unreachable" if sources.process.ready_once else "starting: Valkey not reachable yet"
        return f"{prefix} ({sources.redis.last_error})"
    if not sources.process.index_ready:
        return "starting: building the instance list index"
    if not sources.worker.running:
        return "job queue consumer not running" if sources.process.ready_once else "starting: worker not started"
    return None


async def _queue_stats(sources: HealthSources) -> QueueStats | None:
    try:
        async with asyncio.timeout(_CHECK_TIMEOUT_SECONDS):
            return await sources.queue.depth()
    except (RedisError, OSError, TimeoutError) as error:
        sources.redis.record_failure(error)
        return None


async def _reconciliation(sources: HealthSources) -> dict[str, str | float | int] | None:
    """Progress of the background sync with Novita (shared by every replica): state, times, counts."""
    try:
        async with asyncio.timeout(_CHECK_TIMEOUT_SECONDS):
            raw = await sources.records.sync_status()
    except (ServiceUnavailable, TimeoutError):
        return None
    return {key: _number_or_text(value) for key, value in raw.items() if value != ""}


def _number_or_text(value: str) -> str | float | int:
    try:
        number = float(value)
    except ValueError:
        return value
    return int(number) if number.is_integer() and "." not in value else number


def _up(condition: bool) -> ServiceState:
    return "up" if condition else "down"


def _stats_body(stats: QueueStats) -> dict[str, int]:
    return {"depth": stats.depth, "pending": stats.pending, "scheduled": stats.scheduled, "dead": stats.dead}
