"""Accuracy from margins, bootstrap intervals over pairs, and the trivial baselines.

Every trainer is scored here the same way, from its margins, so figures differ only by what the
models learned. Intervals are percentile bootstraps over *pairs* (the evaluation pairs are the
sample; the seeds' spread is reported separately by the caller). A difference between two
models is bootstrapped *paired*: both correctness vectors are resampled with the same indices,
so the variation the two share (the same hard pairs, the same easy ones) cancels, and the
interval is much narrower than one from two independent resamples. That only means something
when both vectors score the same pairs in the same order, which is why ``paired_difference``
takes the pair ids and refuses anything else.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator, Sequence

import numpy as np
import pyarrow as pa

from curation.records import response_text

BOOTSTRAP_CHUNK = 200  # resamples drawn at once: bounds memory at 200 x n indices


def correct(margins: np.ndarray | Sequence[float]) -> np.ndarray:
    """Per pair: 1 where the model agrees with the label (margin > 0), 0.5 for a tie (margin 0:
    a coin flip would be right half the time), 0 where it disagrees. A NaN margin is refused:
    it is a trainer's bug, not a disagreement, and counting it as wrong would hide it."""
    m = np.asarray(margins, dtype=np.float64)
    if np.isnan(m).any():
        raise ValueError(f"{int(np.isnan(m).sum())} of {m.size} margins are NaN; a trainer must return a number for every pair")
    return np.where(m > 0, 1.0, np.where(m == 0, 0.5, 0.0))


def bootstrap_means(vectors: Sequence[np.ndarray], *, resamples: int, seed: int) -> Iterator[np.ndarray]:
    """For each resample, the means of every vector over the *same* resampled indices (one
    row of ``len(vectors)`` means per resample). Drawn in chunks so memory stays bounded."""
    n = len(vectors[0])
    if n == 0:
        raise ValueError("cannot bootstrap over zero pairs")
    if resamples < 1:
        raise ValueError("resamples must be at least 1")
    stacked = np.stack([np.asarray(v, dtype=np.float64) for v in vectors])  # (k, n)
    rng = np.random.default_rng(seed)
    for start in range(0, resamples, BOOTSTRAP_CHUNK):
        idx = rng.integers(0, n, size=(min(BOOTSTRAP_CHUNK, resamples - start), n))
        yield from stacked[:, idx].mean(axis=2).T  # (chunk, k)


def _interval(values: np.ndarray, level: float) -> tuple[float, float]:
    if not 0 < level < 1:
        raise ValueError(f"level must be in (0, 1), got {level}")
    tail = (1 - level) / 2
    low, high = np.quantile(values, [tail, 1 - tail])
    return float(low), float(high)


def accuracy_ci(correct: np.ndarray, *, resamples: int, seed: int, level: float = 0.95) -> tuple[float, float, float]:
    """(accuracy, low, high): the mean correctness and its percentile-bootstrap interval over pairs."""
    c = np.asarray(correct, dtype=np.float64)
    means = np.fromiter((row[0] for row in bootstrap_means([c], resamples=resamples, seed=seed)), dtype=np.float64)
    return (float(c.mean()), *_interval(means, level))


def paired_difference(
    correct_a: np.ndarray,
    correct_b: np.ndarray,
    *,
    pair_ids_a: Sequence[str],
    pair_ids_b: Sequence[str],
    resamples: int,
    seed: int,
    level: float = 0.95,
) -> tuple[float, float, float]:
    """(accuracy of a - accuracy of b, low, high), bootstrapped with the same indices for both.

    Refuses vectors that do not score the same pairs in the same order (compared by pair id):
    a paired interval over misaligned pairs is narrow and wrong, the worst kind of figure.
    """
    a, b = np.asarray(correct_a, dtype=np.float64), np.asarray(correct_b, dtype=np.float64)
    ids_a, ids_b = list(pair_ids_a), list(pair_ids_b)
    if not (len(a) == len(ids_a) and len(b) == len(ids_b)):
        raise ValueError(f"each correctness vector needs one pair id per entry: {len(a)} vs {len(ids_a)} ids, {len(b)} vs {len(ids_b)} ids")
    if len(a) != len(b):
        raise ValueError(f"a paired difference needs the same pairs on both sides: {len(a)} pairs against {len(b)}")
    if ids_a != ids_b:
        if sorted(ids_a) == sorted(ids_b):
            raise ValueError("both sides score the same pairs in a different order; align them by pair id first")
        only_a, only_b = len(set(ids_a) - set(ids_b)), len(set(ids_b) - set(ids_a))
        raise ValueError(f"a paired difference needs the same pairs on both sides: {only_a} pair ids only in a, {only_b} only in b")
    diffs = np.fromiter((row[0] - row[1] for row in bootstrap_means([a, b], resamples=resamples, seed=seed)), dtype=np.float64)
    return (float(a.mean() - b.mean()), *_interval(diffs, level))


def coin(pair_id: str, seed: int) -> float:
    """A seeded fair coin for one pair, from a hash of (seed, pair id): the same pair gets the same
    toss whatever the order or subset of the table it sits in."""
    return float(hashlib.sha256(f"{seed}\x00{pair_id}".encode()).digest()[0] & 1)


def baselines(evaluate: pa.Table, *, seed: int) -> dict[str, np.ndarray]:
    """Correctness vectors of the trivial predictors on the evaluation pairs, in their order:
    ``random`` (a seeded coin per pair), ``longer_wins`` (the longer response in characters is
    predicted chosen; equal lengths a tie) and ``shorter_wins``. A proxy model is only worth its
    cost where it beats all three: on HH-RLHF harmless, length alone predicts ~44% / ~56%."""
    ids = evaluate.column("pair_id").to_pylist()
    chosen = np.array([len(response_text(m)) for m in evaluate.column("chosen").to_pylist()])
    rejected = np.array([len(response_text(m)) for m in evaluate.column("rejected").to_pylist()])
    return {
        "random": np.array([coin(i, seed) for i in ids], dtype=np.float64),
        "longer_wins": correct(chosen - rejected),
        "shorter_wins": correct(rejected - chosen),
    }
