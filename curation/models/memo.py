"""Embeddings computed once: a per-process memo and a content-addressed disk store.

A text's vector depends only on the text and on the embedding model as it runs (its files, the
dtype it computes in, the library versions): that is the ``fingerprint``. Both caches key on
(fingerprint, sha256 of the text), so the BT ensemble, semantic dedup and the evaluation's
``bt_embed`` proxy, which embed many of the same responses, embed each once per run
(``EMBEDDINGS``, bounded in memory), and a rerun over the same data embeds nothing
(``EmbeddingStore`` under ``WORK_ROOT/cache/embeddings``).

Disk layout: ``<root>/<fingerprint>/<uuid>.vecs.npy`` (n x d float32) and ``<uuid>.keys.npy``
(n x 32 bytes: the texts' sha256 digests), one pair of files per batch of new vectors. Each file
is written under a temporary name and renamed (``os.replace``); the keys file is renamed last,
so a shard is visible only once both are whole, and a crash leaves whole shards or none.
Unreadable shards are skipped (their texts are embedded again).

``MemoEmbedder`` wraps any embedding backend with an unbounded per-text memo (tests,
benchmarks).
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
import threading
import time
import uuid
from collections import OrderedDict
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from curation.models.base import ModelBackend

CACHE_VERSION = 1  # bump when a change in the code changes the vectors
MEMO_MB_ENV = "CURATION_EMBED_MEMO_MB"
DEFAULT_MEMO_MB = 256  # ~170k MiniLM vectors (384 floats)
STALE_TMP_S = 3600.0
KEY_BYTES = 32


def text_digest(text: str) -> bytes:
    """A text's content id: sha256 of its UTF-8 bytes (lone surrogates kept, not an error)."""
    return hashlib.sha256(text.encode("utf-8", "surrogatepass")).digest()


# --------------------------------------------------------------------------- model fingerprint

_FILE_DIGESTS: dict[tuple[Any, ...], str] = {}
_FILE_LOCK = threading.Lock()


def folder_digest(folder: Path) -> str:
    """sha256 over every file of a model folder (relative path and content), computed once per
    process for a given set of (path, size, mtime): ~0.2 s for MiniLM's 90 MB of weights."""
    files = sorted(p for p in folder.rglob("*") if p.is_file() and not any(part.startswith(".") for part in p.relative_to(folder).parts))
    stamp = (str(folder), *((str(p.relative_to(folder)), st.st_size, st.st_mtime_ns) for p in files for st in [p.stat()]))
    with _FILE_LOCK:
        if stamp in _FILE_DIGESTS:
            return _FILE_DIGESTS[stamp]
    total = hashlib.sha256()
    for p in files:
        h = hashlib.sha256()
        with p.open("rb") as fh:
            for block in iter(lambda fh=fh: fh.read(1 << 20), b""):
                h.update(block)
        total.update(f"{p.relative_to(folder).as_posix()}\x00{h.hexdigest()}\n".encode())
    digest = total.hexdigest()
    with _FILE_LOCK:
        _FILE_DIGESTS[stamp] = digest
    return digest


def fingerprint(model_dir: Path, dtype: str, **settings: Any) -> str:
    """What the vectors of a model depend on besides the text: its files, the dtype it runs in,
    the libraries' versions and ``settings`` (e.g. normalisation)."""
    from importlib.metadata import PackageNotFoundError, version

    def installed(package: str) -> str | None:  # without importing it (seconds for transformers)
        try:
            return version(package)
        except PackageNotFoundError:
            return None

    blob = {
        "v": CACHE_VERSION,
        "files": folder_digest(model_dir),
        "dtype": dtype,
        "versions": [installed(p) for p in ("sentence-transformers", "transformers", "torch")],
        **settings,
    }
    return hashlib.sha256(json.dumps(blob, sort_keys=True, default=str).encode()).hexdigest()[:32]


# --------------------------------------------------------------------------- per-process memo


class VectorMemo:
    """(fingerprint, text digest) -> vector, least recently used dropped past ``max_bytes``."""

    def __init__(self, max_bytes: int):
        self.max_bytes = max_bytes
        self.bytes = 0
        self._items: OrderedDict[tuple[str, bytes], np.ndarray] = OrderedDict()
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self._items)

    def get(self, model: str, digests: Sequence[bytes]) -> dict[bytes, np.ndarray]:
        found: dict[bytes, np.ndarray] = {}
        with self._lock:
            for d in digests:
                vector = self._items.get((model, d))
                if vector is not None:
                    self._items.move_to_end((model, d))
                    found[d] = vector
        return found

    def put(self, model: str, digests: Sequence[bytes], vectors: np.ndarray) -> None:
        with self._lock:
            for d, v in zip(digests, vectors):
                key = (model, d)
                if key in self._items:
                    self._items.move_to_end(key)
                    continue
                v = np.array(v, dtype=np.float32)  # a copy: never a view into a caller's batch
                v.flags.writeable = False
                self._items[key] = v
                self.bytes += v.nbytes
            while self.bytes > self.max_bytes and self._items:
                _, old = self._items.popitem(last=False)
                self.bytes -= old.nbytes

    def clear(self) -> None:
        with self._lock:
            self._items.clear()
            self.bytes = 0


