"""The recipe's content rules for canonical pairs: what makes a pair unusable whatever its source.

``check_content`` checks roles, empty prompt or response and identical responses, one pair at
a time, and words the error. "Empty" and "identical" read text as a person sees it
(``curation.text.visible``): a response of zero-width spaces, NULs or a lone BOM is empty, and
two responses that differ only by such invisible characters are identical; the validate stage runs it over the pairs ``fast`` flags. (Whether
a draft can be a row of the ``pairs`` table at all, types and valid Unicode, is checked at
ingest: ``curation.records.check_structure``.) A failing pair goes to quarantine with a stable
code and the field at fault.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from typing import Any

from curation.errors import RowError
from curation.records import PAIR_PARTS
from curation.text import visible


def check_content(pair: dict[str, Any], *, allowed_roles: frozenset[str], allow_empty_prompt: bool = False) -> None:
    """Raise RowError for the first rule a structurally valid pair breaks."""
    for part in PAIR_PARTS:
        for i, m in enumerate(pair[part]):
            if m["role"] not in allowed_roles:
                raise RowError(
                    "invalid_role",
                    f"{part}[{i}].role is {m['role']!r}; allowed roles: {', '.join(sorted(allowed_roles))}",
                    f"{part}[{i}].role",
                )
    prompt = pair["prompt"]
    if not allow_empty_prompt and not any(visible(m["content"]) for m in prompt):
        raise RowError("empty_prompt", "prompt is empty", "prompt")
    if prompt and prompt[-1]["role"] == "assistant":
        raise RowError("invalid_role", "prompt ends with an assistant turn; the compared responses must answer a user turn", "prompt")
    for part in ("chosen", "rejected"):
        messages = pair[part]
        if not any(visible(m["content"]) for m in messages):
            raise RowError("empty_response", f"{part} response is empty", part)
        if messages[0]["role"] != "assistant":
            raise RowError("invalid_role", f"{part} must start with an assistant message, got {messages[0]['role']!r}", f"{part}[0].role")
    if _text(pair["chosen"]) == _text(pair["rejected"]):
        raise RowError("identical_responses", "chosen and rejected are identical", "rejected")


def _text(messages: Iterable[dict[str, str]]) -> tuple[tuple[str, str], ...]:
    return tuple((m["role"], visible(m["content"])) for m in messages)


def pair_as_raw(pair: dict[str, Any], limit: int) -> tuple[str, int]:
    """The pair as quarantine stores it: JSON, truncated to ``limit`` bytes."""
    data = json.dumps({k: pair.get(k) for k in PAIR_PARTS}, ensure_ascii=False).encode("utf-8", "backslashreplace")
    return data[:limit].decode("utf-8", "ignore"), len(data)
