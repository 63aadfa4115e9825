"""Exact dedup of pairs on normalised text, vectorised with Polars.

Normalised text: invisible characters removed (``curation.text``: zero-width spaces, NULs, a
stray BOM...), Unicode NFKC, whitespace runs collapsed to one space, trimmed, lower-cased,
per message with its role. The first occurrence wins (sources in recipe order, rows in file
order), so the result is deterministic.

One streaming pass over the staged pairs: each batch gets one 64-bit key per pair (a hash of
the normalised messages; the text itself is never held for more than a few batches) on a
few threads, and a pair whose key an earlier pair had is a duplicate. A 64-bit key collides
with probability about n^2 / 2^65 (3e-8 at a million pairs).

Normalising is most of the cost, so it does only what changes the text: NFKC runs only on
messages holding a character that NFKC could change (``_NFKC_UNSAFE``), invisible characters
are looked for only where they can be (ASCII controls in ASCII texts; the others count as
"beyond ASCII lower-casing"), and the whitespace rule rewrites only runs that are not already
one space.
"""

from __future__ import annotations

import unicodedata
from collections.abc import Iterator
from functools import cache
from pathlib import Path

import numpy as np
import polars as pl
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from curation.parallel import ordered_map
from curation.tables import from_numpy
from curation.text import invisible_class, invisible_code_points
from schemas import arrow_schema

KEY_SEED = 20261123
STAGE = "dedup_exact"
PARTS = ("prompt", "chosen", "rejected")
ROW_GROUP_ROWS = 50_000
"""Rows a Parquet row group of kept pairs gets: a row group per batch made the writer (the
one thread the pass waits on) a quarter slower, for row groups of a few thousand rows."""
DECISION_COLUMNS = ["pair_id", "source_dataset", "source_file", "source_row", "source_pair_index"]
_WHITESPACE_TO_FIX = r"\s{2,}|[^\S ]"  # a run of 2+, or one whitespace that is not a space


def _safe_code_points() -> list[int]:
    """The assigned code points below U+3000 that NFKC maps to themselves, that do not combine
    (canonical combining class 0) and that are not the second half of a canonical composition
    (nor Hangul jamo, which compose algorithmically): a text of these only is its own NFKC."""
    seconds = set()
    for cp in range(0x3000):
        decomposition = unicodedata.decomposition(chr(cp))
        if decomposition and not decomposition.startswith("<") and len(parts := decomposition.split()) == 2:
            seconds.add(int(parts[1], 16))
    return [
        cp
        for cp in range(0x3000)
        if not 0x1100 <= cp < 0x1200
        and cp not in seconds
        and unicodedata.category(chr(cp)) not in ("Cn", "Cs")
        and unicodedata.combining(chr(cp)) == 0
        and unicodedata.normalize("NFKC", chr(cp)) == chr(cp)
    ]


def _class_outside(code_points: list[int]) -> str:
    """A regex class of every character not in ``code_points``."""
    ranges: list[tuple[int, int]] = []
    for cp in code_points:
        if ranges and ranges[-1][1] == cp - 1:
            ranges[-1] = (ranges[-1][0], cp)
        else:
            ranges.append((cp, cp))
    return "[^" + "".join(f"\\x{{{a:x}}}" if a == b else f"\\x{{{a:x}}}-\\x{{{b:x}}}" for a, b in ranges) + "]"


@cache
def _nfkc_unsafe() -> str:
    """A regex class of the characters NFKC might change, alone or next to others: a text
    without one is its own NFKC, so NFKC is skipped for it (higher planes are all unsafe)."""
    return _class_outside(_safe_code_points())


@cache
def _beyond_ascii_lower() -> str:
    """A regex class of the characters for which ``ascii_lower`` may not be all of the
    normalising: the NFKC-unsafe ones, those that lower-casing changes and the invisible ones.
    Most non-ASCII text in English data has only typographic quotes and dashes, caseless and safe."""
    invisible = set(invisible_code_points())
    return _class_outside([cp for cp in _safe_code_points() if (cp < 0x80 or chr(cp).lower() == chr(cp)) and cp not in invisible])


_ASCII_INVISIBLE = r"[\x00-\x08\x0e-\x1b\x7f]"
"""The invisible characters in ASCII: the control characters that are not whitespace."""


