"""Services calling services (issue 17, part 4): registered service clients get short-lived
access tokens through the RFC 6749 §4.4 client_credentials grant at /auth/token; user-only
routes refuse them with 403 user_token_required, forward-auth and introspection describe them;
disabling a client ends its live tokens at once."""

from __future__ import annotations

import asyncio
import base64
import uuid
from typing import Any

import jwt
import pytest
from sqlalchemy import select

from app.audit.models import AuditEvent
from app.clients.service import ServiceClients
from app.core.db import committed_unit, table_of
from tests.conftest import ISSUED_SECRETS, Harness, bearer, make_settings, start_harness
from tests.support.cli import cli

_audit = table_of(AuditEvent)
INTROSPECTOR = {"gw": "gateway-secret-for-clients"}


def basic(client_id: str, secret: str) -> dict[str, str]:
    raw = base64.b64encode(f"{client_id}:{secret}".encode()).decode()
    return {"Authorization": f"Basic {raw}"}


async def add_client(
    h: Harness, *, audiences: tuple[str, ...] = (), scopes: tuple[str, ...] = ()
) -> tuple[str, str]:
    client_id = f"svc-{uuid.uuid4().hex[:10]}"
    clients = ServiceClients(h.ctx.engine)
    async with committed_unit(h.ctx.engine) as uow:
        secret = await clients.add(
            await uow.connection(),
            client_id,
            audiences=list(audiences),
            scopes=list(scopes),
            now=h.clock.now(),
        )
    ISSUED_SECRETS.add(secret)  # the run's log check fails if it is ever logged
    return client_id, secret


async def disable(h: Harness, client_id: str) -> None:
    async with committed_unit(h.ctx.engine) as uow:
        await ServiceClients(h.ctx.engine).disable(await uow.connection(), client_id, h.clock.now())


async def token_for(h: Harness, client_id: str, secret: str, **form: str) -> dict[str, Any]:
    response = await h.client.post(
        "/auth/token",
        data={"grant_type": "client_credentials", **form},
        headers=basic(client_id, secret),
    )
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    return body


async def audit_details(h: Harness, event: str, client_id: str) -> list[dict[str, Any]]:
    async with h.ctx.engine.connect() as conn:
        # In the order written: without ORDER BY, PostgreSQL may return any order.
        query = select(_audit.c.details).where(_audit.c.event == event).order_by(_audit.c.id)
        rows = (await conn.execute(query)).all()
    return [row[0] for row in rows if row[0].get("client_id") == client_id]


async def test_grant_by_basic_and_by_post_issues_a_service_token(harness: Harness) -> None:
    client_id, secret = await add_client(harness, scopes=("notes:read",))
    body = await token_for(harness, client_id, secret)
    assert body["token_type"] == "Bearer"
    assert body["expires_in"] == 300  # SERVICE_TOKEN_TTL's default
    assert "refresh_token" not in body  # RFC 6749 §4.4.3
    assert "scope" not in body  # none asked for, none granted
    claims = jwt.decode(body["access_token"], options={"verify_signature": False})
    assert claims["sub"] == f"client:{client_id}"
    assert claims["client_id"] == client_id
    assert claims["aud"] == "authsvc-test"
    assert claims["iss"] == "https://auth.test"
    assert claims["exp"] - claims["iat"] == 300
    assert "sid" not in claims
    assert "role" not in claims
    header = jwt.get_unverified_header(body["access_token"])
    assert header["typ"] == "at+jwt"

    posted = await harness.client.post(
        "/auth/token",
        data={
            "grant_type": "client_credentials",
            "client_id": client_id,
            "client_secret": secret,
            "scope": "notes:read",
        },
    )
    assert posted.status_code == 200, posted.text
    assert posted.headers["cache-control"] == "no-store"
    assert posted.json()["scope"] == "notes:read"
    scoped = jwt.decode(posted.json()["access_token"], options={"verify_signature": False})
    assert scoped["scope"] == "notes:read"

    both = await harness.client.post(
        "/auth/token",
        data={"grant_type": "client_credentials", "client_id": client_id, "client_secret": secret},
        headers=basic(client_id, secret),
    )
    assert both.status_code == 400
    assert both.json()["error"] == "invalid_request"
    issued = await audit_details(harness, "client.token_issued", client_id)
    # Both rows carry the same (frozen) time: compare them unordered.
    assert sorted(row["method"] for row in issued) == ["client_secret_basic", "client_secret_post"]


