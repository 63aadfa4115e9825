"""The margin and voting filter steps on real margins: the cross-fitted Bradley-Terry ensemble
(10 members, so 5 held-out votes per pair) labels the first 600 usable HH-RLHF pairs once for the
module; every test reads those labels. Expected values are recomputed here from the label rows
with plain Python, not read from the steps.
"""

from __future__ import annotations

import math
from collections import defaultdict
from pathlib import Path

import numpy as np
import polars as pl
import pyarrow as pa
import pytest

from curation.models import ModelBackend, build_backend
from curation.models.memo import MemoEmbedder
from curation.records import response_text
from curation.stages.filter.base import STEP_LABEL_COLUMNS, FramePairs, StepContext, StepResult
from curation.stages.filter.config import MarginStep, VotingStep
from curation.stages.filter.margin import run as margin_run
from curation.stages.filter.voting import run as voting_run
from curation.stages.label.base import BackendPool
from curation.stages.label.bt_ensemble import BTEnsemble
from curation.stages.label.config import BTEnsembleConfig
from tests.helpers import LABEL_PAIRS_SCHEMA, first_hh_pairs, labeler_pair
from tests.stages.label.test_bt_ensemble import MINILM

PAIRS, K, SWAPPED = 600, 10, 6
VOTES = K - math.ceil(K / 2)  # held-out members per human pair
CTX = StepContext()


@pytest.fixture(scope="module")
def embedder():
    real = build_backend(MINILM)
    yield MemoEmbedder(real)
    real.close()


def label(embedder: ModelBackend, rows: list[dict]) -> pl.DataFrame:
    labeler = BTEnsemble(BTEnsembleConfig(name="bt", embedder=MINILM, members=K), BackendPool(".", build=lambda c, root: embedder))
    return pl.from_arrow(labeler.label(pa.Table.from_pylist(rows, schema=LABEL_PAIRS_SCHEMA))).select(STEP_LABEL_COLUMNS)


@pytest.fixture(scope="module")
def rows(hh_path: Path) -> list[dict]:
    return first_hh_pairs(hh_path, PAIRS, lambda d: response_text(d.chosen) != response_text(d.rejected))


@pytest.fixture(scope="module")
def labels(embedder: ModelBackend, rows: list[dict]) -> pl.DataFrame:
    return label(embedder, rows)


def pairs_of(rows: list[dict], sources: list[str] | None = None) -> FramePairs:
    return FramePairs(
        pl.DataFrame({"pair_id": [r["pair_id"] for r in rows], "source_dataset": sources or [r["source_dataset"] for r in rows]})
    )


def by_pair(result: StepResult) -> dict[str, dict]:
    return {r["pair_id"]: r for r in result.decisions.to_dicts()}


def voter_means(labels: pl.DataFrame, standardise: bool = True) -> dict[str, float]:
    """mu per pair, recomputed: each voter's margins over its population std, then the mean."""
    votes: dict[str, list[tuple[str, float]]] = defaultdict(list)
    for r in labels.iter_rows(named=True):
        votes[r["labeler"]].append((r["pair_id"], r["margin"]))
    per_pair: dict[str, list[float]] = defaultdict(list)
    for rows in votes.values():
        scale = float(np.std([m for _, m in rows])) if standardise else 1.0
        for pid, m in rows:
            per_pair[pid].append(m / scale)
    return {pid: float(np.mean(ms)) for pid, ms in per_pair.items()}


# --------------------------------------------------------------------------- voting on real margins


def test_swapped_pairs_the_ensemble_was_sure_of_come_out_flipped(embedder: ModelBackend, rows: list[dict], labels: pl.DataFrame) -> None:
    before = voting_run(VotingStep(labelers=["bt"]), pairs_of(rows), labels, CTX)
    decided = by_pair(before)
    unanimous = {pid for pid, ms in labels.group_by("pair_id").agg(pl.col("margin")).iter_rows() if min(ms) > 0}
    sure = sorted(unanimous, key=lambda pid: -decided[pid]["strength_mean"])[:SWAPPED]
    assert all(decided[pid]["decision"] == "kept" for pid in sure)

    swapped_rows = [labeler_pair(r["prompt"], r["rejected"], r["chosen"]) if r["pair_id"] in sure else r for r in rows]
    new_ids = {s["pair_id"] for s, r in zip(swapped_rows, rows) if r["pair_id"] in sure}
    relabelled = label(embedder, swapped_rows)
    for rule in (VotingStep(labelers=["bt"]), VotingStep(labelers=["bt"], rule="confidence")):
        after = by_pair(voting_run(rule, pairs_of(swapped_rows), relabelled, CTX))
        assert [(after[pid]["decision"], after[pid]["reason"]) for pid in new_ids] == [("flipped", "ensemble_disagrees")] * SWAPPED
        # every vote now disagrees with the swapped label: the members scoring a pair are those not
        # trained on its prompt's fold, so they barely moved
        assert all(after[pid]["strength_mean"] < 0 and after[pid]["votes"] == VOTES for pid in new_ids)


