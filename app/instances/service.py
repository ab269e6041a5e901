"""Rules of the instances API: accept creates and actions durably (with idempotency), list and show instances.

The slow work happens in job handlers (`app.instances.handlers`); this module only decides whether a request is valid,
writes the record, and queues the job.  A request is "accepted" (202) only once its job is written to Valkey.
"""

from __future__ import annotations

import re
import secrets
import time
from typing import Any

from app.access.ownership import listed_team, sees
from app.access.principal import Principal
from app.billing.budgets import BudgetService
from app.core.cache import Cache
from app.core.config import Settings
from app.core.errors import Conflict, NotFound, ValidationFailed
from app.fleet.actions import ACTION_JOBS, CREATE_JOB, Action
from app.fleet.index import Cursor, ListOrder, external_member
from app.fleet.schemas import (
    REVEAL_SECRETS,
    AcceptedResponse,
    CreateInstanceRequest,
    HeartbeatView,
    InstancePage,
    InstanceRecord,
    InstanceState,
    InstanceView,
)
from app.fleet.store import InstanceStore, RecordNotFound, instance_jobs_key
from app.fleet.views import overlay, upstream_name
from app.jobs.queue import Job, JobQueue
from app.lifecycle.activity import ActivityStore
from app.lifecycle.webhooks import UnsafeWebhookUrl, WebhookNotifier
from app.novita.client import NovitaClient
from app.novita.errors import NovitaError, NovitaNotFound
from app.novita.models import Instance

# From which of our states each action may be requested (anything else is 409).  The state a request moves the record
# to at once makes a second identical request a 409 too, until Novita reports the outcome.
_S = InstanceState
ACTION_ALLOWED_FROM: dict[Action, frozenset[InstanceState]] = {
    "start": frozenset({_S.STOPPED}),
    "stop": frozenset({_S.RUNNING, _S.STARTING, _S.RESTARTING, _S.FAILED}),
    "restart": frozenset({_S.RUNNING, _S.FAILED}),
    "delete": frozenset(set(InstanceState) - {_S.DELETING, _S.DELETED}),
}
ACTION_TRANSITIONAL_STATE: dict[Action, InstanceState] = {
    "start": _S.STARTING,
    "stop": _S.STOPPING,
    "restart": _S.RESTARTING,
    "delete": _S.DELETING,
}

# Cached view of one Novita instance (for `GET /api/instances/{id}`); a change we make drops that one key.
NOVITA_CACHE_PREFIX = "instances:novita:"

_ENV_VALUES: dict[str, Any] = {"envs": {"__all__": {"value"}}}
_IDEMPOTENCY_KEY = re.compile(r"^[\x21-\x7e]{1,255}$")  # printable ASCII, no spaces


def cached_view_keys(novita_ids: list[str]) -> list[str]:
    """The cache keys of these instances' Novita views (dropped when we or the sync see them change)."""
    return [NOVITA_CACHE_PREFIX + novita_id for novita_id in novita_ids]


def _team_scoped(idempotency_key: str, team: str | None) -> str:
    """Where a team's idempotency key is kept: prefixed by the team and a space, which no key may contain (so no
    two teams' keys meet); a key of no team (admins) is kept as it was before teams existed."""
    return idempotency_key if team is None else f"{team} {idempotency_key}"


def new_record_id() -> str:
    """A record id: 16 lowercase hex characters (also the suffix that makes the upstream name unique)."""
    return secrets.token_hex(8)


def new_job_id() -> str:
    """A job id chosen before enqueueing, so an idempotency key can name it before the job exists."""
    return secrets.token_hex(12)


def create_spec(request: CreateInstanceRequest) -> dict[str, Any]:
    """What the create job needs beyond the record (env values and `imageAuth` included: kept until Novita has the
    instance)."""
    return request.model_dump(mode="json", context=REVEAL_SECRETS)


