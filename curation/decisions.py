"""Decisions: what a step says about each pair it judged, and the decisions-table rows made of it.

A filter step returns a ``decisions_frame`` (pair_id, decision, reason, matched_pair_id, plus
its score columns); ``decision_rows`` adds the stage name and the pair's source coordinates;
``decisions_table`` makes the contract's Arrow table (scores as a map). Merging human labels
(``curation.human``) decides about pairs the same way.
"""

from __future__ import annotations

import polars as pl
import pyarrow as pa

from schemas import arrow_schema


def decisions_frame(
    pair_ids: list[str] | pl.Series,
    decision: list[str] | pl.Series,
    reason: list[str | None] | pl.Series,
    *,
    matched: list[str | None] | pl.Series | None = None,
    **scores: list[float | None] | pl.Series,
) -> pl.DataFrame:
    """Build a decisions frame with the right dtypes (scores as Float64)."""
    n = len(pair_ids)
    return pl.DataFrame(
        {
            "pair_id": pl.Series(pair_ids, dtype=pl.String),
            "decision": pl.Series(decision, dtype=pl.String),
            "reason": pl.Series(reason, dtype=pl.String),
            "matched_pair_id": pl.Series(matched if matched is not None else [None] * n, dtype=pl.String),
            **{name: pl.Series(values, dtype=pl.Float64) for name, values in scores.items()},
        }
    )


def decision_rows(stage: str, decisions: pl.DataFrame, index: pl.DataFrame, scores: list[str] | None = None) -> pl.DataFrame:
    """A step's decisions (``decisions_frame``, plus the Float64 ``scores`` columns) as rows of the
    decisions table, with the source coordinates of each pair from ``index``."""
    d = decisions
    scores = scores or []
    if scores:
        entries = pl.concat_list([pl.struct(key=pl.lit(name), value=pl.col(name).cast(pl.Float64)) for name in scores]).list.eval(
            pl.element().filter(pl.element().struct.field("value").is_not_null() & pl.element().struct.field("value").is_not_nan())
        )
        d = d.with_columns(scores=entries)
    else:
        d = d.with_columns(scores=pl.lit(None, pl.List(pl.Struct({"key": pl.String, "value": pl.Float64}))))
    coords = index.select("pair_id", "source_dataset", "source_file", "source_row", "source_pair_index")
    return d.join(coords, on="pair_id", how="left", maintain_order="left").select(
        "pair_id",
        "source_dataset",
        "source_file",
        "source_row",
        "source_pair_index",
        pl.lit(stage).alias("stage"),
        "decision",
        "reason",
        "matched_pair_id",
        "scores",
    )


def decisions_table(frame: pl.DataFrame) -> pa.Table:
    """Decisions rows (``decision_rows``) as the decisions contract table (scores as a map)."""
    schema = arrow_schema("decisions")
    table = frame.to_arrow()
    scores = table["scores"].combine_chunks()
    as_map = (
        pa.MapArray.from_arrays(scores.offsets, scores.values.field("key"), scores.values.field("value"), mask=scores.is_null())
        if len(scores)
        else pa.array([], schema.field("scores").type)
    )
    table = table.set_column(table.schema.get_field_index("scores"), "scores", as_map)
    return table.cast(schema)
