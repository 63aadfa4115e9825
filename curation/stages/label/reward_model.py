"""Reward-model labels: a Hugging Face sequence-classification reward model scores each response.

score_a = r(x, chosen), score_b = r(x, rejected), margin = score_a - score_b, verdict by the
margin's sign. The reward is the model's single logit over the chat template's rendering of the
conversation plus the response (the ``reward`` capability of the transformers and vLLM backends),
which is how RewardBench scores classifier reward models. Such models are trained with a
Bradley-Terry loss, so ``confidence`` is sigmoid(|margin|): the model's own probability that its
verdict is right.

All responses of a batch of pairs go to the backend in one call. When that call fails, each pair
is scored on its own, so one bad pair (longer than the model's context) becomes an invalid label
with the reason and the others are still scored; a config problem, or an ``Unsupported`` that hits
every pair, stops the run.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pyarrow as pa

from curation.errors import ConfigError
from curation.models import check_backend
from curation.models.base import ModelBackend
from curation.models.reward_head import reward_head_problem
from curation.stages.label.base import Labeler, PairView, isolate_failures, pair_views
from curation.stages.label.config import RewardModelConfig

REWARD_BACKENDS = ("transformers", "vllm")


def sigmoid(x: float) -> float:
    return 1.0 / (1.0 + math.exp(-x)) if x >= 0 else math.exp(x) / (1.0 + math.exp(x))


def pair_scores(backend: ModelBackend, views: Sequence[PairView]) -> list[tuple[float, float] | str]:
    """(reward of the chosen, reward of the rejected) per pair, or the error that pair hit."""
    return isolate_failures(views, lambda batch: _score(backend, batch))


def _score(backend: ModelBackend, views: Sequence[PairView]) -> list[tuple[float, float] | str]:
    n = len(views)
    values = backend.reward([v.prompt for v in views] * 2, [v.response_a for v in views] + [v.response_b for v in views])
    if len(values) != 2 * n:
        raise RuntimeError(f"the backend returned {len(values)} rewards for {2 * n} responses")
    out: list[tuple[float, float] | str] = []
    for a, b in zip(values[:n], values[n:]):
        finite = math.isfinite(a) and math.isfinite(b)
        out.append((float(a), float(b)) if finite else f"the reward model returned a non-finite score ({a}, {b})")
    return out


class RewardModel(Labeler):
    kind = "reward_model"
    cfg: RewardModelConfig

    @classmethod
    def check(cls, cfg: RewardModelConfig, data_root: str | Path) -> None:
        what = f"labeler {cfg.name!r}"
        if cfg.backend.backend not in REWARD_BACKENDS:
            raise ConfigError(f"{what}: backend {cfg.backend.backend!r} cannot run a reward model; use one of {', '.join(REWARD_BACKENDS)}")
        check_backend(cfg.backend, data_root)
        if problem := reward_head_problem(cfg.backend.model):
            raise ConfigError(f"{what}: {problem}")

    def models(self) -> list[str]:
        return [self.cfg.backend.model]

    def label(self, pairs: pa.Table) -> pa.Table:
        views = pair_views(pairs)
        scores = pair_scores(self.backends.get(self.cfg.backend), views)
        return self.table([self._row(view, score) for view, score in zip(views, scores)])

    def _row(self, view: PairView, score: tuple[float, float] | str) -> dict[str, Any]:
        if isinstance(score, str):
            return self.row(view.pair_id, None, None, verdict="invalid", error=score)
        a, b = score
        return self.row(view.pair_id, a, b, confidence=sigmoid(abs(a - b)))
