"""Helpers of the second-factor tests: an account with an authenticator app, and its codes
computed from the harness's frozen clock (pyotp, as an app would)."""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import httpx
import jwt
import pyotp
from sqlalchemy import text

from tests.conftest import PASSWORD, Harness, bearer


@dataclass
class Enrolled:
    email: str
    secret: str
    recovery_codes: list[str]
    tokens: dict[str, Any]  # the password-only session that enrolled


def code_at(secret: str, moment: datetime, steps: int = 0) -> str:
    """The code an app shows at `moment`, `steps` steps of 30 s later (or earlier)."""
    return pyotp.TOTP(secret).at(moment.timestamp() + 30 * steps)


async def enrol(h: Harness, email: str | None = None, role: str = "user") -> Enrolled:
    """A new account with a confirmed authenticator app. The confirming code is the current
    step's: a login in the same step must wait for the next (a code works once)."""
    email = await h.create_user(email, role=role)
    tokens = await h.login(email)
    began = await h.client.post(
        "/auth/mfa/totp", json={"password": PASSWORD}, headers=bearer(tokens["access_token"])
    )
    assert began.status_code == 201, began.text
    secret = began.json()["secret"]
    confirmed = await h.client.post(
        "/auth/mfa/totp/confirm",
        json={"code": code_at(secret, h.clock.now())},
        headers=bearer(tokens["access_token"]),
    )
    assert confirmed.status_code == 200, confirmed.text
    return Enrolled(email, secret, confirmed.json()["recovery_codes"], tokens)


async def first_step(h: Harness, email: str, **extra: Any) -> str:
    response = await h.client.post(
        "/auth/login", json={"email": email, "password": PASSWORD, **extra}
    )
    assert response.status_code == 202, response.text
    body = response.json()
    assert body["mfa_required"] is True
    assert "access_token" not in body
    assert "refresh_token" not in body
    challenge: str = body["challenge"]
    return challenge


async def second_step(h: Harness, challenge: str, **proof: Any) -> httpx.Response:
    return await h.client.post("/auth/login/mfa", json={"challenge": challenge, **proof})


def claims_of(access_token: str) -> dict[str, Any]:
    claims: dict[str, Any] = jwt.decode(access_token, options={"verify_signature": False})
    return claims


async def events_of(h: Harness, email: str) -> list[str]:
    async with h.ctx.engine.connect() as conn:
        rows = await conn.execute(
            text(
                "SELECT a.event FROM audit_events a JOIN users u ON u.id = a.user_id"
                " WHERE u.email = :email ORDER BY a.id"
            ),
            {"email": email},
        )
        return [row[0] for row in rows]


async def mails_of(h: Harness, template: str, to: str) -> list[dict[str, Any]]:
    """The outbox's queued messages of `template` to `to` (their payloads)."""
    async with h.ctx.engine.connect() as conn:
        rows = (await conn.execute(text("SELECT payload FROM outbox_messages"))).scalars()
        payloads = [json.loads(p) if isinstance(p, str) else p for p in rows]
    return [p for p in payloads if p.get("template") == template and p.get("to") == to]
