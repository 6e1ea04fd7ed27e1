"""The /docs page: FastAPI's Swagger UI HTML, assets from fastapi-offline, plus our plugin."""

from __future__ import annotations

from pathlib import Path

import fastapi_offline
from fastapi import FastAPI, Request, Response
from fastapi.openapi.docs import get_redoc_html, get_swagger_ui_html
from fastapi.responses import HTMLResponse

OFFLINE_ASSETS = "/static-offline-docs"  # fastapi-offline's mount
# Served from /static (app/static): keeps the explorer's session (docs/docs-explorer.md).
SESSION_PLUGIN = "/static/docs-session.js"


def install_docs_page(app: FastAPI, docs_url: str) -> None:
    """Replace fastapi-offline's /docs route by one that also loads the session plugin, between
    Swagger UI's bundle and its bootstrap script (which the plugin wraps)."""
    _remove_route(app, docs_url)

    async def swagger_ui(request: Request) -> HTMLResponse:
        root = request.scope.get("root_path", "")
        bundle = f"{root}{OFFLINE_ASSETS}/swagger-ui-bundle.js"
        page = get_swagger_ui_html(
            openapi_url=f"{root}{app.openapi_url}",
            title=f"{app.title} - Swagger UI",
            oauth2_redirect_url=app.swagger_ui_oauth2_redirect_url,
            swagger_js_url=bundle,
            swagger_css_url=f"{root}{OFFLINE_ASSETS}/swagger-ui.css",
            swagger_favicon_url=f"{root}{OFFLINE_ASSETS}/favicon.png",
            swagger_ui_parameters=app.swagger_ui_parameters,
        )
        html = bytes(page.body).decode()
        bundle_tag = f'<script src="{bundle}"></script>'
        plugin_tag = f'<script src="{root}{SESSION_PLUGIN}"></script>'
        if bundle_tag not in html:
            raise RuntimeError("Swagger UI's page changed: the session plugin cannot be loaded")
        return HTMLResponse(html.replace(bundle_tag, bundle_tag + plugin_tag, 1))

    app.add_api_route(docs_url, swagger_ui, methods=["GET"], include_in_schema=False)


# ReDoc's bundle shows a "by Redocly" logo from its CDN (src hard-coded); an empty src is never
# fetched (the image errors and ReDoc hides it), so /redoc asks no other origin for anything.
REDOC_CDN_LOGO = b'src:"https://cdn.redoc.ly/redoc/logo-mini.svg"'
REDOC_BUNDLE = Path(fastapi_offline.__file__).resolve().parent / "static" / "redoc.standalone.js"


def redoc_bundle_path(redoc_url: str) -> str:
    """Where install_redoc_page serves ReDoc's bundle, without the CDN logo."""
    return f"{redoc_url}/redoc.standalone.js"


def install_redoc_page(app: FastAPI, redoc_url: str) -> None:
    """Replace fastapi-offline's /redoc route by one whose bundle loads no CDN logo."""
    bundle = REDOC_BUNDLE.read_bytes()
    if REDOC_CDN_LOGO not in bundle:
        raise RuntimeError("ReDoc's bundle changed: its CDN logo cannot be removed")
    bundle = bundle.replace(REDOC_CDN_LOGO, b'src:""', 1)
    _remove_route(app, redoc_url)

    async def redoc(request: Request) -> HTMLResponse:
        root = request.scope.get("root_path", "")
        return get_redoc_html(
            openapi_url=f"{root}{app.openapi_url}",
            title=f"{app.title} - ReDoc",
            redoc_js_url=f"{root}{redoc_bundle_path(redoc_url)}",
            redoc_favicon_url=f"{root}{OFFLINE_ASSETS}/favicon.png",
            with_google_fonts=False,
        )

    async def redoc_js() -> Response:
        return Response(bundle, media_type="text/javascript")

    app.add_api_route(redoc_url, redoc, methods=["GET"], include_in_schema=False)
    app.add_api_route(
        redoc_bundle_path(redoc_url), redoc_js, methods=["GET"], include_in_schema=False
    )


def _remove_route(app: FastAPI, path: str) -> None:
    app.router.routes[:] = [
        route for route in app.router.routes if getattr(route, "path", None) != path
    ]
