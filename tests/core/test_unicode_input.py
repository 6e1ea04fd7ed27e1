"""Text no database or encoder takes: a lone surrogate in a JSON body is refused (422), and what
a client puts in headers we store (User-Agent, X-Forwarded-For from a trusted proxy) is stored
only as text that can be: never a 500."""

from __future__ import annotations

import asyncio
import json
import socket
from typing import Any

import httpx
import pytest
from fastapi.routing import APIRoute, iter_route_contexts

from tests.conftest import PASSWORD, Harness, bearer, error_code, make_settings, start_harness
from tests.support.servers import create_user_in, uvicorn_server

LONE_SURROGATES = ["\ud800", "a\udfffb", "\udc00\ud800"]  # high, low, a pair in the wrong order


async def _post_json_text(h: Harness, path: str, body: dict[str, Any], **headers: str) -> Any:
    # json.dumps writes a lone surrogate as the escape \ud800, as a client library would.
    return await h.client.post(
        path, content=json.dumps(body), headers={"content-type": "application/json", **headers}
    )


async def _live_sessions(h: Harness, access_token: str) -> list[dict[str, Any]]:
    response = await h.client.get("/auth/sessions", headers=bearer(access_token))
    assert response.status_code == 200, response.text
    sessions: list[dict[str, Any]] = response.json()
    return sessions


@pytest.mark.parametrize("device_name", LONE_SURROGATES)
async def test_a_lone_surrogate_in_device_name_is_refused_with_422(
    harness: Harness, device_name: str
) -> None:
    """It used to reach the database: a 500 on both (the connection reset on a real server)."""
    email = await harness.create_user()
    body = {"email": email, "password": PASSWORD, "device_name": device_name}
    response = await _post_json_text(harness, "/auth/login", body)
    assert response.status_code == 422, response.text
    assert error_code(response) == "validation_error"
    assert response.json()["error"]["fields"] == [
        {
            "loc": ["body", "device_name"],
            "type": "string_unicode",
            "msg": "Input should be valid Unicode text: it holds a lone surrogate",
        }
    ]
    tokens = await harness.login(email)  # nothing was started
    assert len(await _live_sessions(harness, tokens["access_token"])) == 1


def _json_body_string_fields(h: Harness) -> list[tuple[str, str, str]]:
    """(method, path, field) for every property of every JSON request body in the OpenAPI
    document that may be a string: a body added later is covered without editing this test."""
    fields = []
    for path, operations in h.app.openapi()["paths"].items():
        for method, operation in operations.items():
            content = operation.get("requestBody", {}).get("content", {})
            schema = content.get("application/json", {}).get("schema")
            if schema is None:
                continue
            if "$ref" in schema:
                name = schema["$ref"].rsplit("/", 1)[1]
                schema = h.app.openapi()["components"]["schemas"][name]
            for field, spec in schema["properties"].items():
                types = {spec.get("type")} | {s.get("type") for s in spec.get("anyOf", [])}
                if "string" in types:
                    fields.append((method.upper(), path, field))
    return fields


async def test_every_string_field_of_every_json_body_refuses_a_lone_surrogate(
    harness: Harness,
) -> None:
    fields = _json_body_string_fields(harness)
    assert ("POST", "/auth/login", "device_name") in fields
    assert ("POST", "/auth/refresh", "refresh_token") in fields
    assert len(fields) >= 9
    tokens = await harness.login(await harness.create_user())
    for method, path, field in fields:
        response = await harness.client.request(
            method,
            path,
            content=json.dumps({field: "x\ud800"}),
            headers={"content-type": "application/json", **bearer(tokens["access_token"])},
        )
        assert response.status_code == 422, (path, field, response.text)
        refusals = {(tuple(f["loc"]), f["type"]) for f in response.json()["error"]["fields"]}
        # FastAPI's json.loads takes the escape and our RequestBody refuses it in the field;
        # the hot routes' own parser (pydantic's) refuses it as JSON.
        assert (("body", field), "string_unicode") in refusals or (
            ("body",),
            "json_invalid",
        ) in refusals, (path, field, refusals)


def test_every_json_body_model_is_a_request_body() -> None:
    """The refusal lives in RequestBody: a body model on another base would let it through."""
    from app.core.json_body import RequestBody
    from app.main import create_app

    app = create_app(make_settings("sqlite+aiosqlite:///unused.db"), configure_logs=False)
    models = [
        param.field_info.annotation
        for context in iter_route_contexts(app.routes)
        if isinstance(route := context.original_route, APIRoute)
        for param in route.dependant.body_params
        if isinstance(param.field_info.annotation, type)
        and param.field_info.annotation.__module__.startswith("app.")
    ]
    assert len(models) >= 3
    for model in models:
        assert issubclass(model, RequestBody), model


