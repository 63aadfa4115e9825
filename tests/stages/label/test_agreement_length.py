"""The agreement table beside the length baseline, on real HH-RLHF pairs: the baseline on the
same pairs, length-controlled bins, the margin's correlation with length, position bias, the
honesty rule (no accuracy below 10 decided pairs) and breakdowns by a metadata field."""

from __future__ import annotations

import json
import math

import numpy as np
import polars as pl
import pyarrow as pa
import pytest

from curation.records import response_text
from curation.stages.label import build_labeler
from curation.stages.label.agreement import MIN_DECIDED, agreement, breakdown_rows, calibration_rows, summary_rows
from curation.stages.label.base import BackendPool, Labeler, pair_views
from curation.stages.label.config import LengthConfig
from tests.stages.label.test_agreement import _Cfg, hh_pairs  # noqa: F401 - the module fixture

pytestmark = pytest.mark.usefixtures("hh_pairs")


def lengths(pairs: pa.Table) -> list[tuple[int, int]]:
    return [(len(response_text(r["chosen"])), len(response_text(r["rejected"]))) for r in pairs.to_pylist()]


class Hashed(Labeler):
    """A labeler blind to length: its margin is a hash of the pair id (about half right)."""

    kind = "reward_model"

    def label(self, pairs: pa.Table) -> pa.Table:
        return self.table([self.row(p.pair_id, (hash(p.pair_id) % 1000) / 1000, 0.5) for p in pair_views(pairs)])


def length_labeler() -> Labeler:
    return build_labeler(LengthConfig(name="length"), BackendPool("unused"))


def test_length_labeler_is_longer_wins(hh_pairs: pa.Table) -> None:  # noqa: F811
    rows = length_labeler().label(hh_pairs).to_pylist()
    for r, (a, b) in zip(rows, lengths(hh_pairs)):
        assert (r["score_a"], r["score_b"]) == (a, b)
        assert r["verdict"] == ("A" if a > b else "B" if a < b else "tie")
        assert json.loads(r["details"])["log_ratio"] == pytest.approx(math.log((a + 1) / (b + 1)))


def test_length_baseline_on_the_labelers_own_pairs(hh_pairs: pa.Table) -> None:  # noqa: F811
    subset = hh_pairs.slice(0, 150)  # the hashed labeler sees only these; the length labeler all
    labels = pa.concat_tables([Hashed(_Cfg("hashed"), None).label(subset), length_labeler().label(hh_pairs)])
    rows = {r["labeler"]: r for r in summary_rows(agreement(labels, hh_pairs, resamples=0))}

    def longer_wins(table: pa.Table) -> float:
        ls = lengths(table)
        return sum(a > b for a, b in ls) / sum(a != b for a, b in ls)

    assert rows["hashed"]["length_accuracy"] == pytest.approx(longer_wins(subset))
    assert rows["length"]["length_accuracy"] == pytest.approx(longer_wins(hh_pairs))
    assert rows["length"]["accuracy"] == pytest.approx(rows["length"]["length_accuracy"])  # it *is* the baseline
    # the margin's rank correlation with log(len_a / len_b): high for the length labeler (its
    # margin is the difference, not the ratio: 0.93 measured), near 0 for the hashed one
    assert rows["length"]["length_correlation"] > 0.9
    assert abs(rows["hashed"]["length_correlation"]) < 0.25


def test_length_controlled_bins(hh_pairs: pa.Table) -> None:  # noqa: F811
    labels = pa.concat_tables([Hashed(_Cfg("hashed"), None).label(hh_pairs), length_labeler().label(hh_pairs)])
    bins = [r for r in calibration_rows(agreement(labels, hh_pairs, resamples=0, bins=4), "length") if r["labeler"] == "length"]
    assert [b["bin"] for b in bins] == [0, 1, 2, 3] and all(b["bin_by"] == "length" for b in bins)
    assert sum(b["n"] for b in bins) == hh_pairs.num_rows
    assert all(a["log_ratio_high"] <= b["log_ratio_low"] for a, b in zip(bins, bins[1:]))
    for b in bins:  # the length labeler agrees exactly as often as the baseline in every bin
        assert b["accuracy"] == pytest.approx(b["length_accuracy"])
    # recomputed by hand: the pairs whose |log ratio| falls inside the last bin
    ratios = np.array([abs(math.log((a + 1) / (b + 1))) for a, b in lengths(hh_pairs)])
    last = bins[-1]
    inside = (ratios >= last["log_ratio_low"] - 1e-12) & (ratios <= last["log_ratio_high"] + 1e-12)
    assert inside.sum() >= last["n"]


