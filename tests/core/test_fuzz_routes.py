"""Property test: whatever a client sends to any route, the answer is never a 5xx.

Each example is a request to one of the application's routes (any of its methods, sometimes
another): a good request from a fresh account (its email, password and tokens, a valid body)
with a few things changed into something hostile: a body field, a form field, a path or query
parameter or a header becomes arbitrary Unicode (lone surrogates included, sent as a client's
JSON escape, or in a URL as the bytes a lax encoder writes for them), arbitrary JSON (nested,
strings past the body limit, numbers past every parser's limit) or raw bytes; or the whole
body is replaced. Credentials: none, garbage, a valid Bearer token, the browser's cookies with
their CSRF token, or an introspection client's Basic credentials.

The explicit examples put the two values that had reached the databases (a lone surrogate, a
NUL) into every field, parameter and stored header of every route, one at a time, so they are
tried on every run whatever the random part draws. The random part is derived from the test's
source (`derandomize`): every run, CI's included, sends the same requests, and a failure
prints the request hypothesis shrank it to.
"""

from __future__ import annotations

import base64
import json
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass, field, replace
from typing import Any
from urllib.parse import quote

import httpx
import pytest
from fastapi import FastAPI
from fastapi.routing import iter_route_contexts
from hypothesis import HealthCheck, event, example, given, settings
from hypothesis import strategies as st
from sqlalchemy.ext.asyncio import AsyncEngine
from starlette.routing import Mount

from app.auth.transport import CSRF_COOKIE, DEVICE_COOKIE, REFRESH_COOKIE, CsrfTokenCodec
from app.core.db import create_engine
from app.core.settings import Settings
from app.main import create_app
from tests.conftest import PASSWORD, TEST_SECRET, Harness, make_settings, start_harness

# Random examples on top of the 140 explicit ones: with them about 7 s on SQLite, 3 s on
# PostgreSQL (2 cores). Thousands more found nothing else.
RANDOM_EXAMPLES = {"sqlite": 250, "postgres": 60}
INTROSPECTION_CLIENT = ("fuzz-gateway", "fuzz-gateway-secret-0123456789")
FRONTEND = "https://app.example"
METHODS = ("GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS")
PROXY = "203.0.113.7"  # the test transport's peer, trusted: X-Forwarded-For is believed


def _settings(database_url: str) -> Settings:
    return make_settings(
        database_url,
        allow_registration=True,
        introspection_clients={INTROSPECTION_CLIENT[0]: INTROSPECTION_CLIENT[1]},
        cors_origins=[FRONTEND],
        trusted_proxies=[PROXY],
    )


# --- the routes ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Route:
    path: str  # the template, e.g. /auth/sessions/{session_id}
    methods: tuple[str, ...]
    body: str  # "json", "form" or "" (none declared)
    fields: tuple[str, ...]  # of the body
    query: tuple[str, ...]  # declared query parameters

    @property
    def parameters(self) -> tuple[str, ...]:
        return tuple(part[1:-1] for part in self.path.split("/") if part.startswith("{"))


def _routes(app: FastAPI) -> list[Route]:
    """Every route the application serves, with what its OpenAPI operation declares (nothing
    for the routes left out of the document: /metrics, /demo, the mounts, each of which is one
    route with a `{path}` parameter)."""
    methods: dict[str, set[str]] = {}
    for context in iter_route_contexts(app.routes):
        if isinstance(context.original_route, Mount):
            methods.setdefault(f"{context.path}/{{path}}", set()).add("GET")
        elif context.path:
            methods.setdefault(context.path, set()).update(context.methods or ())
    document = app.openapi()
    return [
        _declared(document, path, tuple(sorted(verbs))) for path, verbs in sorted(methods.items())
    ]


def _declared(document: dict[str, Any], path: str, methods: tuple[str, ...]) -> Route:
    operation = document["paths"].get(path, {}).get(methods[0].lower(), {})
    query = tuple(p["name"] for p in operation.get("parameters", []) if p["in"] == "query")
    content = operation.get("requestBody", {}).get("content", {})
    for content_type, kind in [
        ("application/json", "json"),
        ("application/x-www-form-urlencoded", "form"),
    ]:
        schema = content.get(content_type, {}).get("schema")
        if schema is None:
            continue
        if "$ref" in schema:
            schema = document["components"]["schemas"][schema["$ref"].rsplit("/", 1)[1]]
        return Route(path, methods, kind, tuple(sorted(schema.get("properties", {}))), query)
    return Route(path, methods, "", (), query)


