"""Our instance states and how every Novita status maps to them, as the lifecycle automations see them.

The mapping itself lives in `app.fleet.schemas` (`NOVITA_STATUS_TO_STATE`, `state_from_novita`) and is re-exported
here, so there is one table. This module adds the groupings the automations decide on, in Novita's own statuses
(reference section 1.6), because our `failed` state hides whether a failed instance is still pulling (and billed).

| Novita status | our state | cost guards |
|---|---|---|
| toCreate, creating, pulling | provisioning | provisioning timeout (pulling is billed) |
| running | running (`ready` once its ports answer) | idle auto-stop, max lifetime |
| toStart, starting, toRestart, restarting | starting / restarting | none (start-up grace) |
| toStop, stopping, exited | stopping / stopped | spot recovery when a spot instance was reclaimed |
| toRemove, removing, removed | deleting / deleted | none |
| toReset, resetting, migrating | updating | none |
| freezing | frozen | none |
| any status with a non-empty statusError | failed | the guard of its Novita status still applies |
"""

from __future__ import annotations

from app.fleet.schemas import NOVITA_STATUS_TO_STATE, InstanceState, state_from_novita
from app.novita.models import REMOVAL_STATUSES

__all__ = [
    "NOVITA_STATUSES",
    "NOVITA_STATUS_TO_STATE",
    "PROVISIONING_STATUSES",
    "REMOVAL_STATUSES",
    "RUNNING_STATUS",
    "STOPPED_STATUS",
    "InstanceState",
    "state_from_novita",
]

NOVITA_STATUSES = frozenset(NOVITA_STATUS_TO_STATE)
# Statuses of a new instance on its way to `running`; stuck here beyond the provisioning timeout means deleted.
PROVISIONING_STATUSES = frozenset({"toCreate", "creating", "pulling"})
RUNNING_STATUS = "running"
STOPPED_STATUS = "exited"
