"""Polars expressions over message-list columns (``prompt``, ``chosen``, ``rejected``).

One definition of a response's length, so the length baseline in the agreement table, the
``length_balance`` step, the report's length figures and the routing features count alike.
"""

from __future__ import annotations

import polars as pl


def message_chars(column: str) -> pl.Expr:
    """Characters (Unicode code points) of a messages column's contents, summed; 0 for no messages."""
    return pl.col(column).list.eval(pl.element().struct.field("content").str.len_chars()).list.sum().fill_null(0).cast(pl.Int64)
