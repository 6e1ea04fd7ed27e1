"""New passwords (issue 15): blank ones and the account's own address are refused, changing to
the same password is refused, and a password is never altered (no trimming)."""

from __future__ import annotations

import uuid

import pytest
from sqlalchemy import select

from app.audit.models import AuditEvent
from app.core.db import table_of
from app.users.errors import InvalidPassword
from tests.conftest import PASSWORD, Harness, bearer, error_code, make_settings, start_harness

BLANK = [
    " " * 8,
    "\t" * 8,
    "\u00a0" * 8,  # no-break space
    "\u3000" * 8,  # ideographic space
    " \u200b" * 4,  # with zero-width spaces
    "\u2028" * 8,  # line separator
]


async def test_blank_passwords_are_refused(database_url: str) -> None:
    async for h in start_harness(make_settings(database_url, allow_registration=True)):
        for password in BLANK:
            email = f"blank-{uuid.uuid4().hex[:8]}@example.com"
            refused = await h.client.post(
                "/auth/register", json={"email": email, "password": password}
            )
            assert refused.status_code == 422, repr(password)
            assert error_code(refused) == "invalid_password"
            assert "blank" in refused.json()["error"]["message"]
        with pytest.raises(InvalidPassword):
            await h.create_user(password=" " * 12)  # `users create` too
        email = await h.create_user()
        tokens = await h.login(email)
        change = await h.client.post(
            "/auth/password",
            json={"current_password": PASSWORD, "new_password": " " * 8},
            headers=bearer(tokens["access_token"]),
        )
        assert change.status_code == 422
        assert error_code(change) == "invalid_password"
        with pytest.raises(InvalidPassword):
            await h.set_password(email, "\u3000" * 8)  # `users set-password` too
        await h.login(email)  # nothing changed
        # Spaces are refused only when they are all there is: a password is hashed as typed.
        spaced = await h.create_user(password="  spaced out  ")
        await h.login(spaced, "  spaced out  ")
        trimmed = await h.client.post(
            "/auth/login", json={"email": spaced, "password": "spaced out"}
        )
        assert error_code(trimmed) == "invalid_credentials"


async def test_the_account_address_is_no_password(database_url: str) -> None:
    async for h in start_harness(make_settings(database_url, allow_registration=True)):
        local = f"someone-{uuid.uuid4().hex[:8]}"
        email = f"{local}@example.com"
        for password in (email, email.upper(), local, f" {local} "):
            refused = await h.client.post(
                "/auth/register", json={"email": email, "password": password}
            )
            assert refused.status_code == 422, password
            assert error_code(refused) == "invalid_password"
            assert "email address" in refused.json()["error"]["message"]
        await h.create_user(email=email)
        tokens = await h.login(email)
        change = await h.client.post(
            "/auth/password",
            json={"current_password": PASSWORD, "new_password": email},
            headers=bearer(tokens["access_token"]),
        )
        assert error_code(change) == "invalid_password"


async def test_changing_to_the_same_password_is_refused(harness: Harness) -> None:
    email = await harness.create_user()
    here = await harness.login(email)
    other = await harness.login(email)
    same = await harness.client.post(
        "/auth/password",
        json={"current_password": PASSWORD, "new_password": PASSWORD},
        headers=bearer(here["access_token"]),
    )
    assert same.status_code == 422
    assert error_code(same) == "password_unchanged"
    # Refused, so nothing happened: the other session lives, and no change was audited.
    assert (
        await harness.client.get("/auth/me", headers=bearer(other["access_token"]))
    ).status_code == 200
    user_id = (await harness.client.get("/auth/me", headers=bearer(here["access_token"]))).json()[
        "id"
    ]
    audit_of_user = await _events(harness, user_id)
    assert "password.changed" not in audit_of_user
    # The two fields are the client's own: equal ones are refused before any password check,
    # so they cost no hash and count as no guess, whether the current one is right or not.
    equal = await harness.client.post(
        "/auth/password",
        json={"current_password": "not the password", "new_password": "not the password"},
        headers=bearer(here["access_token"]),
    )
    assert error_code(equal) == "password_unchanged"
    assert "password.change_failed" not in await _events(harness, user_id)


async def _events(h: Harness, user_id: str) -> list[str]:
    t = table_of(AuditEvent)
    async with h.ctx.engine.connect() as conn:
        rows = await conn.execute(select(t.c.event).where(t.c.user_id == uuid.UUID(user_id)))
        return list(rows.scalars())