def test_quantile_bands_follow_the_paper(rows: list[dict], labels: pl.DataFrame) -> None:
    result = voting_run(VotingStep(labelers=["bt"]), pairs_of(rows), labels, CTX)
    result.check("voting")
    mu = voter_means(labels)
    assert len(mu) == PAIRS
    order = sorted(mu, key=lambda pid: mu[pid])
    flip_band, ambiguous_band = order[: PAIRS // 5], order[PAIRS // 5 : 2 * PAIRS // 5]  # 20 %, then up to 40 %
    expected = {pid: ("flipped", "ensemble_disagrees") for pid in flip_band if mu[pid] < 0}
    expected |= {pid: ("filtered", "ambiguous_strength") for pid in [*flip_band, *ambiguous_band] if pid not in expected}
    decided = by_pair(result)
    assert {pid: (r["decision"], r["reason"]) for pid, r in decided.items() if r["decision"] != "kept"} == expected
    assert sum(r["decision"] != "kept" for r in decided.values()) == 2 * PAIRS // 5
    assert all(decided[pid]["strength_mean"] == pytest.approx(mu[pid]) for pid in mu)
    assert {r["votes"] for r in decided.values()} == {VOTES}
    summary = result.summary
    assert (summary["flipped"], summary["filtered"], summary["kept"]) == (
        len([v for v in expected.values() if v[0] == "flipped"]),
        len([v for v in expected.values() if v[0] == "filtered"]),
        PAIRS - len(expected),
    )
    assert summary["cutoffs"]["flip_band_max_mu"] == pytest.approx(mu[flip_band[-1]])
    # the paper's check: the voters' majority agrees with the label in the strong band, not in the weak one
    assert summary["agreement"]["strongest"] == 1.0 and summary["agreement"]["weakest"] == 0.0

    kept_ambiguous = by_pair(voting_run(VotingStep(labelers=["bt"], ambiguous="keep"), pairs_of(rows), labels, CTX))
    assert {pid for pid, r in kept_ambiguous.items() if r["decision"] == "flipped"} == {
        pid for pid, v in expected.items() if v[0] == "flipped"
    }
    assert {r["decision"] for r in kept_ambiguous.values()} == {"kept", "flipped"}


def test_pair_values_are_oriented_as_published(rows: list[dict], labels: pl.DataFrame) -> None:
    result = voting_run(VotingStep(labelers=["bt"], standardise=False), pairs_of(rows), labels, CTX)
    raw = voter_means(labels, standardise=False)
    decided = by_pair(result)
    values = {r["pair_id"]: r for r in result.pair_values.to_dicts()}
    assert set(values) == set(decided) == set(raw)
    flipped = [pid for pid, r in decided.items() if r["decision"] == "flipped"]
    assert flipped
    for pid, r in decided.items():
        sign = -1 if r["decision"] == "flipped" else 1
        assert values[pid]["preference_strength"] == pytest.approx(sign * raw[pid])
        assert values[pid]["preference_strength_std"] == r["strength_std"] >= 0
    assert all(values[pid]["preference_strength"] > 0 for pid in flipped)  # the voters prefer what becomes chosen


def test_too_few_votes_gets_no_decision(rows: list[dict], labels: pl.DataFrame) -> None:
    result = voting_run(VotingStep(labelers=["bt"], min_votes=VOTES + 1), pairs_of(rows), labels, CTX)
    assert result.decisions.height == 0 and result.pair_values.height == 0 and result.summary["too_few_votes"] == PAIRS
    one_member = voting_run(VotingStep(labelers=["bt/m0"], min_votes=1), pairs_of(rows), labels, CTX)
    assert set(one_member.decisions["votes"].to_list()) == {1.0}
    assert one_member.decisions.height == labels.filter(pl.col("labeler") == "bt/m0").height < PAIRS


# --------------------------------------------------------------------------- margin on real margins


def mean_margins(labels: pl.DataFrame) -> dict[str, float]:
    return voter_means(labels, standardise=False)


def test_margin_absolute_and_quantile(rows: list[dict], labels: pl.DataFrame) -> None:
    margin = mean_margins(labels)
    absolute = margin_run(MarginStep(labelers=["bt"], min_margin=0.0), pairs_of(rows), labels, CTX)
    absolute.check("margin")
    assert {pid for pid, r in by_pair(absolute).items() if r["decision"] == "filtered"} == {pid for pid, m in margin.items() if m < 0}
    assert {r["reason"] for r in by_pair(absolute).values()} == {None, "margin_below_threshold"}

    quantile = margin_run(MarginStep(labelers=["bt"], quantile=0.25), pairs_of(rows), labels, CTX)
    ranked = sorted(margin, key=lambda pid: margin[pid])
    decided = by_pair(quantile)
    assert {pid for pid, r in decided.items() if r["decision"] == "filtered"} == set(ranked[: PAIRS // 4])
    assert decided[ranked[0]]["threshold"] == pytest.approx(margin[ranked[PAIRS // 4]])
    source = quantile.summary["sources"]["hh-rlhf-harmless-base"]
    assert (source["pairs"], source["kept"], source["margin_below_threshold"]) == (PAIRS, PAIRS - PAIRS // 4, PAIRS // 4)

    one_member = margin_run(MarginStep(labelers=["bt/m3"], min_margin=0.0), pairs_of(rows), labels, CTX)
    m3 = {r["pair_id"]: r["margin"] for r in labels.filter(pl.col("labeler") == "bt/m3").iter_rows(named=True)}
    assert {pid: r["margin"] for pid, r in by_pair(one_member).items() if r["margin"] is not None} == pytest.approx(m3)


def test_margin_thresholds_per_source(rows: list[dict], labels: pl.DataFrame) -> None:
    sources = ["a"] * (PAIRS // 2) + ["b"] * (PAIRS - PAIRS // 2)
    margin = mean_margins(labels)
    src = {r["pair_id"]: s for r, s in zip(rows, sources)}
    step = MarginStep(labelers=["bt"], quantile=0.2, per_source={"b": 0.5})
    decided = by_pair(margin_run(step, pairs_of(rows, sources), labels, CTX))
    for name, fraction in (("a", 0.2), ("b", 0.5)):
        mine = sorted((pid for pid in margin if src[pid] == name), key=lambda pid: margin[pid])
        assert {pid for pid in mine if decided[pid]["decision"] == "filtered"} == set(mine[: math.floor(fraction * len(mine))])

    step = MarginStep(labelers=["bt"], min_margin=0.0, per_source={"b": 0.5}, sources=["b"])
    result = margin_run(step, pairs_of(rows, sources), labels, CTX)
    assert set(result.summary["sources"]) == {"b"} and result.decisions.height == PAIRS - PAIRS // 2
    assert {pid for pid, r in by_pair(result).items() if r["decision"] == "filtered"} == {
        pid for pid, m in margin.items() if src[pid] == "b" and m < 0.5
    }


def test_pairs_without_a_margin_are_kept_or_filtered(rows: list[dict], labels: pl.DataFrame) -> None:
    unlabelled = {r["pair_id"] for r in rows[:10]}
    some = labels.filter(~pl.col("pair_id").is_in(list(unlabelled)))
    keep = by_pair(margin_run(MarginStep(labelers=["bt"], quantile=0.1), pairs_of(rows), some, CTX))
    assert len(keep) == PAIRS
    assert all(keep[pid]["decision"] == "kept" and keep[pid]["margin"] is None for pid in unlabelled)
    assert sum(r["decision"] == "filtered" for r in keep.values()) == math.floor(0.1 * (PAIRS - 10))
    result = margin_run(MarginStep(labelers=["bt"], quantile=0.1, missing="filter"), pairs_of(rows), some, CTX)
    drop = by_pair(result)
    assert {pid for pid, r in drop.items() if r["reason"] == "no_margin"} == unlabelled
    assert result.summary["sources"]["hh-rlhf-harmless-base"]["no_margin"] == 10
    assert margin_run(MarginStep(labelers=["nobody"], min_margin=0), pairs_of(rows), labels, CTX).summary["kept"] == PAIRS


# --------------------------------------------------------------------------- pure rules on hand frames


def hand_labels(margins: dict[str, dict[str, float]]) -> pl.DataFrame:
    """labels rows from {voter: {pair_id: margin}}, voters in group "g"."""
    rows = [{"pair_id": pid, "labeler": voter, "labeler_group": "g", "margin": m} for voter, ms in margins.items() for pid, m in ms.items()]
    return pl.DataFrame(rows).with_columns(
        kind=pl.lit("x"), score_a=pl.lit(None, pl.Float64), score_b=pl.lit(None, pl.Float64), verdict=pl.lit("A"),
        confidence=pl.lit(None, pl.Float64), consistent=pl.lit(None, pl.Boolean),
    )  # fmt: skip


def hand_pairs(ids: list[str]) -> FramePairs:
    return FramePairs(pl.DataFrame({"pair_id": ids, "source_dataset": ["s"] * len(ids)}))


def test_standardising_stops_a_loud_voter_outvoting_the_others() -> None:
    quiet = {"p1": 1.0, "p2": -1.0, "p3": 1.0, "p4": -1.0}
    loud = {"p1": -100.0, "p2": 100.0, "p3": 300.0, "p4": -300.0}  # population std 100 * sqrt(5)
    labels = hand_labels({"q1": quiet, "q2": quiet, "loud": loud})
    step = VotingStep(labelers=["g"], rule="threshold", flip_below=0.0, ambiguous_within=0.0)
    mean = {pid: r["strength_mean"] for pid, r in by_pair(voting_run(step, hand_pairs(list(quiet)), labels, CTX)).items()}
    assert mean["p1"] == pytest.approx((1 + 1 - 1 / math.sqrt(5)) / 3) and mean["p1"] > 0
    raw = by_pair(voting_run(step.model_copy(update={"standardise": False}), hand_pairs(list(quiet)), labels, CTX))
    assert raw["p1"]["strength_mean"] == pytest.approx(-98 / 3) and raw["p1"]["decision"] == "flipped"


def test_threshold_and_confidence_rules() -> None:
    votes = {
        "v1": {"sure_wrong": -2.0, "split": -2.0, "small": 0.1, "sure_right": 2.0},
        "v2": {"sure_wrong": -2.2, "split": 2.0, "small": -0.1, "sure_right": 2.1},
        "v3": {"sure_wrong": -1.8, "split": -1.7, "small": 0.05, "sure_right": 1.9},
    }
    labels, pairs = hand_labels(votes), hand_pairs(["sure_wrong", "split", "small", "sure_right"])
    threshold = VotingStep(labelers=["g"], standardise=False, rule="threshold", flip_below=-0.5, ambiguous_within=0.3, max_std=1.0)
    decided = {pid: (r["decision"], r["reason"]) for pid, r in by_pair(voting_run(threshold, pairs, labels, CTX)).items()}
    assert decided == {
        "sure_wrong": ("flipped", "ensemble_disagrees"),
        "split": ("filtered", "ambiguous_strength"),  # mean -0.57 but std 1.8 > max_std: no flip
        "small": ("filtered", "ambiguous_strength"),
        "sure_right": ("kept", None),
    }
    confidence = VotingStep(labelers=["g"], standardise=False, rule="confidence", z=1.0)
    decided = {pid: r["decision"] for pid, r in by_pair(voting_run(confidence, pairs, labels, CTX)).items()}
    assert decided == {"sure_wrong": "flipped", "split": "filtered", "small": "filtered", "sure_right": "kept"}


def test_quantile_rule_flips_only_pairs_the_voters_disagree_with() -> None:
    """Hand-built votes where the lowest 20 % holds pairs whose mean margin is >= 0 (all
    voters lean to the label, only less than the rest): they are ambiguous, never flipped."""
    from curation.stages.filter.voting import classify

    mu = np.array([-0.5, 0.0, 0.05, 0.3, 0.4, 0.6, 0.7, 0.8, 0.9, 1.0])
    flipped, ambiguous, _ = classify(
        VotingStep(labelers=["x"], flip_quantile=0.3, ambiguous_quantile=0.4), mu, np.zeros(10), np.full(10, 3)
    )
    assert flipped.tolist() == [True] + [False] * 9  # 0.0 and 0.05 are in the flip band but not against the label
    assert ambiguous.tolist() == [False, True, True, True] + [False] * 6
