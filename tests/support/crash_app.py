"""The real app, except that the process dies the moment a refresh response would be sent.

By then the unit of work has committed (it commits before the response), so this reproduces
"server killed after commit and before the response" for the crash-safety test.
"""

from __future__ import annotations

import os

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from app.main import create_app as create_real_app


def create_app() -> ASGIApp:
    app = create_real_app()

    async def dying_app(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"] != "/auth/refresh":
            await app(scope, receive, send)
            return

        async def die_on_response(message: Message) -> None:
            if message["type"] == "http.response.start" and message["status"] == 200:
                os._exit(70)
            await send(message)

        await app(scope, receive, die_on_response)

    return dying_app
