"""How well each labeler agrees with the human labels (the RewardBench way, with intervals).

Over the human-labelled pairs a labeler labelled: verdict A agrees with the human (slot A is
the human-chosen response), B disagrees, ties and invalid labels are counted apart, so
accuracy = agree / (agree + disagree) is never flattered by abstentions. The 95% interval is a
percentile bootstrap over the decided pairs: resampling n Bernoulli outcomes with replacement
gives a Binomial(n, p_hat) count, drawn directly. The calibration rows bin |margin| by
quantiles: a useful labeler agrees more often when its margin is larger.

Ensembles (several members in one ``labeler_group``) also get a ``GROUP/mean`` labeler: the
mean of the members' margins per pair, the quantity the voting filter uses.
"""

from __future__ import annotations

from itertools import combinations
from typing import Any

import numpy as np
import polars as pl
import pyarrow as pa

from curation.histograms import histogram
from schemas import arrow_schema

# The labels columns agreement reads: fewer than the filter steps' ``STEP_LABEL_COLUMNS``, no scores.
AGREEMENT_LABEL_COLUMNS = ["pair_id", "labeler", "labeler_group", "kind", "margin", "verdict", "consistent"]


def ensemble_means(labels: pl.DataFrame) -> pl.DataFrame:
    """A ``GROUP/mean`` labeler for every group with more than one member."""
    groups = labels.group_by("labeler_group").agg(pl.col("labeler").n_unique().alias("members"))
    multi = groups.filter(pl.col("members") > 1)["labeler_group"]
    if multi.is_empty():
        return labels.head(0)
    valid = labels.filter(pl.col("labeler_group").is_in(multi.implode()) & pl.col("margin").is_not_null())
    means = valid.group_by(["pair_id", "labeler_group", "kind"]).agg(pl.col("margin").mean())
    return means.select(
        "pair_id",
        (pl.col("labeler_group") + "/mean").alias("labeler"),
        "labeler_group",
        "kind",
        "margin",
        pl.when(pl.col("margin") > 0)
        .then(pl.lit("A"))
        .when(pl.col("margin") < 0)
        .then(pl.lit("B"))
        .otherwise(pl.lit("tie"))
        .alias("verdict"),
        pl.lit(None, dtype=pl.Boolean).alias("consistent"),
    )


def _bootstrap(agree: int, decided: int, resamples: int, rng: np.random.Generator) -> tuple[float | None, float | None]:
    if decided == 0 or resamples == 0:
        return None, None
    draws = rng.binomial(decided, agree / decided, size=resamples) / decided
    low, high = np.quantile(draws, [0.025, 0.975])
    return float(low), float(high)


def _summary(df: pl.DataFrame, resamples: int, rng: np.random.Generator) -> dict:
    n = df.height
    counts = {v: int((df["verdict"] == v).sum()) for v in ("A", "B", "tie", "invalid")}
    decided = counts["A"] + counts["B"]
    low, high = _bootstrap(counts["A"], decided, resamples, rng)
    judged = df.filter(pl.col("consistent").is_not_null())["consistent"]
    return {
        "n": n,
        "n_agree": counts["A"],
        "n_disagree": counts["B"],
        "n_tie": counts["tie"],
        "n_invalid": counts["invalid"],
        "accuracy": counts["A"] / decided if decided else None,
        "ci_low": low,
        "ci_high": high,
        "tie_rate": counts["tie"] / n if n else None,
        "invalid_rate": counts["invalid"] / n if n else None,
        "consistency_rate": float(judged.mean()) if judged.len() else None,
    }


def _calibration(df: pl.DataFrame, bins: int) -> list[dict]:
    scored = df.filter(pl.col("margin").is_not_null() & pl.col("verdict").is_in(["A", "B", "tie"])).with_columns(
        pl.col("margin").abs().alias("abs_margin")
    )
    if scored.is_empty():
        return []
    scored = scored.sort("abs_margin")
    edges = np.array_split(np.arange(scored.height), min(bins, scored.height))
    rows = []
    for b, idx in enumerate(edges):
        part = scored[int(idx[0]) : int(idx[-1]) + 1]
        agree, disagree = int((part["verdict"] == "A").sum()), int((part["verdict"] == "B").sum())
        rows.append(
            {
                "bin": b,
                "margin_low": float(part["abs_margin"].min()),
                "margin_high": float(part["abs_margin"].max()),
                "n": part.height,
                "n_agree": agree,
                "n_disagree": disagree,
                "n_tie": int((part["verdict"] == "tie").sum()),
                "n_invalid": 0,
                "accuracy": agree / (agree + disagree) if agree + disagree else None,
            }
        )
    return rows


