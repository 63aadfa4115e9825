"""Per-pair routing features: how likely a human label would change, or settle, a pair's AI label.

One row per pair, computed from the labels table and the pair texts only (no model): cheap
enough to run on every candidate, transparent enough to show a reviewer why a pair was sent.

Orientation: as everywhere in the filter stage, a label row's margin > 0 and verdict "A" agree
with the pair's *current* label (its chosen response). Only ``ai_vs_label``, ``len_chosen`` and
``len_rejected`` depend on that orientation; every other feature is the same for the swapped
pair.

Features (the column names; ``FEATURES`` lists them in this order):

* ``labeler_disagreement``: 2 * min(p, 1 - p), where p is the share of the valid votes that
  prefer the pair's chosen response (a ``tie`` verdict counts half, ``invalid`` is no vote).
  0 = unanimous, 1 = evenly split. Every label row is one vote, so an ensemble's members vote
  individually: with the CPU default of one ensemble, group-level disagreement would always
  be 0, while the members' split is exactly the uncertainty wanted here.
* ``ensemble_std``: per labeler group with >= 2 valid members on the pair, the std of the
  members' margins divided by the group's margin scale (unitless, so groups on different
  scales average), averaged over those groups.
* ``min_abs_margin``: per labeler group, |mean margin over its members| divided by the scale
  of that mean (standardised per labeler); the minimum over groups. A small value means some
  labeler could barely tell the responses apart; it gets a negative routing weight.

  A scale is the root mean square over all pairs, not the std: margins lean positive (labelers
  mostly agree with the label), so a std would change when some pairs are flipped, and a
  pair's features must not depend on how the other pairs are oriented.
* ``judge_inconsistency``: share of judge rows (rows with a non-null ``consistent``) whose two
  presentation orders disagreed.
* ``judge_entropy``: mean over the calibrated judge rows of the pair of the entropy (bits) of
  the judge's verdicts over both orders and all samples (win / tie / lose; Wang et al. 2023):
  high where the judge could not make up its mind, so those pairs reach people first. Null
  without a calibrated judge (labels tables read without the column count as none).
* ``ai_vs_label``: share of the valid votes that disagree with the pair's current label (ties
  half). For an AI label decided by the same labelers this is 1 - p; it matters most where the
  label came from elsewhere (another model, or a human label under re-annotation).
* ``len_chosen``, ``len_rejected``, ``len_prompt``, ``len_diff``: characters of the chosen
  response, the rejected response, the prompt (all message contents), and |chosen - rejected|,
  each as a percentile rank within the pairs given (0 = shortest, 1 = longest; ties share the
  mean rank). HyPER bins lengths the same way; absolute lengths differ too much across sources.
* ``response_similarity``: Jaccard similarity of the two responses' lower-cased word sets
  (1 = the same words; two empty responses count as identical). Near-identical responses are
  hard to judge for people and models alike.

Plus ``source_dataset`` (a string column, not a number): weights may name ``source=<name>``.

Missing features are null in this table (no judge ran: ``judge_inconsistency``; no valid
vote: the vote-based ones; no group with two members: ``ensemble_std``). The router scores a
null as the neutral middle rank 0.5, so a missing feature neither raises nor lowers a pair.
"""

from __future__ import annotations

import re

import polars as pl

from curation.messages import message_chars

FEATURES: tuple[str, ...] = (
    "labeler_disagreement",
    "ensemble_std",
    "min_abs_margin",
    "judge_inconsistency",
    "judge_entropy",
    "ai_vs_label",
    "len_chosen",
    "len_rejected",
    "len_prompt",
    "len_diff",
    "response_similarity",
)
LABEL_FEATURES = FEATURES[:6]  # the ones computed from the labels
# What each feature needs from the pairs frame.
PAIR_INPUTS = ["pair_id", "prompt", "chosen", "rejected", "source_dataset"]
_WORD = re.compile(r"\w+")


def select_labels(labels: pl.DataFrame, labelers: list[str] | None) -> pl.DataFrame:
    """Rows of the named labelers or labeler groups (all rows when ``labelers`` is empty/None)."""
    if not labelers:
        return labels
    return labels.filter(pl.col("labeler").is_in(labelers) | pl.col("labeler_group").is_in(labelers))


def _valid_margin() -> pl.Expr:
    return pl.col("margin").is_not_null() & pl.col("margin").is_finite()


