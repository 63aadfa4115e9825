"""The position-calibrated pairwise judge: P(A better) averaged over both orders, a tie band,
samples with the entropy of their verdicts, and the first-slot counts behind position bias."""

from __future__ import annotations

import math
from pathlib import Path

import pyarrow as pa
import pytest
from pydantic import ValidationError

from curation.models import BackendConfig, SamplingParams
from curation.records import response_text
from curation.stages.label.config import JudgePairwiseConfig
from curation.stages.label.judge import calibrated_verdict, entropy_bits
from tests.helpers import label_rows
from tests.stages.label.test_judge import FakeJudge, LetterScorer, pairwise, real_pairs, slots, swapped, verdict_json


@pytest.fixture(scope="module")
def pairs(hh_path: Path) -> pa.Table:
    return real_pairs(hh_path, 6)


class OrderLetters(LetterScorer):
    """P("A") = p_first in the chosen-first order and p_second in the swapped one, whatever the texts."""

    def __init__(self, p_first: float, p_second: float, chosen: set[str]):
        super().__init__(0.0, 0.0)
        self.p_first, self.p_second, self.chosen = p_first, p_second, chosen

    def score_logprobs(self, conversations, responses, *, role="assistant"):
        out = []
        for conv, letter in zip(conversations, responses):
            first, _ = slots(conv[-1]["content"])
            p = self.p_first if first in self.chosen else self.p_second
            out.append([math.log(p if letter == "A" else 1 - p)])
        return out


def chosen_texts(pairs: pa.Table) -> set[str]:
    return {response_text(c) for c in pairs.column("chosen").to_pylist()}


def test_same_first_slot_probability_in_both_orders_is_a_tie(pairs: pa.Table) -> None:
    judge = pairwise(OrderLetters(0.8, 0.8, chosen_texts(pairs)), verdict_by="logprobs", mode="calibrated")
    for r in label_rows(judge.label(pairs)):
        assert r["verdict"] == "tie"
        assert r["details"]["p_a_better"] == pytest.approx(0.5)
        assert r["details"]["entropy"] == pytest.approx(1.0)
        assert r["details"]["first_slot"] / r["details"]["slot_picks"] == pytest.approx(0.8)  # the bias, measured


def test_probabilities_that_differ_between_orders_give_real_verdicts(pairs: pa.Table) -> None:
    chosen = chosen_texts(pairs)
    # P("A") 0.9 with chosen first, 0.6 with it second: P(chosen better) = (0.9 + 0.4) / 2 = 0.65
    rows = label_rows(pairwise(OrderLetters(0.9, 0.6, chosen), verdict_by="logprobs", mode="calibrated").label(pairs))
    for r in rows:
        assert r["verdict"] == "A"
        assert r["details"]["p_a_better"] == pytest.approx(0.65)
        assert r["margin"] > 0
    # the same judge under the strict rule: both orders say "A", so every pair is a tie
    strict = label_rows(pairwise(OrderLetters(0.9, 0.6, chosen), verdict_by="logprobs").label(pairs))
    assert {r["verdict"] for r in strict} == {"tie"}
    # and the other way round: the judge prefers the response shown second more when it is the chosen one
    rows = label_rows(pairwise(OrderLetters(0.6, 0.9, chosen), verdict_by="logprobs", mode="calibrated").label(pairs))
    assert {r["verdict"] for r in rows} == {"B"}


def test_tie_band(pairs: pa.Table) -> None:
    chosen = chosen_texts(pairs)
    wide = pairwise(OrderLetters(0.9, 0.6, chosen), verdict_by="logprobs", mode="calibrated", tie_band=0.2)
    assert {r["verdict"] for r in label_rows(wide.label(pairs))} == {"tie"}  # 0.65 is inside 0.5 +- 0.2
    assert calibrated_verdict(0.61, 0.1) == "A" and calibrated_verdict(0.6, 0.1) == "tie" and calibrated_verdict(0.39, 0.1) == "B"


def test_samples_vote_and_record_their_entropy(pairs: pa.Table) -> None:
    """Three samples per order: the judge picks the longer response in 2 of 3 samples of each
    order and the first slot in the third (a seeded bias)."""

    def mostly_longer(user: str, params: SamplingParams, asked: int) -> str:
        a, b = slots(user)
        if params.seed % 1000 == 0 and params.seed >= 2000:  # the third sample: position bias
            return verdict_json("A")
        return verdict_json("A" if len(a) > len(b) else "B")

    fake = FakeJudge(mostly_longer)
    judge = pairwise(fake, mode="calibrated", samples=3, temperature=0.7)
    rows = label_rows(judge.label(pairs))
    assert len(fake.calls) == 3 and {p.seed for _, p in fake.calls} == {0, 1000, 2000}
    for view, r in zip(pairs.to_pylist(), rows):
        longer_is_chosen = len(response_text(view["chosen"])) > len(response_text(view["rejected"]))
        assert len(r["details"]["votes_ab"]) == len(r["details"]["votes_ba"]) == 3
        # five of the six votes go to the longer response: the biased sample of one order agrees with it
        expected_p = 5 / 6 if longer_is_chosen else 1 / 6
        assert r["details"]["p_a_better"] == pytest.approx(expected_p)
        assert r["verdict"] == ("A" if longer_is_chosen else "B")
        assert r["details"]["entropy"] == pytest.approx(entropy_bits([5, 1]))
        # the judge's own answers: 3 "A" in the order where the longer one comes first, 1 in the other
        assert (r["details"]["first_slot"], r["details"]["slot_picks"]) == (4, 6)
    # a judge whose samples agree has zero entropy
    steady = label_rows(pairwise(FakeJudge(lambda u, p, n: verdict_json("B")), mode="calibrated", samples=2, temperature=0.5).label(pairs))
    assert {r["verdict"] for r in steady} == {"tie"}  # always "B" = always the second slot: pure bias
    assert {r["details"]["entropy"] for r in steady} == {1.0}  # two wins and two losses for slot A: one bit


