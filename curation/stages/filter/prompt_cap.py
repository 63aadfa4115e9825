"""Prompt cap: at most ``max_pairs`` pairs per prompt.

Datasets that compare many responses per prompt (PandaLM: up to 10 model pairs per prompt;
rated sets with ``all_above_gap``) let a few prompts dominate training; the cap keeps each
prompt's say bounded. Pairs are grouped by exact ``prompt_id`` (near-duplicate prompts are
``near_dedup``'s job; run it first to cap them too).

Which pairs survive (``keep``):

* ``first``: the first ``max_pairs`` in pair order (recipe source order, then file order);
* ``largest_margin``: the ``max_pairs`` with the largest mean valid margin over
  ``cfg.labelers`` (the clearest preferences); pairs without a margin rank after all pairs
  with one, and equal margins (or no margins) keep pair order, so the result is deterministic.

Every judged pair gets a row with score ``rank_in_prompt`` (1 = first kept); with
``largest_margin`` also ``margin`` (the mean margin ranked by, null when missing). Pairs of a
prompt with at most ``max_pairs`` pairs are kept. Filtered pairs have reason ``prompt_cap``.
"""

from __future__ import annotations

import polars as pl

from curation.decisions import decisions_frame
from curation.stages.filter.base import PairSource, StepContext, StepResult, in_sources, pair_margins
from curation.stages.filter.config import PromptCapStep

REASON = "prompt_cap"


def run(cfg: PromptCapStep, pairs: PairSource, labels: pl.DataFrame, ctx: StepContext) -> StepResult:
    frame = in_sources(pairs.frame(["pair_id", "prompt_id", "source_dataset"]).with_row_index("order"), cfg.sources)
    if cfg.keep == "largest_margin":
        frame = frame.join(pair_margins(labels, cfg.labelers), on="pair_id", how="left", maintain_order="left")
        ranking = [pl.col("margin").is_null(), pl.col("margin"), pl.col("order")]
        descending = [False, True, False]
    else:
        frame = frame.with_columns(margin=pl.lit(None, pl.Float64))
        ranking, descending = [pl.col("order")], [False]
    ranked = (
        frame.sort(ranking, descending=descending)
        .with_columns(rank_in_prompt=pl.int_range(1, pl.len() + 1).over("prompt_id"))
        .sort("order")
    )
    capped = (ranked["rank_in_prompt"] > cfg.max_pairs).to_list()
    scores = {"rank_in_prompt": ranked["rank_in_prompt"]}
    if cfg.keep == "largest_margin":
        scores["margin"] = ranked["margin"]
    decisions = decisions_frame(
        ranked["pair_id"],
        ["filtered" if c else "kept" for c in capped],
        [REASON if c else None for c in capped],
        **scores,
    )
    prompts = ranked.group_by("prompt_id").agg(pl.len().alias("n"))
    summary = {
        "max_pairs": cfg.max_pairs,
        "keep": cfg.keep,
        "pairs": ranked.height,
        "prompts": prompts.height,
        "prompts_capped": int((prompts["n"] > cfg.max_pairs).sum()),
        "filtered": sum(capped),
    }
    if cfg.keep == "largest_margin":
        summary["labelers"] = cfg.labelers
        summary["pairs_without_margin"] = int(ranked["margin"].is_null().sum())
    return StepResult(decisions=decisions, scores=list(scores), summary=summary)
