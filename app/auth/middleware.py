"""The identity gate: turns a request's access token into an identity, and slides the session
once the request succeeded.

A gate of the request envelope (app.core.middleware), which runs it after its own steps: a
request with no token and no rate-limited route costs it one function call. It keeps no
per-request state on the instance, and hands the verified identity to routes through
`scope["state"]["auth"]`. A token bound to a DPoP key (`cnf.jkt`) is accepted
only as `Authorization: DPoP` with a proof by that key for this request (RFC 9449 §7); on a
forward-auth path the request is the one the gateway forwards the method and URL of.

A request counts as activity, and slides the session, only once it has succeeded (2xx): a 404,
a redirect or a refused request does not keep a session alive, and neither do passive routes
(see app.core.exposure).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import NamedTuple

from starlette.types import Receive, Scope, Send

from app.auth.errors import ClientDisabled, InvalidToken
from app.auth.tokens import AccessClaims, AccessTokenCodec, ServiceClaims
from app.clients.service import ServiceClients
from app.core.clock import Clock
from app.core.components import Components, components_of
from app.core.error_handlers import domain_error_response
from app.core.errors import (
    DomainError,
    ServiceUnavailableError,
    UnauthorizedError,
    is_database_unavailable,
)
from app.core.exposure import ExposureMap
from app.core.metrics import ROUTE_LABEL
from app.core.middleware import GO_ON, GatePass
from app.core.ratelimit import RateLimited, RateLimiter
from app.dpop.dependencies import original_request, proof_headers, request_url
from app.dpop.errors import DPoPChallenge, InvalidDPoPProof, UseDPoPNonce, resource_error
from app.dpop.service import DPoP
from app.sessions.policy import SessionState
from app.sessions.service import SessionService

# The name its events have always had (log pipelines filter on it).
logger = logging.getLogger("app.sessions")
AUTH_STATE_KEY = "auth"


@dataclass(frozen=True, slots=True)
class Authenticated:
    """A user's token, with its live session."""

    claims: AccessClaims
    session: SessionState


@dataclass(frozen=True, slots=True)
class ServiceCaller:
    """A service client's token (client_credentials): no user, no session. Routes that need a
    user refuse it (403 user_token_required); only routes that say so accept it."""

    claims: ServiceClaims


class PresentedToken(NamedTuple):
    token: str
    dpop: bool  # presented under the DPoP scheme (else Bearer)


class IdentityGate:
    def __init__(
        self, *, exposure: ExposureMap, forward_auth_paths: frozenset[str] = frozenset()
    ) -> None:
        """`forward_auth_paths`: routes that answer for another request (/auth/verify), whose
        DPoP proofs are checked against the method and URL the gateway forwards."""
        self.exposure = exposure
        self.forward_auth_paths = forward_auth_paths

    def needed(self, path: str, authorization: bool) -> bool:
        """A route with a rate limit of its own; a token, unless the route never looks at one."""
        return path in self.exposure.limits or (
            authorization and path not in self.exposure.public_paths
        )

    async def check(self, scope: Scope, receive: Receive, send: Send, path: str) -> GatePass | None:
        if path in self.exposure.limits and not await _within_limit(
            self.exposure.limits[path], scope, receive, send
        ):
            self._label(scope, path)
            return None
        presented = None if path in self.exposure.public_paths else presented_token(scope)
        if presented is None:
            return GO_ON
        components = components_of(scope["app"])
        sessions, clock = components.get(SessionService), components.get(Clock)
        try:
            auth = await _authenticate(components, sessions, clock, presented)
            await _check_binding(
                components.get(DPoP), auth, presented, scope, path in self.forward_auth_paths
            )
        except DomainError as exc:
            self._label(scope, path)
            refusal = exc
            if (
                presented.dpop
                and isinstance(exc, UnauthorizedError)
                and not isinstance(exc, DPoPChallenge)
            ):
                refusal = DPoPChallenge.for_token(exc, components.get(DPoP).challenge_algs)
            await domain_error_response(refusal)(scope, receive, send)
            return None
        except Exception as exc:
            if not is_database_unavailable(exc):
                raise
            logger.warning("db.unavailable", extra={"error_type": type(exc).__name__})
            self._label(scope, path)
            await domain_error_response(ServiceUnavailableError())(scope, receive, send)
            return None
        scope.setdefault("state", {})[AUTH_STATE_KEY] = auth
        # A service has no session to slide.
        if isinstance(auth, ServiceCaller) or path in self.exposure.passive_paths:
            return GO_ON

        async def slide_on_success(status: int) -> None:
            if 200 <= status < 300:
                await _slide(sessions, clock, auth)

        return GatePass(after=slide_on_success)

    def _label(self, scope: Scope, path: str) -> None:
        """An answer given before routing is counted under its route, not as "unmatched"."""
        if path in self.exposure.static_paths:
            scope[ROUTE_LABEL] = path


