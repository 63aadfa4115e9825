"""Exact dedup of pairs on normalised text, vectorised with Polars.

Normalised text: Unicode NFKC, whitespace runs collapsed to one space, trimmed, lower-cased,
per message with its role. The first occurrence wins (sources in recipe order, rows in file
order), so the result is deterministic.

Two streaming passes over the staged pairs: the first computes one 64-bit key per pair (a
hash of the normalised messages; the text itself is never held for more than one batch),
on a few threads, the second writes kept pairs and a decision per pair. A 64-bit key
collides with probability about n^2 / 2^65 (3e-8 at a million pairs).

Normalising is most of the cost, so it does only what changes the text: NFKC runs only on
messages holding a character that NFKC could change (``_NFKC_UNSAFE``), and the whitespace
rule rewrites only runs that are not already one space.
"""

from __future__ import annotations

import unicodedata
from collections.abc import Iterator
from dataclasses import dataclass
from functools import cache
from pathlib import Path

import numpy as np
import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq

from curation.parallel import ordered_map
from curation.tables import from_numpy, rows_where
from schemas import arrow_schema

KEY_SEED = 20261123
STAGE = "dedup_exact"
PARTS = ("prompt", "chosen", "rejected")
_WHITESPACE_TO_FIX = r"\s{2,}|[^\S ]"  # a run of 2+, or one whitespace that is not a space


@cache
def _nfkc_unsafe() -> str:
    """A regex class of the characters NFKC might change, alone or next to others.

    Safe are the assigned characters below U+3000 that NFKC maps to themselves, that do not
    combine (canonical combining class 0) and that are not the second half of a canonical
    composition (nor Hangul jamo, which compose algorithmically). A text of safe characters
    only is its own NFKC, so NFKC is skipped for it; everything else (higher planes
    included) is normalised.
    """
    seconds = set()
    for cp in range(0x3000):
        decomposition = unicodedata.decomposition(chr(cp))
        if decomposition and not decomposition.startswith("<") and len(parts := decomposition.split()) == 2:
            seconds.add(int(parts[1], 16))
    safe = [
        cp
        for cp in range(0x3000)
        if not 0x1100 <= cp < 0x1200
        and cp not in seconds
        and unicodedata.category(chr(cp)) not in ("Cn", "Cs")
        and unicodedata.combining(chr(cp)) == 0
        and unicodedata.normalize("NFKC", chr(cp)) == chr(cp)
    ]
    ranges: list[tuple[int, int]] = []
    for cp in safe:
        if ranges and ranges[-1][1] == cp - 1:
            ranges[-1] = (ranges[-1][0], cp)
        else:
            ranges.append((cp, cp))
    return "[^" + "".join(f"\\x{{{a:x}}}" if a == b else f"\\x{{{a:x}}}-\\x{{{b:x}}}" for a, b in ranges) + "]"


def normalise(text: pl.Series) -> pl.Series:
    """NFKC, whitespace runs to one space, trimmed, lower-cased."""
    non_ascii = (text.str.len_bytes() != text.str.len_chars()).arg_true()  # ASCII is its own NFKC
    if len(non_ascii):
        at = non_ascii.filter(text.gather(non_ascii).str.contains(_nfkc_unsafe()))
        if len(at):
            text = text.scatter(at, text.gather(at).str.normalize("NFKC"))
    return text.str.replace_all(_WHITESPACE_TO_FIX, " ").str.strip_chars().str.to_lowercase()


def _part_keys(messages: pa.Array, seed: int) -> pl.Series:
    """Per row, the list of its messages' hashes (role and normalised content)."""
    if isinstance(messages, pa.ChunkedArray):
        messages = messages.combine_chunks()
    flat = messages.flatten()
    hashes = pl.DataFrame({"role": flat.field("role"), "content": normalise(pl.from_arrow(flat.field("content")))}).hash_rows(seed=seed)
    offsets = messages.offsets.to_numpy().astype(np.int64) - messages.offsets[0].as_py()
    return pl.from_arrow(pa.LargeListArray.from_arrays(from_numpy(offsets), hashes.to_arrow()))


def dedup_keys(pairs: pa.RecordBatch | pa.Table) -> pl.Series:
    """One UInt64 key per pair: equal keys mean equal normalised prompt, chosen and rejected."""
    parts = {name: _part_keys(pairs.column(name), KEY_SEED + i) for i, name in enumerate(PARTS)}
    return pl.DataFrame(parts).hash_rows(seed=KEY_SEED)


