"""Log output: uvicorn's records carry no colour copy of their message."""

from __future__ import annotations

import logging

import pytest

from app.core.logging import ConsoleFormatter, JsonFormatter


def _uvicorn_record() -> logging.LogRecord:
    # As uvicorn.server logs "Started server process [%d]" (its extra carries the coloured copy).
    return logging.makeLogRecord(
        {
            "name": "uvicorn.error",
            "levelno": logging.INFO,
            "levelname": "INFO",
            "msg": "Started server process [%d]",
            "args": (42,),
            "color_message": "Started server process [\x1b[36m%d\x1b[0m]",
        }
    )


@pytest.mark.parametrize(
    "formatter", [ConsoleFormatter(), JsonFormatter()], ids=["console", "json"]
)
def test_uvicorn_lines_carry_no_color_message(formatter: logging.Formatter) -> None:
    line = formatter.format(_uvicorn_record())
    assert "Started server process [42]" in line
    assert "color_message" not in line
    assert "\x1b" not in line
    assert "\\u001b" not in line