async def test_discovery_advertises_the_grant_and_its_client_authentication(
    harness: Harness,
) -> None:
    doc = (await harness.client.get("/.well-known/oauth-authorization-server")).json()
    assert "client_credentials" in doc["grant_types_supported"]
    assert {"client_secret_basic", "client_secret_post"} <= set(
        doc["token_endpoint_auth_methods_supported"]
    )


async def test_scopes_and_audiences_are_only_what_the_client_may_ask(harness: Harness) -> None:
    client_id, secret = await add_client(harness, audiences=("notes",), scopes=("a", "b"))
    body = await token_for(harness, client_id, secret, audience="notes", scope="b a")
    claims = jwt.decode(body["access_token"], options={"verify_signature": False})
    assert claims["aud"] == ["authsvc-test", "notes"]  # ours first: every verifier checks it
    assert claims["scope"] == "b a"
    for form, error in (
        ({"scope": "a c"}, "invalid_scope"),
        ({"audience": "billing"}, "invalid_target"),
        ({"scope": 'a"'}, "invalid_request"),
    ):
        refused = await harness.client.post(
            "/auth/token",
            data={"grant_type": "client_credentials", **form},
            headers=basic(client_id, secret),
        )
        assert refused.status_code == 400, (form, refused.text)
        assert refused.json()["error"] == error
        assert "access_token" not in refused.json()


async def test_client_authentication_failures_are_invalid_client_and_audited(
    harness: Harness,
) -> None:
    client_id, secret = await add_client(harness)
    wrong = await harness.client.post(
        "/auth/token",
        data={"grant_type": "client_credentials"},
        headers=basic(client_id, secret + "x"),
    )
    assert wrong.status_code == 401
    assert wrong.json()["error"] == "invalid_client"
    assert wrong.headers["www-authenticate"].startswith("Basic ")  # RFC 6749 §5.2: a MUST
    assert wrong.headers["cache-control"] == "no-store"
    posted = await harness.client.post(
        "/auth/token",
        data={"grant_type": "client_credentials", "client_id": client_id, "client_secret": "no"},
    )
    assert posted.status_code == 401
    assert posted.json()["error"] == "invalid_client"
    assert "www-authenticate" not in posted.headers  # the client did not try Basic
    unknown = await harness.client.post(
        "/auth/token",
        data={"grant_type": "client_credentials"},
        headers=basic(client_id + "-other", secret),
    )
    assert unknown.status_code == 401
    assert unknown.json()["error"] == "invalid_client"
    bare = await harness.client.post("/auth/token", data={"grant_type": "client_credentials"})
    assert bare.status_code == 401
    assert bare.json()["error"] == "invalid_client"
    assert bare.headers["www-authenticate"].startswith("Basic ")
    malformed = await harness.client.post(
        "/auth/token",
        data={"grant_type": "client_credentials"},
        headers={"Authorization": "Basic !!!"},
    )
    assert malformed.status_code == 401
    assert malformed.json()["error"] == "invalid_client"

    failed = await audit_details(harness, "client.auth_failed", client_id)
    assert [(row["reason"], row["method"]) for row in failed] == [
        ("wrong_secret", "client_secret_basic"),
        ("wrong_secret", "client_secret_post"),
    ]
    unknown_rows = await audit_details(harness, "client.auth_failed", client_id + "-other")
    assert [row["reason"] for row in unknown_rows] == ["unknown_client"]
    assert not any(secret in str(row) for row in failed + unknown_rows)