ROUTES = _routes(create_app(_settings("sqlite+aiosqlite:///unused.db"), configure_logs=False))


# --- values -------------------------------------------------------------------------------


@dataclass(frozen=True)
class Valid:
    """A value of the example's own account, filled in when the request is built."""

    name: str


@dataclass(frozen=True)
class RawJson:
    """JSON text written as is: numbers json.dumps refuses to write (over 4300 digits)."""

    text: str


ABSENT = RawJson("")  # a change that removes the field or parameter

# What a good request puts in each field or parameter, by name.
GOOD: dict[str, Any] = {
    "email": Valid("email"),
    "username": Valid("email"),
    "password": PASSWORD,
    "current_password": PASSWORD,
    "new_password": "another horse battery staple",
    "device_name": "fuzz laptop",
    "device_token": Valid("device_token"),
    "refresh_token": Valid("refresh_token"),
    "token": Valid("access_token"),
    "token_type_hint": "access_token",
    "grant_type": "password",
    "scope": "openid",
    "user_id": Valid("user_id"),
    "session_id": Valid("session_id"),
    "since": "2020-01-01T00:00:00Z",
    "limit": "5",
    "path": "auth-client.js",
}
# Other good values, which the random part tries too.
OTHER_GOOD: dict[str, list[Any]] = {
    "token": [Valid("refresh_token")],
    "token_type_hint": ["refresh_token"],
    "grant_type": ["refresh_token"],
    "path": ["swagger-ui.css", "../app/main.py", "."],
}

# The two that reached the databases: tried in every place by the explicit examples.
LONE_SURROGATE, NUL = "x\ud800", "a\x00b"
# Lone surrogates, NUL, controls, noncharacters, the last code point, a BOM, a right-to-left
# override, combining and fullwidth characters: where text handling usually breaks.
_AWKWARD = "\ud800\udbff\udc00\udfff\x00\x1b\x7f\x85\ufeff\ufffe\uffff\U0010ffff\u202e\u0301Ａé𝟘"


def _long(most: int) -> st.SearchStrategy[str]:
    return st.builds(
        lambda c, n: c * n, st.sampled_from(["a", "\ud800", "é", "0"]), st.integers(257, most)
    )


_SHORT = st.one_of(
    st.sampled_from([LONE_SURROGATE, NUL, "\udc00\ud800", "", " ", "\x1b[2J", "Ａ@example.com"]),
    st.text(st.sampled_from(_AWKWARD), min_size=1, max_size=8),
    st.text(st.characters(), max_size=20),  # any code point, surrogates included
)
texts = st.one_of(_SHORT, _long(70_000))  # past the 64 KiB body limit
url_texts = st.one_of(_SHORT, _long(600))  # a request line stays within what servers take
_NUMBERS = st.one_of(
    st.integers(),
    st.integers(min_value=-(10**300), max_value=10**300),
    st.floats(),  # NaN and infinities too: json.dumps writes them, json.loads takes them
    st.integers(4_301, 20_000).map(lambda n: RawJson("9" * n)),
    st.sampled_from([RawJson("1e999999"), RawJson("-0"), RawJson("1" + "0" * 5000 + ".5")]),
)
json_values = st.recursive(
    st.none() | st.booleans() | _NUMBERS | texts,
    lambda children: st.lists(children, max_size=4) | st.dictionaries(texts, children, max_size=4),
    max_leaves=10,
)
_DEEP = st.integers(10, 5_000).map(lambda depth: RawJson("[" * depth + "]" * depth))
_header_values = st.one_of(
    st.binary(max_size=40).map(lambda b: b.replace(b"\r", b"").replace(b"\n", b"")),
    st.sampled_from([b"a\x00b", b"\xed\xa0\x80", b"x" * 100, b"cookie", FRONTEND.encode(), b"*"]),
)
_HEADERS = (
    "user-agent",
    "x-forwarded-for",
    "x-forwarded-proto",
    "x-request-id",
    "origin",
    "sec-fetch-site",
    "session-transport",
    "x-csrf-token",
    "cookie",
    "authorization",
    "access-control-request-method",
    "content-type",
    "content-length",
    "transfer-encoding",
    "host",
)
_CONTENT_TYPES = (
    "application/json",
    "application/json; charset=latin-1",
    "application/merge-patch+json",
    "application/x-www-form-urlencoded",
    "multipart/form-data; boundary=fuzz",
    "text/plain",
)


