"""Look-alike text: whether a string mixes writing systems the way spoofed addresses do
("pаypal" with a Cyrillic "а"), by the Unicode rules for it (UTS #39, Unicode Security
Mechanisms, §5: mixed-script detection and the "Highly Restrictive" level).

The script data (Script_Extensions) comes from `unicodedataplus`, since Python's `unicodedata`
has none."""

from __future__ import annotations

from collections.abc import Iterable
from functools import lru_cache

import unicodedataplus

# UTS #39's augmented script sets: Han goes with Japanese, Korean and Bopomofo writing, kana
# with Japanese, Hangul with Korean, Bopomofo with Han.
_JAPANESE, _KOREAN, _HAN_WITH_BOPOMOFO = "Jpan", "Kore", "Hanb"
_AUGMENTS = {
    "Hani": (_HAN_WITH_BOPOMOFO, _JAPANESE, _KOREAN),
    "Hira": (_JAPANESE,),
    "Kana": (_JAPANESE,),
    "Hang": (_KOREAN,),
    "Bopo": (_HAN_WITH_BOPOMOFO,),
}
# Common (digits, punctuation) and Inherited (combining marks) characters go with any script.
_ANY_SCRIPT = frozenset({"Zyyy", "Zinh"})


@lru_cache(maxsize=4096)
def _scripts_of(char: str) -> frozenset[str] | None:
    """The character's augmented script set; None for one that goes with every script."""
    extensions: list[str] = unicodedataplus.script_extensions(char)
    if _ANY_SCRIPT.issuperset(extensions):
        return None
    scripts = set(extensions)
    for script in extensions:
        scripts.update(_AUGMENTS.get(script, ()))
    return frozenset(scripts)


def _resolved(chars: Iterable[str]) -> frozenset[str] | None:
    """The scripts every character belongs to (UTS #39's resolved script set); None when no
    character restricts it."""
    common: frozenset[str] | None = None
    for char in chars:
        scripts = _scripts_of(char)
        if scripts is not None:
            common = scripts if common is None else common & scripts
    return common


def mixes_scripts(text: str) -> bool:
    """Whether `text` is below UTS #39's "Highly Restrictive" level: it is neither in one
    script (Common and Inherited characters going with any) nor Latin with Japanese, Korean or
    Chinese writing. "pаypal" (Cyrillic а) mixes scripts; "müller", "иван", "山田たろう" and
    "taroやまだ" do not."""
    if text.isascii():  # ASCII letters are all Latin; the rest is Common
        return False
    every = _resolved(text)
    if every is None or every:
        return False
    # Latin may go with the CJK writing systems (and only with them).
    others = _resolved(c for c in text if "Latn" not in (_scripts_of(c) or ()))
    return others is not None and not others & {_JAPANESE, _KOREAN, _HAN_WITH_BOPOMOFO}