@dataclass
class DedupPlan:
    """Per input row, in order: keep it, or the pair id of the earlier pair it duplicates."""

    keep: pl.Series  # Boolean
    matched: pl.Series  # String, null where kept

    @property
    def duplicates(self) -> int:
        return int((~self.keep).sum())


def plan(batches: Iterator[tuple[pa.RecordBatch, np.ndarray | None]], *, enabled: bool = True, threads: int = 1) -> DedupPlan:
    """First pass: which pairs to keep, from (batch, row mask) with pair_id, prompt, chosen,
    rejected (see ``tables.selected_batches``; rows outside the mask are not pairs here)."""
    ids, keys = [], []

    def ids_and_keys(item: tuple[pa.RecordBatch, np.ndarray | None]) -> tuple[pl.Series, pl.Series | None]:
        batch, mask = item
        # a copy: a view would keep the whole batch (all its text) alive until the plan is made
        column = batch.column("pair_id")
        batch_ids = pl.from_arrow(pa.concat_arrays([column]) if mask is None else column.filter(from_numpy(mask)))
        if not enabled:
            return batch_ids, None
        batch_keys = dedup_keys(batch)
        return batch_ids, batch_keys if mask is None else batch_keys.filter(pl.Series(mask))

    for batch_ids, batch_keys in ordered_map(ids_and_keys, batches, threads):
        ids.append(batch_ids)
        if enabled:
            keys.append(batch_keys)
    frame = pl.DataFrame({"pair_id": pl.concat(ids) if ids else pl.Series([], dtype=pl.String)})
    if not enabled or not ids:
        return DedupPlan(pl.repeat(True, frame.height, eager=True), pl.repeat(None, frame.height, dtype=pl.String, eager=True))
    out = frame.with_columns(key=pl.concat(keys)).select(
        keep=pl.col("key").is_first_distinct(),
        matched=pl.when(pl.col("key").is_first_distinct()).then(None).otherwise(pl.col("pair_id").first().over("key")),
    )
    return DedupPlan(out["keep"], out["matched"])


def apply(
    batches: Iterator[tuple[pa.RecordBatch, np.ndarray | None]],
    kept_path: str | Path,
    decisions_path: str | Path,
    dplan: DedupPlan,
    *,
    threads: int = 1,
) -> int:
    """Second pass, over the same (batch, row mask) as the plan: write kept pairs and one
    decision per pair; returns the number kept. Batches are filtered on ``threads`` threads
    while this one writes (the Parquet writer compresses on one thread)."""
    pairs_schema, dec_schema = arrow_schema("pairs"), arrow_schema("decisions")

    def with_plan() -> Iterator[tuple[pa.RecordBatch, np.ndarray, pa.Array]]:
        offset = 0
        for batch, mask in batches:
            pairs = batch if mask is None else rows_where(batch, mask)
            n = pairs.num_rows
            yield pairs, dplan.keep.slice(offset, n).to_numpy(), dplan.matched.slice(offset, n).to_arrow().cast(pa.string())
            offset += n

    def tables(item: tuple[pa.RecordBatch, np.ndarray, pa.Array]) -> tuple[pa.Table, pa.Table]:
        pairs, keep, matched = item
        kept_rows = pa.Table.from_batches([pairs if keep.all() else rows_where(pairs, keep)]).cast(pairs_schema)
        return kept_rows, _decisions(pairs, keep, matched, dec_schema)

    kept = 0
    with (
        pq.ParquetWriter(kept_path, pairs_schema, compression="zstd") as kept_w,
        pq.ParquetWriter(decisions_path, dec_schema, compression="zstd") as dec_w,
    ):
        for kept_rows, decisions in ordered_map(tables, with_plan(), threads):
            kept += kept_rows.num_rows
            kept_w.write_table(kept_rows)
            dec_w.write_table(decisions)
    return kept


def _decisions(pairs: pa.RecordBatch, keep: np.ndarray, matched: pa.Array, schema: pa.Schema) -> pa.Table:
    n = pairs.num_rows
    columns = {name: pairs.column(name) for name in ("pair_id", "source_dataset", "source_file", "source_row", "source_pair_index")}
    return pa.table(
        {
            **columns,
            "stage": pa.array([STAGE] * n, pa.string()),
            "decision": pa.array(np.where(keep, "kept", "filtered").tolist(), pa.string()),
            "reason": pa.array([None if k else "exact_duplicate" for k in keep.tolist()], pa.string()),
            "matched_pair_id": matched,
            "scores": pa.nulls(n, schema.field("scores").type),
        }
    ).cast(schema)
