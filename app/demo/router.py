"""The demo page of the browser client (development and test environments only)."""

from __future__ import annotations

from pathlib import Path

from fastapi import APIRouter
from fastapi.responses import FileResponse

from app.core.exposure import public

STATIC_DIR = Path(__file__).resolve().parent.parent / "static"

router = APIRouter(tags=["demo"], include_in_schema=False)


@router.get("/demo")
@public
async def demo() -> FileResponse:
    """Login form, who-am-I panel with the session countdowns, logout: auth-client.js at work."""
    return FileResponse(STATIC_DIR / "demo.html", headers={"Cache-Control": "no-store"})