async def test_control_characters_in_the_user_agent_are_stored_replaced(
    harness: Harness,
) -> None:
    """A NUL failed the session's insert on PostgreSQL (a 500); an escape sequence would reach
    the terminal of whoever reads the audit trail (`python -m app audit`)."""
    email = await harness.create_user()
    response = await harness.client.post(
        "/auth/login",
        json={"email": email, "password": PASSWORD},
        headers={"user-agent": "curl\x00/8\x1b[31m"},
    )
    assert response.status_code == 200, response.text
    (session,) = await _live_sessions(harness, response.json()["access_token"])
    assert session["user_agent"] == "curl\ufffd/8\ufffd[31m"


@pytest.mark.parametrize(
    "forwarded_for",
    ["x" * 100, "a\x00b", "fe80::1%" + "e" * 80, "not an address"],
)
async def test_a_forwarded_for_that_is_not_an_ip_address_is_not_recorded(
    database_url: str, forwarded_for: str
) -> None:
    """From a trusted proxy the server takes X-Forwarded-For's text as the client's host,
    whatever it is: a 100-character one failed the insert on PostgreSQL (a 500)."""
    settings = make_settings(database_url, trusted_proxies=["203.0.113.7"])  # the transport
    async for h in start_harness(settings):
        email = await h.create_user()
        response = await h.client.post(
            "/auth/login",
            json={"email": email, "password": PASSWORD},
            headers={"x-forwarded-for": forwarded_for},
        )
        assert response.status_code == 200, response.text
        (session,) = await _live_sessions(h, response.json()["access_token"])
        assert session["ip"] is None
        wrong = await h.client.post(
            "/auth/login",
            json={"email": email, "password": "not the password"},
            headers={"x-forwarded-for": forwarded_for},
        )
        assert error_code(wrong) == "invalid_credentials"  # its audit row went in


def _exchange(base_url: str, request: bytes) -> bytes:
    host, port = base_url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=10) as sock:
        sock.sendall(request)
        chunks = []
        while chunk := sock.recv(65536):
            chunks.append(chunk)
    return b"".join(chunks)


@pytest.mark.slow
def test_header_bytes_over_a_real_connection(postgres_url: str) -> None:
    """What a real server passes on: NUL in a header is refused by the HTTP parser (400, never
    reaching the app); other bytes arrive as Latin-1 text and are answered like any other
    value; a garbage X-Forwarded-For from a trusted proxy was a 500 on PostgreSQL."""
    email = asyncio.run(create_user_in(postgres_url))
    body = json.dumps({"email": email, "password": PASSWORD}).encode()

    def login(header: bytes) -> bytes:
        return _exchange(
            base,
            b"POST /auth/login HTTP/1.1\r\nHost: t\r\nConnection: close\r\n"
            b"Content-Type: application/json\r\nContent-Length: %d\r\n%s\r\n%s"
            % (len(body), header, body),
        )

    env = {"TRUSTED_PROXIES": '["127.0.0.1"]'}
    with uvicorn_server(postgres_url, serve=True, env=env) as (base, _):
        assert login(b"User-Agent: a\x00b\r\n").startswith(b"HTTP/1.1 400 ")
        assert login(b"Cookie: __Host-device_token=a\x00b\r\n").startswith(b"HTTP/1.1 400 ")
        assert login(b"User-Agent: a\xff\xfe\x80b\r\n").startswith(b"HTTP/1.1 200 ")
        assert login(b"Cookie: __Host-device_token=\xff\xfe\r\n").startswith(b"HTTP/1.1 200 ")
        assert login(b"X-Forwarded-For: " + b"x" * 100 + b"\r\n").startswith(b"HTTP/1.1 200 ")
        sessions = httpx.get(
            f"{base}/auth/sessions",
            headers=bearer(json.loads(login(b"").partition(b"\r\n\r\n")[2])["access_token"]),
        ).json()
        assert {s["user_agent"] for s in sessions} >= {"a\xff\xfe\x80b"}


@pytest.mark.parametrize("length", [b"\xb2", b"\xb3\xb9"])
async def test_a_content_length_of_other_digits_is_refused_like_any_bad_length(
    harness: Harness, length: bytes
) -> None:
    """Latin-1 "²" is a digit to str.isdigit() and not to int(): the body limit raised (500)."""
    response = await harness.client.post(
        "/auth/login",
        content=b"{}",
        headers=[(b"content-type", b"application/json"), (b"content-length", length)],
    )
    assert response.status_code == 413
    assert error_code(response) == "payload_too_large"
