"""Job control for the API: cancel a job that has not started, requeue a dead letter.

The state changes themselves are atomic scripts in `app/jobs/queue.py`; this module maps their outcome to the API's
errors (404 unknown, 409 wrong state) and runs what a job's kind registered to undo when one of its jobs is cancelled
(e.g. an instance left in `stopping` by a stop that will now never run).
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable

from app.core.errors import Conflict, NotFound
from app.jobs.queue import CANCELLABLE_STATES, Job, JobQueue

logger = logging.getLogger(__name__)

CancelHook = Callable[[Job], Awaitable[None]]


class JobControl:
    """Cancel and requeue jobs by id; safe on any replica and against a worker picking the job up meanwhile."""

    def __init__(self, queue: JobQueue, *, retention_seconds: int) -> None:
        self._queue = queue
        self._retention_seconds = retention_seconds
        self._on_cancel: dict[str, CancelHook] = {}

    def on_cancel(self, kind: str, hook: CancelHook) -> None:
        """Run `hook` after a job of `kind` was cancelled (once, on the replica that cancelled it)."""
        self._on_cancel[kind] = hook

    async def cancel(self, job_id: str) -> Job:
        """Cancel a queued or scheduled job: 404 when unknown, 409 when it runs or has finished."""
        previous = await self._queue.cancel(job_id, self._retention_seconds)
        if previous is None:
            raise NotFound(f"no job with id '{job_id}'")
        if previous not in CANCELLABLE_STATES:
            raise Conflict(f"job '{job_id}' is {previous}: only a queued or scheduled job can be cancelled")
        job = await self._get(job_id)
        logger.info("job cancelled", extra={"jobId": job.id, "kind": job.kind, "previousState": previous})
        hook = self._on_cancel.get(job.kind)
        if hook is not None:
            await hook(job)
        return job

    async def requeue(self, job_id: str) -> Job:
        """Queue a dead-lettered job again with a fresh attempt budget: 404 when unknown, 409 when it is not dead."""
        previous, job = await self._queue.requeue(job_id)
        if previous is None:
            raise NotFound(f"no job with id '{job_id}'")
        if previous != "dead":
            raise Conflict(f"job '{job_id}' is {previous}: only a dead-lettered job can be requeued")
        assert job is not None  # the script answers the job whenever it was dead
        logger.info("dead job requeued", extra={"jobId": job.id, "kind": job.kind})
        return job  # as requeued: a worker may already be running it

    async def _get(self, job_id: str) -> Job:
        job = await self._queue.get(job_id)
        if job is None:  # its retention ran out between the script and this read
            raise NotFound(f"no job with id '{job_id}'")
        return job
