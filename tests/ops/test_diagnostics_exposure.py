"""What a production service shows of itself: no API explorers or schema unless DOCS_ENABLED,
/metrics only behind METRICS_TOKEN, the browser client but not the demo page; and every
response's security headers, the HTML pages' policies naming exactly what they run."""

from __future__ import annotations

import base64
import hashlib
from collections.abc import AsyncIterator
from html.parser import HTMLParser
from typing import Any

import pytest

from app.main import DOCS_CSP
from tests.conftest import Harness, bearer, error_code, make_settings, start_harness

METRICS_TOKEN = "scrape-secret-0123456789abcdef"
DOCS_PAGES = ("/docs", "/docs/oauth2-redirect", "/redoc")
DOCS_PATHS = (*DOCS_PAGES, "/openapi.json", "/static-offline-docs/swagger-ui-bundle.js")


async def _started(database_url: str, **overrides: Any) -> AsyncIterator[Harness]:
    if overrides.get("environment") == "production":
        overrides.setdefault("password_hash_profile", "owasp")  # production refuses "test"
    async for h in start_harness(make_settings(database_url, **overrides)):
        yield h


@pytest.fixture
async def production(sqlite_url: str) -> AsyncIterator[Harness]:
    async for h in _started(sqlite_url, environment="production"):
        yield h


async def _statuses(h: Harness, paths: tuple[str, ...]) -> dict[str, int]:
    return {path: (await h.client.get(path)).status_code for path in paths}


# ----------------------------------------------------------------------------------- docs


async def test_production_serves_docs_and_schema_only_if_enabled(
    production: Harness, sqlite_url: str
) -> None:
    for path in DOCS_PATHS:
        response = await production.client.get(path)
        assert (response.status_code, error_code(response)) == (404, "not_found"), path
    async for h in _started(sqlite_url, environment="production", docs_enabled=True):
        assert await _statuses(h, DOCS_PATHS) == dict.fromkeys(DOCS_PATHS, 200)


async def test_docs_are_on_by_default_outside_production_and_can_be_turned_off(
    sqlite_url: str,
) -> None:
    async for h in _started(sqlite_url):
        assert await _statuses(h, DOCS_PATHS) == dict.fromkeys(DOCS_PATHS, 200)
    async for h in _started(sqlite_url, docs_enabled=False):
        assert await _statuses(h, DOCS_PATHS) == dict.fromkeys(DOCS_PATHS, 404)


# -------------------------------------------------------------------------------- metrics


async def test_without_metrics_token_production_serves_no_metrics_others_do(
    database_url: str,
) -> None:
    async for h in _started(database_url, environment="production"):
        for headers in ({}, bearer("anything")):
            response = await h.client.get("/metrics", headers=headers)
            assert (response.status_code, error_code(response)) == (404, "not_found")
    async for h in _started(database_url):
        assert (await h.client.get("/metrics")).status_code == 200


async def test_production_metrics_answer_only_the_bearer_of_the_token(database_url: str) -> None:
    async for h in _started(database_url, environment="production", metrics_token=METRICS_TOKEN):
        refused = [
            {},
            bearer("wrong"),
            bearer(METRICS_TOKEN[:-1]),
            {"Authorization": METRICS_TOKEN},  # no scheme
            {"Authorization": f"Basic {METRICS_TOKEN}"},
        ]
        for headers in refused:
            response = await h.client.get("/metrics", headers=headers)
            assert (response.status_code, error_code(response)) == (401, "not_authenticated")
            assert response.headers["www-authenticate"].startswith("Bearer")
        for scheme in ("Bearer", "bearer"):
            response = await h.client.get(
                "/metrics", headers={"Authorization": f"{scheme} {METRICS_TOKEN}"}
            )
            assert response.status_code == 200
            assert "authsvc_http_request_duration_seconds" in response.text


# ------------------------------------------------------------------------------ the demo


async def test_production_serves_the_browser_client_but_not_the_demo(
    production: Harness,
) -> None:
    for path in ("/demo", "/static/demo.html"):
        response = await production.client.get(path)
        assert (response.status_code, error_code(response)) == (404, "not_found"), path
    client = await production.client.get("/static/auth-client.js")
    assert client.status_code == 200
    assert "createAuthClient" in client.text


async def test_outside_production_the_demo_page_is_served_at_demo_only(harness: Harness) -> None:
    page = await harness.client.get("/demo")
    assert page.status_code == 200
    assert "<title>authsvc demo</title>" in page.text
    assert (await harness.client.get("/static/demo.html")).status_code == 404
    assert (await harness.client.get("/static/auth-client.js")).status_code == 200


# ----------------------------------------------------------------------- security headers


def _assert_page_headers(response: Any, csp: str) -> None:
    assert response.headers["content-type"].startswith("text/html")
    assert response.headers.get_list("content-security-policy") == [csp], response.url
    assert response.headers.get_list("x-content-type-options") == ["nosniff"]
    assert response.headers.get_list("x-frame-options") == ["DENY"]
    assert "frame-ancestors 'none'" in csp


@pytest.mark.parametrize("environment", ["test", "production"])
async def test_pages_carry_their_policy_and_every_response_nosniff(
    sqlite_url: str, environment: str
) -> None:
    async for h in _started(sqlite_url, environment=environment, docs_enabled=True):
        for path in ("/healthz", "/openapi.json", "/static/auth-client.js", "/no-such", "/auth/me"):
            response = await h.client.get(path)
            assert response.headers.get_list("x-content-type-options") == ["nosniff"], path
        for path in DOCS_PAGES:
            _assert_page_headers(await h.client.get(path), DOCS_CSP)


class _InlineElements(HTMLParser):
    """The text of each inline <script> and <style> element of a page."""

    def __init__(self) -> None:
        super().__init__()
        self.found: dict[str, list[str]] = {"script": [], "style": []}
        self._open: str | None = None

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag in self.found and not dict(attrs).get("src"):
            self._open = tag
            self.found[tag].append("")

    def handle_endtag(self, tag: str) -> None:
        self._open = None

    def handle_data(self, data: str) -> None:
        if self._open:
            self.found[self._open][-1] += data


def _source_hash(text: str) -> str:
    return "'sha256-" + base64.b64encode(hashlib.sha256(text.encode()).digest()).decode() + "'"


async def test_the_demo_page_policy_allows_exactly_its_own_inline_code(harness: Harness) -> None:
    page = await harness.client.get("/demo")
    csp = page.headers["content-security-policy"]
    _assert_page_headers(page, csp)
    directives = dict(d.strip().split(" ", 1) for d in csp.split(";"))
    parser = _InlineElements()
    parser.feed(page.text)
    scripts, styles = parser.found["script"], parser.found["style"]
    assert scripts
    assert styles
    assert directives["script-src"].split() == ["'self'", *map(_source_hash, scripts)]
    assert directives["style-src"].split() == [_source_hash(style) for style in styles]
    assert directives["default-src"] == "'none'"
    assert "unsafe" not in csp
