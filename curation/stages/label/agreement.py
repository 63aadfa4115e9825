"""How well each labeler agrees with the human labels (the RewardBench way, with intervals),
beside the length baseline on the same pairs.

Over the human-labelled pairs a labeler labelled: verdict A agrees with the human (slot A is
the human-chosen response), B disagrees, ties and invalid labels are counted apart, so
accuracy = agree / (agree + disagree) is never flattered by abstentions. The 95% interval is a
percentile bootstrap over the decided pairs: resampling n Bernoulli outcomes with replacement
gives a Binomial(n, p_hat) count, drawn directly. Fewer than ``MIN_DECIDED`` decided pairs get
no accuracy and no interval: a judge that decided 1 of 30 pairs is "1 decided", never "100%".

The length confound: on some human-labelled sets "the longer response wins" agrees with people
more often than a small model does. Every row therefore carries ``length_accuracy``, that
baseline on the very pairs of the row (pairs of equal length excluded), and each summary row
``length_correlation``: Spearman's rank correlation of the labeler's margin with
log(len_chosen / len_rejected). The length-controlled rows (``bin_by = 'length'``) bin the pairs
by |log length ratio|: a labeler that only tracks length shines in the lopsided bins and drops
to chance where the lengths are alike. The calibration rows (``bin_by = 'margin'``) bin
|margin| by quantiles: a useful labeler agrees more often when its margin is larger.

Judges also get ``position_bias``: the share of their non-tie answers that picked the response
shown first (0.5 = none), from the ``first_slot`` / ``slot_picks`` counts each pairwise row records.

Ensembles (several members in one ``labeler_group``) also get a ``GROUP/mean`` labeler: the
mean of the members' margins per pair, the quantity the voting filter uses. Scopes: all
sources (``source_dataset = '*'``), each source when there are several, and each value of the
metadata fields named in ``by`` (``breakdown`` / ``breakdown_value``).
"""

from __future__ import annotations

from collections.abc import Sequence
from itertools import combinations
from typing import Any

import numpy as np
import polars as pl
import pyarrow as pa

from curation.histograms import histogram
from curation.messages import message_chars
from schemas import arrow_schema

# The labels columns agreement reads: fewer than the filter steps' ``STEP_LABEL_COLUMNS``, no scores.
AGREEMENT_LABEL_COLUMNS = ["pair_id", "labeler", "labeler_group", "kind", "margin", "verdict", "consistent"]
POSITION_COLUMNS = ["first_slot", "slot_picks"]  # from a pairwise judge's details (null for other rows)
MIN_DECIDED = 10  # fewer decided pairs: counts only, no accuracy or interval


def position_counts(details: pl.Expr) -> list[pl.Expr]:
    """``first_slot`` and ``slot_picks`` read from a labels ``details`` JSON column."""
    return [details.str.json_path_match(f"$.{name}").cast(pl.Float64).alias(name) for name in POSITION_COLUMNS]


def read_labels(path: str) -> pl.DataFrame:
    """The labels columns agreement needs, the position counts pulled out of ``details`` by a scan."""
    return pl.scan_parquet(path).select(*AGREEMENT_LABEL_COLUMNS, *position_counts(pl.col("details"))).collect()


def with_lengths(pairs: pl.DataFrame) -> pl.DataFrame:
    """``len_chosen`` / ``len_rejected`` (characters) from the messages, unless already there."""
    if "len_chosen" in pairs.columns or "chosen" not in pairs.columns:
        return pairs
    return pairs.with_columns(message_chars("chosen").alias("len_chosen"), message_chars("rejected").alias("len_rejected")).with_columns(
        pl.col("len_chosen", "len_rejected").cast(pl.Float64)
    )


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
    if decided < MIN_DECIDED or resamples == 0:
        return None, None
    draws = rng.binomial(decided, agree / decided, size=resamples) / decided
    low, high = np.quantile(draws, [0.025, 0.975])
    return float(low), float(high)


def _rate(hits: int, total: int) -> float | None:
    return hits / total if total >= MIN_DECIDED else None


def _length_baseline(df: pl.DataFrame) -> float | None:
    """ "The longer response wins" on these pairs (equal lengths excluded)."""
    if "len_chosen" not in df.columns:
        return None
    longer = int((df["len_chosen"] > df["len_rejected"]).sum())
    shorter = int((df["len_chosen"] < df["len_rejected"]).sum())
    return _rate(longer, longer + shorter)