async def test_service_token_is_refused_by_user_routes_and_accepted_by_gateway_routes(
    database_url: str,
) -> None:
    settings = make_settings(database_url, introspection_clients=INTROSPECTOR)
    async for h in start_harness(settings):
        client_id, secret = await add_client(h, scopes=("notes:read",))
        token = (await token_for(h, client_id, secret, scope="notes:read"))["access_token"]
        headers = bearer(token)
        user_routes = [
            ("GET", "/auth/me"),
            ("GET", "/auth/session-status"),
            ("POST", "/auth/logout"),
            ("POST", "/auth/logout-all"),
            ("GET", "/auth/sessions"),
            ("DELETE", f"/auth/sessions/{uuid.uuid4()}"),
            ("GET", "/admin/users"),
            ("GET", "/admin/audit"),
        ]
        for method, path in user_routes:
            refused = await h.client.request(method, path, headers=headers)
            assert refused.status_code == 403, (path, refused.text)
            assert refused.json()["error"]["code"] == "user_token_required", path
        password = await h.client.post(
            "/auth/password",
            json={"current_password": "x" * 10, "new_password": "y" * 10},
            headers=headers,
        )
        assert password.status_code == 403
        assert password.json()["error"]["code"] == "user_token_required"

        verified = await h.client.get("/auth/verify", headers=headers)
        assert verified.status_code == 200, verified.text
        assert verified.headers["x-auth-client-id"] == client_id
        assert verified.headers["x-auth-scope"] == "notes:read"
        assert "x-auth-user-id" not in verified.headers
        assert "x-auth-session-id" not in verified.headers
        assert verified.json() == {
            "sub": f"client:{client_id}",
            "client_id": client_id,
            "scope": "notes:read",
        }
        introspected = await h.client.post(
            "/auth/introspect", data={"token": token}, headers=basic("gw", INTROSPECTOR["gw"])
        )
        described = introspected.json()
        assert described["active"] is True
        assert described["sub"] == f"client:{client_id}"
        assert described["client_id"] == client_id  # the token's client, not the gateway
        assert described["scope"] == "notes:read"
        assert "sid" not in described
        assert "role" not in described

        await disable(h, client_id)  # live tokens stop at once: no cache in between
        gone = await h.client.get("/auth/verify", headers=headers)
        assert gone.status_code == 401
        assert gone.headers["x-auth-error"] == "client_disabled"
        inactive = await h.client.post(
            "/auth/introspect", data={"token": token}, headers=basic("gw", INTROSPECTOR["gw"])
        )
        assert inactive.json() == {"active": False}
        no_token = await h.client.post(
            "/auth/token",
            data={"grant_type": "client_credentials"},
            headers=basic(client_id, secret),
        )
        assert no_token.status_code == 401
        assert no_token.json()["error"] == "invalid_client"
        reasons = [r["reason"] for r in await audit_details(h, "client.auth_failed", client_id)]
        assert reasons == ["disabled"]


async def test_service_token_expires_and_a_token_without_sid_is_never_a_session(
    harness: Harness,
) -> None:
    client_id, secret = await add_client(harness)
    token = (await token_for(harness, client_id, secret))["access_token"]
    user = await harness.login(await harness.create_user())
    user_id = jwt.decode(user["access_token"], options={"verify_signature": False})["sub"]
    # Signed with the service's own key, but with a user's subject and no sid: not a session.
    now = int(harness.clock.now().timestamp())
    forged_claims = {
        "iss": "https://auth.test",
        "aud": "authsvc-test",
        "sub": user_id,
        "client_id": "authsvc",
        "role": "admin",
        "jti": uuid.uuid4().hex,
        "iat": now,
        "nbf": now,
        "exp": now + 60,
    }
    forged = harness.ctx.access_codec._sign(forged_claims, harness.clock.now()).token
    for path in ("/auth/me", "/auth/verify"):
        refused = await harness.client.get(path, headers=bearer(forged))
        assert refused.status_code == 401, path
        assert refused.headers["x-auth-error"] == "invalid_token"

    harness.clock.advance(300 + 30 + 1)  # TTL and leeway
    expired = await harness.client.get("/auth/verify", headers=bearer(token))
    assert expired.status_code == 401
    assert expired.headers["x-auth-error"] == "token_expired"


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
async def test_token_requests_are_rate_limited_per_client_and_per_ip(database_url: str) -> None:
    settings = make_settings(
        database_url,
        rate_limits_enabled=True,
        rate_limit_client_token_client="2/hour",
        rate_limit_client_token_ip="4/hour",
        rate_limit_namespace=f"test-{uuid.uuid4().hex}",
    )
    async for h in start_harness(settings):
        first, first_secret = await add_client(h)
        second, second_secret = await add_client(h)
        for _ in range(2):
            await token_for(h, first, first_secret)
        limited = await h.client.post(
            "/auth/token",
            data={"grant_type": "client_credentials"},
            headers=basic(first, first_secret),
        )
        assert limited.status_code == 429
        assert limited.json()["error"]["code"] == "rate_limited"
        assert int(limited.headers["retry-after"]) > 0
        await token_for(h, second, second_secret)  # another client still gets its token
        by_ip = await h.client.post(
            "/auth/token",
            data={"grant_type": "client_credentials"},
            headers=basic(second, second_secret),
        )
        assert by_ip.status_code == 429  # the IP's fifth request, before the secret is checked


