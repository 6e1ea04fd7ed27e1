"""The /docs page: FastAPI's Swagger UI HTML, assets from fastapi-offline, plus our plugin."""

from __future__ import annotations

from fastapi import FastAPI, Request
from fastapi.openapi.docs import get_swagger_ui_html
from fastapi.responses import HTMLResponse

OFFLINE_ASSETS = "/static-offline-docs"  # fastapi-offline's mount
# Served from /static (app/static): keeps the explorer's session (docs/docs-explorer.md).
SESSION_PLUGIN = "/static/docs-session.js"


def install_docs_page(app: FastAPI, docs_url: str) -> None:
    """Replace fastapi-offline's /docs route by one that also loads the session plugin, between
    Swagger UI's bundle and its bootstrap script (which the plugin wraps)."""
    app.router.routes[:] = [
        route for route in app.router.routes if getattr(route, "path", None) != docs_url
    ]

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
