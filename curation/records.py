"""Canonical pairs as Python values, and their stable content ids.

Adapters return ``PairDraft``s (what a source row says); the pipeline adds the ids and
source coordinates that make them rows of the ``pairs`` table.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from typing import Any

Message = dict[str, str]  # {"role": ..., "content": ...}


@dataclass
class PairDraft:
    """One comparison as a source row states it, before ids and validation."""

    prompt: list[Message]
    chosen: list[Message]
    rejected: list[Message]
    chosen_score: float | None = None
    rejected_score: float | None = None
    label_source: str = "human"
    label_model: str | None = None
    metadata: dict[str, Any] = field(default_factory=dict)


def _digest(payload: str) -> str:
    return hashlib.blake2b(payload.encode("utf-8"), digest_size=16).hexdigest()


def _canonical(messages: list[Message]) -> str:
    """Length-prefixed role and content of each message: unambiguous, and cheap to build."""
    return "".join(f"{len(m['role'])}:{m['role']}{len(m['content'])}:{m['content']}" for m in messages)


def prompt_id(prompt: list[Message]) -> str:
    """Same conversation, same id, on any machine and in any run."""
    return _digest("prompt\x1f" + _canonical(prompt))


def pair_id(prompt: list[Message], chosen: list[Message], rejected: list[Message]) -> str:
    """Order matters: swapping chosen and rejected is a different pair (a different label)."""
    return content_ids(prompt, chosen, rejected)[1]


def content_ids(prompt: list[Message], chosen: list[Message], rejected: list[Message]) -> tuple[str, str]:
    """(prompt_id, pair_id), encoding the prompt once."""
    p = _canonical(prompt)
    return _digest("prompt\x1f" + p), _digest("pair\x1f" + p + "\x1f" + _canonical(chosen) + "\x1f" + _canonical(rejected))