class InstanceService:
    """API-side operations on instances."""

    def __init__(
        self,
        settings: Settings,
        store: InstanceStore,
        queue: JobQueue,
        novita: NovitaClient,
        cache: Cache,
        activity: ActivityStore,
        webhooks: WebhookNotifier,
        budgets: BudgetService | None = None,
    ) -> None:
        self._settings = settings
        self._store = store
        self._queue = queue
        self._novita = novita
        self._cache = cache
        self._activity = activity
        self._webhooks = webhooks
        self._budgets = budgets  # None: no budgets enforced (tests of other parts)

    @property
    def store(self) -> InstanceStore:
        """The record store (shared with the job handlers)."""
        return self._store

    async def create(
        self, request: CreateInstanceRequest, idempotency_key: str | None, owner: Principal
    ) -> AcceptedResponse:
        """Record the instance, owned by `owner`'s team, and queue its create job; with an idempotency key, a replay
        returns the first result. The team's budget is checked, and its GPUs reserved, before anything is written (409
        if not).

        A replay whose first attempt stopped half-way (e.g. Valkey failed after the key was claimed) finishes the
        acceptance with the same ids, so retrying with the same key is always safe. Idempotency keys are per team:
        another team's identical key neither replays nor reveals this one's instance.
        """
        record_id, job_id = new_record_id(), new_job_id()
        team = owner.team
        replay = False
        if idempotency_key is not None:
            if not _IDEMPOTENCY_KEY.match(idempotency_key):
                raise ValidationFailed(
                    "Idempotency-Key must be 1-255 printable ASCII characters without spaces",
                    field="header.Idempotency-Key",
                )
            claim = {"fingerprint": request.fingerprint(), "instance_id": record_id, "job_id": job_id}
            existing = await self._store.claim_idempotency_key(
                _team_scoped(idempotency_key, team), claim, self._settings.idempotency_ttl_seconds
            )
            if existing is not None:
                if existing["fingerprint"] != claim["fingerprint"]:
                    raise ValidationFailed(
                        "this Idempotency-Key was already used with a different request body",
                        field="header.Idempotency-Key",
                    )
                record_id, job_id, replay = existing["instance_id"], existing["job_id"], True

        if request.webhook_url is not None:
            await self.set_webhook_url(record_id, request.webhook_url)
        if self._budgets is not None:
            await self._budgets.reserve(team, record_id, request.gpu_num)  # idempotent: a replay holds its GPUs
        try:
            return await self._accept_create(request, record_id, job_id, team, replay)
        except BaseException:
            if self._budgets is not None and not replay:
                await self._budgets.release(team, record_id)
            raise

    async def _accept_create(
        self, request: CreateInstanceRequest, record_id: str, job_id: str, team: str | None, replay: bool
    ) -> AcceptedResponse:
        now = time.time()
        record = InstanceRecord(
            id=record_id,
            name=request.name,
            team=team,
            upstream_name=upstream_name(request.name, record_id),
            product_id=request.product_id,
            product_name=request.product_name,
            gpu_num=request.gpu_num,
            rootfs_size=request.rootfs_size,
            image_url=request.image_url,
            template_id=request.template_id,
            cluster_preference=request.cluster_ids,
            billing_mode=request.billing_mode,
            auto_migrate=request.auto_migrate,
            ports=request.ports,
            env_keys=[env.key for env in request.envs],
            created_at=now,
            updated_at=now,
            last_job_id=job_id,
        )
        record.add_event("create_requested", job_id=job_id)
        await self._store.create(record, create_spec(request))  # a no-op on a replay: the record exists
        if replay:
            record = await self._store.get(record_id) or record
        # Enqueue is the last write: once it succeeded the request is accepted, and nothing after it may fail.
        await self._queue.enqueue(  # an existing id: a no-op
            CREATE_JOB, {"instance_id": record_id}, job_id=job_id, listed_in=instance_jobs_key(record_id)
        )
        return AcceptedResponse(instance=InstanceView.from_record(record), job_id=job_id)

    async def request_action(self, instance_id: str, action: Action, caller: Principal) -> AcceptedResponse:
        """Queue start/stop/restart/delete: 404 for an id unknown (or not visible) to `caller`, 409 when the current
        state forbids it."""
        record = await self._get_record(instance_id, caller)
        if record.state not in ACTION_ALLOWED_FROM[action]:
            allowed = ", ".join(sorted(ACTION_ALLOWED_FROM[action]))
            raise Conflict(f"cannot {action} an instance that is {record.state.value} (allowed from: {allowed})")
        job_id = new_job_id()
        budgets = self._budgets if action == "start" else None  # a start takes the GPUs back: the budget decides
        if budgets is not None:
            await budgets.reserve(record.team, record.id, record.gpu_num)
        # Job first: if Valkey fails before the record update, the job still runs and sets the state itself.
        try:
            await self._queue.enqueue(
                ACTION_JOBS[action],
                {"instance_id": instance_id},
                job_id=job_id,
                listed_in=instance_jobs_key(instance_id),
            )
        except BaseException:
            if budgets is not None:
                await budgets.release(record.team, record.id)
            raise

        def mark_requested(current: InstanceRecord) -> None:
            current.state = ACTION_TRANSITIONAL_STATE[action]
            current.last_job_id = job_id
            current.updated_at = time.time()
            current.add_event(f"{action}_requested", job_id=job_id)

        updated = await self._store.update(instance_id, mark_requested)
        await self.forget_cached(updated.novita_instance_id)
        return AcceptedResponse(instance=InstanceView.from_record(updated), job_id=job_id)

    async def jobs(self, instance_id: str, limit: int, caller: Principal) -> list[Job]:
        """The instance's newest `limit` jobs, newest first (404 for an id `caller` cannot see); the queue lists every
        job queued for it (create, actions, readiness checks) while the job's record is retained."""
        record = await self._get_record(instance_id, caller)
        return await self._queue.listed(instance_jobs_key(record.id), limit)

    async def heartbeat(self, instance_id: str, caller: Principal, at: float | None = None) -> HeartbeatView:
        """Note that the instance is in use (now, or at `at`): idle auto-stop counts from the latest heartbeat."""
        record = await self._get_record(instance_id, caller)
        if record.state in (InstanceState.DELETING, InstanceState.DELETED):
            raise Conflict(f"instance {instance_id!r} is {record.state.value}: there is nothing to keep alive")
        used_at = time.time() if at is None else at
        await self._activity.heartbeat(record.id, used_at)
        return HeartbeatView(instance_id=record.id, last_used_at=used_at)

    async def set_webhook_url(self, instance_id: str, url: str) -> None:
        """Send this instance's events to `url` too; a URL the webhook guard refuses is a 422 on `webhookUrl`."""
        try:
            await self._webhooks.set_instance_url(instance_id, url)
        except UnsafeWebhookUrl as error:
            raise ValidationFailed(f"webhookUrl refused: {error}", field="body.webhookUrl") from None

    async def get(self, instance_id: str, caller: Principal) -> InstanceView:
        """Our record with Novita's live status laid over it (the record alone when Novita cannot be reached)."""
        record = await self._get_record(instance_id, caller)
        view = InstanceView.from_record(record, synced_at=await self._store.synced_at(record.id))
        if record.novita_instance_id is None or record.state == InstanceState.DELETED:
            return view
        try:
            live = await self._novita_instance(record.novita_instance_id)
        except NovitaNotFound:
            return view.model_copy(update={"state": InstanceState.DELETED, "novita_status": "removed"})
        except NovitaError:
            return view
        return overlay(view, live)

    async def list_instances(
        self,
        caller: Principal,
        *,
        state: InstanceState | None,
        name: str | None,
        page: int,
        page_size: int,
        cursor: str | None = None,
        order: ListOrder = "newest",
    ) -> InstancePage:
        """A page of what `caller` sees (its team's instances; every one for an admin), newest first (or by name,
        sorted in Valkey; pages by `page` only): no Novita call, and only the page's records are read.

        Novita's view of each instance (instances made elsewhere included, `managed: false`, admins only) is folded
        into the index by the background sync; `syncedAt` says when it last saw each one.
        """
        after: Cursor | None = None
        if cursor is not None and order != "newest":
            raise ValidationFailed("a cursor pages the newest-first order only", field="query.cursor")
        if cursor is not None:
            try:
                after = Cursor.decode(cursor)
            except ValueError as error:
                raise ValidationFailed(f"cursor: {error}", field="query.cursor") from None
        offset = 0 if after is not None else (page - 1) * page_size
        found = await self._store.page(
            state=state, name=name, offset=offset, count=page_size, cursor=after, team=listed_team(caller), order=order
        )
        records = {record.id: record for record in found.records}
        externals = {external_member(view["novitaInstanceId"]): view for view in found.externals}
        items: list[InstanceView] = []
        for member in found.members:
            synced = found.synced_at.get(member)
            if member in records:
                items.append(InstanceView.from_record(records[member], synced_at=synced))
            else:
                items.append(InstanceView.model_validate({**externals[member], "syncedAt": synced}))
        more = offset + len(items) < found.total if after is None else len(items) == page_size
        next_cursor = (
            Cursor(found.scores[-1], found.members[-1]).encode() if items and more and order == "newest" else None
        )
        sync = found.sync_status
        return InstancePage(
            items=items,
            total=found.total,
            page=page,
            page_size=page_size,
            next_cursor=next_cursor,
            novita_synced=sync.get("state") != "failed" and sync.get("lastSuccessAt") is not None,
            last_synced_at=float(sync["lastSuccessAt"]) if sync.get("lastSuccessAt") else None,
        )

    async def set_owner(self, instance_id: str, team: str | None) -> InstanceView:
        """Give the instance to `team` (None: unowned, admins only); the caller is an admin (the route checks)."""

        previous: list[str | None] = []

        def reassign(current: InstanceRecord) -> None:
            previous[:] = [current.team]
            if current.team != team:
                current.add_event("owner_changed", detail=f"{current.team or 'none'} -> {team or 'none'}")
                current.team = team
                current.updated_at = time.time()

        try:
            record = await self._store.update(instance_id, reassign)
        except RecordNotFound:
            raise NotFound(f"no instance with id {instance_id!r}") from None
        if self._budgets is not None and previous and previous[0] != team:
            await self._budgets.move(previous[0], team, record.id)  # its GPUs now count against the new team
        return InstanceView.from_record(record, synced_at=await self._store.synced_at(record.id))

    async def forget_cached(self, novita_id: str | None) -> None:
        """Drop the cached Novita view of one instance (after we changed it); by key, never by scanning."""
        if novita_id is not None:
            await self._cache.invalidate(keys=cached_view_keys([novita_id]))

    async def _novita_instance(self, novita_id: str) -> Instance:
        """One instance as Novita shows it, cached like the list so that reads never queue on the Novita rate limit."""

        async def load() -> dict[str, Any]:
            return (await self._novita.get_instance(novita_id)).model_dump(by_alias=True, exclude=_ENV_VALUES)

        raw = await self._cache.get_or_load(
            NOVITA_CACHE_PREFIX + novita_id, self._settings.cache_ttl_instances_seconds, load
        )
        return Instance.model_validate(raw)

    async def visible_record(self, instance_id: str, caller: Principal) -> InstanceRecord | None:
        """The record if `caller` may see it; None when it does not exist or belongs to another team (alike)."""
        record = await self._store.get(instance_id)
        return record if record is not None and sees(caller, record.team) else None

    async def _get_record(self, instance_id: str, caller: Principal) -> InstanceRecord:
        record = await self.visible_record(instance_id, caller)
        if record is None:
            raise NotFound(f"no instance with id {instance_id!r}")
        return record
