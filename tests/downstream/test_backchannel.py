"""The back-channel logout receiver in the notes service (a real process), fed logout tokens
signed by the stand-in issuer whose keys the notes service trusts; and how long a revocation
is kept (in process)."""

from __future__ import annotations

import asyncio
import base64
import time
import uuid
from typing import Any
from urllib.parse import urlencode

import httpx
import pytest
from authsvc_kit import Kit, KitConfig, SessionRevoked

from tests.downstream.issuer import AUDIENCE, CLIENT_ID, FakeIssuer, new_key, slow_issuer
from tests.downstream.wsclient import next_message, open_socket, until_closed

pytestmark = pytest.mark.slow


async def _post_logout(notes: str, token: str) -> httpx.Response:
    async with httpx.AsyncClient(base_url=notes, timeout=5) as client:
        return await client.post("/backchannel-logout", data={"logout_token": token})


async def _get_notes(notes: str, token: str) -> httpx.Response:
    async with httpx.AsyncClient(base_url=notes, timeout=5) as client:
        return await client.get("/notes", headers={"Authorization": f"Bearer {token}"})


async def test_logout_refuses_the_session_at_once_and_closes_its_socket(
    issuer: FakeIssuer, notes: str
) -> None:
    sub, sid = str(uuid.uuid4()), str(uuid.uuid4())
    token = issuer.access_token(sub=sub, sid=sid)
    other = issuer.access_token(sub=sub)  # the same user's other session
    assert (await _get_notes(notes, token)).status_code == 200
    socket = await open_socket(notes, token)
    assert (await next_message(socket))["type"] == "hello"

    sent = time.monotonic()
    response = await _post_logout(notes, issuer.logout_token(sub=sub, sid=sid))
    assert response.status_code == 200, response.text
    assert response.headers["cache-control"] == "no-store"
    closed = await until_closed(socket, within=2)
    assert (closed.code, closed.reason) == (4403, "session_revoked")
    assert closed.at - sent < 1.0
    refused = await _get_notes(notes, token)
    assert refused.status_code == 401
    assert refused.json()["error"]["code"] == "session_revoked"
    assert refused.headers["www-authenticate"] == 'Bearer error="invalid_token"'
    assert (await _get_notes(notes, other)).status_code == 200  # only that session ended


async def test_sub_only_logout_ends_tokens_issued_up_to_its_iat(
    issuer: FakeIssuer, notes: str
) -> None:
    sub = str(uuid.uuid4())
    now = int(time.time())
    before = issuer.access_token(sub=sub, iat=now - 5)
    after = issuer.access_token(sub=sub, iat=now + 1)
    sockets = [await open_socket(notes, token) for token in (before, after)]
    for socket in sockets:
        assert (await next_message(socket))["type"] == "hello"
    response = await _post_logout(notes, issuer.logout_token(sub=sub, iat=now))
    assert response.status_code == 200, response.text
    assert (await _get_notes(notes, before)).status_code == 401
    assert (await _get_notes(notes, after)).status_code == 200
    # The user's sockets (found by sub, no scan): the one of a token issued up to iat closes.
    closed = await until_closed(sockets[0], within=2)
    assert (closed.code, closed.reason) == (4403, "session_revoked")
    await sockets[1].send('{"type": "ping"}')
    assert (await next_message(sockets[1]))["type"] == "echo"
    await sockets[1].close()


def _bad_tokens(issuer: FakeIssuer, sub: str, sid: str) -> dict[str, tuple[str, str]]:
    forger = new_key()
    forger.kid = issuer.keys[0].kid  # the issuer's kid, someone else's key
    claims: dict[str, Any] = {"sub": sub, "sid": sid}
    replayed = issuer.logout_token(**claims)
    return {
        "forged signature": (issuer.logout_token(key=forger, **claims), ""),
        "wrong aud": (issuer.logout_token(aud="another-client", **claims), ""),
        "nonce present": (issuer.logout_token(nonce="n-0S6_WzA2Mj", **claims), ""),
        "events missing": (issuer.logout_token(events=None, **claims), ""),
        "wrong event": (issuer.logout_token(events={"urn:other": {}}, **claims), ""),
        "typ JWT": (issuer.logout_token(headers={"typ": "JWT"}, **claims), ""),
        "an access token": (issuer.access_token(**claims), ""),
        "wrong iss": (issuer.logout_token(iss="https://evil.example", **claims), ""),
        "too old": (issuer.logout_token(iat=int(time.time()) - 3600, **claims), ""),
        # Back-Channel Logout 1.0 (errata set 1) §2.4: exp is REQUIRED.
        "exp missing": (issuer.logout_token(exp=None, **claims), ""),
        "neither sid nor sub": (issuer.logout_token(), ""),
        "replayed jti": (replayed, replayed),
    }


