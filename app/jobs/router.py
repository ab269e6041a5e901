"""HTTP API of jobs: state of one job, the dead letters, cancel and requeue."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, Path, Query
from pydantic import BaseModel, ConfigDict
from pydantic.alias_generators import to_camel

from app.access.auth import OperateCaller, ReadCaller, authenticate
from app.access.ownership import sees
from app.access.principal import Principal
from app.core.deps import provide
from app.core.errors import NotFound
from app.core.openapi import AUTHENTICATED_RESPONSES, problem
from app.fleet.actions import ACTION_JOBS, CREATE_JOB, READINESS_JOB
from app.fleet.store import InstanceStore
from app.jobs.queue import Job, JobQueue
from app.jobs.service import JobControl

router = APIRouter(
    prefix="/api/jobs", tags=["jobs"], dependencies=[Depends(authenticate)], responses=AUTHENTICATED_RESPONSES
)

Queue = Annotated[JobQueue, Depends(provide(JobQueue))]
Control = Annotated[JobControl, Depends(provide(JobControl))]
Records = Annotated[InstanceStore, Depends(provide(InstanceStore))]
# Enums in the schema, so that generated clients get them as types: every state a job passes through (see
# app/jobs/queue.py) and every kind of job this app queues. The queue itself is generic (a newer replica may queue
# a kind this one does not know), so a kind outside the enum is still a string, not a 500.
JobState = Literal["queued", "scheduled", "running", "succeeded", "failed", "dead", "cancelled"]
JobKind = Literal[(CREATE_JOB, *ACTION_JOBS.values(), READINESS_JOB)]  # type: ignore[valid-type]


class JobView(BaseModel):
    """A job as clients see it; the payload is left out because it may carry secrets (instance envs)."""

    model_config = ConfigDict(alias_generator=to_camel, populate_by_name=True, serialize_by_alias=True)

    id: str
    kind: JobKind | str  # type: ignore[valid-type]  # a Literal built from the job kinds: one list to keep
    state: JobState
    attempts: int
    last_error: str | None
    created_at: float
    updated_at: float
    result: dict[str, Any] | None
    requeued_at: float | None

    @classmethod
    def of(cls, job: Job) -> JobView:
        """View of a stored job."""
        return cls(
            id=job.id,
            kind=job.kind,
            state=job.state,
            attempts=job.attempts,
            last_error=job.last_error,
            created_at=job.created_at,
            updated_at=job.updated_at,
            result=job.result,
            requeued_at=job.requeued_at or None,
        )


class DeadLetterList(BaseModel):
    """Answer of `GET /api/jobs/dead-letters`, most recent first."""

    items: list[JobView]


async def job_visible(job: Job, records: InstanceStore, caller: Principal) -> bool:
    """Whether `caller` sees this job: a job is its instance's, so the instance must be visible (a job for no
    instance, or for one whose record is gone, is for admins only)."""
    if caller.is_admin:
        return True
    instance_id = job.payload.get("instance_id")
    record = await records.get(instance_id) if isinstance(instance_id, str) else None
    return record is not None and sees(caller, record.team)


async def visible_job(queue: JobQueue, records: InstanceStore, job_id: str, caller: Principal) -> Job:
    """The job, or 404 when it does not exist or `caller` does not see it (alike)."""
    job = await queue.get(job_id)
    if job is None or not await job_visible(job, records, caller):
        raise NotFound(f"no job with id '{job_id}'")
    return job


@router.get("/dead-letters", response_model=DeadLetterList)
async def list_dead_letters(
    queue: Queue, records: Records, caller: ReadCaller, limit: Annotated[int, Query(ge=1, le=1000)] = 100
) -> DeadLetterList:
    """Jobs that exhausted their attempts, among the latest `limit`: those of the key's team's instances (every one
    for an admin)."""
    dead = await queue.dead_letters(limit)
    return DeadLetterList(items=[JobView.of(job) for job in dead if await job_visible(job, records, caller)])


JobId = Annotated[str, Path(pattern=r"^[A-Za-z0-9_.:-]{1,128}$")]


@router.get("/{job_id}", response_model=JobView, responses={404: problem("no job with this id")})
async def get_job(queue: Queue, records: Records, job_id: JobId, caller: ReadCaller) -> JobView:
    """State, attempts and last error of a job (of an instance the key's team owns, unless an admin asks)."""
    return JobView.of(await visible_job(queue, records, job_id, caller))


@router.post(
    "/{job_id}/cancel",
    response_model=JobView,
    responses={
        404: problem("no job with this id"),
        409: problem("the job is running or finished: only a waiting job can be cancelled"),
    },
)
async def cancel_job(control: Control, queue: Queue, records: Records, job_id: JobId, caller: OperateCaller) -> JobView:
    """Cancel a job that has not started (queued, or scheduled for a retry or its next step); it will never run.
    404 for an unknown job, 409 when it is running or finished."""
    await visible_job(queue, records, job_id, caller)
    return JobView.of(await control.cancel(job_id))


@router.post(
    "/{job_id}/requeue",
    response_model=JobView,
    responses={404: problem("no job with this id"), 409: problem("the job is not dead-lettered")},
)
async def requeue_job(
    control: Control, queue: Queue, records: Records, job_id: JobId, caller: OperateCaller
) -> JobView:
    """Queue a dead-lettered job again, with its attempts reset and its deadlines counted from now.
    404 for an unknown job, 409 when it is not dead."""
    await visible_job(queue, records, job_id, caller)
    return JobView.of(await control.requeue(job_id))
