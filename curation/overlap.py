"""Overlap between training prompts and reference prompts (benchmarks, the evaluation set).

One matcher for two users: the ``decontaminate`` filter step drops training pairs whose prompt
overlaps a benchmark, and the evaluation's leakage guard checks that no training prompt
overlaps an evaluation prompt. Both must call the same thing a match, so it lives here, pure
(Polars and numpy, no Prefect, no stage code).

Definition (after open-instruct's decontamination for Tulu 3, ``decontamination/search.py``):

* **Tokens.** A text is NFKC-normalised, its invisible characters (``curation.text``) removed,
  curly apostrophes folded to ``'``, lower-cased, and cut into maximal runs of characters that
  are neither whitespace nor one of ``, . ? ! : ; ( ) " - \\`` (``TOKEN``). These are the split
  characters of open-instruct's Elasticsearch ``tulu_analyzer``, plus en and em dashes;
  apostrophes stay inside words ("don't"). Texts made of printable ASCII (and curly quotes) skip NFKC, which leaves them as they
  are anyway: it is the slowest step.
* **N-gram rule.** A reference prompt with at least ``ngram`` tokens is matched by a training
  prompt when more than ``ngram_threshold`` of its tokens lie in some ``ngram``-token window of
  the reference that also occurs (as a token sequence) anywhere in that one training prompt;
  ``overlap`` is that covered share. Strictly more, as open-instruct's ``score > threshold``.
* **Exact.** The same non-empty token sequence: equal up to case, whitespace, the split
  punctuation, NFKC and invisible characters. ``overlap`` 1.0. A reference prompt shorter than
  ``ngram`` tokens has no window, so it can only match exactly (open-instruct never matches it).
* **MinHash.** Estimated Jaccard similarity >= ``minhash_threshold`` of the sets of
  ``shingle``-token shingles (near_dedup's approach: datasketch's affine32 permutations, LSH
  banding tuned for recall with datasketch's parameter choice, candidates verified by the
  estimate), between a training prompt and a reference prompt of at least ``ngram`` tokens.
  ``overlap`` is the estimate. At the defaults (8-grams, 0.5) it rarely adds a match: a Jaccard
  of 0.8 over 3-token shingles leaves long untouched runs, which the n-gram rule already covers;
  it catches near-copies when ``ngram`` is long (13, 50) or ``ngram_threshold`` high.

Best match per training prompt: exact beats n-gram beats MinHash; within a kind the largest
``overlap``, then the earliest reference set (mapping order) and item.

Where this differs from open-instruct: their training documents are single user turns, ours the
whole prompt text (``prompt_text``); their benchmark side is tokenised by spaCy (punctuation
tokens count in the denominator), ours by the same rule as the training side; their n-gram
lookups return at most ``search_size`` training documents per n-gram (a common n-gram can miss
documents), ours consider every training prompt; a repeated n-gram of a benchmark prompt counts
every occurrence (theirs: the last one); their "exact" is a phrase search (the benchmark text
inside a training document, which our n-gram rule covers at overlap 1.0), ours equality; MinHash
is ours, not theirs.

Speed: tokens and windows are hashed in bulk (64-bit token hashes from Polars, window hashes by
a polynomial over them in numpy), training windows are joined to the reference windows by hash
(a Polars hash join), and coverage is computed only for the (training, reference) pairs that
share a window. A hash collision could add a spurious shared window (odds ~2^-64 per window
pair). MinHash signatures are computed only for training prompts that could reach the threshold
with some reference: at least ``minhash_threshold`` of their distinct shingles occur in some
reference (necessary for a Jaccard that high), the rest never touch a permutation.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import polars as pl
from datasketch import MinHashLSH

from curation.columns import ranges
from curation.text import PY_WHITESPACE, invisible_class, regex_class

SPLIT = PY_WHITESPACE + ',.?!:;()"-\\\u2013\u2014'
TOKEN = regex_class(sorted(map(ord, set(SPLIT))), negate=True) + "+"
"""A token: a maximal run of characters outside ``SPLIT`` (Polars / Rust regex syntax)."""
NFKC_SAFE = r"[^\t\n\r\x20-\x7e\x{2018}\x{2019}\x{201c}\x{201d}]"
"""A text with none of these characters is unchanged by NFKC and has no invisible character."""
APOSTROPHES = r"[\x{2018}\x{2019}\x{201b}\x{02bc}]"
SEED = 0x5EED
P = np.uint64(0x100000001B3)  # odd multiplier of the polynomial window hash (mod 2^64)
LSH_WEIGHTS = (0.05, 0.95)  # near_dedup's: a false negative costs a miss, a false positive one check
NUM_PERM = 128
BATCH = 65_536  # training texts per pass: bounds memory whatever the input size
SIGNATURE_CHUNK = 1 << 16  # shingles per permutation block (x NUM_PERM x 4 bytes)
Kind = Literal["exact", "ngram", "minhash"]
KINDS: tuple[Kind, ...] = ("minhash", "ngram", "exact")  # ascending priority


@dataclass(frozen=True)
class Match:
    """A training prompt's best match: reference set, item (its position there), kind, overlap."""

    reference: str
    item: int
    kind: Kind
    overlap: float