def _spearman(x: np.ndarray, y: np.ndarray) -> float | None:
    if len(x) < MIN_DECIDED:
        return None
    rx, ry = pl.Series(x).rank("average").to_numpy(), pl.Series(y).rank("average").to_numpy()
    if rx.std() == 0 or ry.std() == 0:
        return None
    return float(np.corrcoef(rx, ry)[0, 1])


def _summary(df: pl.DataFrame, resamples: int, rng: np.random.Generator) -> dict:
    n = df.height
    counts = {v: int((df["verdict"] == v).sum()) for v in ("A", "B", "tie", "invalid")}
    decided = counts["A"] + counts["B"]
    low, high = _bootstrap(counts["A"], decided, resamples, rng)
    judged = df.filter(pl.col("consistent").is_not_null())["consistent"]
    row = {
        "n": n,
        "n_decided": decided,
        "n_agree": counts["A"],
        "n_disagree": counts["B"],
        "n_tie": counts["tie"],
        "n_invalid": counts["invalid"],
        "accuracy": _rate(counts["A"], decided),
        "ci_low": low,
        "ci_high": high,
        "tie_rate": counts["tie"] / n if n else None,
        "invalid_rate": counts["invalid"] / n if n else None,
        "consistency_rate": float(judged.mean()) if judged.len() else None,
        "length_accuracy": _length_baseline(df),
        "length_correlation": None,
        "position_bias": None,
    }
    if "len_chosen" in df.columns:
        scored = df.filter(pl.col("margin").is_not_null() & pl.col("margin").is_finite())
        ratio = np.log((scored["len_chosen"].to_numpy() + 1) / (scored["len_rejected"].to_numpy() + 1))
        row["length_correlation"] = _spearman(scored["margin"].to_numpy(), ratio)
    if "slot_picks" in df.columns:
        picks = df["slot_picks"].drop_nulls().sum()
        if picks:
            row["position_bias"] = float(df["first_slot"].drop_nulls().sum() / picks)
    return row


def _bins(df: pl.DataFrame, by: str, bins: int) -> list[dict]:
    """Quantile bins of ``by`` (an absolute value column) over the valid labels: counts, accuracy
    and the length baseline in each."""
    scored = df.filter(pl.col(by).is_not_null() & pl.col("verdict").is_in(["A", "B", "tie"]))
    if scored.is_empty():
        return []
    scored = scored.sort(by)
    rows = []
    for b, idx in enumerate(np.array_split(np.arange(scored.height), min(bins, scored.height))):
        part = scored[int(idx[0]) : int(idx[-1]) + 1]
        agree, disagree = int((part["verdict"] == "A").sum()), int((part["verdict"] == "B").sum())
        low, high = float(part[by].min()), float(part[by].max())
        rows.append(
            {
                "bin_by": "margin" if by == "_abs_margin" else "length",
                "bin": b,
                "margin_low": low if by == "_abs_margin" else None,
                "margin_high": high if by == "_abs_margin" else None,
                "log_ratio_low": low if by == "_abs_log_ratio" else None,
                "log_ratio_high": high if by == "_abs_log_ratio" else None,
                "n": part.height,
                "n_decided": agree + disagree,
                "n_agree": agree,
                "n_disagree": disagree,
                "n_tie": int((part["verdict"] == "tie").sum()),
                "n_invalid": 0,
                "accuracy": _rate(agree, agree + disagree),
                "length_accuracy": _length_baseline(part),
            }
        )
    return rows


def _scopes(part: pl.DataFrame, by: Sequence[str]) -> list[tuple[dict, pl.DataFrame]]:
    """(scope columns, rows): all sources, each source when several, each value of each ``by`` field."""
    everything = {"source_dataset": "*", "breakdown": None, "breakdown_value": None}
    scopes = [(everything, part)]
    sources = sorted(part["source_dataset"].unique().to_list())
    if len(sources) > 1:
        scopes += [({**everything, "source_dataset": s}, part.filter(pl.col("source_dataset") == s)) for s in sources]
    for field in by:
        column = f"_by_{field}"
        if column not in part.columns:
            continue
        for value in sorted(part[column].drop_nulls().unique().to_list()):
            scopes.append(({**everything, "breakdown": field, "breakdown_value": value}, part.filter(pl.col(column) == value)))
    return scopes


