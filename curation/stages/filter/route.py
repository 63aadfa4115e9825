"""The route step: send the AI-labelled pairs where a human label helps most to people.

HyPER (allenai/hybrid-preferences) routes by a learned performance-prediction model over many
per-instance features; a product starts with a transparent score instead and learns the weights
once human labels exist. Here:

* each candidate gets the ``features`` (``curation.stages.filter.route_features``), each turned into its
  percentile rank among the candidates (null = 0.5, neutral), so weights are unitless and robust
  to heavy-tailed margins, and weights learned on one run apply to another;
* routing score = sum of weight * rank over the features with a weight, plus 1 * weight for each
  ``source=<name>`` the pair belongs to;
* the top ``budget`` candidates are routed (decision ``routed``, reason ``human_review``); every
  other candidate gets a ``kept`` row, so every candidate's score is on record. Equal scores are
  ordered by a seeded hash of the pair id (not by input order, which would favour early sources).

``fit_weights`` learns the weights by L2-penalised logistic regression (full-batch Newton, the
same solver as the BT ensemble's heads) on human-labelled pairs, predicting where the AI label
disagrees with the human one; ``run`` uses it when the step's ``learn_from_human`` is set.
"""

from __future__ import annotations

import hashlib
import math
from typing import Any

import numpy as np
import polars as pl

from curation.decisions import decisions_frame
from curation.errors import ConfigError
from curation.stages.filter.base import STEP_PAIR_COLUMNS, PairSource, StepContext, StepResult, in_sources
from curation.stages.filter.config import RouteStep
from curation.stages.filter.route_features import FEATURES, PAIR_INPUTS, ai_margin, features, percentile_rank, swap_pairs
from curation.stages.label.bt_ensemble import fit_bt

# The transparent default: the signals TECHNIQUES.md names (labeler disagreement, judge position
# inconsistency and verdict entropy, small margin) plus disagreement with the current label. Ensemble spread is
# listed at weight 0: with the BT ensemble the members' std grows with the size of the margin
# (measured single-feature AUC for "AI label wrong": 0.44 on HH-RLHF, 0.48 on PandaLM, i.e. a
# large spread marks *confident* pairs), so a positive weight routes the wrong pairs; set it in
# ``weights`` for an ensemble where it means doubt. Lengths, similarity and source carry no
# default weight either: whether they matter depends on the data, which is what learned weights
# are for (benchmarks/routing_curve.py prints both).
DEFAULT_WEIGHTS: dict[str, float] = {
    "labeler_disagreement": 1.0,
    "ensemble_std": 0.0,
    "min_abs_margin": -1.0,
    "judge_inconsistency": 1.0,
    "judge_entropy": 1.0,
    "ai_vs_label": 1.0,
}
SOURCE_PREFIX = "source="
REASON = "human_review"
MIN_FIT_PAIRS = 30  # fewer human-labelled pairs (or no AI error among them): keep the given weights
FIT_L2 = 1.0


def check_weights(weights: dict[str, float]) -> None:
    unknown = sorted(name for name in weights if name not in FEATURES and not name.startswith(SOURCE_PREFIX))
    if unknown:
        raise ConfigError(
            f"route: unknown feature(s) in weights: {', '.join(unknown)}; known: {', '.join(FEATURES)}, "
            f"and {SOURCE_PREFIX}<source name> for a source"
        )


def tie_break(pair_ids: pl.Series, seed: int) -> pl.Series:
    """A seeded hash of each pair id: the order among equal scores, the same in every run."""
    return pl.Series(
        "tie",
        [int.from_bytes(hashlib.blake2b(f"{seed}\x00{p}".encode(), digest_size=8).digest(), "big") for p in pair_ids],
        dtype=pl.UInt64,
    )


def budget_count(budget: float, candidates: int) -> int:
    """Pairs to route: ``budget`` >= 1 is a count (its integer part), below 1 a fraction of the
    candidates rounded half up (0.1 of 25 -> 3); never more than there are candidates."""
    n = int(budget) if budget >= 1 else math.floor(budget * candidates + 0.5)
    return max(0, min(n, candidates))


def design(feats: pl.DataFrame, names: list[str]) -> np.ndarray:
    """The matrix the weights apply to: one column per name, each feature as its percentile
    rank among these rows (null -> 0.5), each ``source=X`` as an indicator."""
    cols = []
    for name in names:
        if name.startswith(SOURCE_PREFIX):
            cols.append(pl.col("source_dataset").eq(name.removeprefix(SOURCE_PREFIX)).fill_null(False).cast(pl.Float64))
        else:
            cols.append(percentile_rank(pl.col(name)).fill_null(0.5).cast(pl.Float64))
    if not names:
        return np.zeros((feats.height, 0))
    return feats.select(*[c.alias(f"_{i}") for i, c in enumerate(cols)]).to_numpy().astype(np.float64)


