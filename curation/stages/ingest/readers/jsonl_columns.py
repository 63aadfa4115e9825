"""Columnar parsing of JSONL blocks: pyarrow's multi-threaded JSON reader instead of one
Python parse per line, for the fields an adapter with a columnar form needs.

The row path (``JsonlReader.rows``) defines what a file holds; this module only makes the
common case fast. A line gets a column value only when the row path would read it the same
way: it starts with ``{``, pyarrow parses its block, and it has nothing on which pyarrow
and Python's parsers disagree. Everything else is handed back by position, to go through
``LineBlock.row`` and the row path unchanged:

* runs of 1,000+ digits (Python refuses to read integers of over 4,300 digits) and lines with
  many brackets (Python's parser stops at about 1,000 levels of nesting): pyarrow reads
  both, even in fields the adapter ignores;
* blank lines, lines with leading whitespace, and any line of a block pyarrow rejects
  (invalid UTF-8, control characters, a duplicate key, a value of the wrong type, two
  objects on one line, a lone escaped surrogate such as ``\\ud800``, which Python would read
  and then quarantine as invalid text): the block is split in halves until the bad lines
  are alone.
A requested field that is missing or null comes back as null, for the adapter to send to
the row path, where it gets its proper error.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.json as pj

from curation.stages.ingest.readers.jsonl import LineBlock

_DIGITS = re.compile(rb"[0-9]*")
LONG_DIGITS = 1000
"""A line with a run of this many digits takes the row path (it may hold a huge integer)."""
MAX_BRACKETS = 200
"""A line with more ``[`` and ``{`` than this takes the row path (it may be nested deeply)."""
MIN_SPLIT = 16
"""A rejected part of a block with fewer lines than this goes line by line."""


@dataclass
class BlockColumns:
    """``table`` holds the requested fields (strings, null where missing) for the block's lines at
    ``positions``; the lines at ``slow`` (positions too) take the row path."""

    table: pa.Table
    positions: np.ndarray
    slow: np.ndarray


def read_columns(block: LineBlock, fields: Sequence[str]) -> BlockColumns:
    schema = pa.schema([pa.field(f, pa.string()) for f in fields])
    data, starts, ends = block.data, block.starts, block.ends
    whole = memoryview(data)[starts[0] : ends[-1]] if len(starts) else memoryview(b"")  # no copy
    lengths = ends - starts
    block_size = max(1 << 20, int(lengths.max(initial=0)) + 1)  # a line may not straddle pyarrow's blocks
    fast = _vouched_lines(whole, starts - starts[0] if len(starts) else starts, lengths)
    tables: list[pa.Table] = []
    positions: list[np.ndarray] = []
    slow: list[np.ndarray] = [np.flatnonzero(~fast)]
    todo = [np.flatnonzero(fast)]
    while todo:
        part = todo.pop()
        if not len(part):
            continue
        text = whole if len(part) == len(starts) else b"".join([block.line(i) for i in part.tolist()])
        table = _parse(text, len(part), schema, block_size)
        if table is not None:
            tables.append(table)
            positions.append(part)
        elif len(part) < MIN_SPLIT:
            slow.append(part)
        else:
            half = len(part) // 2
            todo += [part[half:], part[:half]]
    order = sorted(range(len(positions)), key=lambda k: positions[k][0])
    table = pa.concat_tables([tables[k] for k in order]) if tables else schema.empty_table()
    pos = np.concatenate([positions[k] for k in order]) if positions else np.zeros(0, np.int64)
    return BlockColumns(table, pos, np.sort(np.concatenate(slow)))


def _vouched_lines(data: bytes | memoryview, starts: np.ndarray, lengths: np.ndarray) -> np.ndarray:
    """Boolean per line (``data[starts[i]:starts[i] + lengths[i]]``): it starts with ``{`` and has
    none of the patterns the parsers disagree on.

    Digit runs are looked for only around the digits found at every ``LONG_DIGITS // 2``-th byte
    (a run of ``LONG_DIGITS`` digits covers at least one of those bytes), which keeps this to
    a few passes of numpy over the block."""
    buf = np.frombuffer(data, np.uint8)
    n = len(starts)
    ok = np.zeros(n, np.bool_)
    nonempty = lengths > 0
    ok[nonempty] = buf[starts[nonempty]] == ord("{")
    brackets = np.flatnonzero((buf | 0x20) == ord("{"))  # "[" is 0x5B, "{" 0x7B: one pass finds both
    ok &= np.bincount(np.searchsorted(starts, brackets, side="right") - 1, minlength=n) <= MAX_BRACKETS
    hits = []
    stride = LONG_DIGITS // 2
    sampled = buf[::stride] - ord("0")
    for at in (np.flatnonzero(sampled <= 9) * stride).tolist():
        before = bytes(data[max(0, at - LONG_DIGITS) : at])
        digits_before = len(before) - len(before.rstrip(b"0123456789"))
        if _DIGITS.match(data, at).end() - at + digits_before >= LONG_DIGITS:
            hits.append(at)
    if hits:
        ok[np.searchsorted(starts, np.asarray(hits), side="right") - 1] = False
    return ok


def _parse(data: bytes | memoryview, n_lines: int, schema: pa.Schema, block_size: int) -> pa.Table | None:
    """The fields of ``n_lines`` lines, or None when pyarrow rejects them (or reads another number of rows)."""
    try:
        table = pj.read_json(
            pa.py_buffer(data),
            read_options=pj.ReadOptions(block_size=block_size),
            parse_options=pj.ParseOptions(explicit_schema=schema, unexpected_field_behavior="ignore"),
        )
    except (pa.ArrowException, ValueError):  # ArrowInvalid, and UnicodeDecodeError for bad UTF-8
        return None
    return table if table.num_rows == n_lines else None