def _memo_bytes() -> int:
    try:
        return max(0, int(float(os.environ.get(MEMO_MB_ENV, DEFAULT_MEMO_MB)) * (1 << 20)))
    except ValueError:
        return DEFAULT_MEMO_MB << 20


EMBEDDINGS = VectorMemo(_memo_bytes())
"""The process's embedding memo, shared by every embedding backend (``$CURATION_EMBED_MEMO_MB``
bounds it, 256 MB by default; 0 turns it off)."""


# --------------------------------------------------------------------------- disk store


class EmbeddingStore:
    """Vectors of one model fingerprint on disk: look up by text digest, add by batch."""

    def __init__(self, root: str | Path, model: str):
        self.dir = Path(root) / model
        self._index: dict[bytes, tuple[Path, int]] | None = None
        self._lock = threading.Lock()

    def _load_index(self) -> dict[bytes, tuple[Path, int]]:
        index: dict[bytes, tuple[Path, int]] = {}
        if not self.dir.is_dir():
            return index
        self._clean_stale_tmp()
        for keys_path in sorted(self.dir.glob("*.keys.npy")):
            vecs_path = keys_path.with_name(keys_path.name.replace(".keys.npy", ".vecs.npy"))
            try:
                keys = np.load(keys_path)
                rows = np.load(vecs_path, mmap_mode="r").shape[0]
            except (OSError, ValueError) as err:
                print(f"embedding cache: skipping unreadable {keys_path.name}: {err}", file=sys.stderr, flush=True)
                continue
            if keys.ndim != 2 or keys.shape != (rows, KEY_BYTES) or keys.dtype != np.uint8:
                continue
            for row, key in enumerate(keys):
                index.setdefault(key.tobytes(), (vecs_path, row))
        return index

    @property
    def index(self) -> dict[bytes, tuple[Path, int]]:
        with self._lock:
            if self._index is None:
                self._index = self._load_index()
            return self._index

    def get(self, digests: Sequence[bytes]) -> dict[bytes, np.ndarray]:
        """The stored vectors of these digests (those the store holds)."""
        by_file: dict[Path, list[tuple[bytes, int]]] = {}
        index = self.index
        for d in dict.fromkeys(digests):
            if (hit := index.get(d)) is not None:
                by_file.setdefault(hit[0], []).append((d, hit[1]))
        found: dict[bytes, np.ndarray] = {}
        for path, wanted in by_file.items():
            try:
                vectors = np.load(path, mmap_mode="r")
                rows = np.asarray(vectors[[row for _, row in wanted]], dtype=np.float32)
            except (OSError, ValueError):  # removed or damaged since indexed: embed again
                continue
            found.update((d, v) for (d, _), v in zip(wanted, rows))
        return found

    def put(self, digests: Sequence[bytes], vectors: np.ndarray) -> None:
        """Persist new vectors as one shard, atomically (digests not already stored)."""
        index = self.index
        new = [i for i, d in enumerate(digests) if d not in index]
        new = list({digests[i]: i for i in new}.values())  # one row per distinct text
        if not new:
            return
        keys = np.frombuffer(b"".join(digests[i] for i in new), dtype=np.uint8).reshape(len(new), KEY_BYTES)
        vecs = np.ascontiguousarray(vectors[new], dtype=np.float32)
        self.dir.mkdir(parents=True, exist_ok=True)
        name = uuid.uuid4().hex
        vecs_path, keys_path = self.dir / f"{name}.vecs.npy", self.dir / f"{name}.keys.npy"
        for data, final in ((vecs, vecs_path), (keys, keys_path)):  # keys last: they make the shard visible
            tmp = self.dir / f".{name}.{final.name.split('.')[1]}.tmp"
            try:
                with tmp.open("wb") as fh:
                    np.save(fh, data)
                    fh.flush()
                    os.fsync(fh.fileno())
                os.replace(tmp, final)
            except BaseException:
                tmp.unlink(missing_ok=True)
                if final is keys_path:
                    vecs_path.unlink(missing_ok=True)
                raise
        with self._lock:
            for row, i in enumerate(new):
                index.setdefault(digests[i], (vecs_path, row))

    def _clean_stale_tmp(self) -> None:
        """Temporary files of writers killed mid-write (old enough that no writer is still on them),
        and vectors whose keys never arrived."""
        cutoff = time.time() - STALE_TMP_S
        for path in [*self.dir.glob(".*.tmp"), *self.dir.glob("*.vecs.npy")]:
            try:
                orphan = path.name.endswith(".vecs.npy") and not path.with_name(path.name.replace(".vecs.npy", ".keys.npy")).exists()
                if (path.name.endswith(".tmp") or orphan) and path.stat().st_mtime < cutoff:
                    path.unlink()
            except OSError:
                pass


# --------------------------------------------------------------------------- test helper


class MemoEmbedder(ModelBackend):
    """``real.embed`` with a per-text memo (unbounded: for runs that fit in memory)."""

    name = "sentence_transformers"

    def __init__(self, real: ModelBackend):
        self.real, self.model, self.vectors = real, real.model, {}

    def embed(self, texts: Sequence[str]) -> np.ndarray:
        missing = [t for t in dict.fromkeys(texts) if t not in self.vectors]
        if missing:
            self.vectors.update(zip(missing, self.real.embed(missing)))
        return np.stack([self.vectors[t] for t in texts])