def test_fewer_than_ten_decided_pairs_get_no_accuracy(hh_pairs: pa.Table) -> None:  # noqa: F811
    """A judge that decides 1 of 30 pairs (the rest ties) is "1 decided", never "100%"."""
    labels = pl.from_arrow(length_labeler().label(hh_pairs.slice(0, 30))).with_row_index()
    first_agree = labels.filter(pl.col("verdict") == "A")["index"][0]
    labels = labels.with_columns(pl.when(pl.col("index") == first_agree).then(pl.col("verdict")).otherwise(pl.lit("tie")).alias("verdict"))
    (s,) = summary_rows(agreement(labels.drop("index"), hh_pairs, resamples=500))
    assert (s["n"], s["n_decided"], s["n_agree"], s["n_tie"]) == (30, 1, 1, 29)
    assert s["accuracy"] is None and s["ci_low"] is None and s["ci_high"] is None
    # at exactly MIN_DECIDED decided pairs the accuracy and the interval appear
    ten = pl.from_arrow(length_labeler().label(hh_pairs)).filter(pl.col("verdict").is_in(["A", "B"])).head(MIN_DECIDED)
    (s,) = summary_rows(agreement(ten, hh_pairs, resamples=500))
    assert s["n_decided"] == MIN_DECIDED and s["accuracy"] is not None and s["ci_low"] is not None


def test_position_bias_from_first_slot_counts(hh_pairs: pa.Table) -> None:  # noqa: F811
    labels = pl.from_arrow(Hashed(_Cfg("judge"), None).label(hh_pairs.slice(0, 40))).with_columns(
        kind=pl.lit("judge_pairwise"), first_slot=pl.lit(1.5), slot_picks=pl.lit(2.0)
    )
    (s,) = summary_rows(agreement(labels, hh_pairs, resamples=0))
    assert s["position_bias"] == pytest.approx(0.75)
    (s,) = summary_rows(agreement(labels.drop("first_slot", "slot_picks"), hh_pairs, resamples=0))
    assert s["position_bias"] is None  # not a judge: no position bias


def test_breakdown_by_a_metadata_field(hh_pairs: pa.Table) -> None:  # noqa: F811
    pairs = (
        pl.from_arrow(hh_pairs)
        .with_row_index()
        .with_columns(
            metadata=pl.when(pl.col("index") % 3 == 0).then(pl.lit('{"scenario": "odd"}')).otherwise(pl.lit('{"scenario": "even", "x": 1}'))
        )
    )
    labels = length_labeler().label(hh_pairs)
    table = agreement(labels, pairs.drop("index"), resamples=0, by=["scenario"])
    rows = {r["breakdown_value"]: r for r in breakdown_rows(table) if r["breakdown"] == "scenario"}
    assert set(rows) == {"odd", "even"}
    assert rows["odd"]["n"] + rows["even"]["n"] == hh_pairs.num_rows
    assert rows["odd"]["n"] == pairs.filter(pl.col("index") % 3 == 0).height
    (overall,) = summary_rows(table)  # the breakdown rows do not leak into the overall summary
    assert overall["n"] == hh_pairs.num_rows


def test_length_labeler_counts_tokens(hh_pairs: pa.Table) -> None:  # noqa: F811
    from curation.models.tokenizers import smollm2_tokenizer

    tok = smollm2_tokenizer()
    labeler = build_labeler(LengthConfig(name="tokens", unit="tokens"), BackendPool("unused"))
    rows = labeler.label(hh_pairs.slice(0, 5)).to_pylist()
    for r, view in zip(rows, hh_pairs.slice(0, 5).to_pylist()):
        assert r["score_a"] == len(tok(response_text(view["chosen"]), add_special_tokens=False)["input_ids"])
    assert rows[0]["models"] == ["tokenizer:smollm2"]


def test_unknown_tokenizer_is_a_config_error() -> None:
    from curation.errors import ConfigError
    from curation.stages.label import check_labeler

    with pytest.raises(ConfigError, match="neither 'smollm2' nor a local model folder"):
        check_labeler(LengthConfig(name="t", unit="tokens", tokenizer="/nowhere/model"), "unused")
