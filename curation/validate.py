"""Validation of canonical pairs: what makes a pair unusable whatever its source.

Two levels, so that every check lives in one place:
- ``check_structure``: can the draft be a row of the ``pairs`` table at all (types, text
  that is valid Unicode)? Run at ingest, before anything is written to Arrow.
- ``check_content``: the recipe's rules (roles, empty prompt or response, identical
  responses). Run by the validate stage over the stored pairs.
A failing pair goes to quarantine with a stable code and the field at fault.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from typing import Any

from curation.errors import RowError

PAIR_PARTS = ("prompt", "chosen", "rejected")


def check_structure(pair: dict[str, Any]) -> None:
    """Raise RowError unless prompt/chosen/rejected are lists of {role, content} strings."""
    texts: list[str] = []
    for part in PAIR_PARTS:
        messages = pair.get(part)
        if not isinstance(messages, list):
            raise RowError("wrong_type", f"{part} must be a list of messages, got {type(messages).__name__}", part)
        for i, m in enumerate(messages):
            if not isinstance(m, dict):
                raise RowError("wrong_type", f"{part}[{i}] must be a {{role, content}} object, got {type(m).__name__}", f"{part}[{i}]")
            role, content = m.get("role"), m.get("content")
            if type(role) is not str or type(content) is not str:
                key, value = ("role", role) if type(role) is not str else ("content", content)
                raise RowError("wrong_type", f"{part}[{i}].{key} must be a string, got {type(value).__name__}", f"{part}[{i}].{key}")
            texts.append(role)
            texts.append(content)
    try:
        "".join(texts).encode("utf-8")
    except UnicodeEncodeError:  # lone surrogates, e.g. from a "\ud800" JSON escape; find where
        for part in PAIR_PARTS:
            for i, m in enumerate(pair[part]):
                for key in ("role", "content"):
                    try:
                        m[key].encode("utf-8")
                    except UnicodeEncodeError:
                        raise RowError("undecodable_text", f"{part}[{i}].{key} is not valid Unicode text", f"{part}[{i}].{key}") from None
        raise


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
    if not allow_empty_prompt and not any(m["content"].strip() for m in prompt):
        raise RowError("empty_prompt", "prompt is empty", "prompt")
    if prompt and prompt[-1]["role"] == "assistant":
        raise RowError("invalid_role", "prompt ends with an assistant turn; the compared responses must answer a user turn", "prompt")
    for part in ("chosen", "rejected"):
        messages = pair[part]
        if not any(m["content"].strip() for m in messages):
            raise RowError("empty_response", f"{part} response is empty", part)
        if messages[0]["role"] != "assistant":
            raise RowError("invalid_role", f"{part} must start with an assistant message, got {messages[0]['role']!r}", f"{part}[0].role")
    if _text(pair["chosen"]) == _text(pair["rejected"]):
        raise RowError("identical_responses", "chosen and rejected are identical", "rejected")


def _text(messages: Iterable[dict[str, str]]) -> tuple[tuple[str, str], ...]:
    return tuple((m["role"], m["content"].strip()) for m in messages)


def pair_as_raw(pair: dict[str, Any], limit: int) -> tuple[str, int]:
    """The pair as quarantine stores it: JSON, truncated to ``limit`` bytes."""
    data = json.dumps({k: pair.get(k) for k in PAIR_PARTS}, ensure_ascii=False).encode("utf-8", "backslashreplace")
    return data[:limit].decode("utf-8", "ignore"), len(data)
