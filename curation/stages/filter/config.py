"""The ``filter`` section of a recipe: noise filters and routing, run in the listed order.

Each step has its own typed section told apart by ``kind``; ``name`` (default: the kind) is
the ``stage`` recorded on its decisions rows, so two margin steps can run with different
labelers. Model-backed steps take the same ``BackendConfig`` blocks as the labelers.
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field, model_validator

from curation.errors import repeated
from curation.models.config import BackendConfig, minilm
from curation.strict import Strict

STEP_NAME = r"^[a-z0-9][a-z0-9_.-]{0,63}$"


class StepBase(Strict):
    name: str | None = Field(default=None, pattern=STEP_NAME, description="stage name on its decisions rows (default: the kind)")
    sources: list[str] | None = Field(default=None, description="judge only pairs of these source datasets (default: all)")

    @property
    def stage_name(self) -> str:
        return self.name or self.kind  # type: ignore[attr-defined]


class MarginStep(StepBase):
    """Drop pairs whose margin is below a threshold. The margin is one labeler's, or the mean
    over a labeler group's members (an ensemble), or over several names."""

    kind: Literal["margin"] = "margin"
    labelers: list[str] = Field(min_length=1, description="labeler or labeler_group names; their valid margins are averaged per pair")
    min_margin: float | None = Field(default=None, description="drop pairs with margin < this (absolute)")
    quantile: float | None = Field(default=None, gt=0, lt=1, description="drop the lowest this fraction of margins (per source)")
    per_source: dict[str, float] = Field(default_factory=dict, description="source -> threshold (same unit as min_margin / quantile)")
    missing: Literal["keep", "filter"] = Field(default="keep", description="pairs with no valid margin from these labelers")

    @model_validator(mode="after")
    def _one_threshold(self) -> MarginStep:
        if (self.min_margin is None) == (self.quantile is None):
            raise ValueError("margin: give exactly one of min_margin (absolute) or quantile (fraction to drop)")
        if self.quantile is not None and any(not 0 < q < 1 for q in self.per_source.values()):
            raise ValueError("margin: per_source quantiles must be in (0, 1)")
        return self


class VotingStep(StepBase):
    """Multi-reward-model voting (Secrets of RLHF II): per pair the mean and population std of
    the labelers' margins; flip confident disagreements, drop the ambiguous, keep the strength."""

    kind: Literal["voting"] = "voting"
    labelers: list[str] = Field(min_length=1, description="labeler or labeler_group names; every member is one vote")
    standardise: bool = Field(
        default=True, description="divide each voter's margins by their std over all pairs (voters on different scales)"
    )
    rule: Literal["quantile", "threshold", "confidence"] = Field(
        default="quantile",
        description="quantile: the paper's bands of pairs sorted by mean; threshold: absolute mean / std cut-offs; "
        "confidence: flip when the votes' mean is below 0 by more than z standard errors (adapts to the noise level)",
    )
    flip_quantile: float = Field(
        default=0.2, ge=0, le=1, description="quantile rule: flip pairs in the lowest this fraction whose mean < 0"
    )
    ambiguous_quantile: float = Field(
        default=0.4, ge=0, le=1, description="quantile rule: pairs between flip_quantile and this are ambiguous"
    )
    flip_below: float = Field(default=-1.0, description="threshold rule: flip when mean < this (and std < max_std)")
    ambiguous_within: float = Field(default=0.25, ge=0, description="threshold rule: ambiguous when |mean| <= this")
    max_std: float | None = Field(default=None, gt=0, description="threshold rule: ambiguous when std > this; no flip either")
    z: float = Field(
        default=0.5,
        ge=0,
        description="confidence rule: flip when mean < -z * std / sqrt(votes), ambiguous when |mean| <= that bound "
        "(0.5: best F1 in benchmarks/label_noise.py; members share training data, so it is no calibrated test level)",
    )
    ambiguous: Literal["drop", "keep"] = Field(default="drop", description="drop ambiguous pairs, or keep them (strength as soft label)")
    min_votes: int = Field(default=2, ge=1, description="pairs with fewer valid votes are kept untouched (no decision)")


class ChesStep(StepBase):
    """CHES (Razin et al.): drop the pairs most prone to likelihood displacement."""

    kind: Literal["ches"] = "ches"
    backend: BackendConfig = Field(description="the policy model (transformers backend: needs hidden states)")
    normalised: bool = Field(default=True, description="rank by length-normalised CHES (the paper's filter) rather than raw CHES")
    drop_fraction: float = Field(
        default=0.1, ge=0, le=1, description="drop this fraction with the highest score (paper's safety run: 0.95)"
    )
    limit: int | None = Field(
        default=None, ge=1, description="score at most this many pairs per source (quick runs); the rest get no decision"
    )
    batch_size: int = Field(default=8, ge=1, description="pairs per model call")


class NearDedupStep(StepBase):
    """Near-duplicates by MinHash LSH over word shingles (datasketch)."""

    kind: Literal["near_dedup"] = "near_dedup"
    level: Literal["prompt", "pair"] = Field(
        default="prompt", description="prompt: cluster prompts (pairs of other prompts in a cluster go); pair: whole pairs"
    )
    threshold: float = Field(default=0.8, gt=0, le=1, description="estimated Jaccard similarity at which two texts are near-duplicates")
    num_perm: int = Field(default=128, ge=16, le=1024)
    shingle: int = Field(default=3, ge=1, description="words per shingle")
    seed: int = 1


