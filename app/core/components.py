"""The components the composition root built, looked up by type: how routes and middleware
reach a shared service without importing the composition root (app/context.py).

Every area's `dependencies.py` turns a type into an `Annotated` alias with `provider`, so a
route declares what it uses (`SessionServiceDep`), never the whole context.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any, TypeVar, cast

from starlette.requests import HTTPConnection

T = TypeVar("T")


class Components:
    """One instance per type; a second one of the same type replaces the first."""

    def __init__(self, *items: object) -> None:
        self._by_type: dict[type, object] = {}
        for item in items:
            self.put(item)

    def put(self, item: object) -> None:
        self._by_type[type(item)] = item

    def get(self, kind: type[T]) -> T:
        """The component of type `kind`, or the one component of a subclass of it (a test's
        FrozenClock for Clock)."""
        found = self._by_type.get(kind)
        if found is not None:
            return cast(T, found)
        matches = [item for item in self._by_type.values() if isinstance(item, kind)]
        if len(matches) != 1:
            raise LookupError(f"{len(matches)} components of type {kind.__name__}, not one")
        only: T = matches[0]
        return only


def components_of(app: Any) -> Components:
    """The components of a Starlette application, set by its lifespan."""
    found: Components = app.state.components
    return found


def provider(kind: type[T]) -> Callable[[HTTPConnection], Awaitable[T]]:
    """A FastAPI dependency returning the `kind` component. `async def`: FastAPI would run a
    plain function in a thread pool, a thread hop per dependency per request."""

    async def provide(connection: HTTPConnection) -> T:
        return components_of(connection.app).get(kind)

    provide.__name__ = f"provide_{kind.__name__}"
    return provide
