"""The character classes the text rules share: the invisible characters are exactly Unicode's
control and format characters that are not whitespace, and the Polars forms match Python's."""

from __future__ import annotations

import unicodedata

import polars as pl

from curation.text import PY_WHITESPACE, invisible_class, invisible_code_points, visible, visible_class


def test_invisible_characters_are_the_controls_and_format_characters_of_all_of_unicode() -> None:
    everywhere = [cp for cp in range(0x110000) if unicodedata.category(chr(cp)) in ("Cc", "Cf") and not chr(cp).isspace()]
    assert list(invisible_code_points()) == everywhere
    assert {0x00, 0x7F, 0xAD, 0x200B, 0x2060, 0xFEFF, 0xE0001} <= set(everywhere) and 0x09 not in everywhere and 0x20 not in everywhere


def test_the_polars_classes_agree_with_python_on_every_character() -> None:
    chars = [chr(cp) for cp in range(0x110000) if unicodedata.category(chr(cp)) != "Cs"]
    series = pl.Series(chars)
    invisible = set(map(chr, invisible_code_points()))
    assert series.str.contains(invisible_class()).to_list() == [c in invisible for c in chars]
    assert series.str.contains(visible_class()).to_list() == [c not in invisible and c not in PY_WHITESPACE for c in chars]
    assert [visible(f" a{c}b ") for c in ("\u200b", "\x00", "\ufeff", "\u2060")] == ["ab"] * 4 and visible(" a\tb ") == "a\tb"
