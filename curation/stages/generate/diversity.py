"""How diverse is each prompt's candidate set? Reported per strategy, next to i.i.d.

- mean pairwise cosine distance of sentence embeddings (1 - cos), averaged over prompts;
- distinct-n: unique n-grams / all n-grams in the set (lower-cased word n-grams).

Higher is more diverse. A strategy "worked" when it beats i.i.d. on the same prompts.
"""

from __future__ import annotations

import itertools
import re
from collections.abc import Callable, Sequence

import numpy as np

WORD = re.compile(r"\w+|[^\w\s]")


def mean_pairwise_cosine_distance(vectors: np.ndarray) -> float | None:
    """Vectors must be L2-normalised; None for fewer than two."""
    n = len(vectors)
    if n < 2:
        return None
    sims = vectors @ vectors.T
    upper = sims[np.triu_indices(n, k=1)]
    return float(np.mean(1.0 - upper))


def distinct_n(texts: Sequence[str], n: int) -> float | None:
    grams = []
    for t in texts:
        words = WORD.findall(t.lower())
        grams += [tuple(words[i : i + n]) for i in range(len(words) - n + 1)]
    return len(set(grams)) / len(grams) if grams else None


def _mean(values: list[float | None]) -> float | None:
    vals = [v for v in values if v is not None]
    return round(float(np.mean(vals)), 4) if vals else None


def strategy_diversity(sets: list[list[str]], embed: Callable[[list[str]], np.ndarray]) -> dict[str, float | int | None]:
    """Per-prompt diversity of candidate sets (one list of texts per prompt), averaged."""
    texts = list(itertools.chain.from_iterable(sets))
    vectors = embed(texts) if texts else np.zeros((0, 1), dtype=np.float32)
    cos, d1, d2, start = [], [], [], 0
    for s in sets:
        cos.append(mean_pairwise_cosine_distance(vectors[start : start + len(s)]))
        d1.append(distinct_n(s, 1))
        d2.append(distinct_n(s, 2))
        start += len(s)
    return {
        "prompts": len(sets),
        "candidates": len(texts),
        "mean_cosine_distance": _mean(cos),
        "distinct_1": _mean(d1),
        "distinct_2": _mean(d2),
        "mean_words": round(_mean([len(WORD.findall(t)) for t in texts]), 1) if texts else None,
    }