async def _within_limit(limit: str, scope: Scope, receive: Receive, send: Send) -> bool:
    """Count this request against the route's limit; False once it answered 429 instead."""
    client = scope.get("client")
    limiter = components_of(scope["app"]).get(RateLimiter)
    try:
        await limiter.hit(limit, client[0] if client else "unknown")
    except RateLimited as exc:
        await domain_error_response(exc)(scope, receive, send)
        return False
    return True


async def _authenticate(
    components: Components, sessions: SessionService, clock: Clock, presented: PresentedToken
) -> Authenticated | ServiceCaller:
    """A user's token and its live session, or a service client's token and its enabled
    client: a token without `sid` is never taken for a session."""
    now = clock.now()
    claims = components.get(AccessTokenCodec).verify(presented.token, now=now)
    if isinstance(claims, ServiceClaims):
        return await _service_caller(components.get(ServiceClients), claims)
    state = await sessions.authenticate(claims.session_id, now)
    if state.user_id != claims.user_id:
        raise InvalidToken()
    return Authenticated(claims=claims, session=state)


async def _service_caller(clients: ServiceClients, claims: ServiceClaims) -> ServiceCaller:
    """Read on every request (one indexed row): a disabled client's tokens stop at once."""
    if not await clients.is_active(claims.client_id):
        raise ClientDisabled()
    return ServiceCaller(claims)


async def _slide(sessions: SessionService, clock: Clock, auth: Authenticated) -> None:
    # The response has been sent: a failure here can only be logged. The next request will
    # slide instead, well inside the idle timeout.
    try:
        if await sessions.touch(auth.session, clock.now()):
            logger.debug("session.slid", extra={"session_id": str(auth.session.id)})
    except Exception as exc:  # never raise once the response is out: log, and go on
        if is_database_unavailable(exc):
            logger.warning("session.slide_failed", extra={"error_type": type(exc).__name__})
        else:
            logger.exception("session.slide_failed")


async def _check_binding(
    dpop: DPoP,
    auth: Authenticated | ServiceCaller,
    presented: PresentedToken,
    scope: Scope,
    forwarded: bool,
) -> None:
    """RFC 9449 §7: a bound token only under the DPoP scheme with a proof, by its key, for this
    request and this token; an unbound token never under the DPoP scheme (a client that thinks
    its token is bound has lost track of it, and a bearer token gains nothing from a proof)."""
    jkt, algs = auth.claims.jkt, dpop.challenge_algs
    if jkt is None:
        if presented.dpop:
            raise DPoPChallenge(
                "invalid_token", "This access token is not DPoP-bound: send it as Bearer.", algs
            )
        return
    if not presented.dpop:
        raise DPoPChallenge(
            "invalid_dpop_proof",
            "This access token is DPoP-bound: send it as `Authorization: DPoP` with a proof.",
            algs,
        )
    try:
        if forwarded:
            method, url = original_request(scope, dpop.origins)
        else:
            method, url = scope["method"], request_url(scope, dpop.origins)
        proof = await dpop.check(
            proof_headers(scope), method=method, url=url, access_token=presented.token, jkt=jkt
        )
    except (InvalidDPoPProof, UseDPoPNonce) as exc:
        raise resource_error(exc, algs) from exc
    if proof is None:
        raise DPoPChallenge("invalid_dpop_proof", "A DPoP proof is required.", algs)


def presented_token(scope: Scope) -> PresentedToken | None:
    """The access token of `Authorization: Bearer <token>` or `Authorization: DPoP <token>`."""
    for key, value in scope["headers"]:
        if key == b"authorization":
            header: str = value.decode("latin-1")
            scheme, _, credentials = header.partition(" ")
            scheme, credentials = scheme.lower(), credentials.strip()
            if scheme in ("bearer", "dpop") and credentials:
                return PresentedToken(credentials, dpop=scheme == "dpop")
            return None
    return None
