"""Issue 7: audit trail queries, Prometheus metrics, structured logs without secrets."""

from __future__ import annotations

import asyncio
import json
import logging
import uuid
from datetime import timedelta
from pathlib import Path

import httpx
import pytest

from app.core.logging import JsonFormatter, request_id_var
from tests.conftest import PASSWORD, Harness, bearer, make_settings, start_harness
from tests.support.cli import cli
from tests.support.servers import create_user_in, uvicorn_server


async def test_admin_audit_query(harness: Harness) -> None:
    admin = await harness.login(await harness.create_user(role="admin"))
    email = await harness.create_user()
    tokens = await harness.login(email)
    await harness.client.post("/auth/login", json={"email": email, "password": "wrong password"})
    rotated = (await harness.refresh(tokens["refresh_token"])).json()
    await harness.client.post("/auth/logout", headers=bearer(rotated["access_token"]))
    sid = tokens["session"]["id"]

    by_session = await harness.client.get(
        "/admin/audit", params={"session_id": sid}, headers=bearer(admin["access_token"])
    )
    assert by_session.status_code == 200
    events_of_session = [e["event"] for e in by_session.json()]
    assert events_of_session == ["logout", "refresh.rotated", "login.succeeded"]
    user_id = by_session.json()[0]["user_id"]
    by_user = await harness.client.get(
        "/admin/audit", params={"user_id": user_id}, headers=bearer(admin["access_token"])
    )
    events = [e["event"] for e in by_user.json()]
    assert "login.failed" in events
    assert all(e["user_id"] == user_id for e in by_user.json())
    later = (harness.clock.now() + timedelta(seconds=1)).isoformat()
    none_since = await harness.client.get(
        "/admin/audit",
        params={"user_id": user_id, "since": later},
        headers=bearer(admin["access_token"]),
    )
    assert none_since.json() == []
    denied = await harness.client.get("/admin/audit", headers=bearer(tokens["access_token"]))
    assert denied.status_code == 401  # that session is logged out
    plain = await harness.login(await harness.create_user())
    forbidden = await harness.client.get("/admin/audit", headers=bearer(plain["access_token"]))
    assert forbidden.status_code == 403
    bad = await harness.client.get(
        "/admin/audit", params={"user_id": "nope"}, headers=bearer(admin["access_token"])
    )
    assert bad.status_code == 422
    assert bad.json()["error"]["code"] == "validation_error"


async def test_cli_audit(harness: Harness, database_url: str) -> None:
    email = await harness.create_user()
    await harness.login(email)
    result = await cli(database_url, "audit", email)
    assert result.returncode == 0, result.stderr
    assert "login.succeeded" in result.stdout
    unknown = await cli(database_url, "audit", "ghost@example.com")
    assert unknown.returncode == 1
    assert "user_not_found" in unknown.stderr


async def test_metrics_count_requests_and_auth_events(harness: Harness) -> None:
    email = await harness.create_user()
    login = 'authsvc_http_request_duration_seconds_{}{{{}method="POST",route="/auth/login",'
    login += 'status="{}"}}'
    series = [login.format("count", "", 200), login.format("count", "", 401)]
    series.append(login.format("bucket", 'le="+Inf",', 200))
    before = (await harness.client.get("/metrics")).text
    await harness.login(email)
    await harness.client.post("/auth/login", json={"email": email, "password": "wrong password"})
    response = await harness.client.get("/metrics")
    assert response.status_code == 200
    text = response.text
    assert 'authsvc_auth_events_total{event="login.succeeded"}' in text
    assert 'authsvc_auth_events_total{event="login.failed"}' in text
    assert [_sample(text, s) - _sample(before, s) for s in series] == [1.0, 1.0, 1.0]
    assert "authsvc_active_sessions" in text
    assert "authsvc_db_pool_checked_out" in text


async def test_a_token_refused_before_routing_is_counted_under_its_route(
    harness: Harness,
) -> None:
    """The identity check answers a bad token before routing: the 401s of the gateway's
    /auth/verify must still show under that route (they were all "unmatched")."""
    count = "authsvc_http_request_duration_seconds_count"
    routes = ("/auth/verify", "/auth/session-status")
    series = [f'{count}{{method="GET",route="{route}",status="401"}}' for route in routes]
    before = (await harness.client.get("/metrics")).text
    for route in routes:
        response = await harness.client.get(route, headers=bearer("not.a.token"))
        assert response.status_code == 401
    text = (await harness.client.get("/metrics")).text
    assert [_sample(text, s) - _sample(before, s) for s in series] == [1.0, 1.0]