def test_an_order_without_a_parsed_sample_is_invalid(pairs: pa.Table) -> None:
    def garbage_when_swapped(user: str, params: SamplingParams, asked: int) -> str:
        a, _ = slots(user)
        return "no idea" if a in rejected else verdict_json("A")

    rejected = {response_text(r) for r in pairs.column("rejected").to_pylist()}
    rows = label_rows(pairwise(FakeJudge(garbage_when_swapped), mode="calibrated", samples=2, temperature=0.5, max_retries=0).label(pairs))
    for r in rows:
        assert r["verdict"] == "invalid" and "order B/A: no parsed verdict in 2 samples" in r["error"]


def test_calibrated_and_strict_agree_where_the_judge_is_consistent(pairs: pa.Table) -> None:
    def longer(user: str, params: SamplingParams, asked: int) -> str:
        a, b = slots(user)
        return verdict_json("A" if len(a) > len(b) else "B")

    both = pa.concat_tables([pairs, swapped(pairs)])
    strict = label_rows(pairwise(FakeJudge(longer)).label(both))
    calibrated = label_rows(pairwise(FakeJudge(longer), mode="calibrated").label(both))
    assert [r["verdict"] for r in strict] == [r["verdict"] for r in calibrated]
    assert all(r["details"]["first_slot"] == 1 for r in strict)  # one of its two answers is the first slot


@pytest.mark.parametrize(
    "extra, message",
    [
        ({"samples": 3, "temperature": 0.7}, "needs mode: calibrated"),
        ({"samples": 3, "mode": "calibrated"}, "needs temperature > 0"),
        ({"samples": 3, "mode": "calibrated", "temperature": 0.7, "verdict_by": "logprobs"}, "needs verdict_by: reply"),
        ({"tie_band": 0.5}, "tie_band"),
    ],
)
def test_config_errors(extra: dict, message: str) -> None:
    with pytest.raises(ValidationError, match=message):
        JudgePairwiseConfig(name="j", backend=BackendConfig(backend="openai", model="m"), **extra)


def test_the_router_sends_the_judges_least_certain_pairs_first(pairs: pa.Table, tmp_path: Path) -> None:
    """Entropy as a routing feature: a judge sure about half the pairs (every sample agrees) and
    torn on the other half (its samples split) routes the torn half first; the labels are read
    the way the filter stage reads them (``details`` -> ``entropy``)."""
    import polars as pl
    import pyarrow.parquet as pq

    from curation.stages.filter.base import STEP_PAIR_COLUMNS, FramePairs, StepContext
    from curation.stages.filter.config import RouteStep
    from curation.stages.filter.route import run
    from curation.stages.filter.route_features import features
    from curation.stages.filter.stage import read_labels

    torn_ids = set(pairs.column("pair_id").to_pylist()[::2])
    torn_texts = {response_text(r["chosen"]) for r in pairs.to_pylist() if r["pair_id"] in torn_ids}

    def judge(user: str, params: SamplingParams, asked: int) -> str:
        a, b = slots(user)
        slot_of_chosen = "A" if a in chosen else "B"
        if a in torn_texts or b in torn_texts:  # torn: the samples alternate
            return verdict_json(slot_of_chosen if (params.seed // 1000) % 2 == 0 else SWAPPED[slot_of_chosen])
        return verdict_json(slot_of_chosen)

    SWAPPED = {"A": "B", "B": "A"}
    chosen = chosen_texts(pairs)
    labels = pairwise(FakeJudge(judge), mode="calibrated", samples=4, temperature=0.7).label(pairs)
    path = tmp_path / "labels.parquet"
    pq.write_table(labels, path)
    read = read_labels(str(path))
    assert read.filter(pl.col("pair_id").is_in(list(torn_ids)))["entropy"].min() > 0.9
    assert read.filter(~pl.col("pair_id").is_in(list(torn_ids)))["entropy"].max() == 0.0

    frame = (
        pl.from_arrow(pairs)
        .with_columns(
            prompt_id=pl.col("pair_id"),
            chosen_score=pl.lit(None, pl.Float64),
            rejected_score=pl.lit(None, pl.Float64),
            label_source=pl.lit("ai"),
            label_model=pl.lit("judge"),
            metadata=pl.lit(None, pl.String),
        )
        .select(STEP_PAIR_COLUMNS)
    )
    feats = features(frame, read)
    assert feats.filter(pl.col("pair_id").is_in(list(torn_ids)))["judge_entropy"].min() > 0.9
    result = run(RouteStep(budget=len(torn_ids), weights={"judge_entropy": 1.0}), FramePairs(frame), read, StepContext())
    routed = set(result.decisions.filter(pl.col("decision") == "routed")["pair_id"].to_list())
    assert routed == torn_ids


def test_the_agreement_table_reports_the_judges_position_bias(hh_path: Path) -> None:
    """Straight from the judge's label rows (``details``): the share of answers for the first slot."""
    from curation.stages.label.agreement import agreement, summary_rows

    pairs = real_pairs(hh_path, 12)
    labels = pairwise(OrderLetters(0.8, 0.8, chosen_texts(pairs)), verdict_by="logprobs", mode="calibrated").label(pairs)
    (row,) = summary_rows(agreement(labels, pairs, resamples=0))
    assert row["position_bias"] == pytest.approx(0.8)
    assert (row["n"], row["n_decided"], row["n_tie"]) == (12, 0, 12) and row["accuracy"] is None