# --------------------------------------------------------------------------- texts and tokens


def prompt_text(messages: Sequence[Mapping[str, Any]] | None) -> str:
    """What is compared of a pair's prompt: every turn's content, joined by newlines (no roles,
    which benchmark prompts do not carry). The same for training and evaluation pairs."""
    return "\n".join(m["content"] or "" for m in messages or [])


def prompt_text_expr(column: str = "prompt") -> pl.Expr:
    """``prompt_text`` of a pairs-table ``prompt`` column, vectorised."""
    return pl.col(column).list.eval(pl.element().struct.field("content").fill_null("")).list.join("\n").fill_null("")


@dataclass
class Tokens:
    """Texts as token lists, and the flat 64-bit hashes of all their tokens."""

    lists: pl.Series
    hashes: np.ndarray
    lengths: np.ndarray

    @property
    def starts(self) -> np.ndarray:
        return np.cumsum(self.lengths) - self.lengths


def normalise(texts: pl.Series) -> pl.Series:
    """NFKC (only where it can change something), invisible characters out, apostrophes folded, lower case."""
    texts = texts.cast(pl.String).fill_null("")
    care = texts.str.contains(NFKC_SAFE).arg_true()
    if len(care):
        texts = texts.scatter(care, texts.gather(care).str.normalize("NFKC").str.replace_all(invisible_class(), ""))
    return texts.str.replace_all(APOSTROPHES, "'").str.to_lowercase()


def tokenize(texts: Sequence[str] | pl.Series) -> Tokens:
    lists = normalise(pl.Series(texts, dtype=pl.String)).str.extract_all(TOKEN)
    lengths = lists.list.len().to_numpy().astype(np.int64)
    hashes = lists.explode(empty_as_null=False).hash(SEED).to_numpy() if lengths.sum() else np.zeros(0, np.uint64)
    return Tokens(lists, hashes, lengths)


def windows(tok: Tokens, width: int, *, with_positions: bool = False) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """Every ``width``-token window of every text: (hash, text row, start position or None)."""
    count = np.maximum(tok.lengths - width + 1, 0)
    span = len(tok.hashes) - width + 1
    if span <= 0 or not count.sum():
        empty = np.zeros(0, np.int64)
        return np.zeros(0, np.uint64), empty, empty
    h = tok.hashes[:span].copy()
    for k in range(1, width):  # polynomial over the window's token hashes, wrapping mod 2^64
        h *= P
        h += tok.hashes[k : k + span]
    starts = ranges(tok.starts, count)
    row = np.repeat(np.arange(len(count)), count)
    return h[starts], row, (starts - tok.starts[row] if with_positions else None)


def fmix32(h: np.ndarray) -> np.ndarray:
    """64-bit hashes to well-mixed 32-bit ones (MurmurHash3's finaliser on the folded halves)."""
    x = ((h >> np.uint64(32)) ^ h).astype(np.uint32)
    x ^= x >> np.uint32(16)
    x *= np.uint32(0x85EBCA6B)
    x ^= x >> np.uint32(13)
    x *= np.uint32(0xC2B2AE35)
    x ^= x >> np.uint32(16)
    return x


# --------------------------------------------------------------------------- MinHash


