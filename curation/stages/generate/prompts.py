"""Prompts to generate for: the prompt conversations of kept pairs, or a prompt file."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import pyarrow.parquet as pq

from curation.errors import SourceError
from curation.models.base import Conversation
from curation.records import prompt_id
from schemas import VALID_ROLES


@dataclass(frozen=True)
class Prompt:
    prompt_id: str
    conversation: Conversation
    origin: str  # "pairs" or "FILE:ROW"


def from_pairs(path: str | Path, limit: int | None, batch_size: int = 5_000) -> list[Prompt]:
    """Distinct prompt conversations in the order the pairs list them (streamed)."""
    seen: dict[str, Prompt] = {}
    for batch in pq.ParquetFile(path).iter_batches(batch_size=batch_size, columns=["prompt_id", "prompt"]):
        for pid, conv in zip(batch.column("prompt_id").to_pylist(), batch.column("prompt").to_pylist()):
            if pid not in seen and conv and conv[-1]["role"] == "user":
                seen[pid] = Prompt(pid, [dict(m) for m in conv], "pairs")
                if limit is not None and len(seen) >= limit:
                    return list(seen.values())
    return list(seen.values())


def from_file(path: str | Path, limit: int | None) -> list[Prompt]:
    """JSONL rows with ``prompt`` (a string) or ``messages`` (a conversation), or plain text
    with one prompt per line. A bad line is a clear error naming the file, line and field:
    a prompt file is written by hand, so stopping beats silently skipping."""
    path = Path(path)
    if not path.is_file():
        raise SourceError(f"prompt file not found: {path}")
    out: dict[str, Prompt] = {}
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except UnicodeDecodeError as err:
        raise SourceError(f"prompt file {path} is not UTF-8 ({err.reason} at byte {err.start})") from None
    is_jsonl = path.suffix in {".jsonl", ".json"}
    for i, line in enumerate(lines):
        if not line.strip():
            continue
        conv = _parse_line(path, i, line) if is_jsonl else [{"role": "user", "content": line.strip()}]
        pid = prompt_id(conv)
        out.setdefault(pid, Prompt(pid, conv, f"{path.name}:{i}"))
        if limit is not None and len(out) >= limit:
            break
    if not out:
        raise SourceError(f"prompt file {path} has no prompts")
    return list(out.values())


def _parse_line(path: Path, i: int, line: str) -> Conversation:
    where = f"{path}, line {i + 1}"
    try:
        row = json.loads(line)
    except json.JSONDecodeError as err:
        raise SourceError(f"{where}: invalid JSON ({err.msg})") from None
    if isinstance(row, dict) and isinstance(row.get("prompt"), str) and row["prompt"].strip():
        return [{"role": "user", "content": row["prompt"]}]
    if isinstance(row, dict) and isinstance(row.get("messages"), list) and row["messages"]:
        conv = row["messages"]
        for j, m in enumerate(conv):
            if not (isinstance(m, dict) and m.get("role") in VALID_ROLES and isinstance(m.get("content"), str)):
                raise SourceError(f"{where}: field 'messages[{j}]' must be {{role, content}} with a valid role")
        if conv[-1]["role"] != "user":
            raise SourceError(f"{where}: field 'messages' must end with a user turn")
        return [{"role": m["role"], "content": m["content"]} for m in conv]
    raise SourceError(f"{where}: expected a non-empty 'prompt' string or a 'messages' list")
