"""Near-duplicate filter: MinHash LSH over word shingles (datasketch), on prompts or whole pairs.

Exact dedup (``curation.stages.dedup.exact``) only catches texts equal after normalisation; a prompt asked
twice with a changed word, a different punctuation mark or a re-typed turn slips through and
over-weights that prompt in training. MinHash estimates the Jaccard similarity of two texts'
shingle sets; LSH banding finds candidate pairs without comparing every text to every other.

Text: each message as ``role: content`` on its own line (``level: prompt``: the prompt
conversation; ``level: pair``: prompt, chosen and rejected), normalised like exact dedup (Unicode
NFKC, lower-cased, whitespace runs collapsed) and cut into shingles of ``cfg.shingle``
consecutive words; a text with fewer words is one shingle (so short texts match only when equal).
Punctuation stays on its word: a changed word or mark changes up to ``shingle`` shingles, which
a long text absorbs and a ten-word prompt does not (measured on HH-RLHF: see the tests).

Clusters: LSH candidates (banding tuned for recall, see ``LSH_WEIGHTS``) are verified by the
MinHash estimate (Jaccard >= ``cfg.threshold``), and the verified pairs are joined into connected
components (union-find), so a chain a~b~c is one cluster even when a and c are further apart
than the threshold.

Keep rule (both modes): the kept item of a cluster is the one that comes first in pair order
(recipe source order, then file order, as the stage serves the alive pairs), so the result is
deterministic and the earliest source wins, as in exact dedup.

* ``level: prompt``: pairs are grouped by ``prompt_id`` first: pairs sharing an exact prompt are
  *not* duplicates of each other (several comparisons per prompt are normal data; the
  ``prompt_cap`` step limits them). Distinct prompts are clustered; every pair of the kept
  prompt stays, every pair of the other prompts of the cluster is filtered with reason
  ``near_duplicate_prompt`` and ``matched_pair_id`` = the first pair of the kept prompt.
* ``level: pair``: each pair is its own item; the first pair of a cluster stays, the others are
  filtered with ``near_duplicate_pair``, matched to it. A pair and its swap (the same texts
  with the opposite label) share all shingles but those across the response boundary, so they
  cluster too and the first one stays.

Every judged pair (those of ``cfg.sources``, default all) gets a decisions row, kept ones too,
with scores ``cluster_id`` (position, in the alive pair order this step read, of the cluster's
representative pair: the same for every pair of a cluster, so ``WHERE scores['cluster_id'] = x``
lists a cluster), ``cluster_size`` (distinct prompts, or pairs, in the cluster) and
``similarity`` (estimated Jaccard of the item to the kept representative; null for kept pairs;
it can be below the threshold when the item joined the cluster through a chain).

Memory: texts are read batch by batch (``pairs.batches``) and dropped once hashed; what stays is
one uint32 MinHash signature per item (4 * num_perm bytes), the LSH band tables and the ids.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import polars as pl
from datasketch import MinHash, MinHashLSH

from curation.decisions import decisions_frame
from curation.stages.filter.base import PairSource, StepContext, StepResult
from curation.stages.filter.config import NearDedupStep

REASONS = {"prompt": "near_duplicate_prompt", "pair": "near_duplicate_pair"}
SCORES = ["cluster_id", "cluster_size", "similarity"]
BATCH = 4096
# (false positive, false negative) weights for datasketch's choice of bands x rows. Candidates
# are verified against the MinHash estimate, so a false positive costs one comparison while a
# false negative is a missed duplicate: with datasketch's default (0.5, 0.5) at threshold 0.8
# and 128 permutations (9 bands x 13 rows) a pair at Jaccard 0.9 is a candidate only 93% of the
# time (0.40 at 0.8); with these weights (16 x 8) 99.96% (0.95 at 0.8).
LSH_WEIGHTS = (0.05, 0.95)
_SPACE = re.compile(r"\s+")


# --------------------------------------------------------------------------- texts


def conversation_text(messages: Sequence[dict[str, str]] | None) -> str:
    """A conversation as one text, each message as ``role: content`` on its own line."""
    return "\n".join(f"{m['role']}: {m['content']}" for m in messages or [])


def item_text(row: dict[str, Any], on: str) -> str:
    """What is compared: the prompt conversation, or the prompt and both responses."""
    if on == "prompt":
        return conversation_text(row["prompt"])
    return "\n".join(conversation_text(row[c]) for c in ("prompt", "chosen", "rejected"))


def normalise(text: str) -> str:
    """NFKC, lower-cased, whitespace runs collapsed to one space, trimmed (as exact dedup)."""
    return _SPACE.sub(" ", unicodedata.normalize("NFKC", text)).strip().lower()


def shingles(text: str, size: int) -> set[bytes]:
    """The set of ``size``-word shingles of the normalised text; a shorter text is one shingle."""
    words = normalise(text).split(" ")
    if len(words) <= size:
        return {" ".join(words).encode("utf-8")}
    return {" ".join(words[i : i + size]).encode("utf-8") for i in range(len(words) - size + 1)}


# --------------------------------------------------------------------------- grouping + clusters


class UnionFind:
    """Disjoint sets over 0..n-1 whose root is always the smallest member, i.e. the item that
    came first in pair order: the root *is* the cluster's kept representative."""

    def __init__(self, n: int = 0):
        self.parent = list(range(n))

    def add(self) -> int:
        self.parent.append(len(self.parent))
        return len(self.parent) - 1

    def find(self, a: int) -> int:
        root = a
        while self.parent[root] != root:
            root = self.parent[root]
        while self.parent[a] != root:  # path compression
            self.parent[a], a = root, self.parent[a]
        return root

    def union(self, a: int, b: int) -> None:
        ra, rb = self.find(a), self.find(b)
        if ra != rb:
            lo, hi = (ra, rb) if ra < rb else (rb, ra)
            self.parent[hi] = lo

    def roots(self) -> list[int]:
        return [self.find(i) for i in range(len(self.parent))]


