"""clients add | list | rotate-secret | disable | enable: registered service clients
(client_credentials). A secret is printed once, when it is made; only its hash is stored."""

from __future__ import annotations

import argparse
import asyncio
import sys
from collections.abc import Awaitable, Callable
from datetime import datetime
from typing import TypeVar

from sqlalchemy.ext.asyncio import AsyncConnection

from app.clients.repository import ClientRecord
from app.clients.service import ServiceClients
from app.core.clock import Clock
from app.core.db import committed_unit, engine_for
from app.core.settings import Settings

T = TypeVar("T")
_SHOWN_ONCE = "(the secret is shown only now: store it; only its hash is kept)"


async def _in_unit(
    settings: Settings, work: Callable[[ServiceClients, AsyncConnection], Awaitable[T]]
) -> T:
    engine = engine_for(settings)
    try:
        async with committed_unit(engine) as uow:
            return await work(ServiceClients(engine), await uow.connection())
    finally:
        await engine.dispose()


def run(args: argparse.Namespace, settings: Settings) -> str:
    now = Clock().now()
    client_id: str = getattr(args, "client_id", "")
    if args.action == "add":
        secret = asyncio.run(
            _in_unit(
                settings,
                lambda clients, conn: clients.add(
                    conn, client_id, audiences=args.audience, scopes=args.scope, now=now
                ),
            )
        )
        print(_SHOWN_ONCE, file=sys.stderr)
        return f"client_id: {client_id}\nclient_secret: {secret}"
    if args.action == "rotate-secret":
        if args.grace < 0:
            raise SystemExit("error: --grace must be 0 or more seconds")
        secret = asyncio.run(
            _in_unit(
                settings,
                lambda clients, conn: clients.rotate_secret(
                    conn, client_id, grace=args.grace, now=now
                ),
            )
        )
        print(_SHOWN_ONCE, file=sys.stderr)
        kept = (
            f"the previous secret works for {args.grace} s more"
            if args.grace
            else ("the previous secret no longer works")
        )
        return f"client_id: {client_id}\nclient_secret: {secret}\n({kept})"
    if args.action == "disable":
        asyncio.run(_in_unit(settings, lambda clients, conn: clients.disable(conn, client_id, now)))
        return f"client {client_id} disabled; its tokens are refused from now on"
    if args.action == "enable":
        asyncio.run(_in_unit(settings, lambda clients, conn: clients.enable(conn, client_id)))
        return f"client {client_id} enabled"
    found = asyncio.run(_in_unit(settings, lambda clients, conn: clients.list_clients(conn)))
    return "\n".join(_line(client) for client in found) if found else "no clients"


def _when(moment: datetime | None) -> str:
    return moment.isoformat(timespec="seconds") if moment else "-"


def _line(client: ClientRecord) -> str:
    state = f"disabled {_when(client.disabled_at)}" if client.disabled_at else "enabled"
    return (
        f"{client.client_id}  {state}  audiences={','.join(client.audiences) or '-'}  "
        f"scopes={','.join(client.scopes) or '-'}  created={_when(client.created_at)}  "
        f"last_used={_when(client.last_used_at)}"
    )