def normalise(text: pl.Series | pa.Array) -> pl.Series:
    """Invisible characters removed, NFKC, whitespace runs to one space, trimmed, lower-cased.

    Lower-casing comes first here: it changes no whitespace, so it commutes with the other
    two steps once NFKC is done. Texts with nothing beyond ASCII letters to lower, nothing
    NFKC changes and nothing invisible are lowered by pyarrow's ``ascii_lower``, twenty times
    faster than Polars' Unicode ``to_lowercase``, which only the other texts get, after the
    invisible characters are removed and NFKC. Once the whitespace runs are single spaces,
    trimming spaces is trimming whitespace."""
    arrow = text.to_arrow() if isinstance(text, pl.Series) else text
    if isinstance(arrow, pa.ChunkedArray):
        arrow = arrow.combine_chunks()
    if not (pa.types.is_string(arrow.type) or pa.types.is_large_string(arrow.type)):
        arrow = arrow.cast(pa.large_string())
    out = pl.from_arrow(pc.ascii_lower(arrow))
    is_ascii = pc.string_is_ascii(arrow).to_numpy(zero_copy_only=False)
    non_ascii = np.flatnonzero(~is_ascii)
    plain = np.flatnonzero(is_ascii)
    if len(plain):
        ascii_texts = out.gather(plain)
        controls = ascii_texts.str.contains(_ASCII_INVISIBLE).arg_true()
        if len(controls):
            out = out.scatter(plain[controls.to_numpy()], ascii_texts.gather(controls).str.replace_all(_ASCII_INVISIBLE, ""))
    if len(non_ascii):
        other = pl.from_arrow(arrow).gather(non_ascii)
        beyond = other.str.contains(_beyond_ascii_lower()).arg_true()
        if len(beyond):
            other = other.gather(beyond).str.replace_all(invisible_class(), "")
            unsafe = other.str.contains(_nfkc_unsafe()).arg_true()
            if len(unsafe):
                other = other.scatter(unsafe, other.gather(unsafe).str.normalize("NFKC"))
            out = out.scatter(non_ascii[beyond.to_numpy()], other.str.to_lowercase())
    return out.str.replace_all(_WHITESPACE_TO_FIX, " ").str.strip_chars(" ")


def _part_keys(messages: pa.Array, seed: int) -> pl.Series:
    """Per row, the list of its messages' hashes (role and normalised content)."""
    if isinstance(messages, pa.ChunkedArray):
        messages = messages.combine_chunks()
    flat = messages.flatten()
    hashes = pl.DataFrame({"role": flat.field("role"), "content": normalise(flat.field("content"))}).hash_rows(seed=seed)
    offsets = messages.offsets.to_numpy().astype(np.int64) - messages.offsets[0].as_py()
    return pl.from_arrow(pa.LargeListArray.from_arrays(from_numpy(offsets), hashes.to_arrow()))


def dedup_keys(pairs: pa.RecordBatch | pa.Table) -> pl.Series:
    """One UInt64 key per pair: equal keys mean equal normalised prompt, chosen and rejected."""
    parts = {name: _part_keys(pairs.column(name), KEY_SEED + i) for i, name in enumerate(PARTS)}
    return pl.DataFrame(parts).hash_rows(seed=KEY_SEED)


class _SeenKeys:
    """The keys met so far with the position of each one's first pair: 16 bytes a pair, as
    sorted runs whose sizes halve from the first (a run is merged into the one before it once
    it is as big), so each key is moved O(log n) times and each lookup is a few binary
    searches. One sorted array, updated per batch, moved O(n) keys per batch instead."""

    def __init__(self) -> None:
        self.runs: list[tuple[np.ndarray, np.ndarray]] = []  # (sorted keys, their first positions)

    def first_of(self, keys: np.ndarray, offset: int) -> np.ndarray:
        """Per key (the pairs at ``offset``, ``offset + 1``, ...): the position of the first pair
        with that key, here or earlier, or -1 where this pair is the first; then remember the new.
        The batch's distinct keys are looked up sorted, which keeps the binary searches in cache."""
        unique, index, inverse = np.unique(keys, return_index=True, return_inverse=True)
        earlier = np.full(len(unique), -1, np.int64)
        for run_keys, run_first in self.runs:
            at = np.minimum(np.searchsorted(run_keys, unique), len(run_keys) - 1)
            hit = run_keys[at] == unique
            earlier[hit] = run_first[at[hit]]
        new = earlier < 0
        first = np.where(new, offset + index, earlier)[inverse.reshape(-1)]
        first[first == offset + np.arange(len(keys))] = -1  # the first pair of each new key
        self._add(unique[new], offset + index[new])
        return first

    def _add(self, keys: np.ndarray, first: np.ndarray) -> None:
        if not len(keys):
            return
        self.runs.append((keys, first))
        while len(self.runs) > 1 and len(self.runs[-2][0]) <= len(self.runs[-1][0]):
            (keys_a, first_a), (keys_b, first_b) = self.runs.pop(-2), self.runs.pop()
            slots = np.searchsorted(keys_a, keys_b)  # the runs share no key
            self.runs.append((np.insert(keys_a, slots, keys_b), np.insert(first_a, slots, first_b)))