def score(feats: pl.DataFrame, weights: dict[str, float]) -> pl.Series:
    """The routing score of each row of ``feats`` (higher = route first)."""
    names = [n for n, w in weights.items() if w != 0]
    x = design(feats, names)
    w = np.array([weights[n] for n in names])
    return pl.Series("route_score", x @ w if names else np.zeros(feats.height), dtype=pl.Float64)


def fit_weights(features_df: pl.DataFrame, ai_correct: pl.Series, *, l2: float = FIT_L2, sources: bool = True) -> dict[str, float]:
    """Weights that predict where the AI label is wrong, learned on pairs with a human label.

    ``features_df``: the features of those pairs *as the AI labelled them* (oriented so that the
    pair's chosen response is the AI's choice; see ``as_ai_labelled``); ``ai_correct``: whether
    the human agreed. Logistic regression of "AI wrong" on the same percentile ranks the router
    scores (plus ``source=X`` indicators when ``sources`` and there are several), intercept
    included but not returned (it does not change the order). Features constant over these
    pairs get weight 0. Returns feature -> weight; higher = more likely wrong = route first.
    """
    if len(ai_correct) != features_df.height:
        raise ValueError(f"fit_weights: {features_df.height} feature rows but {len(ai_correct)} outcomes")
    names = [f for f in FEATURES if features_df[f].drop_nulls().n_unique() > 1]
    present = sorted(features_df["source_dataset"].drop_nulls().unique().to_list())
    if sources and len(present) > 1:
        names += [SOURCE_PREFIX + s for s in present[1:]]  # the first source is the baseline
    x = np.hstack([np.ones((features_df.height, 1)), design(features_df, names)])
    wrong = ~ai_correct.cast(pl.Boolean).to_numpy()
    # logistic regression as a Bradley-Terry fit: P(wrong) = sigmoid(w.x) is P(sign * w.x > 0)
    w = fit_bt(x * np.where(wrong, 1.0, -1.0)[:, None], l2, 100)
    weights = {name: float(v) for name, v in zip(names, w[1:])}
    return {f: weights.get(f, 0.0) for f in FEATURES} | {n: v for n, v in weights.items() if n.startswith(SOURCE_PREFIX)}


def as_ai_labelled(
    pairs: pl.DataFrame, labels: pl.DataFrame, labelers: list[str] | None = None
) -> tuple[pl.DataFrame, pl.DataFrame, pl.Series]:
    """Human-labelled pairs re-oriented to the AI's choice (the sign of the labelers' mean
    margin, as the ``ai_label`` step decides), their labels re-oriented alike, and whether the
    human agreed with the AI. Pairs the AI did not decide (no label, mean 0) are left out."""
    mean = ai_margin(labels, labelers).filter(pl.col("ai_margin").is_not_null() & (pl.col("ai_margin") != 0))
    kept = pairs.join(mean, on="pair_id", how="inner", maintain_order="left")
    swapped, relabelled = swap_pairs(kept.drop("ai_margin"), labels, kept.filter(pl.col("ai_margin") < 0)["pair_id"])
    return swapped, relabelled, (kept["ai_margin"] > 0).alias("ai_correct")


def resolve_weights(cfg: RouteStep) -> dict[str, float]:
    check_weights(cfg.weights)
    return dict(cfg.weights) if cfg.weights else dict(DEFAULT_WEIGHTS)


def _learned(cfg: RouteStep, frame: pl.DataFrame, labels: pl.DataFrame) -> tuple[dict[str, float] | None, str]:
    """Weights fitted on the alive human-labelled pairs, or None and why not."""
    human = frame.filter(pl.col("label_source") == "human")
    oriented, oriented_labels, correct = as_ai_labelled(human, labels, cfg.labelers or None)
    if oriented.height < MIN_FIT_PAIRS or correct.all() or not correct.any():
        return (
            None,
            f"{oriented.height} human-labelled pairs with AI labels ({int((~correct).sum())} AI errors); need {MIN_FIT_PAIRS} and both outcomes",
        )
    return fit_weights(
        features(oriented, oriented_labels, cfg.labelers or None), correct
    ), f"fitted on {oriented.height} human-labelled pairs"


def routing_table(
    cfg: RouteStep, pairs: PairSource | pl.DataFrame, labels: pl.DataFrame, weights: dict[str, float] | None = None
) -> pl.DataFrame:
    """The published routing table (schemas/routing.yaml) for the step's candidates: features,
    score, rank (1 = routed first) and whether the pair is routed. ``weights`` default to the
    step's (``cfg.weights`` or the built-in ones)."""
    frame = pairs if isinstance(pairs, pl.DataFrame) else pairs.frame(STEP_PAIR_COLUMNS)
    candidates = frame.filter(pl.col("label_source") != "human") if not cfg.include_human else frame
    candidates = in_sources(candidates, cfg.sources)
    weights = weights if weights is not None else resolve_weights(cfg)
    check_weights(weights)
    feats = features(candidates.select(PAIR_INPUTS), labels, cfg.labelers or None)
    n = budget_count(cfg.budget, feats.height)
    return (
        feats.with_columns(score(feats, weights), tie_break(feats["pair_id"], cfg.seed))
        .sort(["route_score", "tie"], descending=[True, False])
        .with_row_index("rank", offset=1)
        .with_columns(pl.col("rank").cast(pl.Int64), (pl.col("rank") <= n).alias("routed"))
        .drop("tie")
        .select("pair_id", "source_dataset", "route_score", "rank", "routed", *FEATURES)
    )


