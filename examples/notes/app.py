"""The notes service: a real downstream of authsvc, built on authsvc-kit only.

    AUTHSVC_ISSUER=http://localhost:8000 AUTHSVC_AUDIENCE=authsvc NOTES_CLIENT_ID=notes \\
        uvicorn examples.notes.app:app --port 9000 --ws-max-size 65536

(--ws-max-size: uvicorn takes WebSocket messages of up to 16 MiB by default, which any client
can make the worker receive and hold; this service's messages are a few kB.)

`GET /notes` (your identity and your notes), `POST /notes`, the WebSocket `/ws` (a live feed of
your notes; send `{"type": "note", "text": ...}` to add one, anything else is echoed) and the
back-channel logout receiver at `POST /backchannel-logout`. Notes live in memory, per user.
The service never calls the auth service per request: tokens are verified locally against the
issuer's JWKS, and ended sessions arrive by back-channel logout (any AUTHSVC_* setting of
authsvc_kit.KitConfig.from_env applies, e.g. AUTHSVC_REDIS_URL for several replicas)."""

from __future__ import annotations

import json
import os
import time
import uuid
from collections import defaultdict
from typing import Any

from authsvc_kit import Kit, Principal
from authsvc_kit.fastapi import Identity, current_principal
from fastapi import FastAPI, WebSocket, WebSocketDisconnect
from pydantic import BaseModel, Field

MAX_NOTES_PER_USER = 1000
MAX_MESSAGE = 8192  # characters: a note of 2,000 and its JSON, with room to spare


class NewNote(BaseModel):
    text: str = Field(min_length=1, max_length=2000)


class Note(BaseModel):
    id: str
    text: str
    created_at: float


def _identity(who: Principal) -> dict[str, Any]:
    return {
        "user_id": who.user_id,
        "session_id": who.session_id,
        "role": who.role,
        "client_id": who.client_id,
        "expires_at": who.expires_at,
    }


def create_app(kit: Kit | None = None) -> FastAPI:
    kit = kit or Kit.from_env(client_id=os.environ.get("NOTES_CLIENT_ID"))
    app = FastAPI(title="notes", lifespan=kit.lifespan)
    kit.install(app)  # verification middleware + POST /backchannel-logout
    notes: dict[str, list[Note]] = defaultdict(list)
    feeds: dict[str, set[WebSocket]] = defaultdict(set)

    async def add(user_id: str, text: str) -> Note:
        note = Note(id=uuid.uuid4().hex, text=text, created_at=time.time())
        mine = notes[user_id]
        mine.append(note)
        del mine[:-MAX_NOTES_PER_USER]
        for socket in list(feeds[user_id]):
            try:
                await socket.send_json({"type": "note", "note": note.model_dump()})
            except (WebSocketDisconnect, RuntimeError):
                feeds[user_id].discard(socket)
        return note

    @app.get("/healthz")
    async def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/notes")
    async def list_notes(who: Identity) -> dict[str, Any]:
        return {"identity": _identity(who), "notes": [n.model_dump() for n in notes[who.user_id]]}

    @app.post("/notes", status_code=201)
    async def create_note(who: Identity, body: NewNote) -> Note:
        return await add(who.user_id, body.text)

    @app.websocket("/ws")
    async def feed(websocket: WebSocket, who: Identity) -> None:
        await websocket.accept()  # already accepted by the kit: a no-op kept for clarity
        feeds[who.user_id].add(websocket)
        try:
            await websocket.send_json({"type": "hello", "identity": _identity(who)})
            while True:
                received = await websocket.receive()
                if received["type"] == "websocket.disconnect":
                    break
                message = _message(received.get("text") or "")  # a binary frame: not JSON
                if isinstance(message, dict) and message.get("type") == "note":
                    await add(who.user_id, str(message.get("text", ""))[:2000])
                else:
                    # The identity as of now: an in-band renewal may have moved expires_at.
                    now = current_principal(websocket)
                    await websocket.send_json(
                        {"type": "echo", "data": message, "expires_at": now.expires_at}
                    )
        except WebSocketDisconnect:
            pass
        finally:
            feeds[who.user_id].discard(websocket)

    return app


def _message(text: str) -> object:
    """A client's JSON message; None for one too large or not JSON (deep nesting included:
    json.loads raises RecursionError for it, not a ValueError)."""
    if len(text) > MAX_MESSAGE:
        return None
    try:
        return json.loads(text)
    except (ValueError, RecursionError):
        return None


# Configured by the environment at import (uvicorn examples.notes.app:app): a missing
# AUTHSVC_ISSUER or AUTHSVC_AUDIENCE is one error naming the variable.
app = create_app()
