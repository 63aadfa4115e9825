"""Canonical pairs as Python values, their stable content ids, and the rows stages write about them.

Adapters return ``PairDraft``s (what a source row says); the pipeline adds the ids and
source coordinates that make them rows of the ``pairs`` table (``check_structure`` says
whether a draft can be one at all). ``quarantine_row`` is the quarantine table's row for a
row or pair that failed, whichever stage found it.
"""

from __future__ import annotations

import hashlib
import struct
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from curation.errors import RowError

Message = dict[str, str]  # {"role": ..., "content": ...}
PAIR_PARTS = ("prompt", "chosen", "rejected")


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


ID_HEX_DIGITS = 32
"""Ids are the first 128 bits of a SHA-256, in hex: SHA-256 because CPUs hash it in hardware
(2.6 times blake2b's speed here), 128 bits because a collision among 10^12 pairs is still
about 1e-15 likely."""


def _canonical(messages: list[Message]) -> bytes:
    """A message list as bytes, unambiguously: the number of messages and each one's role and
    content lengths in bytes (little-endian int64), then the roles, then the contents. Every
    part but the header is already contiguous in an Arrow column, so the columns are hashed in
    place (``content_id_columns``)."""
    roles = [m["role"].encode("utf-8") for m in messages]
    contents = [m["content"].encode("utf-8") for m in messages]
    lengths = [n for role, content in zip(roles, contents) for n in (len(role), len(content))]
    return struct.pack(f"<{1 + len(lengths)}q", len(messages), *lengths) + b"".join(roles) + b"".join(contents)


def prompt_id(prompt: list[Message]) -> str:
    """Same conversation, same id, on any machine and in any run."""
    return hashlib.sha256(b"prompt\x1f" + _canonical(prompt)).hexdigest()[:ID_HEX_DIGITS]


def pair_id(prompt: list[Message], chosen: list[Message], rejected: list[Message]) -> str:
    """Order matters: swapping chosen and rejected is a different pair (a different label)."""
    return content_ids(prompt, chosen, rejected)[1]


def content_ids(prompt: list[Message], chosen: list[Message], rejected: list[Message]) -> tuple[str, str]:
    """(prompt_id, pair_id); the pair's hash covers the prompt through its id."""
    pid = prompt_id(prompt)
    pair = hashlib.sha256(b"pair\x1f" + pid.encode("ascii") + _canonical(chosen) + _canonical(rejected))
    return pid, pair.hexdigest()[:ID_HEX_DIGITS]


def content_id_columns(prompt: pa.Array, chosen: pa.Array, rejected: pa.Array) -> tuple[list[str], list[str]]:
    """``content_ids`` for whole ``messages`` arrays: (prompt ids, pair ids), equal to it row by row.

    A row's roles, and its contents, are contiguous bytes of the flattened columns, and numpy
    builds every row's length header at once, so Arrow views them as per-row binary columns
    without a copy, and one kernel call joins each row's pieces into the bytes it hashes. The
    SHA-256 calls are the one per-row Python step left: two a row."""
    prompt_bytes = _joined(_canonical_pieces(prompt))
    pair_bytes = _joined(_canonical_pieces(chosen) + _canonical_pieces(rejected))
    (prompt_at, prompt_buffer), (pair_at, pair_buffer) = _value_offsets(prompt_bytes), _value_offsets(pair_bytes)
    prompt_data, pair_data = memoryview(prompt_buffer or b""), memoryview(pair_buffer or b"")
    prompt_base, pair_start = hashlib.sha256(b"prompt\x1f"), b"pair\x1f"
    sha256, digits = hashlib.sha256, ID_HEX_DIGITS
    prompt_ids, pair_ids = [], []
    prompt_at, pair_at = prompt_at.tolist(), pair_at.tolist()
    for p0, p1, q0, q1 in zip(prompt_at[:-1], prompt_at[1:], pair_at[:-1], pair_at[1:]):
        h = prompt_base.copy()
        h.update(prompt_data[p0:p1])
        pid = h.hexdigest()[:digits]
        prompt_ids.append(pid)
        h = sha256(pair_start + pid.encode())
        h.update(pair_data[q0:q1])
        pair_ids.append(h.hexdigest()[:digits])
    return prompt_ids, pair_ids


