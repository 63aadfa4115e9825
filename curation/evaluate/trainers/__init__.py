"""Proxy trainers, registered by kind and imported lazily (the heavy ones need torch and TRL)."""

from __future__ import annotations

from typing import Any

from curation.registry import load

TRAINERS: dict[str, str] = {
    "bt_embed": "curation.evaluate.trainers.bt_embed:BtEmbedTrainer",
    "reward_model": "curation.evaluate.trainers.reward_model:RewardModelTrainer",
    "dpo": "curation.evaluate.trainers.dpo:DpoTrainer",
}


def trainer_class(kind: str) -> Any:
    return load(TRAINERS[kind])
