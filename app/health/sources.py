"""What the health endpoints read: the parts of the app whose state they report (built by the composition root)."""

from __future__ import annotations

from dataclasses import dataclass

from app.core.logging import SecretRedactor
from app.core.metrics import Metrics
from app.core.process import ProcessState
from app.core.redis import RedisManager
from app.fleet.store import InstanceStore
from app.health.novita import NovitaHealth
from app.jobs.queue import JobQueue
from app.jobs.worker import Worker


@dataclass(frozen=True)
class HealthSources:
    """One app's Valkey connection, job queue and worker, start-up progress, Novita's last known state, the instance
    records (for the sync's progress), metrics, and the redactor every reason passes through."""

    redis: RedisManager
    queue: JobQueue
    worker: Worker
    process: ProcessState
    novita_health: NovitaHealth
    records: InstanceStore
    metrics: Metrics
    redact: SecretRedactor
