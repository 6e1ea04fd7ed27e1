"""The demo page of the browser client (development and test environments only)."""

from __future__ import annotations

import base64
import hashlib
import re
from pathlib import Path

from fastapi import APIRouter
from fastapi.responses import FileResponse

from app.core.exposure import public

# Here, not among the static files (app/static): in production nothing serves it.
DEMO_PAGE = Path(__file__).resolve().parent / "demo.html"

router = APIRouter(tags=["demo"], include_in_schema=False)


def _inline_hashes(html: str, tag: str) -> str:
    """CSP sources allowing exactly the page's own inline <script> or <style> elements."""
    bodies = re.findall(rf"<{tag}\b[^>]*>(.*?)</{tag}>", html, flags=re.DOTALL)
    digests = (base64.b64encode(hashlib.sha256(b.encode()).digest()).decode() for b in bodies)
    return " ".join(f"'sha256-{digest}'" for digest in digests)


_html = DEMO_PAGE.read_text(encoding="utf-8")
# The page's Content-Security-Policy (app.core.middleware applies it): its own inline script
# and style by hash, the client module and the API from this origin, and nothing else.
DEMO_CSP = (
    f"default-src 'none'; script-src 'self' {_inline_hashes(_html, 'script')}; "
    f"style-src {_inline_hashes(_html, 'style')}; connect-src 'self'; img-src data:; "
    "base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
)


@router.get("/demo")
@public
async def demo() -> FileResponse:
    """Login form, who-am-I panel with the session countdowns, logout: auth-client.js at work."""
    return FileResponse(DEMO_PAGE, headers={"Cache-Control": "no-store"})
