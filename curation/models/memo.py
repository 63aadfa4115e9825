"""An embedding backend wrapper that embeds each distinct text once.

Benchmarks and tests embed the same texts many times (every noise level, every seed, every
test of a module); the vectors do not change, so they are kept per text.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from curation.models.base import ModelBackend


class MemoEmbedder(ModelBackend):
    """``real.embed`` with a per-text memo (unbounded: for runs that fit in memory)."""

    name = "sentence_transformers"

    def __init__(self, real: ModelBackend):
        self.real, self.model, self.vectors = real, real.model, {}

    def embed(self, texts: Sequence[str]) -> np.ndarray:
        missing = [t for t in dict.fromkeys(texts) if t not in self.vectors]
        if missing:
            self.vectors.update(zip(missing, self.real.embed(missing)))
        return np.stack([self.vectors[t] for t in texts])
