"""A stand-in for the microservice behind the gateway: echoes the identity it was given."""

from __future__ import annotations

import json

from starlette.types import Receive, Scope, Send


async def app(scope: Scope, receive: Receive, send: Send) -> None:
    if scope["type"] != "http":
        return
    headers = {k.decode(): v.decode() for k, v in scope["headers"]}
    body = json.dumps(
        {
            "upstream": True,
            "user_id": headers.get("x-auth-user-id", ""),
            "session_id": headers.get("x-auth-session-id", ""),
            "role": headers.get("x-auth-role", ""),
        }
    ).encode()
    await send(
        {
            "type": "http.response.start",
            "status": 200,
            "headers": [(b"content-type", b"application/json")],
        }
    )
    await send({"type": "http.response.body", "body": body})