def _vote() -> pl.Expr:
    """1 = prefers the current chosen response, 0 = the rejected one, 0.5 = tie; null = no vote."""
    return pl.when(pl.col("verdict") == "A").then(1.0).when(pl.col("verdict") == "B").then(0.0).when(pl.col("verdict") == "tie").then(0.5)


def percentile_rank(expr: pl.Expr) -> pl.Expr:
    """(average rank - 1) / (n - 1) over non-null values: 0 = smallest, 1 = largest; 0.5 when
    there is one value (or all are equal, through the shared average rank)."""
    n = expr.count()
    return pl.when(n > 1).then((expr.rank("average") - 1) / (n - 1)).otherwise(pl.when(expr.is_not_null()).then(0.5))


def _text_features(pairs: pl.DataFrame) -> pl.DataFrame:
    def chars(col: str) -> pl.Expr:
        return message_chars(col).cast(pl.Float64)

    def words(col: str) -> pl.Expr:
        text = pl.col(col).list.eval(pl.element().struct.field("content")).list.join("\n\n").str.to_lowercase()
        return text.str.extract_all(_WORD.pattern).list.unique()

    raw = pairs.select(
        "pair_id",
        "source_dataset",
        chars("chosen").alias("_c"),
        chars("rejected").alias("_r"),
        chars("prompt").alias("_p"),
        words("chosen").alias("_wc"),
        words("rejected").alias("_wr"),
    )
    inter = pl.col("_wc").list.set_intersection(pl.col("_wr")).list.len()
    union = pl.col("_wc").list.set_union(pl.col("_wr")).list.len()
    return raw.select(
        "pair_id",
        "source_dataset",
        percentile_rank(pl.col("_c")).alias("len_chosen"),
        percentile_rank(pl.col("_r")).alias("len_rejected"),
        percentile_rank(pl.col("_p")).alias("len_prompt"),
        percentile_rank((pl.col("_c") - pl.col("_r")).abs()).alias("len_diff"),
        pl.when(union == 0).then(1.0).otherwise(inter / union).cast(pl.Float64).alias("response_similarity"),
    )


def _label_features(labels: pl.DataFrame) -> pl.DataFrame:
    """The label-based features per pair id that has at least one label row."""
    schema = {name: pl.Float64 for name in LABEL_FEATURES}
    if labels.is_empty():
        return pl.DataFrame(schema={"pair_id": pl.String, **schema})
    if "entropy" not in labels.columns:
        labels = labels.with_columns(pl.lit(None, dtype=pl.Float64).alias("entropy"))
    rows = labels.with_columns(_vote().alias("_vote"), pl.when(_valid_margin()).then(pl.col("margin")).alias("_m"))

    votes = rows.group_by("pair_id").agg(
        pl.col("_vote").mean().alias("_p"),
        pl.when(pl.col("consistent").is_not_null()).then(pl.col("consistent").not_().cast(pl.Float64)).mean().alias("judge_inconsistency"),
        pl.col("entropy").mean().alias("judge_entropy"),
    )

    # group scales (root mean square over all pairs, which flipping a pair does not change): of
    # the members' margins, and of the group's mean margin per pair
    member_scale = rows.group_by("labeler_group").agg((pl.col("_m") ** 2).mean().sqrt().alias("_member_sd"))
    per_group = rows.group_by("pair_id", "labeler_group").agg(
        pl.col("_m").mean().alias("_gm"), pl.col("_m").std().alias("_gsd"), pl.col("_m").count().alias("_n")
    )
    group_scale = per_group.group_by("labeler_group").agg((pl.col("_gm") ** 2).mean().sqrt().alias("_mean_sd"))
    per_group = per_group.join(member_scale, on="labeler_group", how="left").join(group_scale, on="labeler_group", how="left")
    unit = (
        per_group.select(
            "pair_id",
            pl.when((pl.col("_n") >= 2) & (pl.col("_member_sd") > 0)).then(pl.col("_gsd") / pl.col("_member_sd")).alias("_std"),
            pl.when(pl.col("_mean_sd") > 0)
            .then(pl.col("_gm").abs() / pl.col("_mean_sd"))
            .when(pl.col("_gm").is_not_null())
            .then(pl.col("_gm").abs())  # one pair, or all margins equal: no scale to divide by
            .alias("_abs"),
        )
        .group_by("pair_id")
        .agg(pl.col("_std").mean().alias("ensemble_std"), pl.col("_abs").min().alias("min_abs_margin"))
    )

    return votes.join(unit, on="pair_id", how="full", coalesce=True).select(
        "pair_id",
        (2 * pl.min_horizontal(pl.col("_p"), 1 - pl.col("_p"))).alias("labeler_disagreement"),
        pl.col("ensemble_std").cast(pl.Float64),
        pl.col("min_abs_margin").cast(pl.Float64),
        pl.col("judge_inconsistency").cast(pl.Float64),
        pl.col("judge_entropy").cast(pl.Float64),
        (1 - pl.col("_p")).alias("ai_vs_label"),
    )