@dataclass
class Grouping:
    """The judged pairs in pair order and the items (distinct prompts, or pairs) they belong to."""

    pair_ids: list[str] = field(default_factory=list)
    position: list[int] = field(default_factory=list)  # each judged pair's position in the alive pairs read
    item: list[int] = field(default_factory=list)  # each judged pair's item
    first: list[int] = field(default_factory=list)  # each item's first judged pair


def read_items(
    pairs: PairSource,
    on: str,
    sources: list[str] | None,
    consume: Callable[[list[Any]], None],
    *,
    text: Callable[[dict[str, Any], str], Any] = item_text,
    batch_size: int = BATCH,
    advance: Callable[[int], None] | None = None,
) -> Grouping:
    """Stream the pairs once; hand the texts (``text(row, on)``) of the items first seen in each
    batch to ``consume`` (in item order) and return the grouping. Items are numbered in order of
    first appearance, so a smaller item number means an earlier first pair."""
    columns = ["pair_id", "prompt_id", "source_dataset", "prompt"] + (["chosen", "rejected"] if on == "pair" else [])
    keep_sources = set(sources) if sources is not None else None
    g = Grouping()
    item_of_prompt: dict[str, int] = {}
    offset = 0
    for batch in pairs.batches(columns, batch_size):
        texts: list[Any] = []
        for i, row in enumerate(batch.iter_rows(named=True)):
            if keep_sources is not None and row["source_dataset"] not in keep_sources:
                continue
            key = row["prompt_id"] if on == "prompt" else row["pair_id"]
            item = item_of_prompt.get(key) if on == "prompt" else None
            if item is None:
                item = len(g.first)
                g.first.append(len(g.pair_ids))
                texts.append(text(row, on))
                if on == "prompt":
                    item_of_prompt[key] = item
            g.pair_ids.append(row["pair_id"])
            g.position.append(offset + i)
            g.item.append(item)
        if texts:
            consume(texts)
        offset += batch.height
        if advance is not None:
            advance(batch.height)
    return g


