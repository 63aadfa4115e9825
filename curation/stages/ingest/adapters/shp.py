"""Two responses and a judgement of which is better (SHP, PandaLM, most A/B datasets).

The prompt is one user message built from ``prompt_fields`` (joined with a blank line,
empty or null ones skipped: PandaLM's ``input`` is often empty). The judgement comes from
exactly one of:

* ``label_field``: a column saying A or B (SHP ``labels``: 1 = A preferred, 0 = B); a value
  in ``tie_values`` is a tie, any other value is quarantined (``invalid_value``);
* ``score_a_field``/``score_b_field``: vote counts, higher wins, equal is a tie;
* ``vote_fields``: one column per annotator (``a_vote``/``b_vote``/``tie_vote``); a side
  needs a strict majority of the votes cast (null votes are abstentions), so two "tie"
  votes against one "A" is a tie. Ties yield ``NoPairs("tie")``.

With none of them set, ``label_field`` defaults to ``labels`` (SHP). ``metadata_fields``
copies fields of the row into the pair's metadata under their path (a missing one is
quarantined, as in ``mapping``).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, model_validator

from curation.errors import NoPairs, RowError
from curation.records import PairDraft
from curation.stages.ingest.adapters._fields import check_metadata_names, copy_fields, finite, get_path, parse_score, wrong_type

Scalar = int | float | str | bool
RESERVED = {"preferred", "label", "score_a", "score_b", "votes", "agreement"}
"""The metadata keys the adapter writes itself."""


class Options(BaseModel):
    model_config = ConfigDict(extra="forbid")

    prompt_fields: list[str] = Field(
        default=["history"], min_length=1, description="fields joined with a blank line into the user message; empty ones skipped"
    )
    response_a_field: str = Field(default="human_ref_A", description="first response")
    response_b_field: str = Field(default="human_ref_B", description="second response")
    label_field: str | None = Field(
        default=None, description="field saying which response is better (default 'labels' when no other mode is set)"
    )
    a_value: Scalar = Field(default=1, description="label_field value meaning A is better")
    b_value: Scalar = Field(default=0, description="label_field value meaning B is better")
    tie_values: list[Scalar] = Field(
        default_factory=list, description="label_field values meaning a tie: the row is filtered (reason tie), not quarantined"
    )
    score_a_field: str | None = Field(default=None, description="votes/score for A; higher wins")
    score_b_field: str | None = Field(default=None, description="votes/score for B")
    min_ratio: float | None = Field(
        default=None, ge=1.0, description="winner/loser score ratio needed (SHP paper uses 2); a loser at 0 or less always passes"
    )
    vote_fields: list[str] | None = Field(default=None, min_length=1, description="one field per annotator; majority of votes cast wins")
    a_vote: Scalar = Field(default=1, description="annotator value meaning A is better")
    b_vote: Scalar = Field(default=2, description="annotator value meaning B is better")
    tie_vote: Scalar = Field(default=0, description="annotator value meaning a tie")
    min_agreement: float | None = Field(default=None, gt=0.0, le=1.0, description="share of votes cast the winner needs (1.0 = unanimous)")
    metadata_fields: list[str] = Field(default_factory=list, description="paths copied into metadata under their path")

    @model_validator(mode="after")
    def _one_mode(self) -> Options:
        scores = self.score_a_field is not None or self.score_b_field is not None
        modes = [
            name
            for name, on in (
                ("label_field", self.label_field is not None),
                ("score_a_field/score_b_field", scores),
                ("vote_fields", self.vote_fields is not None),
            )
            if on
        ]
        if len(modes) > 1:
            raise ValueError(f"set exactly one of label_field, score_a_field/score_b_field, vote_fields (got {' and '.join(modes)})")
        if not modes:
            self.label_field = "labels"
        if scores and (self.score_a_field is None or self.score_b_field is None):
            raise ValueError("score_a_field and score_b_field must be set together")
        if self.min_ratio is not None and not scores:
            raise ValueError("min_ratio needs score_a_field/score_b_field")
        if self.min_agreement is not None and self.vote_fields is None:
            raise ValueError("min_agreement needs vote_fields")
        if self.a_value == self.b_value:
            raise ValueError("a_value and b_value must differ")
        if self.tie_values and self.label_field is None:
            raise ValueError("tie_values needs label_field (vote_fields take tie_vote; equal scores are ties already)")
        if clash := [t for t in self.tie_values for v in (self.a_value, self.b_value) if _matches(t, v) or _matches(v, t)]:
            raise ValueError(f"tie_values must not hold a_value or b_value (got {clash[0]!r})")
        check_metadata_names(self.metadata_fields, RESERVED)
        if len({repr(v) for v in (self.a_vote, self.b_vote, self.tie_vote)}) < 3:
            raise ValueError("a_vote, b_vote and tie_vote must differ")
        return self


def _matches(value: Any, expected: Scalar) -> bool:
    """Equal, or the same value written as a string (CSV files have no integers)."""
    return value == expected or (isinstance(value, str) and value.strip() == str(expected))


def _prompt(row: dict, fields: list[str]) -> str:
    parts = []
    for f in fields:
        value = get_path(row, f)
        if value is None:
            continue
        if not isinstance(value, str):
            raise wrong_type(f, value, "string or null")
        if value.strip():
            parts.append(value)
    return "\n\n".join(parts)


def _text(row: dict, field: str) -> str:
    value = get_path(row, field)
    if not isinstance(value, str):
        raise wrong_type(field, value, "string")
    return value


def _judge(row: dict, o: Options) -> tuple[str, float | None, float | None, dict[str, Any]]:
    """(winner "a"|"b", winner score, loser score, metadata) or NoPairs for a tie."""
    if o.label_field is not None:
        label = finite(get_path(row, o.label_field), o.label_field)
        if _matches(label, o.a_value):
            return "a", None, None, {"label": label}
        if _matches(label, o.b_value):
            return "b", None, None, {"label": label}
        if any(_matches(label, t) for t in o.tie_values):
            raise NoPairs("tie")
        expected = [f"{o.a_value!r} (A)", f"{o.b_value!r} (B)"] + [f"{t!r} (tie)" for t in o.tie_values]
        raise RowError(
            "invalid_value",
            f"field {o.label_field!r} is {label!r}, expected {', '.join(expected[:-1])} or {expected[-1]}",
            field=o.label_field,
        )
    if o.vote_fields is None:
        a, b = (parse_score(get_path(row, f), f) for f in (o.score_a_field, o.score_b_field))
        for f, s in ((o.score_a_field, a), (o.score_b_field, b)):
            if s is None:
                raise RowError("missing_field", f"field {f!r} has no score", field=f)
        meta = {"score_a": a, "score_b": b}
        if a == b:
            raise NoPairs("tie")
        (win, hi, lo) = ("a", a, b) if a > b else ("b", b, a)
        if o.min_ratio is not None and lo > 0 and hi / lo < o.min_ratio:
            raise NoPairs("below_min_ratio")
        return win, hi, lo, meta
    votes = {"a": 0, "b": 0, "tie": 0}
    for f in o.vote_fields:
        v = finite(get_path(row, f), f)
        if v is None:
            continue  # abstention
        kind = next((k for k, e in (("a", o.a_vote), ("b", o.b_vote), ("tie", o.tie_vote)) if _matches(v, e)), None)
        if kind is None:
            raise RowError(
                "invalid_value", f"field {f!r} is {v!r}, expected {o.a_vote!r} (A), {o.b_vote!r} (B) or {o.tie_vote!r} (tie)", field=f
            )
        votes[kind] += 1
    cast = sum(votes.values())
    if cast == 0:
        raise NoPairs("no_votes")
    win = next((k for k in ("a", "b") if 2 * votes[k] > cast), None)
    if win is None:
        raise NoPairs("tie")
    agreement = votes[win] / cast
    if o.min_agreement is not None and agreement < o.min_agreement:
        raise NoPairs("below_min_agreement")
    lose = "b" if win == "a" else "a"
    return win, float(votes[win]), float(votes[lose]), {"votes": votes, "agreement": round(agreement, 4)}


def build(options: Options) -> Callable[[dict, str], list[PairDraft]]:
    o = options

    def adapt(row: dict, row_key: str) -> list[PairDraft]:
        prompt = [{"role": "user", "content": _prompt(row, o.prompt_fields)}]
        a, b = _text(row, o.response_a_field), _text(row, o.response_b_field)
        extra = copy_fields(row, o.metadata_fields)
        win, win_score, lose_score, meta = _judge(row, o)
        chosen, rejected = (a, b) if win == "a" else (b, a)
        return [
            PairDraft(
                prompt=prompt,
                chosen=[{"role": "assistant", "content": chosen}],
                rejected=[{"role": "assistant", "content": rejected}],
                chosen_score=win_score,
                rejected_score=lose_score,
                metadata={**extra, "preferred": win, **meta},
            )
        ]

    return adapt
