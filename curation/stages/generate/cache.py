"""A persistent, content-addressed cache of model requests, so interrupted runs resume.

Key: the model, the backend-independent sampling parameters, the conversation sent and the
kind of request; the backend, URL and concurrency are not part of it, so the same request
served by vLLM or transformers is one entry. Every finished chunk is committed in one
SQLite transaction: a crash, kill -9 or Ctrl-C loses at most the chunk in flight, and a
rerun sends only the requests that are missing. Changing any parameter changes the key.
"""

from __future__ import annotations

import hashlib
import json
import sqlite3
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

from curation.models.base import Conversation, Generation, GenerationResult, ModelBackend, SamplingParams, Usage


def request_key(kind: str, model_identity: dict[str, Any], params: SamplingParams, conversation: Conversation) -> str:
    blob = json.dumps(
        {"kind": kind, "model": model_identity, "params": params.as_dict(), "conversation": conversation},
        sort_keys=True,
        ensure_ascii=False,
        separators=(",", ":"),
    )
    return hashlib.sha256(blob.encode("utf-8")).hexdigest()


class RequestCache:
    """Request key -> JSON result, in one SQLite file (WAL, one transaction per chunk)."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._con = sqlite3.connect(self.path, timeout=60, isolation_level=None)
        self._con.execute("PRAGMA journal_mode=WAL")
        self._con.execute("PRAGMA synchronous=NORMAL")
        self._con.execute(
            "CREATE TABLE IF NOT EXISTS requests (key TEXT PRIMARY KEY, kind TEXT NOT NULL, value TEXT NOT NULL, created REAL)"
        )
        self.hits = 0
        self.misses = 0

    def get_many(self, keys: Sequence[str]) -> dict[str, Any]:
        found: dict[str, Any] = {}
        unique = list(dict.fromkeys(keys))
        for i in range(0, len(unique), 500):
            part = unique[i : i + 500]
            marks = ",".join("?" * len(part))
            for key, value in self._con.execute(f"SELECT key, value FROM requests WHERE key IN ({marks})", part):
                found[key] = json.loads(value)
        return found

    def put_many(self, kind: str, items: dict[str, Any]) -> None:
        now = time.time()
        rows = [(k, kind, json.dumps(v, ensure_ascii=False), now) for k, v in items.items()]
        self._con.execute("BEGIN IMMEDIATE")
        try:
            self._con.executemany("INSERT OR REPLACE INTO requests VALUES (?, ?, ?, ?)", rows)
            self._con.execute("COMMIT")
        except BaseException:
            self._con.execute("ROLLBACK")
            raise

    def __len__(self) -> int:
        return self._con.execute("SELECT count(*) FROM requests").fetchone()[0]

    def close(self) -> None:
        self._con.close()


def _result_to_json(r: GenerationResult) -> dict[str, Any]:
    return {"generations": [asdict(g) for g in r.generations], "usage": asdict(r.usage)}


def _result_from_json(d: dict[str, Any]) -> GenerationResult:
    return GenerationResult([Generation(**g) for g in d["generations"]], Usage(**d["usage"]))


class CachedGenerator:
    """``backend.generate`` through the cache, in chunks, each chunk committed as it ends.

    ``on_chunk(n_done)``, when set, reports progress in requests finished. ``sent`` counts
    requests actually sent to the backend in this process (the rest came from the cache).
    """

    def __init__(self, backend: ModelBackend, model_identity: dict[str, Any], cache: RequestCache, *, chunk_size: int = 8):
        self.backend, self.identity, self.cache, self.chunk_size = backend, model_identity, cache, chunk_size
        self.sent = 0
        self.reused = 0
        self.on_chunk: Callable[[int], None] | None = None  # progress: requests finished
        self.usage = Usage(attempts=0)

    def key(self, conversation: Conversation, params: SamplingParams) -> str:
        return request_key("generate", self.identity, params, conversation)

    def generate(self, requests: Sequence[tuple[Conversation, SamplingParams]]) -> list[tuple[str, GenerationResult]]:
        """(cache key, result) per request, in order. Requests may have different params."""
        keys = [self.key(c, p) for c, p in requests]
        done = {k: _result_from_json(v) for k, v in self.cache.get_many(keys).items()}
        reused = sum(1 for k in keys if k in done)
        self.reused += reused
        if self.on_chunk and reused:
            self.on_chunk(reused)
        todo: dict[str, tuple[Conversation, SamplingParams]] = {}
        for key, req in zip(keys, requests):
            if key not in done:
                todo.setdefault(key, req)
        # Group by params so each backend call is one batched request set.
        by_params: dict[SamplingParams, list[str]] = {}
        for key, (_, params) in todo.items():
            by_params.setdefault(params, []).append(key)
        for params, group in by_params.items():
            for i in range(0, len(group), self.chunk_size):
                chunk = group[i : i + self.chunk_size]
                results = self.backend.generate([todo[k][0] for k in chunk], params)
                self.cache.put_many("generate", {k: _result_to_json(r) for k, r in zip(chunk, results)})
                for k, r in zip(chunk, results):
                    done[k] = r
                    self._add_usage(r.usage)
                self.sent += len(chunk)
                if self.on_chunk:
                    sent = set(chunk)
                    self.on_chunk(sum(1 for k in keys if k in sent))
        return [(k, done[k]) for k in keys]

    def _add_usage(self, u: Usage) -> None:
        self.usage.prompt_tokens += u.prompt_tokens
        self.usage.completion_tokens += u.completion_tokens
        self.usage.attempts += u.attempts
        self.usage.seconds += u.seconds
        if u.cost_usd is not None:
            self.usage.cost_usd = (self.usage.cost_usd or 0.0) + u.cost_usd
