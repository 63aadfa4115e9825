"""The ``evaluate`` section of a recipe: what the proxy models are trained with and measured on.

Either ``holdout_fraction`` (a seeded share of the kept pairs, by prompt, set aside before the
model stages: decision ``held_out_for_eval``), or ``sources`` (human-labelled sources read by
the same readers and adapters as the recipe's own), or both. Every trainer runs with each of
its ``seeds``; the figures are means over seeds with bootstrap intervals over pairs.
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field, model_validator

from curation.errors import repeated
from curation.models.config import BackendConfig, minilm
from curation.sources import SourceConfig
from curation.strict import Strict


class BtEmbedConfig(Strict):
    """A Bradley-Terry head on frozen sentence embeddings: seconds on a CPU."""

    kind: Literal["bt_embed"] = "bt_embed"
    embedder: BackendConfig = Field(default_factory=minilm, description="any sentence-transformers model")
    features: Literal["response", "response_prompt"] = Field(default="response", description="what the head sees")
    l2: float = Field(default=10.0, gt=0, description="L2 penalty of the logistic fit (loss summed over pairs)")
    seeds: list[int] = Field(default_factory=lambda: [0], min_length=1)


class LoraConfig(Strict):
    r: int = Field(default=8, ge=1)
    alpha: int = Field(default=16, ge=1)
    dropout: float = Field(default=0.0, ge=0, lt=1)
    target_modules: list[str] | None = Field(default=None, description="default: the attention projections")


class HfTrainerConfig(Strict):
    """What both TRL trainers (reward model, DPO) take: a Hugging Face model and its training."""

    model: str = Field(default="smollm2", description="'smollm2', a local HF folder, or a hub name where the machine is online")
    lora: LoraConfig | None = Field(default=None, description="train LoRA adapters only (peft)")
    epochs: float = Field(default=1.0, gt=0)
    learning_rate: float = Field(default=5e-5, gt=0)
    batch_size: int = Field(default=8, ge=1)
    max_length: int = Field(default=512, ge=16)
    max_train_pairs: int | None = Field(default=None, ge=1, description="train on at most this many pairs (seeded sample)")
    seeds: list[int] = Field(default_factory=lambda: [0], min_length=1)


class RewardModelConfig(HfTrainerConfig):
    """A sequence-classification reward model fine-tuned with TRL's RewardTrainer."""

    kind: Literal["reward_model"] = "reward_model"


class DpoConfig(HfTrainerConfig):
    """A policy trained with TRL's DPOTrainer; its implicit reward is the margin."""

    kind: Literal["dpo"] = "dpo"
    lora: LoraConfig | None = Field(default_factory=LoraConfig, description="train LoRA adapters only (peft); null: the full model")
    beta: float = Field(default=0.1, gt=0)
    learning_rate: float = Field(default=5e-6, gt=0)
    batch_size: int = Field(default=4, ge=1)


TrainerConfig = Annotated[BtEmbedConfig | RewardModelConfig | DpoConfig, Field(discriminator="kind")]


class LeakageConfig(Strict):
    """When an evaluation pair's prompt counts as seen in training (``curation.overlap``)."""

    ngram: int = Field(default=8, ge=1, description="token n-gram length")
    ngram_threshold: float = Field(default=0.5, ge=0, lt=1, description="share of a prompt's tokens in shared n-grams")
    minhash_threshold: float | None = Field(default=0.8, gt=0, le=1, description="MinHash Jaccard for a near duplicate; null: off")


class EvaluateConfig(Strict):
    holdout_fraction: float | None = Field(default=None, gt=0, lt=1, description="share of the kept prompts set aside for evaluation")
    holdout_seed: int = 0
    sources: list[SourceConfig] = Field(default_factory=list, description="human-labelled evaluation sources, as the recipe's sources")
    trainers: list[TrainerConfig] = Field(default_factory=lambda: [BtEmbedConfig()], min_length=1)
    leakage: LeakageConfig = Field(default_factory=LeakageConfig)
    bootstrap: int = Field(default=1000, ge=100, description="bootstrap resamples for every interval")

    @model_validator(mode="after")
    def _some_set(self) -> EvaluateConfig:
        if self.holdout_fraction is None and not self.sources:
            raise ValueError("evaluate: give holdout_fraction, sources, or both")
        if dupes := repeated(s.name for s in self.sources):
            raise ValueError(f"evaluate.sources names must be unique, repeated: {', '.join(dupes)}")
        return self
