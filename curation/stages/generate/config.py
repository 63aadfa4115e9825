"""The ``generate`` section of a recipe: which prompts, which model, which strategies."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from curation.models.config import BackendConfig, minilm
from curation.strict import Strict

Strategy = Literal["iid", "sequential", "one_call", "persona"]

# Value profiles in the spirit of the Community Alignment paper's value axes; a recipe can
# replace them. They are phrased as who answers, never named in the answer.
DEFAULT_PERSONAS = [
    "a pragmatic engineer who values efficiency and concrete steps",
    "a cautious professional who puts safety and harm avoidance first",
    "a traditionalist who values family, faith, duty and community",
    "a progressive who values fairness, equality and social change",
    "a sceptical scientist who values evidence and says what is uncertain",
    "a warm counsellor who attends to feelings before facts",
    "a libertarian who values personal freedom and self-reliance",
    "a blunt expert who answers in a few short bullet points",
]


class PromptsConfig(Strict):
    from_: Literal["pairs", "file"] = Field(default="pairs", alias="from", description="prompts of the kept pairs, or a prompt file")
    path: str | None = Field(default=None, description="file: JSONL with 'prompt' (string) or 'messages' (list), or .txt, one per line")
    limit: int | None = Field(default=8, ge=1, description="at most this many distinct prompts (in input order)")

    @model_validator(mode="after")
    def _path(self) -> PromptsConfig:
        if self.from_ == "file" and not self.path:
            raise ValueError("prompts.from: file needs prompts.path")
        return self


class PairingConfig(Strict):
    mode: Literal["all", "sample"] = Field(default="all", description="all pairs of candidates, or k sampled pairs per prompt")
    k: int = Field(default=2, ge=1, description="sample: pairs per prompt")
    seed: int = 0


class GenerateConfig(Strict):
    generator: BackendConfig = Field(description="the backend section: change only this to move between CPU and GPU")
    embedder: BackendConfig = Field(
        default_factory=lambda: minilm(batch_size=32),
        description="for the diversity report",
    )
    prompts: PromptsConfig = Field(default_factory=PromptsConfig)
    n: int = Field(default=4, ge=1, description="candidates per prompt")
    max_tokens: int = Field(default=128, ge=1)
    temperature: float = Field(default=0.8, ge=0)
    top_p: float = Field(default=0.95, gt=0, le=1)
    seed: int = 0
    stop: list[str] = Field(default_factory=list)
    system_prompt: str | None = None
    strategy: Strategy = Field(default="iid", description="how the published candidates are sampled")
    compare: list[Strategy] = Field(
        default_factory=lambda: ["iid"], description="strategies also run on the same prompts, for the diversity report"
    )
    personas: list[str] = Field(default_factory=lambda: list(DEFAULT_PERSONAS), min_length=1)
    pairing: PairingConfig = Field(default_factory=PairingConfig)
    chunk_size: int = Field(default=8, ge=1, description="requests per backend call; each finished chunk is cached")
    cache_path: str | None = Field(default=None, description="request cache (default: DATA_ROOT/cache/requests.sqlite)")

    @property
    def strategies(self) -> list[Strategy]:
        """The published strategy first, then the comparison ones, each once."""
        return list(dict.fromkeys([self.strategy, *self.compare]))
