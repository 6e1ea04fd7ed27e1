"""The benchmark's back-channel logout receiver (`uvicorn bench.backchannel_receiver:app`):
answers 200 and appends "<sid> <arrival unix time>" for each logout token to the file named
by BENCH_RECEIVER_LOG. The token is read, not verified: the benchmark times delivery."""

from __future__ import annotations

import base64
import json
import os
import time
from urllib.parse import parse_qs

from starlette.types import Receive, Scope, Send

# Open for the life of the process, line-buffered: each arrival is on disk when written.
_LOG = open(os.environ["BENCH_RECEIVER_LOG"], "a", buffering=1)  # noqa: SIM115


def _sid(token: str) -> str:
    payload = token.split(".")[1]
    claims = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
    return str(claims["sid"])


async def app(scope: Scope, receive: Receive, send: Send) -> None:
    if scope["type"] != "http":
        return
    body = b""
    while True:
        message = await receive()
        body += message.get("body", b"")
        if not message.get("more_body"):
            break
    arrived = time.time()
    for token in parse_qs(body.decode()).get("logout_token", []):
        _LOG.write(f"{_sid(token)} {arrived:.6f}\n")
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": b""})
