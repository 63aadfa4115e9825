"""A vectorised pre-check for ``check_content``, so validation is not per-row Python.

``suspect_rows`` flags every pair that *might* break a rule (a superset: whitespace is
matched as Python's ``str.strip`` sees it, and the identical-response test compares joined
strings). Only flagged pairs go through ``check_content``, which decides and words the
error, so codes, fields and messages are the same as the row-by-row path.
"""

from __future__ import annotations

import polars as pl

# Python's str.isspace() is Unicode White_Space plus the separators U+001C..U+001F.
_BLANK = r"^[\s\x1c-\x1f]*$"
_EDGES = r"^[\s\x1c-\x1f]+|[\s\x1c-\x1f]+$"


def _roles(col: str) -> pl.Expr:
    return pl.col(col).list.eval(pl.element().struct.field("role"))


def _all_blank(col: str) -> pl.Expr:
    return pl.col(col).list.eval(pl.element().struct.field("content").str.contains(_BLANK)).list.all()


def _stripped(col: str) -> pl.Expr:
    msg = pl.element().struct
    return (
        pl.col(col)
        .list.eval(pl.concat_str([msg.field("role"), pl.lit("\x1f"), msg.field("content").str.replace_all(_EDGES, "")]))
        .list.join("\x1e")
    )


def suspect_rows(pairs: pl.DataFrame, *, allowed_roles: frozenset[str], allow_empty_prompt: bool = False) -> pl.Series:
    """Boolean per pair: True where check_content must look."""
    allowed = pl.lit(sorted(allowed_roles), dtype=pl.List(pl.String))
    bad_role = pl.lit(False)
    for col in ("prompt", "chosen", "rejected"):
        bad_role = bad_role | ~_roles(col).list.set_difference(allowed).list.len().eq(0)
    suspect = bad_role
    if not allow_empty_prompt:
        suspect = suspect | _all_blank("prompt")
    suspect = suspect | (_roles("prompt").list.last() == "assistant").fill_null(False)
    for col in ("chosen", "rejected"):
        suspect = suspect | _all_blank(col) | (_roles(col).list.first() != "assistant").fill_null(True)
    suspect = suspect | (_stripped("chosen") == _stripped("rejected"))
    return pairs.select(suspect.fill_null(True).alias("suspect")).to_series()
