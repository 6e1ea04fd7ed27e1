"""Each route says, next to its definition, how it treats an access token:

- `@public`: never looks at one (login, refresh, health, docs, keys): a stale token sent
  along must not turn a login into a 401;
- `@passive`: authenticates, but is not user activity, so it never slides the session
  (session-status: polling must not keep a session alive);
- undeclared: authenticated when a token is present, and a success slides the session.

`@limited("name")` adds a rate limit (a key of Settings.rate_limits) that counts every request
to the route by client IP, before the token check: refused and unauthenticated requests count
too (forward-auth: a flood of bad tokens must meet 429s, not only 401s).

Put the marker under the route decorator. The application factory reads the markers once,
from its routers' routes (`exposure_of`), for the identity gate.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any, TypeVar

from starlette.routing import BaseRoute, Route

F = TypeVar("F", bound=Callable[..., Any])
_ATTRIBUTE = "__authsvc_exposure__"
_LIMIT_ATTRIBUTE = "__authsvc_limit__"


class Exposure(StrEnum):
    public = "public"
    passive = "passive"
    authenticated = "authenticated"


def _marker(kind: Exposure) -> Callable[[F], F]:
    def mark(endpoint: F) -> F:
        setattr(endpoint, _ATTRIBUTE, kind)
        return endpoint

    return mark


public = _marker(Exposure.public)
passive = _marker(Exposure.passive)


def limited(limit: str) -> Callable[[F], F]:
    def mark(endpoint: F) -> F:
        setattr(endpoint, _LIMIT_ATTRIBUTE, limit)
        return endpoint

    return mark


@dataclass(frozen=True, slots=True)
class ExposureMap:
    public_paths: frozenset[str]
    passive_paths: frozenset[str]
    # path -> the rate limit counting every request to it, before the token check
    limits: Mapping[str, str] = field(default_factory=dict)
    # Every route path without parameters: an answer given before routing is labelled by it.
    static_paths: frozenset[str] = frozenset()


def exposure_of(routes: Iterable[BaseRoute], *, also_public: Iterable[str] = ()) -> ExposureMap:
    """The paths of the routes marked public or passive (`also_public`: framework routes
    such as /docs, which carry no marker)."""
    public_paths, passive_paths = set(also_public), set()
    limits: dict[str, str] = {}
    static_paths: set[str] = set()
    for route in routes:
        if not isinstance(route, Route):
            continue
        if "{" not in route.path:
            static_paths.add(route.path)
        if (limit := getattr(route.endpoint, _LIMIT_ATTRIBUTE, None)) is not None:
            limits[route.path] = limit
        kind = getattr(route.endpoint, _ATTRIBUTE, Exposure.authenticated)
        if kind is Exposure.public:
            public_paths.add(route.path)
        elif kind is Exposure.passive:
            passive_paths.add(route.path)
    return ExposureMap(
        frozenset(public_paths), frozenset(passive_paths), limits, frozenset(static_paths)
    )
