"""Job handlers of the instances: create (with cluster fallback), start, stop, restart, delete.

Each job has two phases and may run any number of times (at-least-once delivery, a worker killed mid-job):
1. issue the action on Novita, unless it is already in effect or this job already issued it;
2. watch Novita until the instance settles, one short step at a time (`RetryLater(poll_interval)`), until the
   provisioning timeout counted from the job's creation.

The job id the API returned therefore tracks the whole operation: it succeeds when the instance reached the target.
Outcomes the instance cannot recover from by retrying (no capacity anywhere, a Novita `statusError`, a timeout, a
request Novita rejects) are written to the record as `failed` with the reason, and end the job as failed.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, NoReturn

from pydantic import ValidationError

from app.core.clock import SYSTEM_CLOCK, WallClock
from app.core.config import Settings
from app.fleet import meter
from app.fleet.actions import ACTION_JOBS, CREATE_JOB, READINESS_JOB, Action
from app.fleet.schemas import BillingMode, CreateInstanceRequest, InstanceRecord, InstanceState
from app.fleet.store import InstanceStore, RecordNotFound, instance_jobs_key
from app.instances.service import InstanceService
from app.jobs.queue import Job, JobContext, JobFailed, RetryLater
from app.jobs.service import JobControl
from app.lifecycle.placement import (
    LaunchSpec,
    NoCapacity,
    Offer,
    Placement,
    PlacementError,
    PlacementRequest,
    Skipped,
)
from app.lifecycle.readiness import GaveUp, ReadinessPolicy, ReadinessProbe, ReadinessResult, RetryAfter
from app.lifecycle.webhooks import EventSink
from app.novita.client import NovitaClient
from app.novita.errors import (
    NovitaAuthError,
    NovitaBadRequest,
    NovitaError,
    NovitaNotFound,
    NovitaRateLimited,
    NovitaStateConflict,
    NovitaUnavailable,
)
from app.novita.models import CreateInstanceRequest as NovitaCreateRequest
from app.novita.models import EnvVar as NovitaEnvVar
from app.novita.models import JupyterTool as NovitaTool
from app.novita.models import NetworkStorageMount as NovitaNetworkStorage
from app.novita.ratebudget import Priority, at_priority
from app.products.service import ProductService

if TYPE_CHECKING:
    from app.jobs.worker import Worker

logger = logging.getLogger(__name__)
RecordChange = Callable[[InstanceRecord], None]

# Novita statuses that end each operation successfully.
_SETTLED_STATUSES: dict[str, frozenset[str]] = {
    "create": frozenset({"running", "exited"}),
    "start": frozenset({"running"}),
    "stop": frozenset({"exited"}),
    "restart": frozenset({"running"}),
    "delete": frozenset({"removed"}),
}
# Novita statuses in which an action is already in effect, so issuing it again is unnecessary.
_ALREADY_IN_EFFECT: dict[Action, frozenset[str]] = {
    "start": frozenset({"toStart", "starting", "running"}),
    "stop": frozenset({"toStop", "stopping", "exited"}),
    "restart": frozenset({"toRestart", "restarting"}),  # "running" does not tell: issue it (once per job)
    "delete": frozenset({"toRemove", "removing", "removed"}),
}


@dataclass
class _Outcome:
    """What a finished job reports as its result."""

    instance_id: str
    state: str
    novita_status: str | None
    detail: str = ""

    def as_result(self) -> dict[str, Any]:
        return {
            "instanceId": self.instance_id,
            "state": self.state,
            "novitaStatus": self.novita_status,
            "detail": self.detail,
        }


class InstanceJobHandlers:
    """The handlers, sharing the store, the Novita client and the product catalogue."""

    def __init__(
        self,
        settings: Settings,
        store: InstanceStore,
        novita: NovitaClient,
        products: ProductService,
        instances: InstanceService,
        events: EventSink,
        *,
        clock: WallClock = SYSTEM_CLOCK,
    ) -> None:
        self._settings = settings
        self._clock = clock  # decides deadlines (provisioning, readiness); tests pass a manual one
        self._store = store
        self._novita = novita
        self._placement = Placement(products, novita, region_order=settings.placement_regions)
        self._products = products
        self._instances = instances
        self._events = events
        self._readiness_policy = ReadinessPolicy(
            probe_timeout_seconds=settings.readiness_probe_timeout_seconds,
            retry_interval_seconds=settings.readiness_retry_interval_seconds,
            max_wait_seconds=settings.readiness_max_wait_seconds,
        )

    def register(self, worker: Worker, jobs: JobControl) -> None:
        """Register every instance job kind with the worker (their Novita calls take the job priority), and what
        cancelling one of them undoes."""
        worker.register(CREATE_JOB, at_priority(Priority.JOB, self.create))
        worker.register(READINESS_JOB, at_priority(Priority.JOB, self.readiness))
        for action, kind in ACTION_JOBS.items():
            worker.register(kind, at_priority(Priority.JOB, self._action_handler(action)))
        for kind in (CREATE_JOB, READINESS_JOB, *ACTION_JOBS.values()):
            jobs.on_cancel(kind, self.cancelled)

    # -- create ----------------------------------------------------------------------------------------------------

    async def create(self, ctx: JobContext) -> dict[str, Any] | None:
        """Create the instance on Novita (exactly once), then watch it until it runs."""
        record = await self._record_for(ctx)
        if record is None:
            return None
        if record.novita_instance_id is None and not _deletion_requested(record):
            try:
                record = await self._create_upstream(ctx, record)
            except _NOVITA_OUTAGE as error:  # safe to come back: a create that may have been sent looks its name up
                await self._wait_for_novita(ctx, record, "create", error)
            if record.novita_instance_id is not None:  # created just now: no sync can have seen it, so no look
                await self._wait_for_sync(ctx, record, "create", _issued_at(record, "create", ctx.job.id))
        if record.novita_instance_id is None:
            return _Outcome(record.id, record.state, None, "deleted before it was created").as_result()
        return await self._settle(ctx, record, "create")

    async def _create_upstream(self, ctx: JobContext, record: InstanceRecord) -> InstanceRecord:
        if record.create_attempted_at is not None:
            # A previous run may have sent the create and lost its answer (or died before recording the id): the
            # unique name tells. Only then: a first attempt has nothing to find and saves Novita the listing.
            existing = await self._novita.find_instance_by_name(record.upstream_name)
            if existing is not None:
                prices = None
                if existing.product_id:  # the offer's price was lost with the answer: the catalogue's, as created
                    prices = await self._prices(
                        record.gpu_num, record.billing_mode, existing.product_id, existing.cluster_id
                    )
                return await self._record_created(
                    ctx, record.id, existing.id, existing.cluster_id, "found_existing", prices=prices
                )

        spec_data = await self._store.get_spec(record.id)
        if spec_data is None:
            current = await self._store.get(record.id)
            if current is not None and _deletion_requested(current):
                return current  # a delete finished first and dropped the spec
            await self._fail(ctx, record.id, "the create request was lost before the instance was created")
        spec = CreateInstanceRequest.model_validate(spec_data)
        try:
            plan = await self._placement.plan(
                PlacementRequest(
                    gpu_num=spec.gpu_num,
                    billing_mode=spec.billing_mode,
                    gpu_name=spec.product_name,
                    product_id=spec.product_id,
                    cluster_ids=spec.cluster_ids,
                )
            )
            launch = await self._placement.resolve_launch(
                template_id=spec.template_id,
                image_url=spec.image_url,
                image_auth=spec.image_auth_id,
                ports=",".join(f"{p.port}/{p.type}" for p in spec.ports) or None,
                envs={env.key: env.value for env in spec.envs},
                command=spec.command,
            )
            await self._store.update(record.id, _mark_create_attempted)  # from here on, a create may exist
            placed = await self._placement.create(plan, lambda offer: _novita_request(record, spec, launch, offer))
        except NoCapacity as error:
            await self._note_skipped(ctx, record.id, error.skipped)
            await self._fail(ctx, record.id, str(error))
        except PlacementError as error:
            await self._fail(ctx, record.id, str(error))
        except ValidationError as error:
            await self._fail(ctx, record.id, f"cannot build the Novita request: {_first_error(error)}")
        except (NovitaBadRequest, NovitaNotFound) as error:  # e.g. VALIDATOR_PARAM, IMAGE_NOT_FOUND
            await self._fail(ctx, record.id, f"Novita rejected the create: {error}")
        except NovitaAuthError as error:  # retrying with the same key cannot help: fail now, with the reason
            await self._fail(ctx, record.id, f"Novita refused this service's API key: {error}")
        await self._note_skipped(ctx, record.id, placed.skipped)
        offer = placed.offer
        prices = await self._prices(spec.gpu_num, spec.billing_mode, offer.product_id, offer.cluster_id, offer.price)
        return await self._record_created(
            ctx, record.id, placed.novita_instance_id, offer.cluster_id, "created", offer.product_id, prices=prices
        )

    async def _prices(
        self,
        gpu_num: int,
        billing_mode: BillingMode,
        product_id: str,
        cluster_id: str | None,
        offered: float | None = None,
    ) -> RecordChange:
        """The change that fixes the instance's hourly prices from the offer Novita accepted, else from the catalogue
        (its meter bills at these from the moment the record holds its Novita id)."""
        raw = offered if billing_mode != "monthly" else None
        if raw is None:
            try:
                raw = await self._products.price_per_gpu_hour(product_id, cluster_id, billing_mode)
            except NovitaError:
                raw = None  # the catalogue is unreachable: the meter counts seconds, priced at 0 (README: limits)
        gpu_price = meter.hourly_gpu_price(raw, gpu_num)

        def fix(record: InstanceRecord) -> None:
            record.price_per_hour = str(gpu_price) if gpu_price is not None else None
            record.storage_price_per_hour = str(meter.hourly_storage_price(record.rootfs_size))

        return fix

    async def _note_skipped(self, ctx: JobContext, record_id: str, skipped: list[Skipped]) -> None:
        """One event per cluster passed over (`no_product` or `insufficient_resource`, detail: the cluster)."""
        for note in skipped:
            await self._add_event(record_id, note.kind, note.where, ctx.job.id)

    async def _record_created(
        self,
        ctx: JobContext,
        record_id: str,
        novita_id: str,
        cluster_id: str | None,
        how: str,
        product_id: str | None = None,
        *,
        prices: RecordChange | None,
    ) -> InstanceRecord:
        def remember(record: InstanceRecord) -> None:
            if prices is not None:  # in the same write, so the meter never runs on an instance without its price
                prices(record)
            record.novita_instance_id = novita_id
            record.cluster_id = cluster_id or record.cluster_id
            record.product_id = product_id or record.product_id
            if record.state == InstanceState.PENDING:
                record.state = InstanceState.PROVISIONING
            record.updated_at = time.time()
            where = cluster_id or "a cluster of Novita's choice"
            record.add_event(how, f"novita id {novita_id} in {where}", ctx.job.id)

        record = await self._update_and_notify(record_id, remember)
        await self._store.drop_spec(record_id)
        if _deletion_requested(record):
            # A delete was accepted while this create ran and found nothing to delete: finish its work here.
            await self._delete_upstream(novita_id)
        return record

    # -- start, stop, restart, delete ------------------------------------------------------------------------------

    def _action_handler(self, action: Action) -> Callable[[JobContext], Awaitable[dict[str, Any] | None]]:
        async def handle(ctx: JobContext) -> dict[str, Any] | None:
            return await self._run_action(ctx, action)

        handle.__name__ = f"{action}_instance"
        return handle

    async def _run_action(self, ctx: JobContext, action: Action) -> dict[str, Any] | None:
        record = await self._record_for(ctx)
        if record is None:
            return None
        try:
            if record.novita_instance_id is None and action == "delete":
                record = await self._adopt_by_name(ctx, record)
                if record.novita_instance_id is None:
                    record = await self._store.update(record.id, _mark_deleted("never created on Novita", ctx.job.id))
                    await self._store.drop_spec(record.id)
                    return _Outcome(record.id, record.state, None, "never created on Novita").as_result()
            if record.novita_instance_id is None:
                await self._fail(ctx, record.id, f"cannot {action}: the instance was never created on Novita")
            if not record.has_event(f"{action}_issued", ctx.job.id):
                await self._issue(ctx, record, action)
        except _NOVITA_OUTAGE as error:  # safe to come back: every step checks what is already in effect
            await self._wait_for_novita(ctx, record, action, error)
        return await self._settle(ctx, record, action)

    async def _adopt_by_name(self, ctx: JobContext, record: InstanceRecord) -> InstanceRecord:
        """Before deleting a record without a Novita id, check whether a create made it anyway."""
        existing = await self._novita.find_instance_by_name(record.upstream_name)
        if existing is None:
            return record
        return await self._store.update(record.id, _remember_id(existing.id, ctx.job.id))

    async def _issue(self, ctx: JobContext, record: InstanceRecord, action: Action) -> None:
        novita_id = record.novita_instance_id
        assert novita_id is not None
        try:
            live = await self._novita.get_instance(novita_id)
        except NovitaNotFound:
            live = None
        if live is None or live.status in _ALREADY_IN_EFFECT[action]:
            detail = "already in effect" if live is not None else "not found on Novita"
        else:
            try:
                await self._call_action(action, novita_id)
                detail = f"from {live.status}"
            except NovitaNotFound:
                detail = "not found on Novita"
            except NovitaStateConflict as error:
                await self._fail(
                    ctx, record.id, f"Novita refused to {action} in status {live.status}: {error}", keep_state=True
                )
            except NovitaBadRequest as error:
                await self._fail(ctx, record.id, f"Novita refused to {action}: {error}", keep_state=True)
        await self._add_event(record.id, f"{action}_issued", detail, ctx.job.id)
        await self._instances.forget_cached(novita_id)

    async def _call_action(self, action: Action, novita_id: str) -> None:
        if action == "start":
            await self._novita.start_instance(novita_id)
        elif action == "stop":
            await self._novita.stop_instance(novita_id)
        elif action == "restart":
            await self._novita.restart_instance(novita_id)
        else:
            await self._delete_upstream(novita_id)

    async def _delete_upstream(self, novita_id: str) -> None:
        with contextlib.suppress(NovitaNotFound):  # already gone: what a delete wants
            await self._novita.delete_instance(novita_id)

    # -- watching --------------------------------------------------------------------------------------------------

    async def _settle(self, ctx: JobContext, record: InstanceRecord, operation: str) -> dict[str, Any]:
        """One watching step: finish when Novita's status, as the shared background sync recorded it, is settled;
        else come back later (`_watch_delay`). No Novita call: one listing per sync period serves every instance.

        Only a sync whose listing began after this job issued its operation counts, so a status from before the
        operation (a restart's `running`) never ends the job early.
        """
        current, synced_at = await self._store.get_synced(record.id)
        record = current or record
        status, error_text = record.novita_status, record.status_error
        issued_at = _issued_at(record, operation, ctx.job.id)
        if synced_at is None or synced_at < issued_at or status is None:
            await self._wait_for_sync(ctx, record, operation, issued_at)
        if status in _SETTLED_STATUSES[operation]:
            if status == "running" and self._settings.readiness_enabled:
                # Its own job, so that this one reports `running` now; the same id whichever replica gets here.
                await ctx.queue.enqueue(
                    READINESS_JOB,
                    {"instance_id": record.id},
                    job_id=f"{ctx.job.id}-readiness",
                    listed_in=instance_jobs_key(record.id),
                )
            return _Outcome(record.id, record.state, status, f"{operation} finished").as_result()
        if status == "removed":
            await self._fail(
                ctx, record.id, f"the instance disappeared from Novita during {operation}", keep_state=True
            )
        if error_text and operation in ("create", "start", "restart"):
            await self._fail(ctx, record.id, f"Novita reports an error: {error_text}", keep_state=True)
        if self._clock() >= self._deadline(ctx):
            await self._timeout(ctx, record, operation, f"still {status}")
        await self._store.request_sync()
        raise RetryLater(self._watch_delay(ctx, issued_at), f"{operation}: Novita status {status}")

    async def _wait_for_sync(
        self, ctx: JobContext, record: InstanceRecord, operation: str, issued_at: float
    ) -> NoReturn:
        """No sync has seen the operation yet: ask for one and come back (always raises)."""
        if time.time() >= self._deadline(ctx):
            await self._timeout(ctx, record, operation, f"no sync has seen the {operation} on Novita yet")
        await self._store.request_sync()  # the sync wakes this job when it brings news of the instance
        raise RetryLater(self._watch_delay(ctx, issued_at), f"{operation}: waiting for the sync")

    def _watch_delay(self, ctx: JobContext, issued_at: float) -> float:
        """When a watching job looks again. The sync wakes it when it brings news of the instance (`queue.wake`), so
        looking is only the fallback (a status the sync does not wake for, a sync that does not run): every poll
        interval at first, then half the time waited so far, so a thousand jobs waiting on a long sync of a large
        fleet do not keep the worker busy; never past the operation's deadline."""
        now = self._clock()
        waited = now - (issued_at or ctx.job.began_at)
        poll = self._settings.instance_poll_interval_seconds
        delay = min(max(poll, waited / 2), poll * _WATCH_DELAY_MAX_POLLS)
        left = self._deadline(ctx) - now
        return min(delay, left) if left > 0 else delay

    # -- readiness -------------------------------------------------------------------------------------------------

    async def readiness(self, ctx: JobContext) -> dict[str, Any] | None:
        """Probe the instance's exposed ports, one round per step, until they all answer; then mark it ready."""
        record = await self._record_for(ctx)
        if record is None or record.novita_instance_id is None:
            return None
        try:
            live = await self._novita.get_instance(record.novita_instance_id)
        except NovitaNotFound:
            return _Outcome(record.id, record.state, "removed", "gone before it was ready").as_result()
        except NovitaError as error:  # the outage counts against the same deadline as silent ports
            result: ReadinessResult = self._readiness_policy.next_round(
                ctx.job.began_at, self._clock(), f"Novita unavailable: {error}"
            )
            novita_status = record.novita_status  # the last status we know
        else:
            probe = ReadinessProbe(self._readiness_policy)
            try:
                result = await probe.step(live, ctx.job.began_at, self._clock())
            finally:
                await probe.aclose()
            novita_status = live.status
        if isinstance(result, RetryAfter):
            raise RetryLater(result.seconds, result.reason)
        if isinstance(result, GaveUp):
            await self._add_event(record.id, "readiness_gave_up", result.reason, ctx.job.id)
            await self._events.emit("instance.readiness_failed", record.id, {"reason": result.reason})
            return _Outcome(record.id, record.state, novita_status, f"not ready: {result.reason}").as_result()
        record = await self._store.update(record.id, _mark_ready(result.endpoints, ctx.job.id))
        if record.ready_at is None:  # it stopped running meanwhile
            return _Outcome(record.id, record.state, novita_status, "no longer running").as_result()
        await self._events.emit("instance.ready", record.id, {"endpoints": result.endpoints})
        return _Outcome(record.id, record.state, novita_status, "ready").as_result()

    # -- cancel ----------------------------------------------------------------------------------------------------

    async def cancelled(self, job: Job) -> None:
        """A job of this instance was cancelled before it ran: note it, and undo what requesting the job changed.

        A create that never reached Novita leaves the record `failed` (should an ambiguous create have made the
        instance after all, reconciliation adopts it); a start/stop/restart/delete returns the record to the state
        Novita last reported, since the requested transition will not happen. A later request owns the state, so only
        the record's latest job is undone.
        """
        instance_id = str(job.payload.get("instance_id", ""))

        def undo(record: InstanceRecord) -> None:
            record.add_event("job_cancelled", f"{job.kind} cancelled before it ran", job.id)
            record.updated_at = time.time()
            if record.last_job_id != job.id:
                return
            if job.kind == CREATE_JOB and record.novita_instance_id is None:
                record.state = InstanceState.FAILED
                record.status_error = "the create was cancelled before Novita had the instance"
            elif job.kind != CREATE_JOB and record.novita_status is not None:
                record.apply_novita(record.novita_status, record.status_error)

        try:
            record = await self._update_and_notify(instance_id, undo)
        except RecordNotFound:
            return
        if job.kind == CREATE_JOB and record.novita_instance_id is None:
            await self._store.drop_spec(record.id)  # the env values in it are no longer needed

    def _deadline(self, ctx: JobContext) -> float:
        return ctx.job.began_at + self._settings.instance_provisioning_timeout_seconds

    async def _wait_for_novita(
        self, ctx: JobContext, record: InstanceRecord, operation: str, error: NovitaError
    ) -> NoReturn:
        """Novita is down or throttling us: come back later, until the operation's deadline, rather than spend the
        job's retry attempts (an outage longer than their backoff would dead-letter an accepted operation)."""
        if self._clock() < self._deadline(ctx):
            delay = max(self._settings.instance_poll_interval_seconds, getattr(error, "retry_after", None) or 0.0)
            raise RetryLater(delay, f"Novita unavailable: {error}")
        await self._timeout(ctx, record, operation, f"Novita unavailable: {error}")

    async def _timeout(self, ctx: JobContext, record: InstanceRecord, operation: str, detail: str) -> NoReturn:
        timeout = self._settings.instance_provisioning_timeout_seconds
        await self._fail(ctx, record.id, f"{operation} did not finish within {timeout:g} s ({detail})")

    # -- record helpers --------------------------------------------------------------------------------------------

    async def _record_for(self, ctx: JobContext) -> InstanceRecord | None:
        instance_id = str(ctx.job.payload.get("instance_id", ""))
        record = await self._store.get(instance_id)
        if record is None:
            logger.warning(
                "job for an unknown instance record; nothing to do",
                extra={"job_id": ctx.job.id, "instance_id": instance_id},
            )
        return record

    async def _update_and_notify(self, record_id: str, change: RecordChange) -> InstanceRecord:
        """Apply `change` to the record; if that moved it to another state, send `instance.state_changed`."""
        before: list[InstanceState] = []

        def tracked(record: InstanceRecord) -> None:
            before[:] = [record.state]  # the store may re-run `change` after a conflicting write: keep the last
            change(record)

        record = await self._store.update(record_id, tracked)
        if before and before[0] != record.state:
            await self._events.emit(
                "instance.state_changed",
                record.id,
                {
                    "from": before[0].value,
                    "to": record.state.value,
                    "novitaStatus": record.novita_status,
                    "statusError": record.status_error,
                },
            )
        return record

    async def _add_event(self, record_id: str, action: str, detail: str, job_id: str) -> None:
        def add(record: InstanceRecord) -> None:
            record.add_event(action, detail, job_id)
            record.updated_at = time.time()

        await self._store.update(record_id, add)

    async def _fail(self, ctx: JobContext, record_id: str, reason: str, *, keep_state: bool = False) -> NoReturn:
        """Record a failure the job cannot fix by retrying, and end the job as failed (always raises).

        `keep_state` keeps the instance's state (e.g. a refused stop of a running instance leaves it running);
        otherwise the instance is marked `failed`.
        """

        def mark(record: InstanceRecord) -> None:
            if not keep_state:
                record.state = InstanceState.FAILED
                record.status_error = reason
            elif (
                record.state
                in (InstanceState.STARTING, InstanceState.STOPPING, InstanceState.RESTARTING, InstanceState.DELETING)
                and record.novita_status is not None
            ):
                record.apply_novita(record.novita_status, record.status_error)  # undo the requested state
            record.updated_at = time.time()
            record.add_event("failed", reason, ctx.job.id)

        try:
            failed = await self._update_and_notify(record_id, mark)
            await self._instances.forget_cached(failed.novita_instance_id)
        except RecordNotFound:
            pass
        raise JobFailed(reason)


# A watching job's fallback poll grows with its wait up to this many poll intervals (a minute by default).
_WATCH_DELAY_MAX_POLLS = 12

# Upstream failures that time cures; the client has already retried them with backoff.
_NOVITA_OUTAGE = (NovitaUnavailable, NovitaRateLimited)


def _novita_request(
    record: InstanceRecord, spec: CreateInstanceRequest, launch: LaunchSpec, offer: Offer
) -> NovitaCreateRequest:
    return NovitaCreateRequest(
        name=record.upstream_name,
        product_id=offer.product_id,
        gpu_num=spec.gpu_num,
        rootfs_size=spec.rootfs_size,
        image_url=launch.image_url,
        # Credentials given with the request replace any registry auth (a template's included).
        image_auth_id=None if spec.image_auth else launch.image_auth_id,
        image_auth=spec.image_auth,
        ports=launch.ports,
        envs=[NovitaEnvVar(key=key, value=value) for key, value in launch.envs.items()] or None,
        command=launch.command,
        entrypoint=spec.entrypoint,
        tools=[NovitaTool(name=tool.name, port=str(tool.port), type=tool.type) for tool in spec.tools] or None,
        network_storages=[
            NovitaNetworkStorage(id=mount.id, mount_point=mount.mount_point) for mount in spec.network_storages
        ]
        or None,
        cluster_id=offer.cluster_id,
        billing_mode=spec.billing_mode,
        month=spec.months,
        min_cuda_version=spec.min_cuda_version,
    )


def _deletion_requested(record: InstanceRecord) -> bool:
    return record.state in (InstanceState.DELETING, InstanceState.DELETED)


def _first_error(error: ValidationError) -> str:
    first = error.errors(include_input=False, include_url=False)[0]
    return f"{'.'.join(str(part) for part in first['loc'])}: {first['msg']}"


def _mark_create_attempted(record: InstanceRecord) -> None:
    record.create_attempted_at = record.create_attempted_at or time.time()


def _issued_at(record: InstanceRecord, operation: str, job_id: str) -> float:
    """When this job sent its operation to Novita (0 when it did not need to: found existing, already in effect)."""
    if operation == "create":
        return record.create_attempted_at or 0.0
    return max((e.at for e in record.events if e.action == f"{operation}_issued" and e.job_id == job_id), default=0.0)


def _remember_id(novita_id: str, job_id: str) -> RecordChange:
    def remember(record: InstanceRecord) -> None:
        record.novita_instance_id = novita_id
        record.add_event("found_existing", f"novita id {novita_id}", job_id)

    return remember


def _mark_ready(endpoints: list[str], job_id: str) -> RecordChange:
    def mark(record: InstanceRecord) -> None:
        if record.state == InstanceState.RUNNING:
            record.ready_at = record.updated_at = time.time()
            record.add_event("ready", ", ".join(endpoints) or "no exposed port", job_id)

    return mark


def _mark_deleted(detail: str, job_id: str) -> RecordChange:
    def mark(record: InstanceRecord) -> None:
        record.state = InstanceState.DELETED
        record.updated_at = time.time()
        record.add_event("deleted", detail, job_id)

    return mark