class Signatures:
    """MinHash over 32-bit shingle hashes with datasketch's affine32 permutations (a * h + b
    mod 2^32, a odd), and LSH bands with datasketch's choice of bands x rows."""

    def __init__(self, threshold: float, num_perm: int = NUM_PERM, seed: int = 1):
        rng = np.random.RandomState(seed)
        self.a = rng.randint(0, 1 << 31, num_perm, dtype=np.uint32) * np.uint32(2) + np.uint32(1)
        self.b = rng.randint(0, 1 << 32, num_perm, dtype=np.uint64).astype(np.uint32)
        try:
            lsh = MinHashLSH(threshold=threshold, num_perm=num_perm, weights=LSH_WEIGHTS)
        except ValueError:  # one band is optimal near 1; two find every pair one would
            lsh = MinHashLSH(threshold=threshold, num_perm=num_perm, params=(2, num_perm // 2))
        self.bands, self.rows = lsh.b, lsh.r

    def of(self, shingles: np.ndarray, owner: np.ndarray, items: int) -> np.ndarray:
        """(items, num_perm) signatures; ``owner`` (sorted) says which item each shingle belongs to."""
        out = np.full((items, len(self.a)), np.iinfo(np.uint32).max, np.uint32)
        bounds = np.searchsorted(owner, np.arange(items + 1))
        lo = 0
        while lo < items:  # blocks of whole items, about SIGNATURE_CHUNK shingles each
            hi = max(lo + 1, int(np.searchsorted(bounds, bounds[lo] + SIGNATURE_CHUNK, side="right")) - 1)
            hi = min(hi, items)
            s, e = bounds[lo], bounds[hi]
            if e > s:
                phv = shingles[s:e, None] * self.a[None, :] + self.b[None, :]
                starts = bounds[lo:hi] - s
                has = bounds[lo + 1 : hi + 1] > bounds[lo:hi]
                out[lo:hi][has] = np.minimum.reduceat(phv, starts[has], axis=0)
            lo = hi
        return out

    def band_keys(self, sig: np.ndarray) -> np.ndarray:
        """(items, bands) uint64 keys: a hash of each band's rows."""
        keys = np.zeros((len(sig), self.bands), np.uint64)
        for r in range(self.rows):
            keys *= P
            keys += sig[:, r : self.bands * self.rows : self.rows].astype(np.uint64)
        return keys


def shingle_keys(tok: Tokens, width: int, rows: np.ndarray | None = None) -> np.ndarray:
    """The distinct ``width``-token shingles of each text (of ``rows`` only), unsorted, as uint64
    keys ``row << 32 | 32-bit shingle hash`` (a hash-based unique: no sort of all shingles)."""
    h, row, _ = windows(tok, width)
    if rows is not None:
        keep = np.zeros(len(tok.lengths), bool)
        keep[rows] = True
        keep = keep[row]
        h, row = h[keep], row[keep]
    keys = (row.astype(np.uint64) << np.uint64(32)) | fmix32(h).astype(np.uint64)
    return pl.Series(keys).unique().to_numpy()


def split_keys(keys: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(row, 32-bit shingle) of ``shingle_keys``."""
    return (keys >> np.uint64(32)).astype(np.int64), (keys & np.uint64(0xFFFFFFFF)).astype(np.uint32)


def band_frame(keys: np.ndarray, ids: np.ndarray, name: str) -> pl.DataFrame:
    bands = keys.shape[1]
    return pl.DataFrame({"band": np.tile(np.arange(bands, dtype=np.int32), len(ids)), "key": keys.ravel(), name: np.repeat(ids, bands)})


# --------------------------------------------------------------------------- the index


class OverlapIndex:
    """Reference prompts indexed for matching many training prompts (see the module docstring).

    ``references`` maps a reference set's name (a benchmark file, "evaluation") to its prompt
    texts; item i is position i. ``minhash_threshold=None`` turns MinHash matching off."""

    def __init__(
        self,
        references: Mapping[str, Sequence[str]],
        *,
        ngram: int = 8,
        ngram_threshold: float = 0.5,
        minhash_threshold: float | None = 0.8,
        shingle: int = 3,
    ):
        if ngram < 1 or shingle < 1:
            raise ValueError("ngram and shingle must be >= 1")
        if not 0 <= ngram_threshold < 1:
            raise ValueError("ngram_threshold must be in [0, 1): a match covers more than it")
        if minhash_threshold is not None and not 0 < minhash_threshold <= 1:
            raise ValueError("minhash_threshold must be in (0, 1]")
        self.ngram, self.ngram_threshold, self.minhash_threshold, self.shingle = ngram, ngram_threshold, minhash_threshold, shingle
        self.names = list(references)
        sizes = np.array([len(references[n]) for n in self.names], dtype=np.int64)
        self.offsets = np.concatenate(([0], np.cumsum(sizes)))
        tok = tokenize([t for n in self.names for t in references[n]])
        self.lengths = tok.lengths
        self.token_lists = tok.lists
        ids = np.arange(len(tok.lengths))
        # exact: the first item of each distinct non-empty token sequence
        exact = pl.DataFrame({"key": tok.lists.hash(SEED).to_numpy(), "g": ids}).filter(pl.Series(tok.lengths > 0))
        self.exact_all = exact
        exact = exact.unique("key", keep="first", maintain_order=True).sort("key")
        self.exact_keys, self.exact_ids = exact["key"].to_numpy(), exact["g"].to_numpy()
        h, row, pos = windows(tok, ngram, with_positions=True)
        self.windows = pl.DataFrame({"h": h, "g": row, "pos": pos})
        self.minhash: Signatures | None = None
        if minhash_threshold is not None:
            self.minhash = Signatures(minhash_threshold)
            eligible = ids[tok.lengths >= max(ngram, shingle)]
            row, sh = split_keys(np.sort(shingle_keys(tok, shingle, eligible)))
            self.universe = pl.Series("sh", np.unique(sh))
            sig = self.minhash.of(sh, np.searchsorted(eligible, row), len(eligible))
            self.ref_signatures = np.zeros((len(ids), NUM_PERM), np.uint32)
            self.ref_signatures[eligible] = sig
            self.bands = band_frame(self.minhash.band_keys(sig), eligible, "g")

    def __len__(self) -> int:
        return int(self.offsets[-1])

    def where(self, g: int) -> tuple[str, int]:
        """(reference set, item) of global item number ``g``."""
        ref = int(np.searchsorted(self.offsets, g, side="right")) - 1
        return self.names[ref], int(g - self.offsets[ref])

    def match(self, texts: Sequence[str] | pl.Series) -> list[Match | None]:
        """Each training text's best match, or None."""
        series = pl.Series(texts, dtype=pl.String) if not isinstance(texts, pl.Series) else texts
        out: list[Match | None] = []
        for start in range(0, len(series), BATCH):
            kind, g, overlap = self.match_arrays(series.slice(start, BATCH))
            for k, i, o in zip(kind.tolist(), g.tolist(), overlap.tolist()):
                out.append(None if k < 0 else Match(*self.where(i), KINDS[k], o))
        return out

    def match_arrays(self, texts: pl.Series) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """One batch: per text the kind (index into ``KINDS``, -1 none), global item and overlap."""
        tok = tokenize(texts)
        n = len(tok.lengths)
        kind, best, overlap = np.full(n, -1, np.int8), np.full(n, -1, np.int64), np.zeros(n)
        if not len(self) or not n:
            return kind, best, overlap
        rows, g, cov = self._ngram(tok)
        kind[rows], best[rows], overlap[rows] = KINDS.index("ngram"), g, cov
        rows, g = self._exact(tok)
        kind[rows], best[rows], overlap[rows] = KINDS.index("exact"), g, 1.0
        if self.minhash is not None:
            rows, g, est = self._minhash(tok, np.flatnonzero(kind < 0))
            kind[rows], best[rows], overlap[rows] = KINDS.index("minhash"), g, est
        return kind, best, overlap

    def matched_items(self, texts: Sequence[str] | pl.Series) -> dict[str, set[int]]:
        """Every reference item matched by some text (any kind, not only each text's best).

        The leakage guard needs this side: an evaluation prompt is leaked when any training
        prompt matches it, even if that training prompt matches another item better."""
        series = pl.Series(texts, dtype=pl.String) if not isinstance(texts, pl.Series) else texts
        found: set[int] = set()
        for start in range(0, len(series), BATCH):
            tok = tokenize(series.slice(start, BATCH))
            if not len(self) or not len(tok.lengths):
                continue
            found.update(self._ngram_pairs(tok)[1].tolist())
            found.update(self._exact_all(tok).tolist())
            if self.minhash is not None:
                found.update(self._minhash_pairs(tok, np.arange(len(tok.lengths)))[1].tolist())
        out: dict[str, set[int]] = {}
        for g in sorted(found):
            name, item = self.where(g)
            out.setdefault(name, set()).add(item)
        return out

    def _exact_all(self, tok: Tokens) -> np.ndarray:
        """Every item whose token sequence equals some text's."""
        keys = pl.DataFrame({"key": tok.lists.hash(SEED).to_numpy(), "row": np.arange(len(tok.lengths))})
        pairs = keys.join(self.exact_all, on="key", how="inner")
        rows, g = pairs["row"].to_numpy(), pairs["g"].to_numpy()
        same = [tok.lists[int(r)].to_list() == self.token_lists[int(i)].to_list() for r, i in zip(rows, g)]
        return np.unique(g[np.array(same, bool)]) if len(g) else g

    def _exact(self, tok: Tokens) -> tuple[np.ndarray, np.ndarray]:
        if not len(self.exact_keys):
            return np.zeros(0, np.int64), np.zeros(0, np.int64)
        keys = tok.lists.hash(SEED).to_numpy()
        at = np.minimum(np.searchsorted(self.exact_keys, keys), len(self.exact_keys) - 1)
        rows = np.flatnonzero((self.exact_keys[at] == keys) & (tok.lengths > 0))
        g = self.exact_ids[at[rows]]
        same = [tok.lists[int(r)].to_list() == self.token_lists[int(i)].to_list() for r, i in zip(rows, g)]  # rule out a collision
        return rows[same], g[same]

    def _ngram(self, tok: Tokens) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Rows with an n-gram match, their best item and its covered share."""
        return best_per_row(*self._ngram_pairs(tok))

    def _ngram_pairs(self, tok: Tokens) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Every (row, item) n-gram match and its covered share."""
        h, row, _ = windows(tok, self.ngram)
        hits = pl.DataFrame({"h": h, "row": row}).join(self.windows, on="h", how="inner").select("row", "g", "pos")
        hits = hits.unique().sort("row", "g", "pos")
        r, g, pos = (hits[c].to_numpy() for c in ("row", "g", "pos"))
        if not len(r):
            return r, g, np.zeros(0)
        # tokens covered by a pair's windows: each window start adds up to ``ngram`` new tokens
        same = (r[1:] == r[:-1]) & (g[1:] == g[:-1])
        step = np.full(len(r), self.ngram, np.int64)
        step[:-1][same] = np.minimum(self.ngram, pos[1:][same] - pos[:-1][same])
        first = np.flatnonzero(np.concatenate(([True], ~same)))
        covered = np.add.reduceat(step, first)
        r, g = r[first], g[first]
        cov = covered / self.lengths[g]
        keep = cov > self.ngram_threshold
        return r[keep], g[keep], cov[keep]

    def _minhash(self, tok: Tokens, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Rows (of ``rows``) with a MinHash match, their best item and its estimated Jaccard."""
        return best_per_row(*self._minhash_pairs(tok, rows))

    def _minhash_pairs(self, tok: Tokens, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Every (row of ``rows``, item) MinHash match and its estimated Jaccard."""
        assert self.minhash is not None and self.minhash_threshold is not None
        empty = np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros(0)
        rows = rows[tok.lengths[rows] >= self.shingle]
        if not len(rows) or not len(self.universe):
            return empty
        keys = shingle_keys(tok, self.shingle, rows)
        row, sh = split_keys(keys)
        known = pl.Series(sh).is_in(self.universe.implode()).to_numpy()
        size = np.bincount(row, minlength=len(tok.lengths))
        shared = np.bincount(row, weights=known, minlength=len(tok.lengths))
        # Jaccard >= t needs at least t of the text's distinct shingles in some reference
        candidates = np.flatnonzero((size > 0) & (shared >= self.minhash_threshold * size))
        if not len(candidates):
            return empty
        row, sh = split_keys(np.sort(keys[np.isin(row, candidates)]))
        sig = self.minhash.of(sh, np.searchsorted(candidates, row), len(candidates))
        found = band_frame(self.minhash.band_keys(sig), np.arange(len(candidates)), "c").join(self.bands, on=["band", "key"])
        pairs = found.select("c", "g").unique().sort("c", "g")
        c, g = pairs["c"].to_numpy(), pairs["g"].to_numpy()
        est = (sig[c] == self.ref_signatures[g]).mean(axis=1) if len(c) else np.zeros(0)
        keep = est >= self.minhash_threshold
        return candidates[c[keep]], g[keep], est[keep]


def best_per_row(rows: np.ndarray, g: np.ndarray, score: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per row the largest score, ties to the smallest item number (earliest reference set)."""
    order = np.lexsort((g, -score, rows))
    rows, g, score = rows[order], g[order], score[order]
    first = np.concatenate(([True], rows[1:] != rows[:-1])) if len(rows) else np.zeros(0, bool)
    return rows[first], g[first], score[first]
