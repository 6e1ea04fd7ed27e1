"""Text that may be stored or written: no lone surrogates anywhere, and no control characters in
what is stored (PostgreSQL refuses NUL outright)."""

from __future__ import annotations

import re
from typing import Annotated

from pydantic import AfterValidator

_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
# A code point of a UTF-16 surrogate in a Python str is never half of a pair (json.loads joins
# a pair's two escapes into one character): it is a lone surrogate, which no encoder writes.
_SURROGATE = re.compile("[\ud800-\udfff]")
REPLACEMENT = "\ufffd"


def has_control_characters(value: str) -> bool:
    return _CONTROL.search(value) is not None


def has_lone_surrogate(value: str) -> bool:
    return _SURROGATE.search(value) is not None


def printable(value: str) -> str:
    """`value` with each control character replaced by U+FFFD: for text a client sends in a
    header and we store (a NUL fails the insert on PostgreSQL; an escape sequence would reach
    the terminal of whoever reads the audit trail)."""
    return _CONTROL.sub(REPLACEMENT, value)


def _reject_control_characters(value: str) -> str:
    if has_control_characters(value):
        raise ValueError("must not contain control characters")
    return value


PlainText = Annotated[str, AfterValidator(_reject_control_characters)]