def _metadata_fields(pairs: pl.DataFrame, by: Sequence[str]) -> list[pl.Expr]:
    if not by or "metadata" not in pairs.columns:
        return []
    return [pl.col("metadata").str.json_path_match(f"$['{field}']").alias(f"_by_{field}") for field in by]


def agreement(
    labels: pl.DataFrame | pa.Table,
    pairs: pl.DataFrame | pa.Table,
    *,
    resamples: int = 1000,
    bins: int = 5,
    seed: int = 0,
    by: Sequence[str] = (),
) -> pa.Table:
    """The agreement table (``schemas/agreement.yaml``) for ``labels`` against the human
    labels of ``pairs`` (columns pair_id, label_source, source_dataset; the responses'
    lengths come from ``chosen``/``rejected`` or ``len_chosen``/``len_rejected``; ``metadata``
    for the ``by`` breakdowns). Pairs without a human label are ignored; a labeler with no
    human-labelled pair gets no rows."""
    labels = labels if isinstance(labels, pl.DataFrame) else pl.from_arrow(labels)
    pairs = with_lengths(pairs if isinstance(pairs, pl.DataFrame) else pl.from_arrow(pairs))
    if "details" in labels.columns and "first_slot" not in labels.columns:
        labels = labels.with_columns(position_counts(pl.col("details").cast(pl.String)))  # all-null rows read as Null
    labels = labels.select([c for c in (*AGREEMENT_LABEL_COLUMNS, *POSITION_COLUMNS) if c in labels.columns])
    labels = pl.concat([labels, ensemble_means(labels)], how="diagonal_relaxed")
    extra = [c for c in ("len_chosen", "len_rejected") if c in pairs.columns]
    human = (
        pairs.filter(pl.col("label_source") == "human")
        .select("pair_id", "source_dataset", *extra, *_metadata_fields(pairs, by))
        .unique("pair_id")
    )
    joined = labels.join(human, on="pair_id", how="inner").with_columns(pl.col("margin").abs().alias("_abs_margin"))
    if extra:
        joined = joined.with_columns(((pl.col("len_chosen") + 1) / (pl.col("len_rejected") + 1)).log().abs().alias("_abs_log_ratio"))
    rng = np.random.default_rng(seed)
    rows: list[dict] = []
    for (labeler,), part in sorted(joined.group_by(["labeler"]), key=lambda kv: str(kv[0][0])):
        base = {"labeler": labeler, "labeler_group": part["labeler_group"][0], "kind": part["kind"][0]}
        for scope, df in _scopes(part, by):
            rows.append({**base, **scope, "bin_by": None, "bin": -1, **_summary(df, resamples, rng)})
            if scope["breakdown"] is not None:
                continue  # a breakdown gets its summary row only
            for binned in _bins(df, "_abs_margin", bins) + (_bins(df, "_abs_log_ratio", bins) if extra else []):
                rows.append({**base, **scope, **binned})
    return pa.Table.from_pylist(rows, schema=arrow_schema("agreement"))


def _overall() -> pl.Expr:
    return (pl.col("source_dataset") == "*") & pl.col("breakdown").is_null()


def summary_rows(table: pa.Table) -> list[dict]:
    """The per-labeler summary rows over all sources, for reports and the CLI."""
    df = pl.from_arrow(table)
    if df.is_empty():
        return []
    return df.filter((pl.col("bin") == -1) & _overall()).to_dicts()


def calibration_rows(table: pa.Table, bin_by: str = "margin") -> list[dict]:
    """The binned rows over all sources: by |margin| (calibration) or by |log length ratio|."""
    df = pl.from_arrow(table)
    if df.is_empty():
        return []
    return df.filter((pl.col("bin") >= 0) & (pl.col("bin_by") == bin_by) & _overall()).sort(["labeler", "bin"]).to_dicts()


def breakdown_rows(table: pa.Table) -> list[dict]:
    """The summary rows per source (when several) and per value of each ``by`` metadata field."""
    df = pl.from_arrow(table)
    if df.is_empty():
        return []
    return (
        df.filter((pl.col("bin") == -1) & ~_overall())
        .sort(["labeler", "breakdown", "breakdown_value", "source_dataset"], nulls_last=False)
        .to_dicts()
    )


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
