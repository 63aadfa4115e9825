"""TRL preference rows, in the four shapes TRL's DPO trainer accepts.

* standard, explicit prompt: ``prompt``/``chosen``/``rejected`` strings;
* conversational, explicit prompt: the same fields as lists of ``{"role", "content"}``;
* implicit prompt (no ``prompt`` field, or null): ``chosen``/``rejected`` carry the whole
  conversation (or text) and the prompt is their shared beginning.

The format is detected per row from ``chosen``. Implicit prompts follow
``trl.data_utils.extract_prompt`` exactly so a dataset means the same here as in TRL:

* conversational: the prompt is the shared leading messages. Like TRL, when one side is a
  prefix of the other (or both are equal) the last shared message moves to the completions,
  so neither completion is empty.
* standard strings: the prompt is the shared leading *characters*, minus a space at the
  boundary, which TRL leaves at the start of both completions (``"The sky is"`` /
  ``" blue."``); texts are not stripped. An empty shared prefix gives an empty prompt list
  (TRL would look at the string's last character there, a quirk we do not copy).

An explicit string ``prompt`` next to conversational completions is used as the user turn
when the completions start with an assistant message; when they carry the conversation
themselves, the prompt is extracted from them as TRL's ``maybe_extract_prompt`` does. An
explicit message-list prompt with string completions wraps each completion as one
assistant message. A ``system`` string field, when present, is prepended as a system
message unless the prompt already starts with one.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, TypeVar

from pydantic import BaseModel, ConfigDict, Field

from curation.errors import RowError
from curation.records import Message, PairDraft
from curation.stages.ingest.adapters._fields import MISSING, check_messages, get_path, wrong_type

T = TypeVar("T", str, list)


class Options(BaseModel):
    model_config = ConfigDict(extra="forbid")

    prompt_field: str = Field(default="prompt", description="prompt field; absent or null means the prompt is implicit in chosen/rejected")
    chosen_field: str = Field(default="chosen", description="preferred completion: a string or a list of messages")
    rejected_field: str = Field(default="rejected", description="dispreferred completion, same format as chosen")
    system_field: str | None = Field(default="system", description="optional system prompt string field; absent or null adds nothing")


def extract_shared_prefix(chosen: T, rejected: T) -> int:
    """Index where TRL's ``extract_prompt`` splits (same loop, same quirks, minus the idx-0 one)."""
    n = min(len(chosen), len(rejected))
    idx = n - 1  # TRL's loop variable when nothing differs: the last shared item goes to the completions
    for i in range(n):
        if chosen[i] != rejected[i]:
            idx = i
            if i > 0 and chosen[i - 1] == " ":  # remove the space before the completion
                idx = i - 1
            break
    return max(idx, 0)


def _completion(value: Any, field: str) -> str | list[Message]:
    if isinstance(value, str):
        return value
    if isinstance(value, list):
        return check_messages(value, field)
    raise wrong_type(field, value, "string or list of messages")


def build(options: Options) -> Callable[[dict, str], list[PairDraft]]:
    pf, cf, rf, sf = options.prompt_field, options.chosen_field, options.rejected_field, options.system_field

    def adapt(row: dict, row_key: str) -> list[PairDraft]:
        chosen = _completion(get_path(row, cf), cf)
        rejected = _completion(get_path(row, rf), rf)
        conversational = isinstance(chosen, list)
        if isinstance(rejected, list) != conversational:
            expected = "list of messages" if conversational else "string"
            raise wrong_type(rf, get_path(row, rf), f"{expected} like {cf!r}")
        raw_prompt = get_path(row, pf, required=False)
        prompt: list[Message] | None = None
        metadata: dict[str, Any] = {}
        if raw_prompt is not MISSING and raw_prompt is not None:
            if isinstance(raw_prompt, str):
                if not conversational:
                    prompt = [{"role": "user", "content": raw_prompt}]
                elif chosen and chosen[0]["role"] == "assistant" and rejected and rejected[0]["role"] == "assistant":
                    prompt = [{"role": "user", "content": raw_prompt}]
                else:
                    metadata["prompt_field_ignored"] = True  # TRL's maybe_extract_prompt does the same
            elif isinstance(raw_prompt, list):
                prompt = check_messages(raw_prompt, pf)
            else:
                raise wrong_type(pf, raw_prompt, "string, list of messages, or null")
        if prompt is None:  # implicit prompt
            metadata["implicit_prompt"] = True
            if not chosen or not rejected:
                empty = cf if not chosen else rf
                raise RowError("invalid_value", f"field {empty!r} is empty: cannot extract an implicit prompt", field=empty)
            cut = extract_shared_prefix(chosen, rejected)
            shared, chosen, rejected = chosen[:cut], chosen[cut:], rejected[cut:]
            if conversational:
                prompt = list(shared)
            else:
                prompt = [{"role": "user", "content": shared}] if shared else []
        chosen_msgs = _as_assistant(chosen)
        rejected_msgs = _as_assistant(rejected)
        if sf is not None:
            system = get_path(row, sf, required=False)
            if system is not MISSING and system is not None:
                if not isinstance(system, str):
                    raise wrong_type(sf, system, "string or null")
                if not (prompt and prompt[0]["role"] == "system"):
                    prompt = [{"role": "system", "content": system}, *prompt]
        return [PairDraft(prompt=prompt, chosen=chosen_msgs, rejected=rejected_msgs, metadata=metadata)]

    return adapt


def _as_assistant(value: str | Sequence[Message]) -> list[Message]:
    return [{"role": "assistant", "content": value}] if isinstance(value, str) else list(value)
