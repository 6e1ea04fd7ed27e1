"""Issue 16: finding a user (admin routes take a user's id) from the API and the CLI, and a
fixed set of roles."""

from __future__ import annotations

import uuid

import pytest
from pydantic import ValidationError

from app.users.errors import InvalidRole
from tests.conftest import Harness, bearer, error_code, make_settings, start_harness
from tests.support.cli import cli


async def _admin_token(h: Harness) -> str:
    tokens = await h.login(await h.create_user(role="admin"))
    token: str = tokens["access_token"]
    return token


async def test_admins_find_users_by_email_a_page_at_a_time(harness: Harness) -> None:
    tag = uuid.uuid4().hex[:10]
    emails = sorted([await harness.create_user(f"{name}-{tag}@example.com") for name in "cab"])
    await harness.create_user(f"other-{uuid.uuid4().hex[:10]}@example.com")
    admin = bearer(await _admin_token(harness))
    first = await harness.client.get(
        "/admin/users", params={"email": tag.upper(), "limit": 2}, headers=admin
    )
    assert first.status_code == 200, first.text
    page = first.json()
    assert [u["email"] for u in page["users"]] == emails[:2]
    assert {u["role"] for u in page["users"]} == {"user"}
    rest = await harness.client.get(
        "/admin/users",
        params={"email": tag, "limit": 2, "after": page["next_after"]},
        headers=admin,
    )
    assert [u["email"] for u in rest.json()["users"]] == emails[2:]
    assert rest.json()["next_after"] is None


async def test_the_email_filter_is_text_not_a_pattern(harness: Harness) -> None:
    admin = bearer(await _admin_token(harness))
    for pattern in ("%", "_", "\\"):
        found = await harness.client.get("/admin/users", params={"email": pattern}, headers=admin)
        assert found.status_code == 200
        assert found.json()["users"] == []  # no stored address holds these characters


async def test_finding_users_is_for_admins_and_bounded(harness: Harness) -> None:
    user = (await harness.login(await harness.create_user()))["access_token"]
    refused = await harness.client.get("/admin/users", headers=bearer(user))
    assert error_code(refused) == "forbidden"
    admin = bearer(await _admin_token(harness))
    for limit in (0, 201):
        bad = await harness.client.get("/admin/users", params={"limit": limit}, headers=admin)
        assert bad.status_code == 422
    for name in ("email", "after"):  # PostgreSQL refuses a NUL in text: a 500 before
        bad = await harness.client.get("/admin/users", params={name: "a\x00b"}, headers=admin)
        assert bad.status_code == 422


async def test_roles_are_a_configured_set(harness: Harness, database_url: str) -> None:
    with pytest.raises(InvalidRole):
        await harness.create_user(role="superuser")
    refused = await cli(database_url, "users", "create", "x@example.com", "--role", "root")
    assert refused.returncode == 1
    assert "(invalid_role)" in refused.stderr
    assert "admin, user" in refused.stderr
    shown = await cli(database_url, "users", "create", "--help")
    assert "default: user" in shown.stdout


async def test_a_deployment_may_add_roles(database_url: str) -> None:
    settings = make_settings(database_url, roles=["user", "admin", "editor"])
    async for h in start_harness(settings):
        editor = await h.login(await h.create_user(role="editor"))
        me = await h.client.get("/auth/me", headers=bearer(editor["access_token"]))
        assert me.json()["role"] == "editor"


@pytest.mark.parametrize(
    "roles", [["admin"], ["user"], ["user", "admin", "Editor"], ["user", "admin", ""]]
)
def test_roles_must_keep_user_and_admin_and_be_names(roles: list[str]) -> None:
    with pytest.raises(ValidationError, match="ROLES"):
        make_settings("sqlite://", roles=roles)


async def test_users_list_on_the_command_line(harness: Harness, database_url: str) -> None:
    tag = uuid.uuid4().hex[:10]
    email = await harness.create_user(f"listed-{tag}@example.com", role="admin")
    listed = await cli(database_url, "users", "list", "--email", tag)
    assert listed.returncode == 0, listed.stderr
    (line,) = listed.stdout.strip().splitlines()
    assert email in line
    assert "admin" in line
    assert "active" in line
    none = await cli(database_url, "users", "list", "--email", f"nobody-{tag}")
    assert none.stdout.strip() == "no users"
