"""Canonical pairs as Python values, and their stable content ids.

Adapters return ``PairDraft``s (what a source row says); the pipeline adds the ids and
source coordinates that make them rows of the ``pairs`` table.
"""

from __future__ import annotations

import hashlib
import json
import re
import unicodedata
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
    return json.dumps([[m["role"], m["content"]] for m in messages], ensure_ascii=False, separators=(",", ":"))


def prompt_id(prompt: list[Message]) -> str:
    """Same conversation, same id, on any machine and in any run."""
    return _digest("prompt\x1f" + _canonical(prompt))


def pair_id(prompt: list[Message], chosen: list[Message], rejected: list[Message]) -> str:
    """Order matters: swapping chosen and rejected is a different pair (a different label)."""
    return _digest("pair\x1f" + _canonical(prompt) + "\x1f" + _canonical(chosen) + "\x1f" + _canonical(rejected))


_SPACE = re.compile(r"\s+")


def normalize_text(text: str) -> str:
    """Text as exact dedup compares it: Unicode NFKC, case-folded, whitespace collapsed."""
    return _SPACE.sub(" ", unicodedata.normalize("NFKC", text)).strip().casefold()


def dedup_key(prompt: list[Message], chosen: list[Message], rejected: list[Message]) -> str:
    """Hash of the normalised pair: two rows that differ only in case or spacing collide."""
    parts = []
    for name, messages in (("p", prompt), ("c", chosen), ("r", rejected)):
        parts.append(name + "".join(f"\x1e{m['role']}\x1f{normalize_text(m['content'])}" for m in messages))
    return _digest("\x1d".join(parts))
