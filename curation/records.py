"""Canonical pairs as Python values, and their stable content ids.

Adapters return ``PairDraft``s (what a source row says); the pipeline adds the ids and
source coordinates that make them rows of the ``pairs`` table.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

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


def content_id_columns(prompt: pa.Array, chosen: pa.Array, rejected: pa.Array) -> tuple[list[str], list[str]]:
    """``content_ids`` for whole ``messages`` arrays: (prompt ids, pair ids), equal to it row by row.

    pyarrow builds each message's canonical text in one pass; a row's canonical text is then a
    contiguous byte range of that column's buffer, hashed in place without a Python string
    per row. The blake2b calls are the one per-row Python step left.
    """
    p_starts, p_ends, p_bytes = _canonical_ranges(prompt)
    c_starts, c_ends, c_bytes = _canonical_ranges(chosen)
    r_starts, r_ends, r_bytes = _canonical_ranges(rejected)
    prompt_base = hashlib.blake2b(b"prompt\x1f", digest_size=16)
    pair_base = hashlib.blake2b(b"pair\x1f", digest_size=16)
    prompt_ids, pair_ids = [], []
    for ps, pe, cs, ce, rs, re_ in zip(p_starts, p_ends, c_starts, c_ends, r_starts, r_ends):
        text = p_bytes[ps:pe]
        h = prompt_base.copy()
        h.update(text)
        prompt_ids.append(h.hexdigest())
        h = pair_base.copy()
        h.update(text)
        h.update(b"\x1f")
        h.update(c_bytes[cs:ce])
        h.update(b"\x1f")
        h.update(r_bytes[rs:re_])
        pair_ids.append(h.hexdigest())
    return prompt_ids, pair_ids


def _canonical_ranges(messages: pa.Array) -> tuple[list[int], list[int], memoryview]:
    """Byte range of each row's ``_canonical`` text in one UTF-8 buffer (built by pyarrow's
    string kernels: 2.5x faster than the same in Polars, which then copies it out to Arrow)."""
    if isinstance(messages, pa.ChunkedArray):
        messages = messages.combine_chunks()
    flat = messages.flatten()  # the rows' messages, in order (respects the array's offset)
    role, content = flat.field("role"), flat.field("content")
    if content.nbytes > 1 << 30:  # 32-bit offsets would overflow
        role, content = role.cast(pa.large_string()), content.cast(pa.large_string())
    column = pc.binary_join_element_wise(
        pc.cast(pc.utf8_length(role), pa.string()), ":", role, pc.cast(pc.utf8_length(content), pa.string()), ":", content, ""
    )
    width = np.int64 if pa.types.is_large_string(column.type) else np.int32
    offsets = np.zeros(1, np.int64)  # no messages at all: every row's text is empty
    if len(column):
        offsets = np.frombuffer(column.buffers()[1], width)[column.offset : column.offset + len(column) + 1].astype(np.int64)
    rows = messages.offsets.to_numpy() - messages.offsets[0].as_py()
    return offsets[rows[:-1]].tolist(), offsets[rows[1:]].tolist(), memoryview(column.buffers()[2] or b"")
