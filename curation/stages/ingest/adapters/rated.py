"""Rated multi-completion rows (UltraFeedback style): one prompt, N scored completions.

``{"instruction": "...", "completions": [{"response": "...", "overall_score": 7.5,
"model": "..."}, ...]}``. Scores may sit at a dotted path (``annotations.helpfulness.Rating``)
and may be numeric strings; "N/A"/null scores mean "not rated": that completion is skipped
and counted in ``metadata["unscored"]``. Which pairs a row yields is the ``rule``:

* ``best_vs_random_lower``: the best completion against one random completion scored
  more than ``min_gap`` lower (seeded by row key and ``seed``: reproducible);
* ``best_vs_worst``: the best against the worst, if their gap is above ``min_gap``;
* ``all_above_gap``: every ordered pair whose score difference is above ``min_gap``.

Ties for best (or worst) go to the first such completion in the row, so results do not
depend on sorting stability or randomness.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Literal, NamedTuple

from pydantic import BaseModel, ConfigDict, Field

from curation.errors import NoPairs
from curation.records import PairDraft
from curation.stages.ingest.adapters._fields import MISSING, get_path, get_str, inside, parse_score, rng_for, to_messages, wrong_type


class Scored(NamedTuple):
    index: int
    text: str
    score: float
    model: Any


class Options(BaseModel):
    model_config = ConfigDict(extra="forbid")

    prompt_field: str = Field(default="instruction", description="prompt: a string (one user message) or a list of messages")
    completions_field: str = Field(default="completions", description="list of completion objects")
    text_field: str = Field(default="response", description="path of the completion text inside each completion")
    score_field: str = Field(default="overall_score", description="dotted path of the score inside each completion; 'N/A' or null skips it")
    model_field: str | None = Field(
        default=None, description="path of the model name inside each completion, copied to metadata (may be absent)"
    )
    rule: Literal["best_vs_random_lower", "best_vs_worst", "all_above_gap"] = Field(
        default="best_vs_random_lower", description="which pairs a row yields"
    )
    min_gap: float = Field(default=0.0, ge=0.0, description="pairs need chosen_score - rejected_score > min_gap")
    seed: int = Field(default=0, description="seed for best_vs_random_lower, mixed with the row key")


def build(options: Options) -> Callable[[dict, str], list[PairDraft]]:
    o = options

    def adapt(row: dict, row_key: str) -> list[PairDraft]:
        prompt = to_messages(get_path(row, o.prompt_field), o.prompt_field, "user")
        completions = get_path(row, o.completions_field)
        if not isinstance(completions, list):
            raise wrong_type(o.completions_field, completions, "list of completions")
        scored: list[Scored] = []
        all_scores: list[float | None] = []  # every completion's score, in row order, for metadata
        for i, comp in enumerate(completions):
            where = f"{o.completions_field}[{i}]"
            if not isinstance(comp, dict):
                raise wrong_type(where, comp, "object")
            with inside(where):
                text = get_str(comp, o.text_field)
                score = parse_score(get_path(comp, o.score_field), o.score_field)
                model = get_path(comp, o.model_field, required=False) if o.model_field else None
            model = None if model is MISSING else model  # a model name is nice to have, not required
            all_scores.append(score)
            if score is not None:
                scored.append(Scored(i, text, score, model))
        if len(scored) < 2:
            raise NoPairs("fewer_than_two_scored")
        if len({c.score for c in scored}) == 1:
            raise NoPairs("all_scores_equal")
        pairs = _select(scored, o, row_key)
        if not pairs:
            raise NoPairs("no_pair_above_gap")
        return [
            PairDraft(
                prompt=prompt,
                chosen=[{"role": "assistant", "content": c.text}],
                rejected=[{"role": "assistant", "content": r.text}],
                chosen_score=c.score,
                rejected_score=r.score,
                metadata=_metadata(c, r, o, all_scores),
            )
            for c, r in pairs
        ]

    return adapt


def _select(scored: list[Scored], o: Options, row_key: str) -> list[tuple[Scored, Scored]]:
    best = max(scored, key=lambda c: c.score)  # max() keeps the first of equal maxima
    if o.rule == "best_vs_worst":
        worst = min(scored, key=lambda c: c.score)
        return [(best, worst)] if best.score - worst.score > o.min_gap else []
    if o.rule == "best_vs_random_lower":
        lower = [c for c in scored if best.score - c.score > o.min_gap]
        return [(best, rng_for(row_key, o.seed).choice(lower))] if lower else []
    return [(a, b) for a in scored for b in scored if a.score - b.score > o.min_gap]


def _metadata(c: Scored, r: Scored, o: Options, all_scores: list[float | None]) -> dict[str, Any]:
    meta: dict[str, Any] = {
        "rule": o.rule,
        "chosen_index": c.index,
        "rejected_index": r.index,
        "scores": all_scores,
        "unscored": sum(s is None for s in all_scores),
    }
    if o.model_field:
        meta["chosen_model"], meta["rejected_model"] = c.model, r.model
    return meta
