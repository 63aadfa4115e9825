"""What columnar adapters share: their result type and vectorised builders for messages.

A columnar adapter is the fast twin of a row adapter, for sources whose rows a reader can
hand out as Arrow columns. It turns a table of raw fields into one pair per row, and says
per row whether it vouches for the result: only rows for which the row adapter would build
exactly the same pair (and no error, filter or extra pair). Every other row goes through
the row adapter, so the columnar form never has to reproduce an error message.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import polars as pl
import pyarrow as pa

from curation.tables import from_numpy
from schemas import MESSAGE

MESSAGES = pa.list_(MESSAGE)


@dataclass
class ColumnPairs:
    """One pair per input row (prompt/chosen/rejected as Arrow ``messages`` arrays) and
    ``vouched``: rows where that pair is what the row adapter would build. Pairs of the
    other rows are placeholders, never used."""

    prompt: pa.Array
    chosen: pa.Array
    rejected: pa.Array
    vouched: np.ndarray


@dataclass(frozen=True)
class ColumnForm:
    """A columnar adapter: the raw fields it reads (as strings) and the function over them."""

    fields: tuple[str, ...]
    adapt: Callable[[pa.Table], ColumnPairs]


def messages(roles: pl.Series, contents: pl.Series, lengths: np.ndarray) -> pa.Array:
    """A ``messages`` array from flat role and content series, ``lengths[i]`` messages for row i."""
    struct = pa.StructArray.from_arrays([roles.to_arrow().cast(pa.string()), contents.to_arrow().cast(pa.string())], fields=list(MESSAGE))
    offsets = np.zeros(len(lengths) + 1, np.int32)
    np.cumsum(lengths, out=offsets[1:])
    array = pa.ListArray.from_arrays(from_numpy(offsets), struct)  # passing type= validates every value: 20x slower
    assert array.type == MESSAGES
    return array