# --- examples -----------------------------------------------------------------------------


@dataclass(frozen=True)
class Body:
    """A body that replaces the route's good one."""

    content_type: str | None
    kind: str  # "json", "form" or "raw"
    value: Any  # a JSON value, form pairs, or bytes


@dataclass(frozen=True)
class Example:
    route: Route
    method: str
    credentials: str  # none, bearer, cookie, garbage, basic
    role: str = "user"
    # (where, name, value): where is "path", "query", "body" or "header"; ABSENT removes it.
    changes: tuple[tuple[str, Any, Any], ...] = ()
    body: Body | None = None  # None: the route's good body with the changes
    no_body: bool = False


def _change(route: Route) -> st.SearchStrategy[tuple[str, Any, Any]]:
    def value_for(name: Any, values: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
        others = OTHER_GOOD.get(name) if isinstance(name, str) else None
        return st.one_of(values, st.just(ABSENT), *([st.sampled_from(others)] if others else []))

    body_values = json_values if route.body == "json" else texts
    places = [
        *[
            st.tuples(st.just("path"), st.just(p), value_for(p, url_texts))
            for p in route.parameters
        ],
        *[st.tuples(st.just("query"), st.just(q), value_for(q, url_texts)) for q in route.query],
        *[st.tuples(st.just("body"), st.just(f), value_for(f, body_values)) for f in route.fields],
        st.tuples(st.just("query"), url_texts, url_texts),
        st.tuples(st.just("header"), st.sampled_from(_HEADERS), _header_values),
    ]
    if route.body:
        places.append(st.tuples(st.just("body"), texts, body_values))
    return st.one_of(*places)


def _replacement_body(route: Route) -> st.SearchStrategy[Body]:
    return st.one_of(
        st.builds(
            Body,
            st.sampled_from(_CONTENT_TYPES[:3]),
            st.just("json"),
            st.one_of(json_values, _DEEP),
        ),
        st.builds(
            Body,
            st.just("application/x-www-form-urlencoded"),
            st.just("form"),
            st.lists(st.tuples(texts, texts), max_size=4),
        ),
        st.builds(
            Body, st.sampled_from((None, *_CONTENT_TYPES)), st.just("raw"), st.binary(max_size=200)
        ),
    )


def random_examples(route: Route) -> st.SearchStrategy[Example]:
    return st.builds(
        Example,
        route=st.just(route),
        # Mostly the route's own method and a live session, so that the changes meet the
        # route's code rather than the 405 or the 401 in front of it.
        method=st.one_of(*[st.sampled_from(route.methods)] * 4, st.sampled_from(METHODS)),
        credentials=st.sampled_from(["bearer"] * 3 + ["cookie", "none", "garbage", "basic"]),
        role=st.sampled_from(["user", "admin"]),
        changes=st.lists(_change(route), min_size=1, max_size=3).map(tuple),
        body=st.one_of(st.none(), st.none(), st.none(), _replacement_body(route)),
        no_body=st.sampled_from([False, False, False, True]) if route.body else st.just(False),
    )


requests = st.sampled_from(ROUTES).flatmap(random_examples)


def explicit_examples() -> Iterator[Example]:
    """Each route's good request; then a lone surrogate and a NUL in each of its fields and
    parameters in turn, and in the headers whose text is stored, on routes that change things."""
    for route in ROUTES:
        role = "admin" if route.path.startswith("/admin") else "user"
        for method in route.methods:
            good = Example(route, method, "bearer", role)
            yield good
            places = [
                *[("path", p) for p in route.parameters],
                *[("query", q) for q in route.query],
                *[("body", f) for f in route.fields],
            ]
            for where, name in places:
                for value in (LONE_SURROGATE, NUL):
                    yield replace(good, changes=((where, name, value),))
            if method in {"POST", "DELETE"}:
                for header in ("user-agent", "x-forwarded-for"):
                    for raw in (b"a\x00b", b"x" * 100):
                        yield replace(good, changes=(("header", header, raw),))


# --- building the request -----------------------------------------------------------------


@dataclass
class Account:
    """A fresh account, logged in, per example: examples cannot meet (one may log out or
    change the password), and each starts from a live session."""

    values: dict[str, str] = field(default_factory=dict)
    csrf_token: str = ""


async def _account(h: Harness, role: str) -> Account:
    email = await h.create_user(email=f"fuzz-{uuid.uuid4().hex[:12]}@example.com", role=role)
    response = await h.client.post("/auth/login", json={"email": email, "password": PASSWORD})
    assert response.status_code == 200, response.text
    tokens = response.json()
    me = await h.client.get(
        "/auth/me", headers={"authorization": f"Bearer {tokens['access_token']}"}
    )
    session_id = tokens["session"]["id"]
    values = {
        "email": email,
        "access_token": tokens["access_token"],
        "refresh_token": tokens["refresh_token"],
        "device_token": tokens["device_token"],
        "session_id": session_id,
        "user_id": me.json()["id"],
    }
    return Account(values, CsrfTokenCodec(TEST_SECRET).token_for(uuid.UUID(session_id)))


def _resolver(account: Account | None) -> Callable[[Any], Any]:
    def resolve(value: Any) -> Any:
        if isinstance(value, Valid):
            return account.values[value.name] if account else "no-account"
        if isinstance(value, list):
            return [resolve(v) for v in value]
        if isinstance(value, tuple):
            return tuple(resolve(v) for v in value)
        if isinstance(value, dict):
            return {k: resolve(v) for k, v in value.items()}
        return value

    return resolve


def _json_text(value: Any) -> str:
    """JSON as a client writes it: json.dumps's escapes (a lone surrogate as \\ud800)."""
    if isinstance(value, RawJson):
        return value.text
    if isinstance(value, list):
        return "[" + ",".join(_json_text(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{" + ",".join(f"{json.dumps(k)}:{_json_text(v)}" for k, v in value.items()) + "}"
    return json.dumps(value)


def _url_text(value: Any) -> str:
    # A lone surrogate as the bytes a lax encoder writes for it (ED A0 80: not UTF-8).
    text = value.text if isinstance(value, RawJson) else str(value)
    return quote(text.encode("utf-8", "surrogatepass"), safe="")


def _form_text(pairs: list[tuple[Any, Any]]) -> bytes:
    return "&".join(f"{_url_text(k)}={_url_text(v)}" for k, v in pairs).encode("ascii")


def _credentials(kind: str, account: Account | None) -> list[tuple[str, str]]:
    if kind == "garbage":
        return [("authorization", "Bearer eyJhbGciOiJub25lIn0.e30."), ("cookie", "x=y")]
    if kind == "basic":
        secret = base64.b64encode(":".join(INTROSPECTION_CLIENT).encode()).decode()
        return [("authorization", f"Basic {secret}")]
    if account is None:
        return []
    if kind == "bearer":
        return [("authorization", f"Bearer {account.values['access_token']}")]
    cookies = (
        f"{REFRESH_COOKIE}={account.values['refresh_token']}; {CSRF_COOKIE}={account.csrf_token}; "
        f"{DEVICE_COOKIE}={account.values['device_token']}"
    )
    return [
        ("session-transport", "cookie"),
        ("cookie", cookies),
        ("x-csrf-token", account.csrf_token),
        ("origin", "http://testserver"),
    ]


def _changed(good: dict[Any, Any], changes: list[tuple[Any, Any]]) -> dict[Any, Any]:
    values = dict(good)
    for name, value in changes:
        if value is ABSENT:
            values.pop(name, None)
        else:
            values[name] = value
    return values


def _body(ex: Example, body: dict[Any, Any]) -> tuple[str | None, bytes]:
    if ex.body is not None:
        if ex.body.kind == "json":
            return ex.body.content_type, _json_text(ex.body.value).encode()
        if ex.body.kind == "form":
            return ex.body.content_type, _form_text(ex.body.value)
        return ex.body.content_type, ex.body.value
    if ex.no_body or not ex.route.body:
        return None, b""
    if ex.route.body == "json":
        return "application/json", _json_text(body).encode()
    return "application/x-www-form-urlencoded", _form_text(list(body.items()))


def _needs_account(ex: Example) -> bool:
    uses_good = any(
        isinstance(GOOD.get(n), Valid) for n in (*ex.route.parameters, *ex.route.fields)
    )
    return ex.credentials in {"bearer", "cookie"} or uses_good or "Valid(" in repr(ex.changes)


async def send(h: Harness, ex: Example) -> httpx.Response:
    account = await _account(h, ex.role) if _needs_account(ex) else None
    resolve = _resolver(account)
    good = {name: resolve(value) for name, value in GOOD.items()}

    def changes(where: str) -> list[tuple[Any, Any]]:
        return [(name, resolve(value)) for place, name, value in ex.changes if place == where]

    path_values = _changed({p: good.get(p, "x") for p in ex.route.parameters}, changes("path"))
    path = ex.route.path.format(
        **{p: _url_text(path_values.get(p, "")) for p in ex.route.parameters}
    )
    query = "&".join(
        f"{_url_text(k)}={_url_text(v)}" for k, v in changes("query") if v is not ABSENT
    )
    body = _changed({f: good.get(f, "x") for f in ex.route.fields}, changes("body"))
    content_type, content = _body(ex, body)
    headers = [(k.encode(), v.encode()) for k, v in _credentials(ex.credentials, account)]
    if content_type is not None:
        headers.append((b"content-type", content_type.encode()))
    headers += [(name.encode(), value) for name, value in changes("header")]
    url = path + (f"?{query}" if query else "")
    return await h.client.request(ex.method, url, headers=headers, content=content)


# --- the tests ----------------------------------------------------------------------------


async def _fuzzed_app(database_url: str) -> AsyncIterator[Harness]:
    """One app per database for the module (its start costs more than many examples)."""
    engine: AsyncEngine = create_engine(database_url)
    try:
        async for h in start_harness(_settings(database_url), engine=engine):
            yield h
    finally:
        await engine.dispose()


@pytest.fixture(scope="module")
async def sqlite_app(sqlite_url: str) -> AsyncIterator[Harness]:
    async for h in _fuzzed_app(sqlite_url):
        yield h


@pytest.fixture(scope="module")
async def postgres_app(postgres_url: str) -> AsyncIterator[Harness]:
    async for h in _fuzzed_app(postgres_url):
        yield h


def fuzz(database: str) -> Callable[[Any], Any]:
    """The test, with its settings and the explicit examples."""

    def decorate(test: Any) -> Any:
        test = given(ex=requests)(test)
        for explicit in explicit_examples():
            test = example(ex=explicit)(test)
        return settings(
            max_examples=RANDOM_EXAMPLES[database],
            derandomize=True,  # the same examples every run: CI stays deterministic
            database=None,
            deadline=None,
            # One app serves every example, and large requests are the point.
            suppress_health_check=list(HealthCheck),
        )(test)

    return decorate


async def _never_a_5xx(h: Harness, ex: Example) -> None:
    try:
        response = await send(h, ex)
    except httpx.RemoteProtocolError as exc:
        # A redirect (a trailing slash) to a URL built from a fuzzed Host header, which httpx
        # cannot parse: a 3xx, and the client's problem.
        if "location header" not in str(exc):
            raise
        event(f"{ex.route.path} 3xx with an unparseable Location")
        return
    event(f"{ex.route.path} {response.status_code}")  # pytest --hypothesis-show-statistics
    assert response.status_code < 500, (response.status_code, response.text[:300])


@fuzz("sqlite")
async def test_no_request_gets_a_5xx_on_sqlite(sqlite_app: Harness, ex: Example) -> None:
    await _never_a_5xx(sqlite_app, ex)


@fuzz("postgres")
async def test_no_request_gets_a_5xx_on_postgres(postgres_app: Harness, ex: Example) -> None:
    await _never_a_5xx(postgres_app, ex)
