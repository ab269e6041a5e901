"""Reconciliation: Novita is the truth about what exists; our records follow it.

One pass lists every instance on Novita and, under a lease in Valkey (so one replica at a time does it):
- refreshes each record whose Novita status changed (and emits `instance.state_changed`);
- adopts an instance created for a record that never learned its id (a create whose answer was lost): the record
  is found by the unique upstream name (`app.instances.service.upstream_name`). A record still `pending` is left
  to its create job (which looks the name up itself) for `adopt_pending_after_seconds`;
- rebuilds records lost with Valkey (a flush, an RDB snapshot older than the last writes) from instances whose name
  carries our record id;
- marks records whose instance vanished from Novita as deleted (after a direct lookup confirms it).
Instances whose name is not ours are left alone: the account may hold instances made by other tools.
"""
from __future__ import annotations

import logging
import re
from dataclasses import dataclass, field

from redis.asyncio import Redis

from app.core.redis import Lease
from app.instances.schemas import NAME_PATTERN, BillingMode, InstanceRecord, InstanceState, PortSpec
from app.instances.service import upstream_name
from app.lifecycle.activity import ActivityStore
from app.lifecycle.leases import KEY_PREFIX, SYSTEM_CLOCK, WallClock
from app.lifecycle.records import RecordNotFound, RecordStore
from app.lifecycle.webhooks import EventSink
from app.novita.client import NovitaClient
from app.novita.errors import NovitaError, NovitaNotFound
from app.novita.models import Instance

logger = logging.getLogger(__name__)

LEASE_KEY = f"{KEY_PREFIX}lease:reconcile"
# `upstream_name(name, record_id)` is `<name>-<16 hex record id>`; the name part follows the API's name rule.
_UPSTREAM_NAME = re.compile(r"^(?P<name>" + NAME_PATTERN.strip("^$") + r")-(?P<record_id>[0-9a-f]{16})$")
_BILLING_MODES: dict[str | None, BillingMode] = {"onDemand": "onDemand", "spot": "spot", "monthly": "monthly"}


