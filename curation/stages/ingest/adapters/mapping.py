"""Generic column mapping, for sources no dedicated adapter fits.

Each option is a dotted field path into the row. Prompt strings become one user message
and chosen/rejected strings one assistant message; lists are taken as messages. With
``swap_when``, rows whose field equals a value have chosen and rejected (and their scores)
swapped: for datasets with a "which one is better" column over fixed A/B columns. That column
is the row's label: ``tie_values`` lists its values that mean a tie (the row is filtered with
reason ``tie``), and a label that is no single value (an object or list) or not finite (NaN,
infinity) is quarantined naming the field, never read as "not swapped".
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, model_validator

from curation.errors import NoPairs
from curation.records import PairDraft
from curation.stages.ingest.adapters._fields import (
    MISSING,
    check_metadata_names,
    copy_fields,
    finite,
    get_path,
    parse_score,
    to_messages,
    wrong_type,
)


class SwapWhen(BaseModel):
    model_config = ConfigDict(extra="forbid")

    field: str = Field(description="dotted path of the field to test")
    equals: Any = Field(description="when the field equals this value, chosen and rejected are swapped")


class Options(BaseModel):
    model_config = ConfigDict(extra="forbid")

    prompt: str = Field(default="prompt", description="path of the prompt: a string (one user message) or a list of messages")
    chosen: str = Field(default="chosen", description="path of the preferred response: a string (one assistant message) or messages")
    rejected: str = Field(default="rejected", description="path of the dispreferred response")
    system: str | None = Field(default=None, description="path of an optional system prompt string; null or absent adds nothing")
    chosen_score: str | None = Field(default=None, description="path of the chosen response's score (number or numeric string)")
    rejected_score: str | None = Field(default=None, description="path of the rejected response's score")
    metadata_fields: list[str] = Field(default_factory=list, description="paths copied into metadata under their path")
    swap_when: SwapWhen | None = Field(default=None, description="{field, equals}: swap chosen and rejected on rows where field == equals")
    tie_values: list[Any] = Field(
        default_factory=list, description="values of swap_when's field meaning a tie: the row is filtered (reason tie), not kept"
    )

    @model_validator(mode="after")
    def _ties(self) -> Options:
        if self.tie_values and self.swap_when is None:
            raise ValueError("tie_values needs swap_when: its field is the label the tie values are read from")
        if self.swap_when is not None and any(t == self.swap_when.equals for t in self.tie_values):
            raise ValueError(f"tie_values must not hold swap_when.equals ({self.swap_when.equals!r})")
        check_metadata_names(self.metadata_fields, {"swapped"})
        return self


def _score(row: dict, path: str | None) -> float | None:
    return None if path is None else parse_score(get_path(row, path), path)


def _label(row: dict, when: SwapWhen) -> Any:
    """The value of the label field: one finite scalar (or null), unless ``equals`` is itself an object or list."""
    value = finite(get_path(row, when.field), when.field)
    if isinstance(value, (dict, list)) and not isinstance(when.equals, (dict, list)):
        raise wrong_type(when.field, value, "a single value (string, number, bool or null)")
    return value


def build(options: Options) -> Callable[[dict, str], list[PairDraft]]:
    o = options

    def adapt(row: dict, row_key: str) -> list[PairDraft]:
        prompt = to_messages(get_path(row, o.prompt), o.prompt, "user")
        chosen = to_messages(get_path(row, o.chosen), o.chosen, "assistant")
        rejected = to_messages(get_path(row, o.rejected), o.rejected, "assistant")
        if o.system is not None:
            system = get_path(row, o.system, required=False)
            if system is not MISSING and system is not None:
                if not isinstance(system, str):
                    raise wrong_type(o.system, system, "string or null")
                prompt = [{"role": "system", "content": system}, *prompt]
        chosen_score, rejected_score = _score(row, o.chosen_score), _score(row, o.rejected_score)
        metadata: dict[str, Any] = copy_fields(row, o.metadata_fields)
        if o.swap_when is not None:
            label = _label(row, o.swap_when)
            if label == o.swap_when.equals:
                chosen, rejected = rejected, chosen
                chosen_score, rejected_score = rejected_score, chosen_score
                metadata["swapped"] = True
            elif any(label == t for t in o.tie_values):
                raise NoPairs("tie")
        return [PairDraft(prompt, chosen, rejected, chosen_score, rejected_score, metadata=metadata)]

    return adapt