def agreement(
    labels: pl.DataFrame | pa.Table, pairs: pl.DataFrame | pa.Table, *, resamples: int = 1000, bins: int = 5, seed: int = 0
) -> pa.Table:
    """The agreement table (``schemas/agreement.yaml``) for ``labels`` against the human
    labels of ``pairs`` (columns pair_id, label_source, source_dataset). Pairs without a
    human label are ignored; a labeler with no human-labelled pair gets no rows."""
    labels = labels if isinstance(labels, pl.DataFrame) else pl.from_arrow(labels)
    pairs = pairs if isinstance(pairs, pl.DataFrame) else pl.from_arrow(pairs)
    labels = labels.select(AGREEMENT_LABEL_COLUMNS)
    labels = pl.concat([labels, ensemble_means(labels)], how="vertical_relaxed")
    human = pairs.filter(pl.col("label_source") == "human").select("pair_id", "source_dataset").unique("pair_id")
    joined = labels.join(human, on="pair_id", how="inner")
    rng = np.random.default_rng(seed)
    rows: list[dict] = []
    for (labeler,), part in sorted(joined.group_by(["labeler"]), key=lambda kv: str(kv[0][0])):
        base = {"labeler": labeler, "labeler_group": part["labeler_group"][0], "kind": part["kind"][0]}
        sources = sorted(part["source_dataset"].unique().to_list())
        scopes = [("*", part)] + ([(s, part.filter(pl.col("source_dataset") == s)) for s in sources] if len(sources) > 1 else [])
        for source, df in scopes:
            rows.append(
                {**base, "source_dataset": source, "bin": -1, "margin_low": None, "margin_high": None, **_summary(df, resamples, rng)}
            )
            for cal in _calibration(df, bins):
                rows.append({**base, "source_dataset": source, **cal})
    return pa.Table.from_pylist(rows, schema=arrow_schema("agreement"))


def summary_rows(table: pa.Table) -> list[dict]:
    """The per-labeler summary rows over all sources, for reports and the CLI."""
    df = pl.from_arrow(table)
    if df.is_empty():
        return []
    return df.filter((pl.col("bin") == -1) & (pl.col("source_dataset") == "*")).to_dicts()


def calibration_rows(table: pa.Table) -> list[dict]:
    df = pl.from_arrow(table)
    if df.is_empty():
        return []
    return df.filter((pl.col("bin") >= 0) & (pl.col("source_dataset") == "*")).sort(["labeler", "bin"]).to_dicts()


# --------------------------------------------------------------------------- for the report


def comparable_labels(labels: pl.DataFrame) -> pl.DataFrame:
    """One labeler per ensemble (its ``GROUP/mean``) plus every single labeler."""
    labels = labels.select(AGREEMENT_LABEL_COLUMNS)
    means = ensemble_means(labels)
    grouped = means["labeler_group"].unique().to_list()
    singles = labels.filter(~pl.col("labeler_group").is_in(grouped)) if grouped else labels
    return pl.concat([singles, means], how="vertical_relaxed")


def pairwise_agreement(labels: pl.DataFrame) -> list[dict[str, Any]]:
    """For every two labelers, over the pairs both decided (verdict A or B): how often they
    give the same verdict, and Cohen's kappa (agreement beyond what their A/B rates give by
    chance; slot A is the human-chosen response, so raw agreement alone is flattered when both
    mostly say A)."""
    df = comparable_labels(labels).filter(pl.col("verdict").is_in(["A", "B"]))
    if df.is_empty():
        return []
    wide = df.select("pair_id", "labeler", "verdict").pivot(on="labeler", index="pair_id", values="verdict", aggregate_function="first")
    names = sorted(c for c in wide.columns if c != "pair_id")
    rows = []
    for a, b in combinations(names, 2):
        both = wide.select(a, b).drop_nulls()
        n = both.height
        if n == 0:
            rows.append({"a": a, "b": b, "n": 0, "agree": 0, "rate": None, "kappa": None})
            continue
        agree = int((both[a] == both[b]).sum())
        pa_, pb_ = float((both[a] == "A").mean()), float((both[b] == "A").mean())
        expected = pa_ * pb_ + (1 - pa_) * (1 - pb_)
        kappa = (agree / n - expected) / (1 - expected) if expected < 1 else None
        rows.append({"a": a, "b": b, "n": n, "agree": agree, "rate": agree / n, "kappa": kappa})
    return rows


def margin_histograms(labels: pl.DataFrame) -> dict[str, dict[str, Any]]:
    """Per (comparable) labeler: the histogram of its margins (positive: sides with slot A)."""
    df = comparable_labels(labels).filter(pl.col("margin").is_not_null())
    out = {}
    for (name,), part in sorted(df.group_by(["labeler"]), key=lambda kv: str(kv[0][0])):
        h = histogram(part["margin"].to_list())
        if h is not None:
            out[str(name)] = h
    return out
