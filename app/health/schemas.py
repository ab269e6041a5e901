"""Answers of the health endpoints, declared so that `/openapi.json` describes their 200 and 503 bodies exactly."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel

ServiceState = Literal["up", "down"]


class Readiness(BaseModel):
    """`/readyz`: `ready` (200), or `not ready` (503) with the reason."""

    status: Literal["ready", "not ready"]
    reason: str | None = None


class HealthServices(BaseModel):
    """Each dependency, as the seed reported them."""

    novitaApi: ServiceState
    jobQueue: ServiceState
    cache: ServiceState
    redis: ServiceState


class QueueCounts(BaseModel):
    """Jobs waiting, being worked on, scheduled for later, and dead-lettered."""

    depth: int
    pending: int
    scheduled: int
    dead: int


class Health(BaseModel):
    """`/health`: `healthy` or `degraded` (only Novita down) with 200, `unhealthy` (Valkey or the queue down) with 503."""

    status: Literal["healthy", "degraded", "unhealthy"]
    services: HealthServices
    version: str
    uptimeSeconds: float
    queue: QueueCounts | None
    # Why each service that is down is down (`novitaApi`: a refused key, recent failures, the open breaker); no secret.
    reasons: dict[str, str] = {}
    # Progress of the background sync with Novita shared by every replica (state, times, counts); null without Valkey.
    reconciliation: dict[str, str | float | int] | None = None
