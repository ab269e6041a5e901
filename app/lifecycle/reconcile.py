"""Reconciliation, which is also the shared status sync: Novita is the truth about what exists; our records follow it.

One pass lists every instance on Novita once (one call per page, whatever the fleet size) and, under a lease in Valkey
(so one replica at a time does it):
- refreshes each record whose Novita status changed (and emits `instance.state_changed`);
- adopts an instance created for a record that never learned its id (a create whose answer was lost): the record
  is found by the unique upstream name (`app.instances.service.upstream_name`). A record still `pending` is left
  to its create job (which looks the name up itself) for `adopt_pending_after_seconds`;
- rebuilds records lost with Valkey (a flush, an RDB snapshot older than the last writes) from instances whose name
  carries our record id;
- marks records whose instance vanished from Novita as deleted (after a direct lookup confirms it; at most
  `max_vanish_checks` lookups per pass, the rest wait for the next one, so a pass costs pages + that many calls);
- notes in the list index when it saw each instance (`syncedAt`: the time its listing began), keeps the views of
  instances made elsewhere, and prunes index entries of expired records.
The job handlers watch their instances through what this pass records instead of polling Novita one by one.
Instances whose name is not ours are never changed: the account may hold instances made by other tools.
Records are read in batches and kept only as small summaries, so memory does not grow with the records' size.
Progress (listing, applying n of N, done or failed) is written to the index's sync status for `/health`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from redis.asyncio import Redis
from redis.exceptions import RedisError

from app.core.clock import SYSTEM_CLOCK, WallClock
from app.core.redis import Lease
from app.fleet.index import external_member
from app.fleet.records import RecordNotFound, RecordStore
from app.fleet.schemas import NAME_PATTERN, BillingMode, ConnectionDetails, InstanceRecord, InstanceState, PortSpec
from app.fleet.views import connection_details, external_view, upstream_name
from app.lifecycle.activity import ActivityStore
from app.lifecycle.keys import KEY_PREFIX
from app.lifecycle.webhooks import EventSink
from app.novita.client import NovitaClient
from app.novita.errors import NovitaError, NovitaNotFound
from app.novita.models import Instance

logger = logging.getLogger(__name__)

LEASE_KEY = f"{KEY_PREFIX}lease:reconcile"
# `upstream_name(name, record_id)` is `<name>-<16 hex record id>`; the name part follows the API's name rule.
_UPSTREAM_NAME = re.compile(r"^(?P<name>" + NAME_PATTERN.strip("^$") + r")-(?P<record_id>[0-9a-f]{16})$")
# Novita statuses an instance's job may end on (settled, or gone): worth waking the job for.
_NEWS_FOR_JOBS = frozenset({"running", "exited", "removed"})
# A pass works in slices of about a millisecond of CPU, so that a request, which waits behind one slice at each of its
# awaits, is not slowed by a pass running beside it: instances compared per slice of the apply loop, and records read
# (and activities checked) per round trip.
_APPLY_SLICE = 50
_RECORD_SLICE = 100
_BILLING_MODES: dict[str | None, BillingMode] = {"onDemand": "onDemand", "spot": "spot", "monthly": "monthly"}


def parse_upstream_name(novita_name: str) -> tuple[str, str] | None:
    """`(name, record_id)` if `novita_name` is one this service gives its instances, else None."""
    match = _UPSTREAM_NAME.match(novita_name)
    if match is None or upstream_name(match["name"], match["record_id"]) != novita_name:
        return None
    return match["name"], match["record_id"]


@dataclass(frozen=True)
class _Known:
    """What a pass needs of one record (the full record is read again only when it changes)."""

    id: str
    novita_instance_id: str | None
    upstream_name: str
    state: InstanceState
    novita_status: str | None
    status_error: str | None
    created_at: float
    last_job_id: str | None
    connection: ConnectionDetails | None

    @classmethod
    def of(cls, record: InstanceRecord) -> _Known:
        return cls(
            record.id,
            record.novita_instance_id,
            record.upstream_name,
            record.state,
            record.novita_status,
            record.status_error,
            record.created_at,
            record.last_job_id,
            record.connection,
        )


@dataclass
class ReconcileReport:
    """Record ids touched by one pass, by what happened to them."""

    refreshed: list[str] = field(default_factory=list)
    adopted: list[str] = field(default_factory=list)
    rebuilt: list[str] = field(default_factory=list)
    vanished: list[str] = field(default_factory=list)


class Reconciler:
    """Brings the records in line with Novita; `run()` is safe to call from every replica at once."""

    def __init__(
        self,
        novita: NovitaClient,
        store: RecordStore,
        redis: Redis,
        activity: ActivityStore,
        events: EventSink,
        *,
        lease_seconds: float = 120.0,
        adopt_pending_after_seconds: float = 1800.0,
        max_vanish_checks: int = 10,
        wake_jobs: Callable[[list[str]], Awaitable[None]] | None = None,
        forget_cached: Callable[[list[str]], Awaitable[None]] | None = None,
        clock: WallClock = SYSTEM_CLOCK,
    ) -> None:
        self._novita = novita
        self._store = store
        self._redis = redis
        self._activity = activity
        self._events = events
        self._lease_seconds = lease_seconds
        self._adopt_pending_after_seconds = adopt_pending_after_seconds
        self._max_vanish_checks = max_vanish_checks
        self._wake_jobs = wake_jobs
        self._forget_cached = forget_cached
        self._clock = clock

    async def run(self) -> ReconcileReport | None:
        """One pass; None when another replica holds the lease. Novita errors propagate: the pages read before the
        error are applied, but nothing is marked vanished or dropped from the index."""
        lease = Lease(self._redis, LEASE_KEY, self._lease_seconds)
        if not await lease.acquire():
            return None
        # The lease is short and kept alive while the pass runs: a replica killed mid-pass blocks the sync for at
        # most `lease_seconds`, however long a pass over a large fleet takes.
        keeper = asyncio.create_task(self._keep(lease), name="reconcile-lease")
        try:
            return await self._reconcile()
        finally:
            keeper.cancel()
            await lease.release()

    async def _keep(self, lease: Lease) -> None:
        while True:
            await asyncio.sleep(self._lease_seconds / 3)
            try:
                if not await lease.extend():
                    logger.warning("reconciliation lease lost mid-pass; another replica may start one")
                    return
            except (RedisError, OSError) as error:
                logger.warning("could not extend the reconciliation lease", extra={"error": type(error).__name__})

    async def _reconcile(self) -> ReconcileReport:
        listed_at = self._clock()
        await self._store.write_sync_status({"state": "listing", "startedAt": listed_at, "error": ""})
        try:
            report = await self._pass(listed_at)
        except Exception as error:
            reason = f"{type(error).__name__}: {error}" if not isinstance(error, NovitaError) else str(error)
            await _best_effort(
                self._store.write_sync_status({"state": "failed", "finishedAt": self._clock(), "error": reason[:300]})
            )
            raise
        finished = self._clock()
        await self._store.write_sync_status(
            {
                "state": "done",
                "finishedAt": finished,
                "lastSuccessAt": finished,
                "lastDurationSeconds": round(finished - listed_at, 3),
                "refreshed": len(report.refreshed),
                "adopted": len(report.adopted),
                "rebuilt": len(report.rebuilt),
                "vanished": len(report.vanished),
            }
        )
        return report

    async def _pass(self, listed_at: float) -> ReconcileReport:
        # Our records first, as small summaries; then Novita's listing a page at a time, each page applied as it
        # arrives: a whole fleet's instances held at once (10,000 models) would be the largest thing in memory and
        # make every full collection of the garbage collector, which requests wait behind, several times longer.
        # Nothing is marked vanished unless every page was read.
        by_novita_id: dict[str, _Known] = {}
        by_upstream_name: dict[str, _Known] = {}
        record_ids: set[str] = set()
        async for record in self._store.iter_records(batch=_RECORD_SLICE):
            entry = _Known.of(record)
            record_ids.add(entry.id)
            if entry.novita_instance_id:
                by_novita_id[entry.novita_instance_id] = entry
            else:
                by_upstream_name[entry.upstream_name] = entry
        report = ReconcileReport()
        seen: set[str] = set()
        synced: list[str] = []
        news: list[_Known] = []  # records whose job may finish now
        changed_ids: list[str] = []  # Novita ids whose cached view (GET /api/instances/{id}) is now stale
        statuses: dict[str, str] = {}
        externals: dict[str, dict[str, Any]] = {}
        external_scores: dict[str, float] = {}
        position = 0  # state "listing" (written by `_reconcile`) while pages are read and applied as they come
        await self._store.write_sync_status({"listed": 0, "applied": 0})

        async for page in self._novita.iter_instance_pages():
            for live in page:
                position += 1
                if position % 1000 == 0:
                    await self._store.write_sync_status({"applied": position})
                elif position % _APPLY_SLICE == 0:
                    await asyncio.sleep(0)  # an unchanged instance awaits nothing: let requests in between slices
                known = by_novita_id.get(live.id)
                if known is not None:
                    seen.add(live.id)
                    synced.append(known.id)
                    statuses[known.id] = live.status
                    if await self._refresh(known, live):
                        report.refreshed.append(known.id)
                        changed_ids.append(live.id)
                        if live.status in _NEWS_FOR_JOBS or live.error_text:
                            news.append(known)
                    continue
                if live.removed:
                    continue  # a deleted instance we do not know: nothing to adopt
                known = by_upstream_name.get(live.name)
                if known is not None:
                    if not self._create_job_had_its_chance(known):
                        continue
                    await self._adopt(known, live)
                    synced.append(known.id)
                    news.append(known)
                    report.adopted.append(known.id)
                    continue
                parsed = parse_upstream_name(live.name)
                if parsed is None:
                    externals[live.id] = external_view(live).model_dump(mode="json", by_alias=True)
                    external_scores[live.id] = _created_at(live, listed_at)
                elif parsed[1] not in record_ids:
                    record_ids.add(parsed[1])
                    # False when the record was written after our walk of the records (its create job is on it)
                    if await self._rebuild(parsed[0], parsed[1], live):
                        synced.append(parsed[1])
                        report.rebuilt.append(parsed[1])
            # Each page's news goes out as soon as the page is applied: at 10,000 instances a pass takes seconds, and
            # the jobs that only wait for it (and the readiness checks they start) need not wait for the last page.
            await self._publish(synced, news, listed_at)
            synced, news = [], []
        await self._store.write_sync_status({"state": "applying", "listed": position, "applied": position})

        checks = 0
        for novita_id, known in by_novita_id.items():
            if novita_id in seen:
                continue
            if known.state == InstanceState.DELETED:
                if known.novita_status == "removed":
                    synced.append(known.id)  # still gone: a job watching its delete may count this pass
                continue
            if checks >= self._max_vanish_checks:
                break  # the next pass checks the rest: a pass costs at most pages + max_vanish_checks calls
            checks += 1
            if await self._vanished(novita_id):
                await self._mark_vanished(known)
                synced.append(known.id)
                news.append(known)
                report.vanished.append(known.id)
        await self._activity.observe_many(statuses, self._clock(), batch=_RECORD_SLICE)
        await self._publish(synced + [external_member(novita_id) for novita_id in externals], news, listed_at)
        if self._forget_cached is not None and changed_ids:
            await self._forget_cached(changed_ids)
        await self._store.put_externals(externals, external_scores)
        await self._store.prune_expired(self._clock())
        if any((report.adopted, report.rebuilt, report.vanished)):
            logger.info(
                "reconciled with Novita",
                extra={
                    "adopted": report.adopted,
                    "rebuilt": report.rebuilt,
                    "vanished": report.vanished,
                    "refreshed": len(report.refreshed),
                },
            )
        return report

    async def _publish(self, synced: list[str], news: list[_Known], listed_at: float) -> None:
        """Note what this pass saw (its listing began at `listed_at`), then wake the jobs watching an instance that
        reached a status they may end on: they need not wait for their next poll."""
        await self._store.mark_synced(synced, listed_at)
        if self._wake_jobs is not None:
            await self._wake_jobs([known.last_job_id for known in news if known.last_job_id])

    def _create_job_had_its_chance(self, record: _Known) -> bool:
        """A pending record's create job finds its instance by name itself; adopt only once it clearly has not."""
        if record.state != InstanceState.PENDING:
            return True
        return self._clock() - record.created_at >= self._adopt_pending_after_seconds

    async def _refresh(self, record: _Known, live: Instance) -> bool:
        """Take Novita's status when Novita's side changed.

        An action requested but not yet visible on Novita keeps its transitional state, and a failure we decided
        (e.g. a timeout) keeps its reason, until Novita reports a new status or an error of its own.
        """
        error_text = live.error_text
        connection = connection_details(live)
        if live.status == record.novita_status and error_text in (None, record.status_error):
            if connection != record.connection:  # only how to reach it changed: keep it, no state change to report
                await self._keep_connection(record.id, connection)
            return False
        before = record.state

        def apply(current: InstanceRecord) -> None:
            current.apply_novita(live.status, error_text)
            current.endpoints = _endpoints(live) or current.endpoints
            current.connection = connection
            current.cluster_id = live.cluster_id or current.cluster_id
            current.updated_at = self._clock()

        try:
            updated = await self._store.update(record.id, apply)
        except RecordNotFound:
            return False
        if updated.state != before:
            await self._events.emit(
                "instance.state_changed",
                record.id,
                {
                    "from": before.value,
                    "to": updated.state.value,
                    "novitaStatus": live.status,
                    "statusError": error_text,
                },
            )
        return True

    async def _keep_connection(self, record_id: str, connection: ConnectionDetails) -> None:
        def keep(current: InstanceRecord) -> None:
            current.connection = connection

        with contextlib.suppress(RecordNotFound):
            await self._store.update(record_id, keep)

    async def _adopt(self, record: _Known, live: Instance) -> None:
        error_text = live.error_text

        def adopt(current: InstanceRecord) -> None:
            current.novita_instance_id = live.id
            current.apply_novita(live.status, error_text)
            current.cluster_id = live.cluster_id or current.cluster_id
            current.product_id = live.product_id or current.product_id
            current.endpoints = _endpoints(live)
            current.connection = connection_details(live)
            current.updated_at = self._clock()
            current.add_event("adopted", f"found on Novita as {live.id} (the create's answer was lost)")

        await self._store.update(record.id, adopt)
        await self._activity.observe_status(record.id, live.status, self._clock())
        await self._events.emit(
            "instance.adopted", record.id, {"novitaInstanceId": live.id, "novitaStatus": live.status}
        )

    async def _rebuild(self, name: str, record_id: str, live: Instance) -> bool:
        """Write the record back from Novita's instance; False when a record with its id exists after all."""
        now = self._clock()
        created_at = _created_at(live, now)
        record = InstanceRecord(
            id=record_id,
            name=name,
            upstream_name=live.name,
            novita_instance_id=live.id,
            product_id=live.product_id,
            product_name=live.product_name,
            gpu_num=live.gpu_num or 1,
            rootfs_size=live.rootfs_size or 10,
            image_url=live.image_url,
            template_id=live.template_id,
            cluster_id=live.cluster_id,
            billing_mode=_BILLING_MODES.get(live.billing_mode, "onDemand"),
            ports=[
                PortSpec(port=m.port, type="http" if m.type == "http" else "tcp") for m in live.port_mappings if m.port
            ],
            env_keys=[env.key for env in live.envs],
            endpoints=_endpoints(live),
            connection=connection_details(live),
            created_at=created_at,
            updated_at=now,
        )
        record.apply_novita(live.status, live.error_text)
        record.add_event("rebuilt", f"record restored from Novita instance {live.id} (our records were lost)")
        if not await self._store.create(record, {}):
            return False
        await self._store.drop_spec(record_id)  # a rebuilt record has no create spec: the instance exists
        await self._activity.observe_status(record_id, live.status, now)
        await self._events.emit(
            "instance.rebuilt", record_id, {"novitaInstanceId": live.id, "novitaStatus": live.status}
        )
        return True

    async def _vanished(self, novita_id: str) -> bool:
        """Confirm with a direct lookup that an instance missing from the list is really gone."""
        try:
            live = await self._novita.get_instance(novita_id)
        except NovitaNotFound:
            return True
        except NovitaError:
            return False
        return live.status == "removed"

    async def _mark_vanished(self, record: _Known) -> None:
        before = record.state

        def mark(current: InstanceRecord) -> None:
            current.state = InstanceState.DELETED
            current.novita_status = "removed"
            current.updated_at = self._clock()
            current.add_event("vanished", "no longer exists on Novita")

        try:
            await self._store.update(record.id, mark)
        except RecordNotFound:
            return
        await self._activity.forget(record.id)
        await self._events.emit("instance.vanished", record.id, {"from": before.value, "to": "deleted"})


def _endpoints(live: Instance) -> list[dict[str, object]]:
    return [m.model_dump() for m in live.port_mappings if m.endpoint]


def _created_at(live: Instance, default: float) -> float:
    """Novita's creation time (Unix seconds) when it sends one as digits, else `default`."""
    return float(live.created_at) if live.created_at and live.created_at.isdigit() else default


async def _best_effort(write: Awaitable[None]) -> None:
    """Report progress if Valkey lets us; a failed pass must surface its own error, not Valkey's."""
    try:
        await write
    except Exception:
        logger.debug("could not record the sync's failure", exc_info=True)
