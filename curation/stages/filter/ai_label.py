"""AI preferences for unlabeled pairs (generated candidates): the sign of a labeler's margin.

Verdict A (mean margin > 0) keeps the pair as generated, B flips it (the stage swaps chosen
and rejected), no valid margin or a zero one is undecided: dropped, or kept unlabeled so a
later step (routing) can send it to people. Pairs that already have a label are not judged.
"""

from __future__ import annotations

import polars as pl

from curation.decisions import decisions_frame
from curation.stages.filter.base import PairSource, StepContext, StepResult, in_sources, pair_margins
from curation.stages.filter.config import AILabelStep


def run(cfg: AILabelStep, pairs: PairSource, labels: pl.DataFrame, ctx: StepContext) -> StepResult:
    frame = pairs.frame(["pair_id", "label_source", "source_dataset"]).filter(pl.col("label_source") == "unlabeled")
    judged = in_sources(frame, cfg.sources).join(pair_margins(labels, cfg.labelers), on="pair_id", how="left", maintain_order="left")
    margin = judged["margin"]
    decision = (
        judged.select(
            pl.when(pl.col("margin") > 0)
            .then(pl.lit("kept"))
            .when(pl.col("margin") < 0)
            .then(pl.lit("flipped"))
            .otherwise(pl.lit("filtered" if cfg.undecided == "filter" else "kept"))
        )
        .to_series()
        .to_list()
    )
    reason = [
        None if d == "kept" else ("ai_prefers_rejected" if d == "flipped" else ("ai_undecided" if m is not None else "no_ai_label"))
        for d, m in zip(decision, margin.to_list())
    ]
    out = decisions_frame(judged["pair_id"], decision, reason, margin=margin)
    counts = {d: decision.count(d) for d in ("kept", "flipped", "filtered")}
    decided = judged.filter(pl.col("margin").is_not_null() & (pl.col("margin") != 0))["pair_id"]
    relabel = pl.DataFrame({"pair_id": decided, "label_source": "ai", "label_model": f"{cfg.stage_name}:{'+'.join(cfg.labelers)}"})
    summary = {"unlabeled": judged.height, **counts, "labelers": cfg.labelers}
    return StepResult(out, scores=["margin"], summary=summary, pair_values=relabel)
