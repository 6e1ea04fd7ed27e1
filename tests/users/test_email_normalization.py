"""normalize_email's shortcut for plain ASCII addresses gives what the validator would."""

from __future__ import annotations

import random

import pytest

from app.users.service import _PLAIN_ASCII, _normalize_with_validator, normalize_email

EDGE_CASES = [
    "Ann@Example.COM",
    "  ann@example.com\t",
    "a.b+tag@sub.example.org",
    "a@b.com.",
    "a@b..com",
    "a..b@example.com",
    ".a@example.com",
    "a.@example.com",
    "a@-b.com",
    "a@b-.com",
    "a@localhost",
    "a@1.2",
    "a@123.456.789.0",
    "a@b.invalid",
    "a@xn--BCHER-kva.example",
    "ex@BÜCHER.example",
    '"quoted local"@example.com',
    "a@[192.0.2.1]",
    "x" * 70 + "@example.com",
    "a@" + "b" * 70 + ".com",
    "no-at-sign",
    "two@@example.com",
    "",
]


@pytest.mark.parametrize("email", EDGE_CASES)
def test_edge_cases_match_the_validator(email: str) -> None:
    assert normalize_email(email) == _normalize_with_validator(email.strip())


def _part(rng: random.Random, chars: str, separator: str, prefixes: list[str]) -> str:
    """Dot-separated labels, some empty or odd, so both sides of the shortcut are exercised."""
    labels = []
    for _ in range(rng.randint(1, 4)):
        length = rng.randint(0, 6) if rng.random() < 0.1 else rng.randint(1, 6)
        label = "".join(rng.choice(chars) for _ in range(length))
        labels.append(rng.choice(prefixes) + label)
    return separator.join(labels)


def test_random_addresses_match_the_validator() -> None:
    rng = random.Random(8)
    shortcut = 0
    for _ in range(5000):
        local = _part(rng, "aZ09_+-" * 12 + "!#'\" é", ".", [""] * 9 + ['"'])
        domain = _part(rng, "aZ09-" * 16 + "_é[", ".", [""] * 8 + ["xn--", "XN--"])
        email = rng.choice(["", " "]) + local + "@" + domain
        assert normalize_email(email) == _normalize_with_validator(email.strip()), email
        shortcut += _PLAIN_ASCII.fullmatch(email.strip()) is not None
    assert shortcut > 1000  # the shortcut itself was tested, not only the fallback
