"""Character classes the text rules share, defined once."""

from __future__ import annotations

PY_WHITESPACE = (
    "\t\n\x0b\x0c\r\x1c\x1d\x1e\x1f \x85\xa0\u1680" + "".join(map(chr, range(0x2000, 0x200B))) + "\u2028\u2029\u202f\u205f\u3000"
)
"""Exactly the characters Python's ``str.isspace`` (and so ``strip``) treats as whitespace,
so Polars' ``strip_chars(PY_WHITESPACE)`` strips what ``str.strip()`` strips."""
