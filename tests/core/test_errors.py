"""Which database failures are outages (503, retry) and which are bugs (500)."""

from __future__ import annotations

import pytest
from sqlalchemy.exc import DBAPIError, ProgrammingError

from app.core.errors import is_database_unavailable


class _DriverError(Exception):
    def __init__(self, sqlstate: str) -> None:
        super().__init__(sqlstate)
        self.sqlstate = sqlstate


@pytest.mark.parametrize(
    ("sqlstate", "unavailable"),
    [
        ("57P01", True),  # admin shutdown: the server is restarting (found by bench/soak.py)
        ("57P03", True),  # cannot connect now: the server is starting up
        ("08006", True),  # connection failure
        ("53300", True),  # too many connections
        ("40P01", True),  # deadlock detected
        ("40001", True),  # serialization failure
        ("42P01", False),  # undefined table: a bug
        ("23505", False),  # unique violation: a bug here
    ],
)
def test_sqlstate_classification(sqlstate: str, unavailable: bool) -> None:
    error = DBAPIError("SELECT 1", None, _DriverError(sqlstate))
    assert is_database_unavailable(error) is unavailable


def test_programming_error_is_a_bug() -> None:
    assert not is_database_unavailable(ProgrammingError("x", None, _DriverError("42601")))
    assert is_database_unavailable(ConnectionRefusedError())