def parse_upstream_name(novita_name: str) -> tuple[str, str] | None:
    """`(name, record_id)` if `novita_name` is one this service gives its instances, else None."""
    match = _UPSTREAM_NAME.match(novita_name)
    if match is None or upstream_name(match["name"], match["record_id"]) != novita_name:
        return None
    return match["name"], match["record_id"]


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
        clock: WallClock = SYSTEM_CLOCK,
    ) -> None:
        self._novita = novita
        self._store = store
        self._redis = redis
        self._activity = activity
        self._events = events
        self._lease_seconds = lease_seconds
        self._adopt_pending_after_seconds = adopt_pending_after_seconds
        self._clock = clock

    async def run(self) -> ReconcileReport | None:
        """One pass; None when another replica holds the lease. Novita errors propagate (nothing is changed)."""
        lease = Lease(self._redis, LEASE_KEY, self._lease_seconds)
        if not await lease.acquire():
            return None
        try:
            return await self._reconcile()
        finally:
            await lease.release()

    async def _reconcile(self) -> ReconcileReport:
        # List Novita first: if it fails, nothing may be marked vanished.
        live_instances = await self._novita.list_instances()
        records = await self._store.list_all()
        by_novita_id = {r.novita_instance_id: r for r in records if r.novita_instance_id}
        by_upstream_name = {r.upstream_name: r for r in records if not r.novita_instance_id}
        record_ids = {r.id for r in records}
        report = ReconcileReport()
        seen: set[str] = set()

        for live in live_instances:
            record = by_novita_id.get(live.id)
            if record is not None:
                seen.add(live.id)
                if await self._refresh(record, live):
                    report.refreshed.append(record.id)
                continue
            if live.removed:
                continue  # a deleted instance we do not know: nothing to adopt
            record = by_upstream_name.get(live.name)
            if record is not None:
                if not self._create_job_had_its_chance(record):
                    continue
                await self._adopt(record, live)
                report.adopted.append(record.id)
                continue
            parsed = parse_upstream_name(live.name)
            if parsed is not None and parsed[1] not in record_ids:
                await self._rebuild(parsed[0], parsed[1], live)
                record_ids.add(parsed[1])
                report.rebuilt.append(parsed[1])

        for novita_id, record in by_novita_id.items():
            if novita_id not in seen and record.state != InstanceState.DELETED and await self._vanished(novita_id):
                await self._mark_vanished(record)
                report.vanished.append(record.id)
        if any((report.adopted, report.rebuilt, report.vanished)):
            logger.info("reconciled with Novita", extra={"adopted": report.adopted, "rebuilt": report.rebuilt,
                                                         "vanished": report.vanished,
                                                         "refreshed": len(report.refreshed)})
        return report

    def _create_job_had_its_chance(self, record: InstanceRecord) -> bool:
        """A pending record's create job finds its instance by name itself; adopt only once it clearly has not."""
        if record.state != InstanceState.PENDING:
            return True
        return self._clock() - record.created_at >= self._adopt_pending_after_seconds

    async def _refresh(self, record: InstanceRecord, live: Instance) -> bool:
        """Take Novita's status when Novita's side changed.

        An action requested but not yet visible on Novita keeps its transitional state, and a failure we decided
        (e.g. a timeout) keeps its reason, until Novita reports a new status or an error of its own.
        """
        await self._activity.observe_status(record.id, live.status, self._clock())
        error_text = live.error_text
        if live.status == record.novita_status and error_text in (None, record.status_error):
            return False
        before = record.state

        def apply(current: InstanceRecord) -> None:
            current.apply_novita(live.status, error_text)
            current.endpoints = _endpoints(live) or current.endpoints
            current.cluster_id = live.cluster_id or current.cluster_id
            current.updated_at = self._clock()

        try:
            updated = await self._store.update(record.id, apply)
        except RecordNotFound:
            return False
        if updated.state != before:
            await self._events.emit("instance.state_changed", record.id, {
                "from": before.value, "to": updated.state.value, "novitaStatus": live.status,
                "statusError": error_text,
            })
        return True

    async def _adopt(self, record: InstanceRecord, live: Instance) -> None:
        error_text = live.error_text

        def adopt(current: InstanceRecord) -> None:
            current.novita_instance_id = live.id
            current.apply_novita(live.status, error_text)
            current.cluster_id = live.cluster_id or current.cluster_id
            current.product_id = live.product_id or current.product_id
            current.endpoints = _endpoints(live)
            current.updated_at = self._clock()
            current.add_event("adopted", f"found on Novita as {live.id} (the create's answer was lost)")

        await self._store.update(record.id, adopt)
        await self._activity.observe_status(record.id, live.status, self._clock())
        await self._events.emit("instance.adopted", record.id, {"novitaInstanceId": live.id,
                                                                "novitaStatus": live.status})

    async def _rebuild(self, name: str, record_id: str, live: Instance) -> None:
        now = self._clock()
        created_at = float(live.created_at) if live.created_at and live.created_at.isdigit() else now
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
            ports=[PortSpec(port=m.port, type="http" if m.type == "http" else "tcp")
                   for m in live.port_mappings if m.port],
            env_keys=[env.key for env in live.envs],
            endpoints=_endpoints(live),
            created_at=created_at,
            updated_at=now,
        )
        record.apply_novita(live.status, live.error_text)
        record.add_event("rebuilt", f"record restored from Novita instance {live.id} (our records were lost)")
        if await self._store.create(record, {}):
            await self._store.drop_spec(record_id)  # a rebuilt record has no create spec: the instance exists
            await self._activity.observe_status(record_id, live.status, now)
            await self._events.emit("instance.rebuilt", record_id, {"novitaInstanceId": live.id,
                                                                    "novitaStatus": live.status})

    async def _vanished(self, novita_id: str) -> bool:
        """Confirm with a direct lookup that an instance missing from the list is really gone."""
        try:
            live = await self._novita.get_instance(novita_id)
        except NovitaNotFound:
            return True
        except NovitaError:
            return False
        return live.status == "removed"

    async def _mark_vanished(self, record: InstanceRecord) -> None:
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

