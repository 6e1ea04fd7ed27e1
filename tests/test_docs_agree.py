"""README and .env.example say what the code does (issue 16, docs drift)."""

from __future__ import annotations

import argparse
import re
from pathlib import Path

from app.auth.schemas import TokenResponse
from app.cli import _parser
from app.core.settings import Settings
from app.main import create_app
from tests.conftest import make_settings

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text()


def _readme_section(start: str, end: str) -> str:
    return README.split(start, 1)[1].split(end, 1)[0]


def test_readme_token_pair_names_every_field() -> None:
    paragraph = _readme_section("Token pair (login, refresh):", "\n\n")
    missing = [f for f in TokenResponse.model_fields if f'"{f}"' not in paragraph]
    assert missing == []


def test_readme_cli_list_names_every_command() -> None:
    [commands] = [a for a in _parser()._actions if isinstance(a, argparse._SubParsersAction)]
    listed = set(re.findall(r"^python -m app (\S+)", README, re.MULTILINE))
    assert set(commands.choices) - listed == set()


def _normalised(path: str) -> str:
    return re.sub(r"\{[^}]*\}", "{}", path)


def test_readme_route_table_names_every_route() -> None:
    table = _normalised(_readme_section("| route | does | success |", "\n\n"))
    app = create_app(make_settings("sqlite+aiosqlite:///:memory:"), configure_logs=False)
    # The API's routes, from its schema: FastAPI 0.165 keeps included routers' routes out of
    # `app.routes` (they were APIRoutes there before). The explorers' own pages are one row.
    paths = {_normalised(path) for path in app.openapi()["paths"]}
    assert len(paths) > 20, paths  # the whole API, not an empty or partial list
    # '.../activate' stands for the path of the row's first route with the last segment replaced.
    missing = [p for p in paths if p not in table and f".../{p.rsplit('/', 1)[1]}" not in table]
    assert sorted(missing) == []


def test_env_example_access_token_ttl_range_is_the_codes() -> None:
    env = (ROOT / ".env.example").read_text()
    [(low, high)] = re.findall(r"Access token \(JWT\) lifetime.*?(\d+)\.\.(\d+)", env)
    bounds = {type(m).__name__: m for m in Settings.model_fields["access_token_ttl"].metadata}
    assert (int(low), int(high)) == (bounds["Ge"].ge, bounds["Le"].le)
