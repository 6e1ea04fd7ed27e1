"""Which database failures are outages (503, retry) and which are bugs (500)."""

from __future__ import annotations

import asyncpg
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


def test_a_raw_driver_connection_that_broke_is_an_outage() -> None:
    # Seen while backends were killed: a connection whose protocol state broke mid-operation,
    # and one that is gone. Client-side mistakes stay bugs.
    broken = asyncpg.InternalClientError("cannot switch to state 12; another operation (2)")
    assert is_database_unavailable(broken)
    assert is_database_unavailable(asyncpg.ConnectionDoesNotExistError("closed mid-operation"))
    assert is_database_unavailable(TimeoutError())  # a command or connect timeout
    assert not is_database_unavailable(asyncpg.DataError("invalid input for query argument"))


def test_an_adapter_error_around_a_driver_outage_is_an_outage() -> None:
    # SQLAlchemy's asyncpg adapter raises its own error with the driver's as the cause.
    class AdapterError(Exception):
        sqlstate = None

    adapter = AdapterError("the database system is starting up")
    adapter.__cause__ = asyncpg.CannotConnectNowError("the database system is starting up")
    assert is_database_unavailable(DBAPIError("SELECT 1", None, adapter))
    bug = AdapterError("x")
    bug.__cause__ = asyncpg.DataError("bad argument")
    assert not is_database_unavailable(DBAPIError("SELECT 1", None, bug))