def _canonical_pieces(messages: pa.Array) -> list[pa.Array]:
    """Per row, its ``_canonical`` bytes in three pieces, as binary columns over the buffers they
    are in: the length header (built here), the roles and the contents (no copy)."""
    if isinstance(messages, pa.ChunkedArray):
        messages = messages.combine_chunks()
    flat = messages.flatten()  # the rows' messages, in order (respects the array's offset)
    role_at, roles = _value_offsets(flat.field("role"))
    content_at, contents = _value_offsets(flat.field("content"))
    rows = messages.offsets.to_numpy().astype(np.int64)
    rows -= rows[0]
    count = np.diff(rows)
    header_at = np.zeros(len(count) + 1, np.int64)
    np.cumsum(1 + 2 * count, out=header_at[1:])
    header = np.empty(int(header_at[-1]), "<i8")
    header[header_at[:-1]] = count
    row_of = np.repeat(np.arange(len(count)), count)
    slot = header_at[row_of] + 1 + 2 * (np.arange(len(row_of)) - rows[row_of])
    header[slot] = np.diff(role_at)
    header[slot + 1] = np.diff(content_at)
    return [
        _binary(header_at * 8, pa.py_buffer(header)),
        _binary(role_at[rows], roles),
        _binary(content_at[rows], contents),
    ]


def _joined(pieces: list[pa.Array]) -> pa.Array:
    return pc.binary_join_element_wise(*pieces, pa.scalar(b"", pa.large_binary()))


def _binary(offsets: np.ndarray, data: pa.Buffer | None) -> pa.Array:
    offsets = np.ascontiguousarray(offsets, np.int64)
    return pa.Array.from_buffers(pa.large_binary(), len(offsets) - 1, [None, pa.py_buffer(offsets), data or pa.py_buffer(b"")])


def _value_offsets(values: pa.Array) -> tuple[np.ndarray, pa.Buffer | None]:
    """Each value's start in the data buffer of a string or binary array (one more: the end),
    and that buffer. A null value is empty (a null role or content is validate's to quarantine)."""
    if not len(values):
        return np.zeros(1, np.int64), None
    width = np.int64 if pa.types.is_large_string(values.type) or pa.types.is_large_binary(values.type) else np.int32
    offsets = np.frombuffer(values.buffers()[1], width)[values.offset : values.offset + len(values) + 1].astype(np.int64)
    return offsets, values.buffers()[2]


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


def quarantine_row(
    source: str, file: str, row: int, stage: str, err: RowError, raw: str | None, raw_bytes: int | None, pair_index: int | None = None
) -> dict[str, Any]:
    return {
        "source_dataset": source,
        "source_file": file,
        "source_row": row,
        "source_pair_index": pair_index,
        "stage": stage,
        "field": err.field,
        "error_code": err.code,
        "error": err.message,
        "raw": raw,
        "raw_bytes": raw_bytes,
    }


def response_text(messages: Sequence[dict[str, str]] | None) -> str:
    """A response stored as messages, as one text (multi-message responses joined by a blank line)."""
    return "\n\n".join(m["content"] for m in messages or [])


def render_conversation(messages: Sequence[dict[str, str]]) -> str:
    """The prompt conversation as people (and judges) read it: a lone user turn as is, else one labelled block per turn."""
    if len(messages) == 1 and messages[0]["role"] == "user":
        return messages[0]["content"]
    names = {"user": "User", "assistant": "Assistant", "system": "System", "tool": "Tool"}
    return "\n\n".join(f"{names.get(m['role'], m['role'].title())}: {m['content']}" for m in messages)