def cluster_result(
    g: Grouping, roots: list[int], similarity: Callable[[np.ndarray, np.ndarray], np.ndarray], reason: str, summary: dict[str, Any]
) -> StepResult:
    """Decisions for clustered items: the root (first item) of each cluster is kept with all its
    pairs; the pairs of the other items are filtered with ``reason``, matched to the root's first
    pair. ``similarity(items, reps)`` gives each filtered item's similarity to its representative."""
    root = np.asarray(roots, dtype=np.int64)
    first = np.asarray(g.first, dtype=np.int64)
    position = np.asarray(g.position, dtype=np.int64)
    item = np.asarray(g.item, dtype=np.int64)
    size = np.bincount(root, minlength=len(roots)) if len(roots) else np.zeros(0, dtype=np.int64)

    pair_root = root[item] if item.size else item
    dup = pair_root != item
    dup_items = np.flatnonzero(root != np.arange(len(roots)))
    item_sim = np.full(len(roots), np.nan)
    if dup_items.size:
        item_sim[dup_items] = similarity(dup_items, root[dup_items])
    sim = item_sim[item] if item.size else np.zeros(0)
    matched_pair = first[pair_root] if item.size else item

    decisions = decisions_frame(
        g.pair_ids,
        np.where(dup, "filtered", "kept").tolist(),
        [reason if d else None for d in dup.tolist()],
        matched=[g.pair_ids[m] if d else None for m, d in zip(matched_pair.tolist(), dup.tolist())],
        cluster_id=position[matched_pair].astype(np.float64) if item.size else [],
        cluster_size=size[pair_root].astype(np.float64) if item.size else [],
        similarity=[None if not d else float(s) for s, d in zip(sim.tolist(), dup.tolist())],
    )
    in_clusters = size[pair_root] > 1 if item.size else np.zeros(0, dtype=bool)
    summary = {
        **summary,
        "pairs": len(g.pair_ids),
        "items": len(roots),
        "clusters": int((size > 1).sum()),
        "largest_cluster": int(size.max()) if size.size else 0,
        "pairs_in_clusters": int(in_clusters.sum()),
        "filtered": int(dup.sum()),
    }
    return StepResult(decisions=decisions, scores=list(SCORES), summary=summary)


# --------------------------------------------------------------------------- MinHash


class MinHashIndex:
    """MinHash signatures (uint32, datasketch's affine32 scheme) of texts added in order, an LSH
    index over them, and the union-find of verified near-duplicate pairs."""

    def __init__(self, threshold: float, num_perm: int, shingle: int, seed: int):
        self.threshold, self.num_perm, self.shingle, self.seed = threshold, num_perm, shingle, seed
        try:
            self.lsh = MinHashLSH(threshold=threshold, num_perm=num_perm, weights=LSH_WEIGHTS)
        except ValueError:
            # datasketch's optimal banding for a threshold near 1 (or few permutations) is one
            # band, which it refuses; two bands find at least every pair one band would.
            self.lsh = MinHashLSH(threshold=threshold, num_perm=num_perm, params=(2, num_perm // 2))
        self.signatures: list[np.ndarray] = []
        self.uf = UnionFind()
        self.candidates = 0

    def add(self, texts: list[str]) -> None:
        """Hash each text, query the index for earlier similar texts, verify, join, insert."""
        sets = [shingles(t, self.shingle) for t in texts]
        for m in MinHash.generator(sets, num_perm=self.num_perm, seed=self.seed):
            i = self.uf.add()
            signature = m.hashvalues.astype(np.uint32, copy=False)
            for j in self.lsh.query(m):
                self.candidates += 1
                if float(np.mean(signature == self.signatures[j])) >= self.threshold:
                    self.uf.union(i, j)
            self.lsh.insert(i, m, check_duplication=False)
            self.signatures.append(signature)

    def matrix(self) -> np.ndarray:
        return np.stack(self.signatures) if self.signatures else np.zeros((0, self.num_perm), dtype=np.uint32)

    def clusters(self) -> list[int]:
        """Each item's representative (the cluster's first item)."""
        return self.uf.roots()


def jaccard_estimates(signatures: np.ndarray) -> Callable[[np.ndarray, np.ndarray], np.ndarray]:
    """Estimated Jaccard of items a[k] and b[k]: the share of equal MinHash slots."""
    return lambda a, b: (signatures[a] == signatures[b]).mean(axis=1)


def run(cfg: NearDedupStep, pairs: PairSource, labels: pl.DataFrame, ctx: StepContext) -> StepResult:
    index = MinHashIndex(cfg.threshold, cfg.num_perm, cfg.shingle, cfg.seed)
    ctx.progress.start(f"{cfg.stage_name}: MinHash LSH on {cfg.level}s", total=len(pairs))
    try:
        g = read_items(pairs, cfg.level, cfg.sources, index.add, advance=ctx.progress.advance)
    finally:
        ctx.progress.finish()
    summary = {
        "level": cfg.level,
        "threshold": cfg.threshold,
        "num_perm": cfg.num_perm,
        "shingle": cfg.shingle,
        "lsh_bands": index.lsh.b,
        "lsh_rows": index.lsh.r,
        "candidates_checked": index.candidates,
    }
    return cluster_result(g, index.clusters(), jaccard_estimates(index.matrix()), REASONS[cfg.level], summary)
