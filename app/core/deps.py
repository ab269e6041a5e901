"""How routes reach the app's long-lived objects without importing the composition root above them.

`app/container.py` builds every service once and registers it here under its type; a route then declares
`Annotated[InstanceService, Depends(provide(InstanceService))]`. Routers know only the types they use; only the root
knows how they are built, so imports point downward.
"""

from __future__ import annotations

import functools
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar, cast

from fastapi import FastAPI, Request

T = TypeVar("T")


class Services:
    """The app's objects by type, one of each."""

    def __init__(self) -> None:
        self._by_type: dict[type[Any], object] = {}

    def add(self, kind: type[T], value: T) -> None:
        """Register `value` as the app's `kind`."""
        self._by_type[kind] = value

    def get(self, kind: type[T]) -> T:
        """The app's `kind`; a KeyError names a type the composition root forgot to register."""
        return cast(T, self._by_type[kind])


def services_of(app: FastAPI) -> Services | None:
    """The registry of `app`, or None before the composition root has built it."""
    return getattr(app.state, "services", None)


@functools.cache  # one dependency per type, so FastAPI resolves it once per request however many routes share it
def provide(kind: type[T]) -> Callable[[Request], Awaitable[T]]:
    """A FastAPI dependency answering the app's `kind` (async: no threadpool hop per request)."""

    async def dependency(request: Request) -> T:
        return cast(T, request.app.state.services.get(kind))

    dependency.__name__ = f"provide_{kind.__name__}"
    return dependency
