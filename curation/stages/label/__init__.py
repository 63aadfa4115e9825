"""Labeling pairs: LLM judges, density-ratio and follow-up-likelihood rewards, reward models, the length baseline.

Every labeler is one module with a pure core (pairs table in, labels table out) registered in
``LABELERS``; ``build_labeler`` makes one from its recipe section. Modules are imported lazily
so a machine without torch can still use the others.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from curation.registry import load
from curation.stages.label.base import BackendPool, Labeler

LABELERS: dict[str, str] = {
    "judge_pairwise": "curation.stages.label.judge:PairwiseJudge",
    "judge_rubric": "curation.stages.label.judge:RubricJudge",
    "density_ratio": "curation.stages.label.density_ratio:DensityRatio",
    "follow_up": "curation.stages.label.follow_up:FollowUpLikelihood",
    "reward_model": "curation.stages.label.reward_model:RewardModel",
    "bt_ensemble": "curation.stages.label.bt_ensemble:BTEnsemble",
    "length": "curation.stages.label.length:LengthLabeler",
}


def labeler_class(kind: str) -> type[Labeler]:
    return load(LABELERS[kind])


def check_labeler(cfg: Any, data_root: str | Path) -> None:
    labeler_class(cfg.kind).check(cfg, data_root)


def build_labeler(cfg: Any, backends: BackendPool) -> Labeler:
    return labeler_class(cfg.kind)(cfg, backends)


__all__ = ["LABELERS", "BackendPool", "Labeler", "build_labeler", "check_labeler", "labeler_class"]
