"""The leakage guard: evaluation pairs whose prompt was seen in training are not measured on.

A proxy model that trained on an evaluation prompt (the same prompt id, or a near copy of it)
would be graded on its own homework. Every evaluation pair whose prompt matches a training
pair's prompt (``curation.overlap``: the same matcher the ``decontaminate`` filter step uses:
exact text, shared n-grams covering most of the prompt, or a MinHash near duplicate) is left
out and counted. When several variants are compared, a pair leaked into any of them is left
out of all, so every variant is measured on the same pairs.
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa

from curation.evaluate.config import LeakageConfig
from curation.overlap import OverlapIndex, prompt_text


def leaked(train: pa.Table, evaluation: pa.Table, cfg: LeakageConfig) -> np.ndarray:
    """Per evaluation pair: True when its prompt is seen in ``train`` (same prompt id, or a match)."""
    seen_ids = set(train.column("prompt_id").to_pylist())
    out = np.array([pid in seen_ids for pid in evaluation.column("prompt_id").to_pylist()], dtype=bool)
    if not train.num_rows or not evaluation.num_rows:
        return out
    index = OverlapIndex(
        {"evaluation": [prompt_text(p) for p in evaluation.column("prompt").to_pylist()]},
        ngram=cfg.ngram,
        ngram_threshold=cfg.ngram_threshold,
        minhash_threshold=cfg.minhash_threshold,
    )
    for item in index.matched_items([prompt_text(p) for p in train.column("prompt").to_pylist()]).get("evaluation", ()):
        out[item] = True
    return out