def _sample(exposition: str, series: str) -> float:
    """The value of one series in Prometheus text, 0 if absent."""
    for line in exposition.splitlines():
        if line.startswith(series + " "):
            return float(line.rsplit(" ", 1)[1])
    return 0.0


async def test_metrics_token(database_url: str) -> None:
    async for h in start_harness(make_settings(database_url, metrics_token="scrape-secret-123")):
        assert (await h.client.get("/metrics")).status_code == 401
        wrong = await h.client.get("/metrics", headers=bearer("nope"))
        assert wrong.status_code == 401
        ok = await h.client.get("/metrics", headers=bearer("scrape-secret-123"))
        assert ok.status_code == 200


def test_json_log_line_shape() -> None:
    record = logging.LogRecord("app.audit", logging.INFO, __file__, 1, "login.succeeded", (), None)
    record.user_id = "u1"
    token = request_id_var.set("req-1")
    try:
        line = json.loads(JsonFormatter().format(record))
    finally:
        request_id_var.reset(token)
    assert line["event"] == "login.succeeded"
    assert line["request_id"] == "req-1"
    assert line["user_id"] == "u1"
    assert line["level"] == "info"


@pytest.mark.parametrize("secret_source", ["password", "refresh", "access"])
async def test_no_secret_in_logs_of_a_full_flow(
    harness: Harness, caplog: pytest.LogCaptureFixture, secret_source: str
) -> None:
    caplog.set_level(logging.DEBUG)
    email = await harness.create_user()
    tokens = await harness.login(email)
    await harness.client.post("/auth/login", json={"email": email, "password": "hunter2hunter2"})
    rotated = (await harness.refresh(tokens["refresh_token"])).json()
    harness.clock.advance(31)
    await harness.refresh(tokens["refresh_token"])  # reuse detection
    await harness.client.get("/auth/me", headers=bearer(rotated["access_token"]))
    formatter = JsonFormatter()
    text = "\n".join(formatter.format(r) for r in caplog.records)
    assert "login.succeeded" in text
    secrets = {
        "password": [PASSWORD, "hunter2hunter2"],
        "refresh": [tokens["refresh_token"], rotated["refresh_token"]],
        "access": [tokens["access_token"], rotated["access_token"], "eyJ"],
    }[secret_source]
    for secret in secrets:
        assert secret not in text
    assert str(uuid.UUID(tokens["session"]["id"])) in text  # ids are logged, secrets are not


async def test_metrics_add_up_across_workers(postgres_url: str, tmp_path: Path) -> None:
    """With several workers each process writes its samples to PROMETHEUS_MULTIPROC_DIR (as
    `python -m app serve --workers N` arranges) and any worker's /metrics reports the sum."""
    email = await create_user_in(postgres_url, prefix="metrics")
    env = {"PROMETHEUS_MULTIPROC_DIR": str(tmp_path)}
    with uvicorn_server(postgres_url, workers=2, env=env) as (base, _):

        async def login_on_a_fresh_connection() -> None:
            async with httpx.AsyncClient(base_url=base, timeout=30) as one_off:
                response = await one_off.post(
                    "/auth/login", json={"email": email, "password": PASSWORD}
                )
                assert response.status_code == 200

        def recording_workers() -> set[str]:
            return {p.name for p in tmp_path.glob("counter_*.db")}

        async with httpx.AsyncClient(base_url=base, timeout=30) as client:
            # Which worker accepts a connection is the kernel's choice: send logins in
            # concurrent batches until both workers have served (and recorded) some.
            logins = 0
            while len(await asyncio.to_thread(recording_workers)) < 2 and logins < 240:
                await asyncio.gather(*(login_on_a_fresh_connection() for _ in range(12)))
                logins += 12
            pids = await asyncio.to_thread(recording_workers)
            assert len(pids) >= 2, pids  # both workers served and recorded
            for _ in range(4):
                text = (await client.get("/metrics")).text
                line = next(
                    ln
                    for ln in text.splitlines()
                    if ln.startswith('authsvc_auth_events_total{event="login.succeeded"}')
                )
                assert float(line.split()[-1]) == logins


async def test_metric_labels_stay_bounded(harness: Harness) -> None:
    for method in ("X0ZZ", "X1ZZ", "BREW"):
        await harness.client.request(method, "/healthz")
    text = (await harness.client.get("/metrics")).text
    assert 'method="X0ZZ"' not in text
    assert 'method="other"' in text
