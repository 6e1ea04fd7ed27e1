"""Run Alembic migrations programmatically (CLI, startup, tests)."""

from __future__ import annotations

from pathlib import Path

from alembic import command
from alembic.config import Config

ROOT = Path(__file__).resolve().parents[2]


def alembic_config(database_url: str, *, transaction_pooled: bool = False) -> Config:
    config = Config(str(ROOT / "alembic.ini"))
    config.set_main_option("script_location", str(ROOT / "migrations"))
    config.attributes["database_url"] = database_url
    config.attributes["transaction_pooled"] = transaction_pooled
    return config


def upgrade(database_url: str, revision: str = "head", *, transaction_pooled: bool = False) -> None:
    """Blocking (Alembic runs its own event loop): call from a thread inside async code.
    `transaction_pooled`: `database_url` is a transaction-mode pooler (app.core.db)."""
    ensure_sqlite_directory(database_url)
    command.upgrade(alembic_config(database_url, transaction_pooled=transaction_pooled), revision)


def ensure_sqlite_directory(database_url: str) -> None:
    """SQLite creates the file on first connect, but not its folder."""
    if database_url.startswith("sqlite") and ":///" in database_url:
        path = database_url.split(":///", 1)[1].split("?", 1)[0]
        if path and path != ":memory:":
            Path(path).parent.mkdir(parents=True, exist_ok=True)
