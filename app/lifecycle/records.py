"""The part of the instance record store the automations use; `app.instances.store.InstanceStore` satisfies it."""
from __future__ import annotations

from collections.abc import Callable
from typing import Any, Protocol

from app.instances.schemas import InstanceRecord
from app.instances.store import RecordNotFound

__all__ = ["RecordNotFound", "RecordStore"]


class RecordStore(Protocol):
    """Get, list, create and atomically update instance records (see `InstanceStore` for the Valkey layout)."""

    async def get(self, instance_id: str) -> InstanceRecord | None:
        """The record, or None."""
        ...

    async def list_all(self) -> list[InstanceRecord]:
        """Every record, newest first."""
        ...

    async def create(self, record: InstanceRecord, spec: dict[str, Any]) -> bool:
        """Write a new record (and its create spec); False if it already exists."""
        ...

    async def drop_spec(self, instance_id: str) -> None:
        """Forget the create spec."""
        ...

    async def update(self, instance_id: str, change: Callable[[InstanceRecord], None]) -> InstanceRecord:
        """Apply `change` atomically; `RecordNotFound` if the record is gone."""
        ...
