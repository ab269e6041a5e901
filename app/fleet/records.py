"""The part of the instance record store the automations use; `app.fleet.store.InstanceStore` satisfies it."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Iterable
from typing import Any, Protocol

from app.fleet.schemas import InstanceRecord
from app.fleet.store import RecordNotFound

__all__ = ["RecordNotFound", "RecordStore"]


class RecordStore(Protocol):
    """Get, list, create and atomically update instance records (see `InstanceStore` for the Valkey layout)."""

    async def get(self, instance_id: str) -> InstanceRecord | None:
        """The record, or None."""
        ...

    async def get_many(self, instance_ids: list[str], batch: int = ...) -> list[InstanceRecord]:
        """The records that exist among `instance_ids`, in their order, `batch` per round trip."""
        ...

    async def list_all(self) -> list[InstanceRecord]:
        """Every record, newest first."""
        ...

    def iter_records(self, batch: int = ...) -> AsyncIterator[InstanceRecord]:
        """Every record, `batch` per read (memory bounded whatever the fleet size)."""
        ...

    async def write_sync_status(self, fields: dict[str, str | float | int]) -> None:
        """Record the background sync's progress."""
        ...

    async def mark_synced(self, members: Iterable[str], at: float) -> None:
        """Note that a sync whose listing began at `at` saw these instances."""
        ...

    async def put_externals(self, views: dict[str, dict[str, Any]], scores: dict[str, float]) -> None:
        """Replace the views of instances made outside this service."""
        ...

    async def prune_expired(self, now: float) -> int:
        """Drop index entries of expired records."""
        ...

    async def sync_status(self) -> dict[str, str]:
        """The background sync's last reported progress."""
        ...

    async def take_sync_request(self) -> bool:
        """Whether a job asked for a sync since the last one (clearing the request)."""
        ...

    async def create(self, record: InstanceRecord, spec: dict[str, Any]) -> bool:
        """Write a new record (and its create spec); False if it already exists."""
        ...

    async def drop_spec(self, instance_id: str) -> None:
        """Forget the create spec."""
        ...

    async def update(
        self, instance_id: str, change: Callable[[InstanceRecord], None], *, checkpoint_meter: bool = False
    ) -> InstanceRecord:
        """Apply `change` atomically (`checkpoint_meter`: and close the cost meter's open interval); `RecordNotFound`
        if the record is gone."""
        ...
