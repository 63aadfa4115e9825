"""An ensemble of Bradley-Terry reward heads on sentence embeddings, trained on the data's own
human labels: several cheap reward models for the multi-reward-model vote (Secrets of RLHF II)
on a CPU, where no real reward model ships.

Each member is a linear reward r(x, y) = w . phi(x, y) over frozen sentence embeddings, trained
by Bradley-Terry: P(chosen > rejected) = sigmoid(r(x, chosen) - r(x, rejected)), i.e. logistic
regression on feature differences without intercept, with an L2 penalty, solved by full-batch
Newton steps (convex, so the result depends only on the data, not on an optimiser's path).

Why cross-fitting: a member must never vote on a pair it was trained on, or its vote is an echo
of the human label. The human-labelled pairs are split into K folds by a seeded hash of their
*prompt*, so pairs sharing a prompt (and often a response: PandaLM compares the same answers
across model pairs) fall in the same fold; member m trains on the circular block of folds
{m, ..., m + ceil(K/2) - 1} (mod K) and labels only the pairs in the other folds, so each human
pair gets K - ceil(K/2) held-out votes from members trained on different data. Pairs without a
human label (generated ones) are labelled by every member. Splitting by pair id instead leaks
through shared prompts: on PandaLM, held-out accuracy read 0.69 split by pair id, 0.64 by prompt.

Choices, by measured held-out accuracy (K = 5, MiniLM embeddings, HH-RLHF harmless 1,198 pairs /
PandaLM 888 majority-vote pairs): phi = e_y, the response's embedding, scored 0.600 / 0.643;
[e_y, e_x * e_y] scored 0.597 / 0.615: with a few hundred training pairs the interaction weights
only add variance (``features: response_prompt`` keeps them for larger data; the prompt's text
is its last user turn, what the response answers, as MiniLM reads only 256 word pieces).
l2 = 10 (loss summed over pairs): l2 = 1 scored 0.585 / 0.624, l2 = 100 0.602 / 0.643.

Cost: embedding is nearly all of it (fitting the heads takes about a second for 3,000 pairs).
Each distinct text is embedded once per run and kept on disk (``curation/models/embedder.py``),
and the label stage keeps the whole run's labels keyed by ``training_inputs``: a rerun over the
same pairs with the same human labels neither embeds nor trains (``cache.RunCache``).
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa

from curation.errors import ConfigError, CurationError
from curation.models import check_backend
from curation.models.base import Conversation, ModelBackend
from curation.progress import NoProgress, Progress
from curation.records import prompt_id
from curation.stages.label.base import Labeler, PairView, pair_views
from curation.stages.label.config import BTEnsembleConfig
from curation.stages.label.reward_model import sigmoid

EMBED_BACKENDS = ("sentence_transformers",)
EMBED_CHUNK = 256  # texts per embed call: progress advances per chunk


# --------------------------------------------------------------------------- pure core


def fold_of(prompt: Conversation, members: int, seed: int) -> int:
    """The fold of a human-labelled pair: a seeded hash of its prompt, so pairs that share a
    prompt share a fold and the split depends on nothing else (not order, not the batch)."""
    digest = hashlib.sha256(f"{seed}\x00{prompt_id(prompt)}".encode()).digest()
    return int.from_bytes(digest[:8], "big") % members


def train_folds(member: int, members: int) -> frozenset[int]:
    """The circular block of ceil(K/2) folds member ``member`` trains on."""
    return frozenset((member + i) % members for i in range(math.ceil(members / 2)))


def prompt_text(prompt: Conversation) -> str:
    users = [m["content"] for m in prompt if m["role"] == "user"]
    return users[-1] if users else "\n\n".join(m["content"] for m in prompt)


def features(kind: str, prompts: np.ndarray | None, responses: np.ndarray) -> np.ndarray:
    """phi(x, y) for each row: e_y, or [e_y, sqrt(d) * e_x * e_y] (scaled so both halves have
    about unit norm and one L2 penalty fits both)."""
    y = responses.astype(np.float64)
    if kind == "response":
        return y
    if prompts is None:
        raise ValueError("the response_prompt features need the prompts' embeddings")
    return np.hstack([y, math.sqrt(y.shape[1]) * prompts.astype(np.float64) * y])


def bt_loss(w: np.ndarray, diffs: np.ndarray, l2: float) -> float:
    """Bradley-Terry negative log-likelihood of "chosen beats rejected", summed, plus (l2/2)|w|^2."""
    return float(np.logaddexp(0.0, -(diffs @ w)).sum() + 0.5 * l2 * (w @ w))


def fit_bt(diffs: np.ndarray, l2: float, max_steps: int) -> np.ndarray:
    """Weights minimising ``bt_loss`` over rows phi(chosen) - phi(rejected), by Newton steps
    with step halving (so the loss never rises); at most ``max_steps``, fewer at convergence."""
    n, p = diffs.shape
    w = np.zeros(p)
    loss = bt_loss(w, diffs, l2)
    ridge = (l2 or 1e-9) * np.eye(p)  # l2 = 0: a tiny ridge keeps separable data solvable
    for _ in range(max_steps):
        q = np.exp(-np.logaddexp(0.0, diffs @ w))  # sigmoid(-margin): how wrong each pair still is
        grad = -(diffs.T @ q) + l2 * w
        if np.abs(grad).max() <= 1e-10 * max(n, 1):
            break
        hessian = (diffs.T * (q * (1.0 - q))) @ diffs + ridge
        step = np.linalg.solve(hessian, grad)
        t = 1.0
        while t >= 1e-6 and (candidate := bt_loss(w - t * step, diffs, l2)) > loss:
            t /= 2
        if t < 1e-6:
            break
        w, loss = w - t * step, candidate
    return w


def embed_unique(backend: ModelBackend, texts: Sequence[str], progress: Progress, what: str) -> dict[str, np.ndarray]:
    """One vector per distinct text, embedded in length-sorted chunks (less padding, and the
    same chunks for the same texts whatever their order)."""
    unique = sorted(set(texts), key=lambda t: (len(t), t))
    vectors: dict[str, np.ndarray] = {}
    progress.start(what, total=len(unique))
    try:
        for start in range(0, len(unique), EMBED_CHUNK):
            chunk = unique[start : start + EMBED_CHUNK]
            vectors.update(zip(chunk, backend.embed(chunk)))
            progress.advance(len(chunk))
    finally:
        progress.finish()
    return vectors


@dataclass(frozen=True)
class Member:
    index: int
    folds: frozenset[int]
    weights: np.ndarray
    train_pairs: int


# --------------------------------------------------------------------------- labeler


class BTEnsemble(Labeler):
    kind = "bt_ensemble"
    streaming = False  # trains on every human-labelled pair of the input at once
    cfg: BTEnsembleConfig
    progress: Progress = NoProgress()  # the stage may plug in its own (embedding is the slow part)

    @classmethod
    def check(cls, cfg: BTEnsembleConfig, data_root: str | Path) -> None:
        if cfg.embedder.backend not in EMBED_BACKENDS:
            raise ConfigError(
                f"labeler {cfg.name!r}: embedder backend {cfg.embedder.backend!r} does not serve embeddings; use {', '.join(EMBED_BACKENDS)}"
            )
        check_backend(cfg.embedder, data_root)

    def models(self) -> list[str]:
        return [self.cfg.embedder.model]

    def label(self, pairs: pa.Table) -> pa.Table:
        views = pair_views(pairs)
        human = [i for i, v in enumerate(views) if v.label_source == "human"]
        if len(human) < self.cfg.min_train_pairs:
            raise CurationError(
                f"labeler {self.name!r} trains on the input's human-labelled pairs and found {len(human)} of {len(views)} pairs; "
                f"it needs at least min_train_pairs = {self.cfg.min_train_pairs}. Give it the human-labelled pairs too (label.pairs: all) "
                "or lower min_train_pairs"
            )
        folds = {i: fold_of(views[i].prompt, self.cfg.members, self.cfg.seed) for i in human}
        groups = self._groups(pairs["source_dataset"].to_pylist(), human)
        plans = {
            key: [self._training_set(m, {i: folds[i] for i in train}) for m in range(self.cfg.members)]
            for key, (train, _) in groups.items()
        }
        phi_a, phi_b = self._features(views)  # the slow part, after every check
        rows = []
        for key, (_, scored) in groups.items():
            members = [
                Member(
                    index=m, folds=mine, weights=fit_bt(phi_a[train] - phi_b[train], self.cfg.l2, self.cfg.epochs), train_pairs=len(train)
                )
                for m, (mine, train) in enumerate(plans[key])
            ]
            rows += [
                self._row(views[i], member, folds.get(i), float(phi_a[i] @ member.weights), float(phi_b[i] @ member.weights), key)
                for i in scored
                for member in members
                if folds.get(i) not in member.folds
            ]
        order = {view.pair_id: n for n, view in enumerate(views)}
        rows.sort(key=lambda r: order[r["pair_id"]])
        return self.table(rows)

    def training_inputs(self, pairs: pa.Table) -> dict[str, Any]:
        """What the labels depend on besides the config (the label cache keys a whole run on
        it): every pair to label, as (content id, label source, source dataset, fold of a human
        pair), in a canonical order. The pair id hashes the prompt and both responses in
        chosen/rejected order, so it carries the direction of a human label too."""
        prompts = pairs["prompt"].to_pylist()
        rows = sorted(
            (pid, label_source, source, fold_of(prompt, self.cfg.members, self.cfg.seed) if label_source == "human" else None)
            for pid, label_source, source, prompt in zip(
                pairs["pair_id"].to_pylist(), pairs["label_source"].to_pylist(), pairs["source_dataset"].to_pylist(), prompts
            )
        )
        return {"pairs": rows}

    def _groups(self, sources: list[str], human: list[int]) -> dict[str | None, tuple[list[int], list[int]]]:
        """Training group -> (human pairs it trains on, pairs it scores). With ``per_source``
        every source with enough human labels gets its own members (sources disagree on what
        "better" means: HH-harmless prefers refusals, PandaLM helpfulness); pairs of the other
        sources (e.g. generated pairs) are scored by members trained on every human pair."""
        own: dict[str | None, tuple[list[int], list[int]]] = {}
        if self.cfg.per_source:
            by_source: dict[str, list[int]] = {}
            for i in human:
                by_source.setdefault(sources[i], []).append(i)
            own = {src: (train, []) for src, train in by_source.items() if len(train) >= self.cfg.min_train_pairs}
        pooled: tuple[list[int], list[int]] = (human, [])
        for i, src in enumerate(sources):
            (own[src] if src in own else pooled)[1].append(i)
        if pooled[1]:
            own[None] = pooled
        return own

    def _features(self, views: list[PairView]) -> tuple[np.ndarray, np.ndarray]:
        """phi(x, chosen) and phi(x, rejected) for every pair, each distinct text embedded once."""
        backend = self.backends.get(self.cfg.embedder)
        texts = [v.response_a for v in views] + [v.response_b for v in views]
        prompts = [prompt_text(v.prompt) for v in views] if self.cfg.features == "response_prompt" else []
        vectors = embed_unique(backend, texts + prompts, self.progress, f"{self.name}: embed")
        a = np.stack([vectors[v.response_a] for v in views])
        b = np.stack([vectors[v.response_b] for v in views])
        x = np.stack([vectors[p] for p in prompts]) if prompts else None
        return features(self.cfg.features, x, a), features(self.cfg.features, x, b)

    def _training_set(self, index: int, folds: dict[int, int]) -> tuple[frozenset[int], list[int]]:
        """Member ``index``'s folds and the pairs in them."""
        mine = train_folds(index, self.cfg.members)
        train = [i for i, fold in folds.items() if fold in mine]
        if not train:
            raise CurationError(
                f"labeler {self.name!r}: member {index} has no training pairs: the {len(folds)} human-labelled pairs have too few "
                f"distinct prompts to fill {self.cfg.members} folds; use fewer members"
            )
        return mine, train

    def _row(
        self, view: PairView, member: Member, fold: int | None, score_a: float, score_b: float, trained_on: str | None
    ) -> dict[str, Any]:
        details = {
            "member": member.index,
            "fold": fold,
            "train_folds": sorted(member.folds),
            "train_pairs": member.train_pairs,
            "trained_on": trained_on or "all human-labelled pairs",
        }
        return self.row(
            view.pair_id,
            score_a,
            score_b,
            confidence=sigmoid(abs(score_a - score_b)),
            details=details,
            labeler=f"{self.name}/m{member.index}",
        )