def deduplicate(
    batches: Iterator[tuple[pa.RecordBatch, np.ndarray | None]],
    kept_path: str | Path,
    decisions_path: str | Path,
    *,
    enabled: bool = True,
    threads: int = 1,
    batch_rows: int = 20_000,
) -> tuple[int, int]:
    """One streaming pass over (batch, row mask) (see ``tables.selected_batches``; rows outside
    the mask are not pairs here): write the kept pairs and one decision per pair; returns
    (kept, duplicates).

    A pair is a duplicate when an earlier pair had its key, which is known once the earlier
    batches are, so one pass does it: batches get their keys on ``threads`` threads while
    this one decides and writes, and the Parquet writer (one thread) overlaps the keys: as
    many batches are in flight as a row group's worth of rows (``batch_rows`` each), so the
    key threads keep working while a row group is written."""
    pairs_schema, dec_schema = arrow_schema("pairs"), arrow_schema("decisions")
    seen = _SeenKeys()
    ids: list[pa.Array] = []  # every pair's id, for the ids of the pairs duplicates match
    starts = [0]

    def keyed(item: tuple[pa.RecordBatch, np.ndarray | None]) -> tuple[pa.RecordBatch, np.ndarray, np.ndarray | None]:
        batch, mask = item
        valid = np.arange(batch.num_rows) if mask is None else np.flatnonzero(mask)
        if not enabled:
            return batch, valid, None
        keys = dedup_keys(batch).to_numpy()  # the excluded rows too: dropping them first would copy the batch
        return batch, valid, keys if mask is None else keys[valid]

    kept = duplicates = 0
    kept_rows: list[pa.Table] = []
    decisions: list[pa.Table] = []
    with (
        pq.ParquetWriter(kept_path, pairs_schema, compression="zstd") as kept_w,
        pq.ParquetWriter(decisions_path, dec_schema, compression="zstd") as dec_w,
    ):

        def flush() -> None:
            for writer, tables in ((kept_w, kept_rows), (dec_w, decisions)):
                if tables:
                    writer.write_table(pa.concat_tables(tables))
                tables.clear()

        for batch, valid, keys in ordered_map(keyed, batches, threads, window=2 * threads + -(-ROW_GROUP_ROWS // batch_rows)):
            n = len(valid)
            about = batch.select(DECISION_COLUMNS)
            about = about if n == batch.num_rows else about.take(from_numpy(valid))
            ids.append(pa.concat_arrays([about.column("pair_id")]))  # a copy: a view would keep the batch alive
            first = seen.first_of(keys, starts[-1]) if keys is not None else np.full(n, -1, np.int64)
            starts.append(starts[-1] + n)
            keep = first < 0
            kept_rows.append(_rows_at(batch, valid[keep], pairs_schema))
            decisions.append(_decisions(about, keep, _ids_at(ids, np.asarray(starts), first), dec_schema))
            kept += int(keep.sum())
            duplicates += n - int(keep.sum())
            if sum(t.num_rows for t in decisions) >= ROW_GROUP_ROWS:
                flush()
        flush()
    return kept, duplicates


def _rows_at(batch: pa.RecordBatch, positions: np.ndarray, schema: pa.Schema) -> pa.Table:
    """The batch's rows at ``positions`` (ascending) as slices of its runs of consecutive
    rows: no copy. ``take`` copied every message of nearly every batch (a few duplicates in
    each), a tenth of the stage on the thread that writes."""
    slices = []
    if len(positions):  # none: a batch of duplicates only
        breaks = np.flatnonzero(np.diff(positions) != 1) + 1
        starts, ends = positions[np.r_[0, breaks]], positions[np.r_[breaks - 1, len(positions) - 1]] + 1
        slices = [batch.slice(a, b - a) for a, b in zip(starts.tolist(), ends.tolist())]
    table = pa.Table.from_batches(slices, schema=batch.schema)
    return table if table.schema == schema else table.cast(schema)


def _ids_at(ids: list[pa.Array], starts: np.ndarray, positions: np.ndarray) -> pa.Array:
    """The pair ids at ``positions`` (null where -1), from the per-batch id arrays."""
    at = np.flatnonzero(positions >= 0)
    if not len(at):
        return pa.nulls(len(positions), pa.string())
    batch = np.searchsorted(starts, positions[at], side="right") - 1
    found = pl.Series([None] * len(positions), dtype=pl.String)
    for b in np.unique(batch).tolist():
        rows = at[batch == b]
        found = found.scatter(rows, pl.from_arrow(ids[b].take(from_numpy(positions[rows] - starts[b]))))
    return found.to_arrow().cast(pa.string())


def _decisions(pairs: pa.RecordBatch, keep: np.ndarray, matched: pa.Array, schema: pa.Schema) -> pa.Table:
    n, kept = pairs.num_rows, from_numpy(keep)
    columns = {name: pairs.column(name) for name in DECISION_COLUMNS}
    return pa.table(
        {
            **columns,
            "stage": pa.repeat(pa.scalar(STAGE, pa.string()), n),
            "decision": pc.if_else(kept, "kept", "filtered"),
            "reason": pc.if_else(kept, pa.scalar(None, pa.string()), "exact_duplicate"),
            "matched_pair_id": matched,
            "scores": pa.nulls(n, schema.field("scores").type),
        }
    ).cast(schema)