def _top_features(table: pl.DataFrame, weights: dict[str, float]) -> list[dict[str, Any]]:
    """Which weighted features pushed the routed pairs up: weight * (mean rank among the routed
    - mean rank among all candidates), largest first."""
    names = [n for n, w in weights.items() if w != 0]
    if not names or not table["routed"].any():
        return []
    x = design(table, names)
    routed = table["routed"].to_numpy()
    lift = [(n, weights[n] * float(x[routed, i].mean() - x[:, i].mean())) for i, n in enumerate(names)]
    return [{"feature": n, "contribution": round(v, 4) + 0.0} for n, v in sorted(lift, key=lambda t: -t[1])[:5]]


def run(cfg: RouteStep, pairs: PairSource, labels: pl.DataFrame, ctx: StepContext) -> StepResult:
    frame = pairs.frame(STEP_PAIR_COLUMNS)
    weights, weights_from = resolve_weights(cfg), "config" if cfg.weights else "default"
    note = None
    if cfg.learn_from_human:
        learned, note = _learned(cfg, in_sources(frame, cfg.sources), labels)
        if learned is not None:
            weights, weights_from = learned, "learned"
    table = routing_table(cfg, frame, labels, weights)
    routed = table["routed"]
    decisions = decisions_frame(
        table["pair_id"],
        ["routed" if r else "kept" for r in routed],
        [REASON if r else None for r in routed],
        route_score=table["route_score"],
        **{f: table[f] for f in FEATURES},
    )
    summary: dict[str, Any] = {
        "candidates": table.height,
        "routed": int(routed.sum()),
        "candidates_without_votes": int(table["labeler_disagreement"].null_count()),
        "budget": cfg.budget,
        "budget_rule": "count (integer part)" if cfg.budget >= 1 else "fraction of candidates, rounded half up",
        "weights": {k: round(v, 6) for k, v in weights.items() if v != 0},
        "weights_from": weights_from,
        "top_features": _top_features(table, weights),
        "score_threshold": float(table.filter(routed)["route_score"].min()) if routed.any() else None,
    }
    if note is not None:
        summary["learn_from_human"] = note
    if cfg.curve:
        curve = human_curve(cfg, frame, labels, weights)
        if curve is not None:
            summary["curve"] = curve
    return StepResult(decisions=decisions, scores=["route_score", *FEATURES], summary=summary, tables={"routing": table})


CURVE_BUDGETS = [i / 20 for i in range(21)]


def human_curve(cfg: RouteStep, frame: pl.DataFrame, labels: pl.DataFrame, weights: dict[str, float]) -> dict[str, Any] | None:
    """Agreement with people against budget, on the run's human-labelled pairs seen as the AI
    labelled them: route the top share by this step's score (or at random, in expectation) and
    count a routed pair as right. The same measurement as benchmarks/routing_curve.py, in-run."""
    human = in_sources(frame.filter(pl.col("label_source") == "human"), cfg.sources)
    oriented, oriented_labels, correct = as_ai_labelled(human, labels, cfg.labelers or None)
    n = oriented.height
    if n < 10:
        return None
    feats = features(oriented, oriented_labels, cfg.labelers or None)
    order = feats.with_columns(score(feats, weights), tie_break(feats["pair_id"], cfg.seed), correct=correct).sort(
        ["route_score", "tie"], descending=[True, False]
    )
    wrong = (~order["correct"]).to_numpy()
    errors = int(wrong.sum())
    caught = np.concatenate([[0], np.cumsum(wrong)])
    router, random = [], []
    for b in CURVE_BUDGETS:
        k = int(math.floor(b * n + 0.5))
        router.append(round(1 - (errors - int(caught[k])) / n, 4))
        random.append(round(1 - errors * (1 - k / n) / n, 4))
    return {
        "pairs": n,
        "budgets": CURVE_BUDGETS,
        "agreement": {"router": router, "random": random},
        "note": f"{n:,} human-labelled pairs with AI labels that are still in the run at this step; the AI agrees with people "
        f"on {1 - errors / n:.1%} of them. A routed pair takes the human label; random routing is its expectation. Earlier "
        "filters that drop the pairs the labelers dispute most (voting, margin) leave the AI's remaining errors at small "
        "margins, which the router finds first: on unfiltered pairs the gain is smaller (benchmarks/routing_curve.py).",
    }
