"""The cheapest proxy: one Bradley-Terry head on frozen sentence embeddings, seconds on a CPU.

The same model as the ``bt_ensemble`` labeler (``curation.stages.label.bt_ensemble``: a linear
reward w . phi(x, y), fitted by Newton steps on the BT likelihood with an L2 penalty), but one
head on all training pairs, scored on the evaluation pairs. It cannot learn much (a linear
function of a 384-d MiniLM embedding), which is the point: it is sensitive to label noise and
cheap enough to run on every dataset version, so a curation that makes labels cleaner shows up
as a better head.

The seed changes nothing here: the fit is convex and full-batch, on every training pair, with
no sampling and no ties to break, so every seed gives the same margins. It is accepted for the
``Trainer`` contract; ``curate eval`` runs one seed of this trainer unless told otherwise.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa

from curation.errors import ConfigError, CurationError
from curation.evaluate.config import BtEmbedConfig
from curation.models import build_backend
from curation.progress import Progress
from curation.records import response_text
from curation.stages.label.bt_ensemble import EMBED_BACKENDS, embed_unique, features, fit_bt, prompt_text

NEWTON_STEPS = 200  # at most; the fit stops at convergence (~10 steps on HH-RLHF)


def pair_texts(table: pa.Table, with_prompt: bool) -> tuple[list[str], list[str], list[str] | None]:
    """(chosen texts, rejected texts, prompt texts or None), one per pair, in order."""
    chosen = [response_text(m) for m in table.column("chosen").to_pylist()]
    rejected = [response_text(m) for m in table.column("rejected").to_pylist()]
    prompts = [prompt_text(p) for p in table.column("prompt").to_pylist()] if with_prompt else None
    return chosen, rejected, prompts


class BtEmbedTrainer:
    """``fit_margins`` embeds every distinct text once per trainer object: the vectors are kept
    between calls (several seeds, or the same trainer on clean and noisy labels, embed nothing
    twice), while the embedding model itself is loaded per call and closed at its end."""

    kind = "bt_embed"

    def __init__(self, cfg: BtEmbedConfig, work_root: str):
        if cfg.embedder.backend not in EMBED_BACKENDS:
            raise ConfigError(
                f"trainer bt_embed: embedder backend {cfg.embedder.backend!r} does not serve embeddings; use {', '.join(EMBED_BACKENDS)}"
            )
        self.cfg, self.work_root = cfg, work_root
        self.vectors: dict[str, np.ndarray] = {}

    def fit_margins(self, train: pa.Table, evaluate: pa.Table, *, seed: int, work_dir: Path, progress: Progress) -> np.ndarray:
        """Fit the head on ``train``, return phi(chosen) . w - phi(rejected) . w per ``evaluate`` pair.
        ``seed`` and ``work_dir`` are unused: the fit is deterministic and writes nothing."""
        if train.num_rows == 0:
            raise CurationError("trainer bt_embed: no training pairs")
        with_prompt = self.cfg.features == "response_prompt"
        tr, ev = pair_texts(train, with_prompt), pair_texts(evaluate, with_prompt)
        self._embed([t for texts in (*tr, *ev) if texts for t in texts], progress)
        diffs = self._phi(*tr, chosen_side=True) - self._phi(*tr, chosen_side=False)
        weights = fit_bt(diffs, self.cfg.l2, NEWTON_STEPS)
        if evaluate.num_rows == 0:
            return np.zeros(0)
        return (self._phi(*ev, chosen_side=True) - self._phi(*ev, chosen_side=False)) @ weights

    def _phi(self, chosen: list[str], rejected: list[str], prompts: list[str] | None, *, chosen_side: bool) -> np.ndarray:
        responses = np.stack([self.vectors[t] for t in (chosen if chosen_side else rejected)])
        x = np.stack([self.vectors[p] for p in prompts]) if prompts is not None else None
        return features(self.cfg.features, x, responses)

    def _embed(self, texts: list[str], progress: Progress) -> None:
        """Embed the texts not seen yet; the model is loaded only when some are missing."""
        missing = sorted({t for t in texts if t not in self.vectors})
        if not missing:
            return
        backend = build_backend(self.cfg.embedder, self.work_root)
        try:
            self.vectors.update(embed_unique(backend, missing, progress, "bt_embed: embed"))
        finally:
            backend.close()