async def test_bad_logout_tokens_are_refused_and_change_nothing(
    issuer: FakeIssuer, notes: str
) -> None:
    sub, sid = str(uuid.uuid4()), str(uuid.uuid4())
    access = issuer.access_token(sub=sub, sid=sid)
    socket = await open_socket(notes, access)
    assert (await next_message(socket))["type"] == "hello"
    descriptions = set()
    for name, (token, first) in _bad_tokens(issuer, sub, sid).items():
        if first:  # a replay: the first delivery is for another session, so nothing we watch
            other = issuer.logout_token(sid=str(uuid.uuid4()), jti="replay-" + name)
            assert (await _post_logout(notes, other)).status_code == 200
            token = other
        response = await _post_logout(notes, token)
        assert response.status_code == 400, (name, response.text)
        assert response.json()["error"] == "invalid_request", name
        assert response.headers["cache-control"] == "no-store"
        descriptions.add(response.json()["error_description"])
    # An unauthenticated caller is not told which check failed (the log says).
    assert descriptions == {"the logout token is missing or invalid"}
    async with httpx.AsyncClient(base_url=notes, timeout=5) as client:
        no_token = await client.post("/backchannel-logout", data={})
        wrong_method = await client.get("/backchannel-logout")
    assert no_token.status_code == 400
    assert wrong_method.status_code == 405
    assert (await _get_notes(notes, access)).status_code == 200
    await socket.send('{"type": "ping"}')
    assert (await next_message(socket))["type"] == "echo"  # still open
    await socket.close()


def _nested_header_token() -> str:
    """A token whose JOSE header is 1,100 nested JSON arrays: 1.5 kB, under the kit's
    header-segment limit (2,048 characters), deeper than Python's recursion limit."""
    header = '{"typ":"at+jwt","alg":"ES256","kid":"k","x":' + "[" * 1100
    segment = base64.urlsafe_b64encode(header.encode()).rstrip(b"=").decode()
    return f"{segment}.e30.c2ln"


async def test_a_deeply_nested_header_is_refused_never_a_500(notes: str) -> None:
    """json.loads raises RecursionError (not a ValueError) for it: once a 500 on every path,
    public ones included, since the middleware checks any token sent."""
    token = _nested_header_token()
    bearer = {"Authorization": f"Bearer {token}"}
    async with httpx.AsyncClient(base_url=notes, timeout=5) as client:
        statuses = {
            "GET /healthz": (await client.get("/healthz", headers=bearer)).status_code,
            "GET /notes": (await client.get("/notes", headers=bearer)).status_code,
            "POST /backchannel-logout": (
                await client.post("/backchannel-logout", data={"logout_token": token})
            ).status_code,
        }
    assert statuses == {"GET /healthz": 401, "GET /notes": 401, "POST /backchannel-logout": 400}


async def test_a_revocation_outlives_the_token_under_allowed_clock_skew() -> None:
    """The issuer's clock 1 s ahead with leeway 1 s (30 s with the defaults): the token is
    accepted until exp + leeway; the revocation is kept max_token_lifetime + 2 x leeway after
    its receipt, so the revoked session's token never works again meanwhile."""
    with slow_issuer() as issuer:
        kit = Kit(
            KitConfig(
                issuer=issuer.url,
                audience=AUDIENCE,
                client_id=CLIENT_ID,
                max_token_lifetime=1,
                leeway=1,
            )
        )
        if time.time() % 1 > 0.3:  # start early in a second: integer-second arithmetic
            await asyncio.sleep(1.01 - time.time() % 1)
        now = int(time.time())
        sub, sid = str(uuid.uuid4()), str(uuid.uuid4())
        token = issuer.access_token(sub=sub, sid=sid, iat=now + 1, ttl=1)  # issuer 1 s ahead
        logout = urlencode({"logout_token": issuer.logout_token(sub=sub, sid=sid)}).encode()
        async with kit.lifespan():
            assert (await kit.authenticate(token)).session_id == sid
            status, _ = await kit.backchannel.handle(logout)
            assert status == 200
            with pytest.raises(SessionRevoked):
                await kit.authenticate(token)
            # Past receipt + lifetime + leeway (when the entry used to go), before exp + leeway.
            await asyncio.sleep(max(0.0, now + 2.5 - time.time()))
            assert time.time() < now + 3  # exp (now + 2) + leeway: the token is still valid
            with pytest.raises(SessionRevoked):
                await kit.authenticate(token)
