"""HTTP API of jobs: state of one job, the dead letters, cancel and requeue."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, Path, Query
from pydantic import BaseModel, ConfigDict
from pydantic.alias_generators import to_camel

from app.core.auth import require_api_key
from app.core.deps import provide
from app.core.errors import NotFound
from app.core.openapi import AUTHENTICATED_RESPONSES, problem
from app.fleet.actions import ACTION_JOBS, CREATE_JOB, READINESS_JOB
from app.jobs.queue import Job, JobQueue
from app.jobs.service import JobControl

router = APIRouter(
    prefix="/api/jobs", tags=["jobs"], dependencies=[Depends(require_api_key)], responses=AUTHENTICATED_RESPONSES
)

Queue = Annotated[JobQueue, Depends(provide(JobQueue))]
Control = Annotated[JobControl, Depends(provide(JobControl))]
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


@router.get("/dead-letters", response_model=DeadLetterList)
async def list_dead_letters(queue: Queue, limit: Annotated[int, Query(ge=1, le=1000)] = 100) -> DeadLetterList:
    """Jobs that exhausted their attempts."""
    return DeadLetterList(items=[JobView.of(job) for job in await queue.dead_letters(limit)])


JobId = Annotated[str, Path(pattern=r"^[A-Za-z0-9_.:-]{1,128}$")]


@router.get("/{job_id}", response_model=JobView, responses={404: problem("no job with this id")})
async def get_job(queue: Queue, job_id: JobId) -> JobView:
    """State, attempts and last error of a job."""
    job = await queue.get(job_id)
    if job is None:
        raise NotFound(f"no job with id '{job_id}'")
    return JobView.of(job)


@router.post(
    "/{job_id}/cancel",
    response_model=JobView,
    responses={
        404: problem("no job with this id"),
        409: problem("the job is running or finished: only a waiting job can be cancelled"),
    },
)
async def cancel_job(control: Control, job_id: JobId) -> JobView:
    """Cancel a job that has not started (queued, or scheduled for a retry or its next step); it will never run.
    404 for an unknown job, 409 when it is running or finished."""
    return JobView.of(await control.cancel(job_id))


@router.post(
    "/{job_id}/requeue",
    response_model=JobView,
    responses={404: problem("no job with this id"), 409: problem("the job is not dead-lettered")},
)
async def requeue_job(control: Control, job_id: JobId) -> JobView:
    """Queue a dead-lettered job again, with its attempts reset and its deadlines counted from now.
    404 for an unknown job, 409 when it is not dead."""
    return JobView.of(await control.requeue(job_id))