class SemanticDedupStep(StepBase):
    """Semantic duplicates: embedding cosine similarity above a threshold."""

    kind: Literal["semantic_dedup"] = "semantic_dedup"
    level: Literal["prompt", "pair"] = "prompt"
    threshold: float = Field(default=0.95, gt=0, le=1, description="cosine similarity at which two texts are duplicates")
    embedder: BackendConfig = Field(default_factory=minilm)


class PromptCapStep(StepBase):
    """At most ``max_pairs`` pairs per prompt."""

    kind: Literal["prompt_cap"] = "prompt_cap"
    max_pairs: int = Field(ge=1)
    keep: Literal["first", "largest_margin"] = Field(default="first", description="which pairs of a prompt survive")
    labelers: list[str] = Field(default_factory=list, description="largest_margin: whose mean margin ranks the pairs")

    @model_validator(mode="after")
    def _labelers(self) -> PromptCapStep:
        if self.keep == "largest_margin" and not self.labelers:
            raise ValueError("prompt_cap: keep: largest_margin needs labelers")
        return self


class LengthBalanceStep(StepBase):
    """Drop the fewest pairs (a seeded choice) so that in each source the share of pairs whose
    chosen response is the longer one lies within ``target`` +- ``tolerance``; pairs of equal
    length count on neither side."""

    kind: Literal["length_balance"] = "length_balance"
    target: float = Field(default=0.5, gt=0, lt=1, description="share of chosen-longer pairs wanted per source (equal lengths left out)")
    tolerance: float = Field(default=0.02, ge=0, lt=0.5, description="accepted distance from target; pairs go only past it")
    seed: int = Field(default=0, description="which pairs of the over-represented side go (a hash of seed and pair id)")


class AILabelStep(StepBase):
    """Give unlabeled pairs (generated ones) an AI preference from a labeler: verdict A keeps
    the pair as is, B flips it; ties and invalid labels are dropped or kept unlabeled."""

    kind: Literal["ai_label"] = "ai_label"
    labelers: list[str] = Field(min_length=1, description="labeler or group names; the sign of their mean margin decides")
    undecided: Literal["filter", "keep"] = Field(default="filter", description="pairs with no valid or a zero mean margin")


class BenchmarkFile(Strict):
    """A file of benchmark prompts: JSONL, JSON (a list of objects), Parquet, or text (one prompt a line)."""

    name: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$", description="named in each match: matched_pair_id = NAME:ROW")
    path: str = Field(description="the file, relative to the recipe")
    field: str | None = Field(
        default=None, description="the prompt field (default: the first of prompt, question, instruction, text, messages); not for .txt"
    )


class DecontaminateStep(StepBase):
    """Drop pairs whose prompt overlaps a benchmark prompt or the run's evaluation prompts
    (``curation.overlap``: exact, n-gram coverage as in open-instruct's Tulu 3 decontamination, MinHash)."""

    kind: Literal["decontaminate"] = "decontaminate"
    benchmarks: list[BenchmarkFile] = Field(default_factory=list, description="benchmark prompt files, matched all at once")
    use_evaluation: bool = Field(default=True, description="also match the run's evaluation prompts (reference name: evaluation)")
    ngram: int = Field(default=8, ge=1, description="tokens per n-gram")
    ngram_threshold: float = Field(
        default=0.5, ge=0, lt=1, description="a benchmark prompt is matched when more than this share of its tokens are in shared n-grams"
    )
    minhash_threshold: float | None = Field(
        default=0.8, gt=0, le=1, description="estimated Jaccard of 3-token shingle sets for a MinHash match; null: off"
    )

    @model_validator(mode="after")
    def _names(self) -> DecontaminateStep:
        names = [b.name for b in self.benchmarks] + (["evaluation"] if self.use_evaluation else [])
        if dupes := repeated(names):
            raise ValueError(
                f"decontaminate: benchmark names must be unique ('evaluation' is the evaluation set's), repeated: {', '.join(dupes)}"
            )
        return self


class RouteStep(StepBase):
    """Hybrid human-AI routing: score every AI-labelled pair for how much a human label would
    help, send at most ``budget`` of them to people, merge completed human labels back."""

    kind: Literal["route"] = "route"
    budget: float = Field(gt=0, description="pairs to route: a count (>= 1) or a fraction of the candidates (< 1)")
    labelers: list[str] = Field(default_factory=list, description="labelers whose disagreement / std / margins are features (default: all)")
    weights: dict[str, float] = Field(default_factory=dict, description="feature -> weight of the routing score (default: built-in)")
    include_human: bool = Field(default=False, description="also consider pairs that already have a human label (re-annotation)")
    learn_from_human: bool = Field(
        default=False,
        description="fit the weights on the alive human-labelled pairs (>= 30, AI both right and wrong), else keep weights/defaults",
    )
    curve: bool = Field(
        default=True, description="report agreement vs budget on the run's human-labelled pairs (the run report's routing curve)"
    )
    seed: int = 0


FilterStep = Annotated[
    MarginStep
    | VotingStep
    | ChesStep
    | NearDedupStep
    | SemanticDedupStep
    | PromptCapStep
    | LengthBalanceStep
    | AILabelStep
    | DecontaminateStep
    | RouteStep,
    Field(discriminator="kind"),
]


class FilterConfig(Strict):
    steps: list[FilterStep] = Field(min_length=1, description="run in this order; each sees the pairs the previous ones kept")

    @model_validator(mode="after")
    def _unique_names(self) -> FilterConfig:
        if dupes := repeated(s.stage_name for s in self.steps):
            raise ValueError(f"filter step names must be unique (set name: on repeated kinds), repeated: {', '.join(dupes)}")
        if sum(s.kind == "route" for s in self.steps) > 1:
            raise ValueError("filter: at most one route step")
        return self
