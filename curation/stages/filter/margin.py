"""Margin filter: drop pairs whose labelers barely prefer (or oppose) the pair's chosen response.

A pair's margin is the mean valid margin over ``cfg.labelers`` (a group name stands for all its
members), margin > 0 agreeing with the pair's label. The threshold is per source because sources
label on different scales and with different noise: an absolute ``min_margin`` (drop margin <
threshold) or a ``quantile`` (drop the lowest fraction of *that source's* margins), either
overridden per source by ``per_source``.

Quantile mode turns the fraction into a threshold that is one of the source's own margins: with
n margins sorted ascending and k = floor(q * n), the threshold is the (k+1)-th smallest and pairs
strictly below it go. So at most k pairs go; fewer when margins tie at the cut, because two pairs
with the same margin must get the same decision whatever their order.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import polars as pl

from curation.decisions import decisions_frame
from curation.stages.filter.base import PairSource, StepContext, StepResult, in_sources, pair_margins
from curation.stages.filter.config import MarginStep

REASON = "margin_below_threshold"
NO_MARGIN = "no_margin"
THRESHOLDS = {"source_dataset": pl.String, "threshold": pl.Float64}


def quantile_threshold(margins: np.ndarray, fraction: float) -> float | None:
    """The margin below which the lowest ``fraction`` of ``margins`` lie (see the module doc);
    None when there are no margins."""
    if margins.size == 0:
        return None
    k = math.floor(fraction * margins.size + 1e-9)
    return float(np.sort(margins)[min(k, margins.size - 1)])


def run(cfg: MarginStep, pairs: PairSource, labels: pl.DataFrame, ctx: StepContext) -> StepResult:
    frame = in_sources(pairs.frame(["pair_id", "source_dataset"]), cfg.sources)
    frame = frame.join(pair_margins(labels, cfg.labelers), on="pair_id", how="left", maintain_order="left")

    mode = "absolute" if cfg.min_margin is not None else "quantile"
    default = cfg.min_margin if cfg.min_margin is not None else cfg.quantile
    thresholds: dict[str, float | None] = {}
    summary_sources: dict[str, dict[str, Any]] = {}
    for source in frame["source_dataset"].unique(maintain_order=True).to_list():
        setting = cfg.per_source.get(source, default)
        margins = frame.filter((pl.col("source_dataset") == source) & pl.col("margin").is_not_null())["margin"].to_numpy()
        thresholds[source] = setting if mode == "absolute" else quantile_threshold(margins, setting)
        summary_sources[source] = {
            "setting": setting,
            "threshold": thresholds[source],
            "pairs": 0,
            "with_margin": int(margins.size),
            "kept": 0,
            REASON: 0,
            NO_MARGIN: 0,
        }

    judged = frame.join(
        pl.DataFrame({"source_dataset": list(thresholds), "threshold": list(thresholds.values())}, schema=THRESHOLDS),
        on="source_dataset",
        how="left",
        maintain_order="left",
    ).with_columns(
        reason=pl.when(pl.col("margin").is_null())
        .then(pl.lit(None if cfg.missing == "keep" else NO_MARGIN, dtype=pl.String))
        .when(pl.col("margin") < pl.col("threshold"))
        .then(pl.lit(REASON))
        .otherwise(pl.lit(None, dtype=pl.String)),
        threshold=pl.when(pl.col("margin").is_not_null()).then(pl.col("threshold")),
    )
    for source, why, n in judged.group_by("source_dataset", "reason").len().iter_rows():
        row = summary_sources[source]
        row["pairs"] += n
        row[why or "kept"] += n
    decision = judged.select(pl.when(pl.col("reason").is_null()).then(pl.lit("kept")).otherwise(pl.lit("filtered")))
    decisions = decisions_frame(
        judged["pair_id"], decision.to_series(), judged["reason"], margin=judged["margin"], threshold=judged["threshold"]
    )
    summary = {
        "labelers": cfg.labelers,
        "mode": mode,
        "missing": cfg.missing,
        "sources": summary_sources,
        "kept": int(judged["reason"].is_null().sum()),
        "filtered": int(judged["reason"].is_not_null().sum()),
    }
    return StepResult(decisions=decisions, scores=["margin", "threshold"], summary=summary)
