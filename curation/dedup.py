"""Exact dedup of pairs on normalised text, vectorised with Polars.

Normalised text: Unicode NFKC, whitespace runs collapsed to one space, trimmed, lower-cased,
per message with its role. The first occurrence wins (sources in recipe order, rows in file
order), so the result is deterministic.

Two streaming passes over the staged pairs: the first computes one 64-bit key per pair (a
hash of the normalised text; the text itself is never held for more than one batch), the
second writes kept pairs and a decision per pair. A 64-bit key collides with probability
about n^2 / 2^65 (3e-8 at a million pairs).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq

from schemas import arrow_schema

KEY_SEED = 20261123
STAGE = "dedup_exact"


def _normalised(column: str) -> pl.Expr:
    content = pl.element().struct.field("content").str.normalize("NFKC").str.replace_all(r"\s+", " ").str.strip_chars().str.to_lowercase()
    return pl.col(column).list.eval(pl.concat_str([pl.element().struct.field("role"), pl.lit("\x1f"), content])).list.join("\x1e")


def dedup_keys(pairs: pl.DataFrame) -> pl.Series:
    """One UInt64 key per pair: equal keys mean equal normalised prompt, chosen and rejected."""
    return pairs.select(
        pl.concat_str([_normalised("prompt"), _normalised("chosen"), _normalised("rejected")], separator="\x1d").hash(seed=KEY_SEED)
    ).to_series()


@dataclass
class DedupPlan:
    """Per input row, in order: keep it, or the pair id of the earlier pair it duplicates."""

    keep: pl.Series  # Boolean
    matched: pl.Series  # String, null where kept

    @property
    def duplicates(self) -> int:
        return int((~self.keep).sum())


def plan(batches: Iterator[pa.RecordBatch], *, enabled: bool = True) -> DedupPlan:
    """First pass: which pairs to keep, from batches with pair_id, prompt, chosen, rejected."""
    ids, keys = [], []
    for batch in batches:
        df = pl.from_arrow(batch)
        ids.append(df["pair_id"])
        if enabled:
            keys.append(dedup_keys(df))
    frame = pl.DataFrame({"pair_id": pl.concat(ids) if ids else pl.Series([], dtype=pl.String)})
    if not enabled or not ids:
        return DedupPlan(pl.repeat(True, frame.height, eager=True), pl.repeat(None, frame.height, dtype=pl.String, eager=True))
    out = frame.with_columns(key=pl.concat(keys)).select(
        keep=pl.col("key").is_first_distinct(),
        matched=pl.when(pl.col("key").is_first_distinct()).then(None).otherwise(pl.col("pair_id").first().over("key")),
    )
    return DedupPlan(out["keep"], out["matched"])


def apply(source: str | Path, kept_path: str | Path, decisions_path: str | Path, dplan: DedupPlan, *, batch_size: int) -> int:
    """Second pass: write kept pairs and one decision per pair; returns the number kept."""
    pairs_schema, dec_schema = arrow_schema("pairs"), arrow_schema("decisions")
    kept = 0
    offset = 0
    with (
        pq.ParquetWriter(kept_path, pairs_schema, compression="zstd") as kept_w,
        pq.ParquetWriter(decisions_path, dec_schema, compression="zstd") as dec_w,
    ):
        for batch in pq.ParquetFile(source).iter_batches(batch_size=batch_size):
            n = batch.num_rows
            keep = dplan.keep.slice(offset, n).to_arrow()
            matched = dplan.matched.slice(offset, n).to_arrow().cast(pa.string())
            offset += n
            table = pa.Table.from_batches([batch]).cast(pairs_schema)
            kept_rows = table.filter(keep)
            kept += kept_rows.num_rows
            kept_w.write_table(kept_rows)
            flags = keep.to_pylist()
            decision = pa.array(["kept" if k else "filtered" for k in flags], pa.string())
            reason = pa.array([None if k else "exact_duplicate" for k in flags], pa.string())
            dec = pa.table(
                {
                    "pair_id": table["pair_id"],
                    "source_dataset": table["source_dataset"],
                    "source_file": table["source_file"],
                    "source_row": table["source_row"],
                    "source_pair_index": table["source_pair_index"],
                    "stage": pa.array([STAGE] * n, pa.string()),
                    "decision": decision,
                    "reason": reason,
                    "matched_pair_id": matched,
                    "scores": pa.nulls(n, dec_schema.field("scores").type),
                }
            ).cast(dec_schema)
            dec_w.write_table(dec)
    return kept
