"""Look-alike addresses (issue 15): a fullwidth spelling is the same account, and a new address
whose local part or a domain label mixes scripts is refused; existing accounts keep working."""

from __future__ import annotations

import asyncio
import importlib.util
import unicodedata
import uuid
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

import pytest
import sqlalchemy as sa
from email_validator import EmailNotValidError, validate_email
from sqlalchemy import select

from app.core import migrate
from app.core.db import UnitOfWork, table_of
from app.users import repository
from app.users.models import User
from app.users.service import normalize_email
from tests.conftest import PASSWORD, Harness, bearer, error_code, make_settings, start_harness
from tests.support.databases import fresh_database

ROOT = Path(__file__).resolve().parents[2]


def _fullwidth(text: str) -> str:
    """ASCII letters and digits as their fullwidth forms (U+FF01..U+FF5E)."""
    return "".join(chr(ord(c) + 0xFEE0) if c.isalnum() else c for c in text)


def _previous_normal_form(email: str) -> str:
    """normalize_email before NFKC: what accounts were stored under until now."""
    email = email.strip()
    try:
        address = validate_email(email, check_deliverability=False)
    except EmailNotValidError:
        return email.lower()
    return (address.ascii_email or address.normalized).lower()


def _migration_normal_form() -> Callable[[str], str]:
    path = ROOT / "migrations" / "versions" / "0008_email_nfkc_local_part.py"
    spec = importlib.util.spec_from_file_location("migration_0008", path)
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    normal_form: Callable[[str], str] = module._normal_form
    return normal_form


async def _me(h: Harness, email: str) -> str:
    tokens = await h.login(email)
    me = await h.client.get("/auth/me", headers=bearer(tokens["access_token"]))
    user_id: str = me.json()["id"]
    return user_id


async def test_a_fullwidth_spelling_is_the_same_account(database_url: str) -> None:
    async for h in start_harness(make_settings(database_url, allow_registration=True)):
        plain = f"john{uuid.uuid4().hex[:8]}@example.com"
        created = await h.client.post("/auth/register", json={"email": plain, "password": PASSWORD})
        assert created.status_code == 201
        # Typed in a fullwidth input mode: letters, digits, at-sign and dot alike.
        fullwidth = "".join(chr(ord(c) + 0xFEE0) for c in plain)
        again = await h.client.post(
            "/auth/register", json={"email": fullwidth, "password": PASSWORD}
        )
        assert again.status_code == 409, again.text
        assert error_code(again) == "email_taken"
        assert await _me(h, fullwidth) == created.json()["id"]


MIXED = [
    "p\u0430ypal-{tag}@example.com",  # Cyrillic а in a Latin local part
    "\u0391laska-{tag}@example.com",  # Greek Α
    "pay-{tag}@p\u0430ypal.example",  # Cyrillic а in a Latin domain label
]
SINGLE_SCRIPT = [
    "müller-{tag}@bücher.example",
    "иван{tag}@пример.рф",
    "山田たろう{tag}@example.jp",
    "taroやまだ{tag}@example.jp",
    "αβγ{tag}@example.gr",
]


async def test_new_addresses_that_mix_scripts_are_refused(database_url: str) -> None:
    async for h in start_harness(make_settings(database_url, allow_registration=True)):
        tag = str(uuid.uuid4().int)[:8]  # digits: Common, they go with any script
        for template in MIXED:
            email = template.format(tag=tag)
            refused = await h.client.post(
                "/auth/register", json={"email": email, "password": PASSWORD}
            )
            assert refused.status_code == 422, email
            assert error_code(refused) == "invalid_email"
            assert "scripts" in refused.json()["error"]["message"]
        for template in SINGLE_SCRIPT:
            email = template.format(tag=tag)
            created = await h.client.post(
                "/auth/register", json={"email": email, "password": PASSWORD}
            )
            assert created.status_code == 201, (email, created.text)
            await h.login(email)
        # The rule is for new addresses: login never applies it, so an account stored before
        # it (as here, written directly) keeps working.
        existing = MIXED[0].format(tag=f"old{tag}")
        uow = UnitOfWork(h.ctx.engine)
        await repository.insert_user(
            await uow.connection(),
            email=normalize_email(existing),
            password_hash=await h.ctx.passwords.hash(PASSWORD),
            role="user",
            now=h.clock.now(),
        )
        await uow.finish(commit=True)
        await h.login(existing)


def _sample_characters() -> list[str]:
    """Every character that NFKC or lower case changes (where normal forms can move), and
    every 61st other one."""
    sample = []
    for cp in range(0xA0, 0x30000):
        c = chr(cp)
        if unicodedata.category(c) in ("Cs", "Co", "Cn"):
            continue
        if unicodedata.normalize("NFKC", c) != c or c.lower() != c or cp % 61 == 0:
            sample.append(c)
    return sample


def test_a_stored_address_moves_to_the_form_its_owner_types() -> None:
    """Migration 0008 rewrites each stored address (the previous normal form of what its owner
    typed) to the normal form login now computes from what the owner types; and normal forms
    are fixed points."""
    migration_form = _migration_normal_form()
    moved = 0
    for c in _sample_characters():
        for typed in (f"a{c}b@example.com", f"{c}@bücher.example", f"X{c}{c}@Example.com"):
            now = normalize_email(typed)
            stored = _previous_normal_form(typed)
            assert migration_form(stored) == now, typed
            assert normalize_email(now) == now, typed
            moved += stored != now
    assert moved > 1000  # the sample does exercise addresses that move


_USER_COLUMNS_AT_0007 = (
    "id",
    "email",
    "password_hash",
    "role",
    "is_active",
    "created_at",
    "password_changed_at",
    "failed_logins",
)


@pytest.mark.parametrize("kind", ["sqlite", "postgres"])
async def test_migration_0008_renormalises_stored_addresses(kind: str, tmp_path: Path) -> None:
    tag = uuid.uuid4().hex[:6]
    typed = _fullwidth(f"john{tag}") + "@example.com"
    twin_typed = _fullwidth(f"mary{tag}") + "@example.com"  # whose plain form is taken
    async with fresh_database(kind, tmp_path, revision="0007") as url:
        settings = make_settings(url)
        async for h in start_harness(settings):
            password_hash = await h.ctx.passwords.hash(PASSWORD)
            async with h.ctx.engine.begin() as conn:
                # The columns of revision 0007 only: today's insert names later ones.
                at_0007 = sa.table(
                    "users",
                    *(
                        sa.column(c.name, c.type)
                        for c in table_of(User).columns
                        if c.name in _USER_COLUMNS_AT_0007
                    ),
                )
                for email in (typed, twin_typed, f"mary{tag}@example.com"):
                    now = datetime.now(UTC)
                    await conn.execute(
                        sa.insert(at_0007).values(
                            id=uuid.uuid4(),
                            email=_previous_normal_form(email),
                            password_hash=password_hash,
                            role="user",
                            is_active=True,
                            created_at=now,
                            password_changed_at=now,
                            failed_logins=0,
                        )
                    )
        await asyncio.to_thread(migrate.upgrade, url)
        async for h in start_harness(settings):
            users = table_of(User)
            async with h.ctx.engine.connect() as conn:
                stored = set((await conn.execute(select(users.c.email))).scalars())
            assert stored == {f"john{tag}@example.com", twin_typed, f"mary{tag}@example.com"}
            await h.login(typed)  # as the owner always typed it
            await h.login(f"john{tag}@example.com")
