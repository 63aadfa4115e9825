"""Semantic duplicate filter: embedding cosine similarity above a threshold, on prompts or pairs.

MinHash (``near_dedup``) sees shared word sequences; a paraphrase ("What's the best way to
..." / "What is the best way to ...") shares few shingles of a short prompt but means the same,
and trains the same preference twice. This step embeds each text with ``cfg.embedder`` (a
sentence-transformers backend by default: L2-normalised float32 vectors, so a dot product is the
cosine) and joins every two items whose similarity is >= ``cfg.threshold`` (less 1e-6, so that
float32 rounding cannot split identical vectors at threshold 1) into connected components.

What is embedded, and why it differs from ``near_dedup``'s text: MiniLM reads at most 256 word
pieces and drops the rest. Embedding a multi-turn conversation from its start made every two
conversations that share an opening exchange look identical (measured: most of the 0.95
clusters of HH-RLHF and OASST were branches of one conversation with different last turns, at
cosine 1.0). So:

* ``level: prompt``: the prompt conversation with its messages in reverse order (``role: content``,
  the latest turn, which the responses answer, first); truncation drops the oldest turns.
* ``level: pair``: the prompt so, the chosen response and the rejected response are embedded
  separately, and a pair's similarity to another is the *smallest* of the three cosines: two
  pairs are duplicates when their prompts and both their responses are. (One joined text would
  lose the responses to truncation behind any long prompt.) So a pair and its swap (same texts,
  opposite label) are not duplicates here, unlike in ``near_dedup``.

Same grouping, keep rule and row shape as ``near_dedup`` (read its docstring): on ``prompt`` the
distinct prompts are embedded once each and pairs sharing an exact prompt are never duplicates
of each other; the kept item of a cluster is the first in pair order; the others are filtered
with ``semantic_duplicate_prompt`` / ``semantic_duplicate_pair``, matched to the kept item's
first pair; scores ``cluster_id``, ``cluster_size`` and ``similarity`` (to the kept
representative, null for kept pairs).

Each distinct text is embedded once per run: the embedding backend keeps vectors by (model
fingerprint, sha256 of the text) in a per-process memo shared with the BT ensemble and the
evaluation, and on disk under ``WORK_ROOT/cache/embeddings``, so a rerun over the same pairs
embeds nothing and loads no model (``curation/models/embedder.py``). The summary records the
dtype the embedder ran in (``dtype: auto`` resolves per machine).

Search is exact, not approximate: the similarity matrix is computed in square blocks of
``BLOCK`` x ``BLOCK`` (upper triangle only), so memory holds the n x d vectors (1.5 KB per
text for MiniLM, three texts per pair on ``pair``) plus one 4 MB block, never n x n. At
curation sizes (up to ~10^5 distinct prompts: 5 * 10^9 dot products, seconds of BLAS) an ANN
index would only add recall loss and a dependency; embedding the texts costs far more than
comparing them.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import polars as pl

from curation.stages.filter.base import PairSource, StepContext, StepResult
from curation.stages.filter.config import SemanticDedupStep
from curation.stages.filter.near_dedup import UnionFind, cluster_result, conversation_text, read_items

REASONS = {"prompt": "semantic_duplicate_prompt", "pair": "semantic_duplicate_pair"}
BLOCK = 1024
EPS = 1e-6
READ_BATCH = 1024


def recent_first(messages: Sequence[dict[str, str]] | None) -> str:
    """A conversation as one text, latest message first (what survives the embedder's truncation)."""
    return conversation_text(list(messages or [])[::-1])


def embed_texts(row: dict[str, Any], on: str) -> tuple[str, ...]:
    """The texts embedded for an item: its prompt, and on ``pair`` also both responses."""
    prompt = recent_first(row["prompt"])
    if on == "prompt":
        return (prompt,)
    return prompt, *("\n\n".join(m["content"] for m in row[c] or []) for c in ("chosen", "rejected"))


def similar_pairs(vectors: np.ndarray, threshold: float, *, block: int = BLOCK, advance: Callable[[int], None] | None = None) -> UnionFind:
    """Union-find over the n items of ``vectors`` (n x d, or n x parts x d: an item's similarity
    is then the smallest of its parts' cosines) joining every (i, j) with similarity >=
    threshold - EPS, found exactly, block by block over the upper triangle."""
    if vectors.ndim == 2:
        vectors = vectors[:, None, :]
    n, parts = vectors.shape[0], vectors.shape[1]
    uf = UnionFind(n)
    cut = threshold - EPS
    for i0 in range(0, n, block):
        rows = vectors[i0 : i0 + block]
        for j0 in range(i0, n, block):
            cols = vectors[j0 : j0 + block]
            sims = rows[:, 0] @ cols[:, 0].T
            for k in range(1, parts):
                np.minimum(sims, rows[:, k] @ cols[:, k].T, out=sims)
            ii, jj = np.nonzero(sims >= cut)
            if i0 == j0:
                upper = ii < jj
                ii, jj = ii[upper], jj[upper]
            for a, b in zip((ii + i0).tolist(), (jj + j0).tolist()):
                uf.union(a, b)
        if advance is not None:
            advance(1)
    return uf


def run(cfg: SemanticDedupStep, pairs: PairSource, labels: pl.DataFrame, ctx: StepContext) -> StepResult:
    if ctx.backends is None:
        raise ValueError(f"filter step {cfg.stage_name!r} needs model backends (an embedder) in its context")
    backends = ctx.backends
    parts = 1 if cfg.level == "prompt" else 3
    chunks: list[np.ndarray] = []

    def embed(items: list[tuple[str, ...]]) -> None:  # the model loads on the first texts: none judged, none loaded
        flat = backends.get(cfg.embedder).embed([t for item in items for t in item])
        chunks.append(np.asarray(flat, dtype=np.float32).reshape(len(items), parts, -1))

    ctx.progress.start(f"{cfg.stage_name}: embedding {cfg.level}s", total=len(pairs))
    try:
        g = read_items(pairs, cfg.level, cfg.sources, embed, text=embed_texts, batch_size=READ_BATCH, advance=ctx.progress.advance)
    finally:
        ctx.progress.finish()
    vectors = np.concatenate(chunks) if chunks else np.zeros((0, parts, 1), dtype=np.float32)
    if vectors.shape[0] != len(g.first):
        raise ValueError(f"embedder {cfg.embedder.model!r} returned vectors for {vectors.shape[0]} of {len(g.first)} items")

    blocks = -(-vectors.shape[0] // BLOCK)
    ctx.progress.start(f"{cfg.stage_name}: comparing {vectors.shape[0]} {cfg.level}s", total=blocks)
    try:
        uf = similar_pairs(vectors, cfg.threshold, advance=ctx.progress.advance)
    finally:
        ctx.progress.finish()

    def similarity(a: np.ndarray, b: np.ndarray) -> np.ndarray:
        return np.einsum("ikd,ikd->ik", vectors[a], vectors[b]).min(axis=1).astype(np.float64)

    summary = {"level": cfg.level, "threshold": cfg.threshold, "embedder": cfg.embedder.model, "exact_search": True, "block": BLOCK}
    if chunks:  # the embedder was built: which dtype it ran in
        summary["embedder_dtype"] = getattr(backends.get(cfg.embedder), "dtype", cfg.embedder.resolved_dtype())
    return cluster_result(g, uf.roots(), similarity, REASONS[cfg.level], summary)