def features(pairs: pl.DataFrame, labels: pl.DataFrame, labelers: list[str] | None = None) -> pl.DataFrame:
    """One row per pair of ``pairs`` (same order): ``pair_id``, ``source_dataset`` and the
    ``FEATURES`` columns (Float64, null where missing). ``labels`` may hold rows of other pairs
    (ignored) or none at all; ``labelers`` restricts which label rows count (names or groups)."""
    text = _text_features(pairs.select(PAIR_INPUTS))
    lab = _label_features(select_labels(labels, labelers).filter(pl.col("pair_id").is_in(pairs["pair_id"].implode())))
    return text.join(lab, on="pair_id", how="left", maintain_order="left").select("pair_id", "source_dataset", *FEATURES)


# --------------------------------------------------------------------------- orientation helpers


def ai_margin(labels: pl.DataFrame, labelers: list[str] | None = None) -> pl.DataFrame:
    """Per pair: the AI's preference as the ``ai_label`` step decides it, the mean of the valid
    margins of the labelers' rows (each member one vote); where no margin is valid, the mean vote
    centred at 0 (p - 0.5). Columns ``pair_id``, ``ai_margin`` (> 0: agrees with the current
    label, < 0: prefers the rejected response, 0 or null: undecided)."""
    rows = select_labels(labels, labelers).with_columns(_vote().alias("_vote"), pl.when(_valid_margin()).then(pl.col("margin")).alias("_m"))
    return rows.group_by("pair_id", maintain_order=True).agg(
        pl.coalesce(pl.col("_m").mean(), pl.col("_vote").mean() - 0.5).alias("ai_margin")
    )


def swap_pairs(pairs: pl.DataFrame, labels: pl.DataFrame, pair_ids: list[str] | pl.Series) -> tuple[pl.DataFrame, pl.DataFrame]:
    """The pairs with chosen and rejected swapped for ``pair_ids`` (ids kept: a view for scoring,
    not a new pair), and their label rows re-oriented (scores swapped, margin negated, A <-> B):
    what the stage does before a step sees a flipped pair, and how a human-labelled pair is seen
    "as the AI labelled it" when learning routing weights."""
    ids = pl.Series(list(pair_ids), dtype=pl.String).implode()
    hit = pl.col("pair_id").is_in(ids)
    swaps = [("chosen", "rejected"), ("chosen_score", "rejected_score")]
    cols = {}
    for a, b in swaps:
        if a in pairs.columns and b in pairs.columns:
            cols[a] = pl.when(hit).then(pl.col(b)).otherwise(pl.col(a))
            cols[b] = pl.when(hit).then(pl.col(a)).otherwise(pl.col(b))
    if "preference_strength" in pairs.columns:
        cols["preference_strength"] = pl.when(hit).then(-pl.col("preference_strength")).otherwise(pl.col("preference_strength"))
    out_pairs = pairs.with_columns(**cols)
    flipped_verdict = pl.col("verdict").replace({"A": "B", "B": "A"})
    lab_cols = {"verdict": pl.when(hit).then(flipped_verdict).otherwise(pl.col("verdict"))}
    if "margin" in labels.columns:
        lab_cols["margin"] = pl.when(hit).then(-pl.col("margin")).otherwise(pl.col("margin"))
    if "score_a" in labels.columns and "score_b" in labels.columns:
        lab_cols["score_a"] = pl.when(hit).then(pl.col("score_b")).otherwise(pl.col("score_a"))
        lab_cols["score_b"] = pl.when(hit).then(pl.col("score_a")).otherwise(pl.col("score_b"))
    return out_pairs, labels.with_columns(**lab_cols)
