"""Every Novita status maps to one of our documented states; the guards' status groups are real Novita statuses."""

from __future__ import annotations

from app.fleet.states import (
    NOVITA_STATUSES,
    PROVISIONING_STATUSES,
    REMOVAL_STATUSES,
    RUNNING_STATUS,
    STOPPED_STATUS,
    InstanceState,
    state_from_novita,
)

# Reference section 1.6: the eighteen v1 statuses.
DOCUMENTED = [
    "toCreate",
    "creating",
    "pulling",
    "running",
    "toStart",
    "starting",
    "toStop",
    "stopping",
    "exited",
    "toRestart",
    "restarting",
    "toRemove",
    "removing",
    "removed",
    "toReset",
    "resetting",
    "migrating",
    "freezing",
]


def test_every_documented_status_has_a_known_state() -> None:
    assert frozenset(DOCUMENTED) == NOVITA_STATUSES
    for status in DOCUMENTED:
        assert state_from_novita(status, None) not in (InstanceState.UNKNOWN, InstanceState.FAILED), status


def test_status_error_means_failed_and_an_unknown_status_is_unknown() -> None:
    assert state_from_novita("pulling", "failed to pull image") == InstanceState.FAILED
    assert state_from_novita("hibernating", None) == InstanceState.UNKNOWN


def test_guard_groups_are_novita_statuses() -> None:
    groups = PROVISIONING_STATUSES | REMOVAL_STATUSES | {RUNNING_STATUS, STOPPED_STATUS}
    assert groups <= NOVITA_STATUSES
    assert {state_from_novita(status, None) for status in PROVISIONING_STATUSES} == {InstanceState.PROVISIONING}