async def test_cli_add_list_rotate_disable(harness: Harness, database_url: str) -> None:
    client_id = f"cli-{uuid.uuid4().hex[:8]}"
    added = await cli(database_url, "clients", "add", client_id, "--scope", "notes:read")
    assert added.returncode == 0, added.stderr
    secret = _secret_of(added.stdout)
    assert "shown only now" in added.stderr
    await token_for(harness, client_id, secret)
    duplicate, bad_id, listed = await asyncio.gather(  # independent: three processes at once
        cli(database_url, "clients", "add", client_id),
        cli(database_url, "clients", "add", "Bad Name"),
        cli(database_url, "clients", "list"),
    )
    assert duplicate.returncode == 1
    assert "client_exists" in duplicate.stderr
    assert bad_id.returncode == 1
    assert "invalid_client_id" in bad_id.stderr
    (line,) = [line for line in listed.stdout.splitlines() if line.startswith(client_id)]
    assert "enabled" in line
    assert "scopes=notes:read" in line
    assert "last_used=-" not in line  # the token request above used it
    assert secret not in listed.stdout

    # Rotation with a grace period: both secrets work until it ends, then only the new one.
    rotated = await cli(database_url, "clients", "rotate-secret", client_id, "--grace", "60")
    assert rotated.returncode == 0, rotated.stderr
    new_secret = _secret_of(rotated.stdout)
    assert new_secret != secret
    await token_for(harness, client_id, secret)
    await token_for(harness, client_id, new_secret)
    harness.clock.advance(120)  # the CLI ran on the real clock, a little after it
    late = await harness.client.post(
        "/auth/token",
        data={"grant_type": "client_credentials"},
        headers=basic(client_id, secret),
    )
    assert late.status_code == 401
    token = (await token_for(harness, client_id, new_secret))["access_token"]

    # A leaked secret: --grace 0 stops the current one at once.
    leaked = await cli(database_url, "clients", "rotate-secret", client_id, "--grace", "0")
    newest = _secret_of(leaked.stdout)
    refused = await harness.client.post(
        "/auth/token",
        data={"grant_type": "client_credentials"},
        headers=basic(client_id, new_secret),
    )
    assert refused.status_code == 401
    await token_for(harness, client_id, newest)
    # Tokens issued before a rotation live on (until exp); disabling ends them.
    assert (await harness.client.get("/auth/verify", headers=bearer(token))).status_code == 200
    disabled = await cli(database_url, "clients", "disable", client_id)
    assert disabled.returncode == 0, disabled.stderr
    assert (await harness.client.get("/auth/verify", headers=bearer(token))).status_code == 401
    listed, missing = await asyncio.gather(
        cli(database_url, "clients", "list"), cli(database_url, "clients", "disable", "nobody")
    )
    assert f"{client_id}  disabled" in listed.stdout
    assert missing.returncode == 1
    assert "client_not_found" in missing.stderr


def _secret_of(stdout: str) -> str:
    (line,) = [line for line in stdout.splitlines() if line.startswith("client_secret: ")]
    secret = line.removeprefix("client_secret: ")
    ISSUED_SECRETS.add(secret)
    assert len(secret) >= 43  # 256 random bits, base64url
    return secret
