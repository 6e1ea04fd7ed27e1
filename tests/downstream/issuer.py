"""A stand-in issuer for the kit's tests: discovery and JWKS served by a real uvicorn on a free
port (in a thread of its own, so the tests' blocking calls cannot stall it), with ES256 keys
the test holds, so it can sign any access or logout token, good or bad, rotate keys, and go
down and come back on the same port."""

from __future__ import annotations

import asyncio
import contextlib
import json
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import jwt
import uvicorn
from authsvc_kit import BACKCHANNEL_EVENT
from cryptography.hazmat.primitives.asymmetric import ec
from jwt.algorithms import ECAlgorithm
from starlette.types import Receive, Scope, Send

from tests.support.servers import free_port

AUDIENCE = "notes-api"
CLIENT_ID = "notes"


@dataclass
class SigningKey:
    kid: str
    private: ec.EllipticCurvePrivateKey

    def jwk(self) -> dict[str, Any]:
        public: dict[str, Any] = json.loads(ECAlgorithm.to_jwk(self.private.public_key()))
        return {**public, "kid": self.kid, "alg": "ES256", "use": "sig"}


def new_key() -> SigningKey:
    return SigningKey(kid=uuid.uuid4().hex[:16], private=ec.generate_private_key(ec.SECP256R1()))


@dataclass
class FakeIssuer:
    port: int = field(default_factory=free_port)
    max_age: int = 300
    keys: list[SigningKey] = field(default_factory=lambda: [new_key()])
    jwks_hits: int = 0
    _server: uvicorn.Server | None = None
    _thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return
        body: dict[str, Any]
        if scope["path"] == "/.well-known/openid-configuration":
            body = {"issuer": self.url, "jwks_uri": f"{self.url}/.well-known/jwks.json"}
            headers = []
        elif scope["path"] == "/.well-known/jwks.json":
            self.jwks_hits += 1
            body = {"keys": [key.jwk() for key in self.keys]}
            headers = [(b"cache-control", f"public, max-age={self.max_age}".encode())]
        else:
            await send({"type": "http.response.start", "status": 404, "headers": []})
            await send({"type": "http.response.body", "body": b""})
            return
        payload = json.dumps(body).encode()
        await send(
            {
                "type": "http.response.start",
                "status": 200,
                "headers": [(b"content-type", b"application/json"), *headers],
            }
        )
        await send({"type": "http.response.body", "body": payload})

    def start(self) -> None:
        config = uvicorn.Config(
            self, host="127.0.0.1", port=self.port, log_level="warning", lifespan="off"
        )
        self._server = uvicorn.Server(config)
        self._thread = threading.Thread(target=self._server.run, daemon=True)
        self._thread.start()
        deadline = time.monotonic() + 10
        while not self._server.started:
            if time.monotonic() > deadline or not self._thread.is_alive():
                raise RuntimeError("the fake issuer did not start")
            time.sleep(0.02)

    def stop(self) -> None:
        """Down: the port refuses connections."""
        if self._server is not None and self._thread is not None:
            self._server.should_exit = True
            self._thread.join(timeout=10)
        self._server = self._thread = None

    # -- tokens -------------------------------------------------------------------------
    def access_token(
        self,
        *,
        sub: str | None = None,
        sid: str | None = None,
        ttl: int = 300,
        iat: int | None = None,
        key: SigningKey | None = None,
        headers: dict[str, Any] | None = None,
        **claims: Any,
    ) -> str:
        now = int(time.time()) if iat is None else iat
        body: dict[str, Any] = {
            "iss": self.url,
            "aud": AUDIENCE,
            "sub": sub or str(uuid.uuid4()),
            "sid": sid or str(uuid.uuid4()),
            "jti": uuid.uuid4().hex,
            "iat": now,
            "nbf": now,
            "exp": now + ttl,
            "client_id": "authsvc",
            "role": "user",
            **claims,
        }
        return self.sign(body, key=key, headers={"typ": "at+jwt", **(headers or {})})

    def logout_token(
        self, *, key: SigningKey | None = None, headers: dict[str, Any] | None = None, **claims: Any
    ) -> str:
        body: dict[str, Any] = {
            "iss": self.url,
            "aud": CLIENT_ID,
            "iat": int(time.time()),
            "exp": int(time.time()) + 120,
            "jti": uuid.uuid4().hex,
            "events": {BACKCHANNEL_EVENT: {}},
            **claims,
        }
        body = {name: value for name, value in body.items() if value is not None}
        return self.sign(body, key=key, headers={"typ": "logout+jwt", **(headers or {})})

    def sign(
        self, claims: dict[str, Any], *, key: SigningKey | None = None, headers: dict[str, Any]
    ) -> str:
        key = key or self.keys[0]
        return jwt.encode(
            claims, key.private, algorithm="ES256", headers={"kid": key.kid, **headers}
        )


@contextlib.contextmanager
def fake_issuer(**options: Any) -> Iterator[FakeIssuer]:
    issuer = FakeIssuer(**options)
    issuer.start()
    try:
        yield issuer
    finally:
        issuer.stop()


class SlowIssuer(FakeIssuer):
    """The stand-in issuer, plus: a JWKS endpoint that can be frozen (it holds the request
    until thawed, as an overloaded or partitioned issuer would), and a /auth/verify answering
    200 after `verify_delay` seconds (a live check in flight)."""

    frozen: bool = False
    verify_delay: float = 0.0
    jwks_requests: int = 0  # arrived, answered or not (jwks_hits counts the answered)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["path"] == "/.well-known/jwks.json":
            self.jwks_requests += 1
            # `frozen` is set from the test's thread, not this server's loop: polled.
            while self.frozen:  # noqa: ASYNC110
                await asyncio.sleep(0.02)
        if scope["type"] == "http" and scope["path"] == "/auth/verify":
            await asyncio.sleep(self.verify_delay)
            await send({"type": "http.response.start", "status": 200, "headers": []})
            await send({"type": "http.response.body", "body": b""})
            return
        await super().__call__(scope, receive, send)


@contextlib.contextmanager
def slow_issuer(**options: Any) -> Iterator[SlowIssuer]:
    issuer = SlowIssuer(**options)
    issuer.start()
    try:
        yield issuer
    finally:
        issuer.frozen = False
        issuer.stop()
