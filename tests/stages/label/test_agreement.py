"""The agreement report on real human labels (HH-RLHF), with a transparent heuristic labeler
(longer response wins) whose agreement we can count independently in plain Python."""

from __future__ import annotations

import json
from pathlib import Path

import polars as pl
import pyarrow as pa
import pytest

from curation.run.runner import curate
from curation.stages.label.agreement import agreement, calibration_rows, summary_rows
from curation.stages.label.base import Labeler, pair_views
from curation.store.query import sql_arrow
from tests.helpers import recipe_config


class LongerWins(Labeler):
    """Scores a response by its length in characters: a real (if naive) labeler."""

    kind = "reward_model"

    def label(self, pairs: pa.Table) -> pa.Table:
        rows = [self.row(p.pair_id, float(len(p.response_a)), float(len(p.response_b))) for p in pair_views(pairs)]
        return self.table(rows)


class _Cfg:
    def __init__(self, name: str):
        self.name = name
        self.limit = None

    def model_dump(self, **_: object) -> dict:
        return {"name": self.name, "kind": "length"}


@pytest.fixture(scope="module")
def hh_pairs(tmp_path_factory: pytest.TempPathFactory, hh_path: Path) -> pa.Table:
    tmp = tmp_path_factory.mktemp("agree")
    cfg = recipe_config(tmp, [{"name": "hh", "path": str(hh_path), "adapter": "hh_rlhf", "limit": 400}], dataset="agree")
    curate(cfg)
    return sql_arrow("SELECT pair_id, prompt, chosen, rejected, label_source, source_dataset FROM pairs", cfg.data_root)


def test_accuracy_counts_match_a_plain_count(hh_pairs: pa.Table) -> None:
    labels = LongerWins(_Cfg("longer"), backends=None).label(hh_pairs)
    table = agreement(labels, hh_pairs, resamples=2000, bins=4, seed=1)
    (s,) = summary_rows(table)
    views = pair_views(hh_pairs)
    agree = sum(len(p.response_a) > len(p.response_b) for p in views)
    disagree = sum(len(p.response_a) < len(p.response_b) for p in views)
    ties = sum(len(p.response_a) == len(p.response_b) for p in views)
    assert (s["n"], s["n_agree"], s["n_disagree"], s["n_tie"], s["n_invalid"]) == (len(views), agree, disagree, ties, 0)
    assert s["accuracy"] == pytest.approx(agree / (agree + disagree))
    assert s["ci_low"] < s["accuracy"] < s["ci_high"]
    # A 95% binomial interval at n ~ 400 is about +-5 points wide: not degenerate, not huge.
    assert 0.03 < s["ci_high"] - s["ci_low"] < 0.15
    assert s["consistency_rate"] is None  # not a judge
    cal = calibration_rows(table)
    assert [r["bin"] for r in cal] == [0, 1, 2, 3]
    assert sum(r["n"] for r in cal) == len(views)
    assert all(a["margin_high"] <= b["margin_low"] for a, b in zip(cal, cal[1:]))


def test_only_human_pairs_count_and_invalid_is_apart(hh_pairs: pa.Table) -> None:
    labels = pl.from_arrow(LongerWins(_Cfg("longer"), backends=None).label(hh_pairs))
    # Half the pairs become "unlabeled" (e.g. generated): they must not enter the report.
    pairs = (
        pl.from_arrow(hh_pairs)
        .with_row_index()
        .with_columns(pl.when(pl.col("index") % 2 == 0).then(pl.lit("human")).otherwise(pl.lit("unlabeled")).alias("label_source"))
    )
    # The first 10 labels become invalid (a judge that failed to parse).
    labels = labels.with_row_index().with_columns(
        pl.when(pl.col("index") < 10).then(pl.lit("invalid")).otherwise(pl.col("verdict")).alias("verdict"),
        pl.when(pl.col("index") < 10).then(None).otherwise(pl.col("margin")).alias("margin"),
    )
    (s,) = summary_rows(agreement(labels.drop("index"), pairs.drop("index"), resamples=0))
    human_ids = set(pairs.filter(pl.col("label_source") == "human")["pair_id"])
    assert s["n"] == len(human_ids)
    assert s["n_invalid"] == len(human_ids & set(labels.head(10)["pair_id"]))
    assert s["invalid_rate"] == pytest.approx(s["n_invalid"] / s["n"])
    assert s["ci_low"] is None  # no bootstrap asked for


def test_ensemble_members_get_a_mean_labeler(hh_pairs: pa.Table) -> None:
    one = LongerWins(_Cfg("ens"), backends=None)
    rows = []
    for k, scale in enumerate((1.0, -0.5, 2.0)):  # member 1 disagrees with the others, weakly
        for r in one.label(hh_pairs).to_pylist():
            r["labeler"], r["margin"] = f"ens/m{k}", r["margin"] * scale
            r["verdict"] = "A" if r["margin"] > 0 else "B" if r["margin"] < 0 else "tie"
            rows.append(r)
    table = agreement(pa.Table.from_pylist(rows), hh_pairs, resamples=0)
    by_name = {r["labeler"]: r for r in summary_rows(table)}
    assert set(by_name) == {"ens/m0", "ens/m1", "ens/m2", "ens/mean"}
    # mean margin = (1 - 0.5 + 2)/3 * margin: same sign as member 0.
    assert by_name["ens/mean"]["n_agree"] == by_name["ens/m0"]["n_agree"]
    assert by_name["ens/m1"]["n_agree"] == by_name["ens/m0"]["n_disagree"]


def test_per_source_rows_when_several_sources(hh_pairs: pa.Table) -> None:
    labels = LongerWins(_Cfg("longer"), backends=None).label(hh_pairs)
    pairs = (
        pl.from_arrow(hh_pairs)
        .with_row_index()
        .with_columns(pl.when(pl.col("index") < 100).then(pl.lit("a")).otherwise(pl.lit("b")).alias("source_dataset"))
    )
    df = pl.from_arrow(agreement(labels, pairs.drop("index"), resamples=0))
    summary = df.filter(pl.col("bin") == -1)
    assert sorted(summary["source_dataset"]) == ["*", "a", "b"]
    total = summary.filter(pl.col("source_dataset") == "*")["n_agree"][0]
    assert summary.filter(pl.col("source_dataset") != "*")["n_agree"].sum() == total
    json.dumps(df.to_dicts())  # plain types: goes into summary.json as is
