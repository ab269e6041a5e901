"""What the original service's client scripts ask for, expressed with this API's services.

Instances are named, not identified, in the original's by-name routes; here names need not be unique, so a name
must match exactly one live record (404 when none, 409 when several: use the ids). Every action is queued and
answered 202 with a job, where the original blocked until Novita answered.
"""

from __future__ import annotations

import time

from app.access.ownership import sees
from app.access.principal import Principal
from app.compat.schemas import StopAllItem, StopAllResult
from app.core.errors import Conflict, NotFound, ValidationFailed
from app.fleet.actions import Action
from app.fleet.schemas import AcceptedResponse, HeartbeatView, InstanceRecord, InstanceState
from app.instances.service import InstanceService

# What stop-all stops: this service's instances that run (and bill) or are about to.
STOP_ALL_STATES = frozenset({InstanceState.RUNNING, InstanceState.STARTING, InstanceState.RESTARTING})
# How far a client's clock may be ahead of ours in `lastUsedAt`.
CLOCK_SKEW_SECONDS = 300.0


class CompatService:
    """By-name actions, stop-all and timestamped heartbeats over `InstanceService`."""

    def __init__(self, instances: InstanceService) -> None:
        self._instances = instances

    async def action_by_name(
        self, name: str, action: Action, webhook_url: str | None, caller: Principal
    ) -> AcceptedResponse:
        """Queue `action` on the one live instance named `name` among those `caller` sees."""
        record = await self._one_named(name, caller)
        if webhook_url is not None:
            await self._instances.set_webhook_url(record.id, webhook_url)
        return await self._instances.request_action(record.id, action, caller)

    async def stop_all(self, caller: Principal, *, dry_run: bool) -> StopAllResult:
        """Stop every running instance `caller` sees that this service manages (those made elsewhere are never
        touched)."""
        running = [
            r for r in await self._instances.store.list_all() if r.state in STOP_ALL_STATES and sees(caller, r.team)
        ]
        items: list[StopAllItem] = []
        for record in running:
            item = StopAllItem(instance_id=record.id, name=record.name, state=record.state)
            if not dry_run:
                try:
                    item.job_id = (await self._instances.request_action(record.id, "stop", caller)).job_id
                except (Conflict, NotFound) as error:  # its state changed since it was listed
                    item.error = error.detail
            items.append(item)
        failed = sum(1 for item in items if item.error)
        return StopAllResult(dry_run=dry_run, count=len(items) - failed, failed=failed, items=items)

    async def last_used(self, instance_id: str, at: float | None, caller: Principal) -> HeartbeatView:
        """A heartbeat at `at` (now when None); a time in the future is refused."""
        if at is not None and at > time.time() + CLOCK_SKEW_SECONDS:
            raise ValidationFailed("lastUsedAt is in the future", field="body.lastUsedAt")
        return await self._instances.heartbeat(instance_id, caller, at)

    async def _one_named(self, name: str, caller: Principal) -> InstanceRecord:
        matches = [record for record in await self._instances.store.find_by_name(name) if sees(caller, record.team)]
        if not matches:
            raise NotFound(f"no instance named {name!r}")
        if len(matches) > 1:
            ids = ", ".join(record.id for record in matches)
            raise Conflict(f"{len(matches)} instances are named {name!r} ({ids}): act on one by its id")
        return matches[0]
