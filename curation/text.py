"""Character classes the text rules share, defined once, with the Python and the vectorised
(Polars regex) forms of each, so the row path and the columnar path agree to the character.

Invisible characters: the Unicode control (Cc) and format (Cf) characters that are not
whitespace: U+0000, U+200B ZERO WIDTH SPACE, U+2060 WORD JOINER, U+FEFF (a BOM inside a
text), the bidi controls, soft hyphen, tag characters... A text made of them and whitespace
shows nothing, so validation calls it empty, and two texts that differ only by them read the
same, so validation and exact dedup call them equal. The published text keeps them: the
rules read past them, they never rewrite data. The set is Python's ``unicodedata`` (one
Unicode version for both forms); whitespace controls (tab, newline...) are whitespace, not
invisible.
"""

from __future__ import annotations

import unicodedata
from functools import cache

PY_WHITESPACE = (
    "\t\n\x0b\x0c\r\x1c\x1d\x1e\x1f \x85\xa0\u1680" + "".join(map(chr, range(0x2000, 0x200B))) + "\u2028\u2029\u202f\u205f\u3000"
)
"""Exactly the characters Python's ``str.isspace`` (and so ``strip``) treats as whitespace,
so Polars' ``strip_chars(PY_WHITESPACE)`` strips what ``str.strip()`` strips."""


PLANES_WITH_CONTROLS = (range(0x20000), range(0xE0000, 0xE1000))
"""Where Unicode puts its control and format characters: the basic and supplementary
multilingual planes and the tags block (tests/test_text.py checks every other code point)."""


@cache
def invisible_code_points() -> tuple[int, ...]:
    """Every code point of category Cc or Cf that is not whitespace (about 200), from the
    planes that have any (0.03 s, once; all of Unicode takes 0.2 s)."""
    return tuple(
        cp for plane in PLANES_WITH_CONTROLS for cp in plane if unicodedata.category(chr(cp)) in ("Cc", "Cf") and not chr(cp).isspace()
    )


def regex_class(code_points: list[int] | tuple[int, ...], *, negate: bool = False) -> str:
    """A regex character class (Rust regex and RE2 syntax) of exactly these code points."""
    ranges: list[tuple[int, int]] = []
    for cp in sorted(code_points):
        if ranges and ranges[-1][1] == cp - 1:
            ranges[-1] = (ranges[-1][0], cp)
        else:
            ranges.append((cp, cp))
    body = "".join(f"\\x{{{a:x}}}" if a == b else f"\\x{{{a:x}}}-\\x{{{b:x}}}" for a, b in ranges)
    return f"[{'^' if negate else ''}{body}]"


@cache
def invisible_class() -> str:
    """The regex class of the invisible characters."""
    return regex_class(invisible_code_points())


@cache
def visible_class() -> str:
    """The regex class of every character that is neither whitespace nor invisible: a text
    holding one shows something."""
    return regex_class([*invisible_code_points(), *map(ord, PY_WHITESPACE)], negate=True)


@cache
def _deletions() -> dict[int, None]:
    return dict.fromkeys(invisible_code_points())


def visible(text: str) -> str:
    """The text as a reader sees it: invisible characters removed, whitespace stripped at the ends."""
    if text.isascii() and text.isprintable():  # the common case: nothing to remove
        return text.strip()
    return text.translate(_deletions()).strip()
