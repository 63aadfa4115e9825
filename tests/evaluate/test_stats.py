"""Accuracy, bootstrap intervals and the paired difference (curation/evaluate/stats.py)."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pytest

from curation.evaluate.stats import accuracy_ci, baselines, correct, paired_difference


def test_correct_counts_ties_half_and_refuses_nan() -> None:
    assert correct([2.0, -1.0, 0.0]).tolist() == [1.0, 0.0, 0.5]
    with pytest.raises(ValueError, match="NaN"):
        correct([1.0, float("nan")])


def test_the_accuracy_interval_holds_the_truth_about_as_often_as_it_says() -> None:
    rng = np.random.default_rng(3)
    hits = 0
    for trial in range(200):
        sample = (rng.random(300) < 0.7).astype(float)
        _, low, high = accuracy_ci(sample, resamples=400, seed=trial)
        hits += low <= 0.7 <= high
    assert 0.9 <= hits / 200 <= 0.99  # a 95% interval


def test_identical_pairs_give_a_zero_difference_with_a_zero_width_interval() -> None:
    ids = [f"p{i}" for i in range(50)]
    a = (np.arange(50) % 3 == 0).astype(float)
    assert paired_difference(a, a.copy(), pair_ids_a=ids, pair_ids_b=list(ids), resamples=500, seed=0) == (0.0, 0.0, 0.0)


def test_the_paired_interval_is_narrower_than_an_unpaired_one() -> None:
    """Two models right on mostly the same pairs: the shared variation cancels."""
    rng = np.random.default_rng(0)
    ids = [str(i) for i in range(400)]
    a = (rng.random(400) < 0.65).astype(float)
    b = a.copy()
    b[rng.choice(400, 20, replace=False)] = 0.0  # b loses up to 20 pairs a won
    diff, low, high = paired_difference(b, a, pair_ids_a=ids, pair_ids_b=ids, resamples=1000, seed=1)
    assert diff < 0 and high < 0
    _, la, ha = accuracy_ci(a, resamples=1000, seed=1)
    assert high - low < (ha - la) / 2


def test_a_paired_difference_refuses_other_or_reordered_pairs() -> None:
    a = np.ones(3)
    with pytest.raises(ValueError, match="different order"):
        paired_difference(a, a, pair_ids_a=["x", "y", "z"], pair_ids_b=["z", "y", "x"], resamples=100, seed=0)
    with pytest.raises(ValueError, match="1 pair ids only in a, 1 only in b"):
        paired_difference(a, a, pair_ids_a=["x", "y", "z"], pair_ids_b=["x", "y", "w"], resamples=100, seed=0)
    with pytest.raises(ValueError, match="same pairs on both sides: 3 pairs against 2"):
        paired_difference(a, a[:2], pair_ids_a=["x", "y", "z"], pair_ids_b=["x", "y"], resamples=100, seed=0)


def test_baselines_follow_response_length_and_a_seeded_coin() -> None:
    def msg(text: str) -> list[dict[str, str]]:
        return [{"role": "assistant", "content": text}]

    table = pa.Table.from_pylist(
        [
            {"pair_id": "a", "chosen": msg("a long answer"), "rejected": msg("no")},
            {"pair_id": "b", "chosen": msg("no"), "rejected": msg("a long answer")},
            {"pair_id": "c", "chosen": msg("same"), "rejected": msg("size")},
        ]
    )
    out = baselines(table, seed=0)
    assert out["longer_wins"].tolist() == [1.0, 0.0, 0.5]
    assert out["shorter_wins"].tolist() == [0.0, 1.0, 0.5]
    assert set(out["random"].tolist()) <= {0.0, 1.0}
    assert out["random"][0] == baselines(table.slice(0, 1), seed=0)["random"][0]  # the same toss in any subset
