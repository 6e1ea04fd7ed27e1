"""Structured logging: fixed event names as the message, context fields as `extra`.

Every record carries the request id of the request it belongs to (a context variable set by
the request-envelope middleware), so one grep follows a request through the service.
"""

from __future__ import annotations

import json
import logging
import sys
from contextvars import ContextVar
from datetime import UTC, datetime
from typing import Any

request_id_var: ContextVar[str | None] = ContextVar("request_id", default=None)

_STANDARD_ATTRS = frozenset(
    vars(logging.LogRecord("", 0, "", 0, "", (), None)).keys() | {"message", "asctime", "taskName"}
)
# uvicorn attaches a copy of its message with ANSI colour escapes to every record; we print
# the plain message, so the copy is noise (raw escapes in files and JSON).
_DROPPED_ATTRS = _STANDARD_ATTRS | {"color_message"}


def _fields(record: logging.LogRecord) -> dict[str, Any]:
    return {k: v for k, v in vars(record).items() if k not in _DROPPED_ATTRS}


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "ts": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "event": record.getMessage(),
            "request_id": request_id_var.get(),
        }
        entry.update(_fields(record))
        if record.exc_info:
            entry["exc_type"] = record.exc_info[0].__name__ if record.exc_info[0] else None
            entry["exc"] = self.formatException(record.exc_info)
        return json.dumps(entry, default=str)


class ConsoleFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        fields = " ".join(f"{k}={v}" for k, v in _fields(record).items())
        rid = request_id_var.get()
        prefix = f"{record.levelname:<7} {record.getMessage()}"
        line = f"{prefix} {fields}".rstrip() + (f" request_id={rid}" if rid else "")
        if record.exc_info:
            line += "\n" + self.formatException(record.exc_info)
        return line


def _only_alembic_upgrades(record: logging.LogRecord) -> bool:
    """Alembic's INFO lines, but for the migrations it runs, describe its own set-up (plugins,
    'Context impl SQLiteImpl.', 'Will assume non-transactional DDL.'): noise at every start."""
    if not record.name.startswith("alembic") or record.levelno >= logging.WARNING:
        return True
    return record.getMessage().startswith(("Running upgrade", "Running downgrade"))


def configure_logging(level: str = "INFO", *, json_output: bool = True) -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter() if json_output else ConsoleFormatter())
    handler.addFilter(_only_alembic_upgrades)
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    for name in ("uvicorn", "uvicorn.error", "uvicorn.access"):
        logging.getLogger(name).handlers[:] = []
        logging.getLogger(name).propagate = True
    # The access log would print query strings, where a careless client may put a token.
    logging.getLogger("uvicorn.access").disabled = True
    # Driver debug logs print SQL parameters (password hashes, token hashes): never below INFO.
    for name in ("aiosqlite", "asyncpg"):
        logging.getLogger(name).setLevel(max(logging.INFO, root.level))
    # The back-channel logout client (httpx) logs each POST at INFO, its transport at DEBUG:
    # the outbox's own events (outbox.*) say what matters, without the bodies.
    for name in ("httpx", "httpcore"):
        logging.getLogger(name).setLevel(max(logging.WARNING, root.level))
