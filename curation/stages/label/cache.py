"""A persistent, content-addressed cache of finished labels, so an interrupted label stage resumes.

Key: the labeler's *content* key and the pair's content id (``pair_id`` hashes the prompt and
both responses, which is all a per-pair labeler reads: none looks at ``label_source`` or the
source's name). The content key hashes the labeler's kind and the config fields that change
what it answers (sampling settings, seeds, aspects, follow-ups ...), with each backend section
reduced to the model's identity (as the generation request cache does: the same model served
by vLLM, transformers or an OpenAI-compatible server is one entry) and with prompt files
replaced by their contents. The labeler's name, its ``limit`` and the stage's chunking are
not part of it: they choose pairs, not labels. Changing any other parameter misses.

Layout: ``WORK_ROOT/cache/labels/<content key>/<uuid>.parquet``, one file per finished chunk,
in the ``labels`` contract schema. A file is written under a temporary name and renamed
(``os.replace``), so a crash, kill -9 or Ctrl-C leaves whole files or none, and a rerun
labels only the pairs no file holds.

Labelers that see every pair at once (an ensemble trained on the data: a pair's label depends
on all the others) are cached per run instead (``RunCache``): one file per (content key, hash
of the labeler's ``training_inputs``), i.e. the human-labelled pairs with their labels and
folds and the set of pairs to label. A rerun over the same selection (a filter-only change,
say) reuses every label without embedding or training; any change in those inputs (one more
human pair, a pair dropped) misses and retrains. ``WORK_ROOT/cache/labels/<content key>/
run-<inputs hash>.parquet``, written atomically like the per-pair files.

What is not cached: non-streaming labelers without ``training_inputs``, and rows recording a
transient scoring failure (``scoring failed: ...``), which a rerun tries again (a run with one
is not cached at all). A reused row is re-stamped with the current labeler's name and full
config, so it reads exactly as a freshly computed one.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
import uuid
from collections import defaultdict
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from pydantic import BaseModel

from curation.models.config import BackendConfig
from curation.stages.label.base import Labeler
from schemas import arrow_schema

CACHE_VERSION = 1  # bump when a change in the code changes what labelers answer
SELECTION_FIELDS = frozenset({"name", "limit"})  # which pairs, not which labels
PROMPT_TEXTS = ("template", "system")  # resolved prompt texts a labeler keeps (the judges)
TRANSIENT = "scoring failed:"  # see curation.stages.label.base.scoring_failure


def failed_to_score(error: str | None) -> bool:
    """An invalid label because scoring failed (a rerun tries again), also when a labeler names
    the side that failed ("strong model: scoring failed: ...", CDR)."""
    return bool(error) and TRANSIENT in error


STALE_TMP_S = 3600.0


def _file_digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _content(value: Any) -> Any:
    """A config value as it bears on the labels: backends by model identity, files by content."""
    if isinstance(value, BackendConfig):
        return value.identity()
    if isinstance(value, BaseModel):
        return {k: _content(getattr(value, k)) for k in type(value).model_fields}
    if isinstance(value, dict):
        return {str(k): _content(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_content(v) for v in value]
    if isinstance(value, str) and "\n" not in value and len(value) < 4096:
        try:
            path = Path(value).expanduser()
            if path.is_file():
                return {"file_sha256": _file_digest(path)}
        except OSError:  # not a usable path: it is text
            pass
    return value


def content_key(labeler: Labeler) -> str:
    """What a labeler answers depends on: its kind, the config fields that change labels (each
    backend reduced to its model's identity, prompt files to their contents) and its prompts."""
    cfg = labeler.cfg
    fields = {k: _content(getattr(cfg, k)) for k in type(cfg).model_fields if k not in SELECTION_FIELDS}
    texts = {k: hashlib.sha256(v.encode()).hexdigest() for k in PROMPT_TEXTS if isinstance(v := getattr(labeler, k, None), str)}
    blob = json.dumps(
        {"v": CACHE_VERSION, "kind": labeler.kind, "config": fields, "prompts": texts}, sort_keys=True, separators=(",", ":"), default=str
    )
    return hashlib.sha256(blob.encode()).hexdigest()[:32]


def cache_root(work_root: str | Path) -> Path:
    return Path(work_root) / "cache" / "labels"


def open_cache(root: str | Path, labeler: Labeler) -> LabelCache | RunCache | None:
    """The label cache for ``labeler``: per pair for a streaming labeler, per run for one that
    trains on the whole selection and says what it trains on, else None."""
    if labeler.streaming:
        return LabelCache(root, labeler, content_key(labeler))
    if callable(getattr(labeler, "training_inputs", None)):
        return RunCache(root, labeler, content_key(labeler))
    return None


def restamp(labeler: Labeler, rows: pa.Table) -> pa.Table:
    """Cached rows under the current labeler's name and provenance: a renamed labeler or a moved
    backend reuses the labels, and the rows say what the run's recipe says."""
    config_json, hashed, models = labeler._provenance
    name = labeler.name
    out = []
    for row in rows.to_pylist():
        old_group = row["labeler_group"]
        suffix = row["labeler"][len(old_group) :] if row["labeler"].startswith(old_group) else ""
        row.update(labeler=name + suffix, labeler_group=name, config=config_json, config_hash=hashed, models=models)
        out.append(row)
    return labeler.table(out)


def _write_atomic(rows: pa.Table, final: Path) -> None:
    """``rows`` as Parquet at ``final``, written under a temporary name and renamed."""
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = final.with_name(f".{uuid.uuid4().hex}.tmp")
    try:
        with tmp.open("wb") as fh:
            pq.write_table(rows.cast(arrow_schema("labels")), fh, compression="zstd")
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, final)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


class _KeyedCache:
    """One labeler's folder of the cache (its content key). ``reused`` and ``stored`` count
    pairs served from and written to the cache by this object."""

    def __init__(self, root: str | Path, labeler: Labeler, key: str):
        self.dir = Path(root) / key
        self.labeler = labeler
        self.reused = 0
        self.stored = 0


class LabelCache(_KeyedCache):
    """Finished labels of one labeler (one content key): look up by pair id, add by chunk."""

    def __init__(self, root: str | Path, labeler: Labeler, key: str):
        super().__init__(root, labeler, key)
        self._index: dict[str, Path] | None = None

    # -- reading ---------------------------------------------------------------------------
    def _load_index(self) -> dict[str, Path]:
        """pair id -> the file holding its rows (the first file, by name, when two runs wrote one)."""
        index: dict[str, Path] = {}
        if not self.dir.is_dir():
            return index
        for path in sorted(self.dir.glob("*.parquet")):
            for pid in pq.read_table(path, columns=["pair_id"]).column("pair_id").to_pylist():
                index.setdefault(pid, path)
        return index

    @property
    def index(self) -> dict[str, Path]:
        if self._index is None:
            self._clean_stale_tmp()
            self._index = self._load_index()
        return self._index

    def __contains__(self, pair_id: str) -> bool:
        return pair_id in self.index

    def get(self, pair_ids: Iterable[str]) -> pa.Table:
        """The cached rows of these pairs (those the cache holds), re-stamped for this labeler."""
        by_file: dict[Path, list[str]] = defaultdict(list)
        for pid in dict.fromkeys(pair_ids):
            if (path := self.index.get(pid)) is not None:
                by_file[path].append(pid)
        if not by_file:
            return self.labeler.table([])
        parts = []
        for path, ids in by_file.items():
            table = pq.read_table(path, schema=arrow_schema("labels"))
            parts.append(table.filter(pc.is_in(table["pair_id"], pa.array(ids, pa.string()))))
        self.reused += sum(len(ids) for ids in by_file.values())
        return restamp(self.labeler, pa.concat_tables(parts))

    # -- writing ---------------------------------------------------------------------------
    def put(self, rows: pa.Table) -> int:
        """Persist a finished chunk's rows atomically; rows of pairs with a transient failure
        are left out (a rerun tries them again). Returns the number of pairs stored."""
        if not rows.num_rows:
            return 0
        errors = rows["error"].to_pylist()
        failed = {pid for pid, err in zip(rows["pair_id"].to_pylist(), errors) if failed_to_score(err)}
        if failed:
            rows = rows.filter(pc.invert(pc.is_in(rows["pair_id"], pa.array(sorted(failed), pa.string()))))
        if not rows.num_rows:
            return 0
        final = self.dir / f"{uuid.uuid4().hex}.parquet"
        _write_atomic(rows, final)
        ids = set(rows["pair_id"].to_pylist())
        for pid in ids:
            self.index.setdefault(pid, final)
        self.stored += len(ids)
        return len(ids)

    def _clean_stale_tmp(self) -> None:
        """Temporary files of writers killed mid-write (old enough that no writer is still on them)."""
        if not self.dir.is_dir():
            return
        cutoff = time.time() - STALE_TMP_S
        for tmp in self.dir.glob(".*.tmp"):
            try:
                if tmp.stat().st_mtime < cutoff:
                    tmp.unlink()
            except OSError:
                pass


class RunCache(_KeyedCache):
    """Whole-run labels of a labeler that trains on the selection it labels (the BT ensemble),
    keyed by its content key and a hash of its ``training_inputs(pairs)``."""

    def __init__(self, root: str | Path, labeler: Labeler, key: str):
        super().__init__(root, labeler, key)
        self._last: tuple[pa.Table, Path] | None = None

    def path(self, pairs: pa.Table) -> Path:
        if self._last is not None and self._last[0] is pairs:
            return self._last[1]
        inputs = self.labeler.training_inputs(pairs)  # type: ignore[attr-defined]
        blob = json.dumps({"v": CACHE_VERSION, "inputs": inputs}, sort_keys=True, separators=(",", ":"), default=str)
        path = self.dir / f"run-{hashlib.sha256(blob.encode()).hexdigest()[:32]}.parquet"
        self._last = (pairs, path)
        return path

    def get(self, pairs: pa.Table) -> pa.Table | None:
        """The labels of exactly this selection with these training inputs, in the selection's
        pair order (stable within a pair), re-stamped for this labeler; None on a miss."""
        path = self.path(pairs)
        if not path.is_file():
            return None
        try:
            rows = pq.read_table(path, schema=arrow_schema("labels"))
        except (OSError, pa.ArrowException):  # damaged: label again (and overwrite it)
            return None
        ids, cached = pairs["pair_id"].to_pylist(), rows["pair_id"].to_pylist()
        if set(cached) != set(ids):  # cannot happen for the same inputs; never trust it if it does
            return None
        position = {pid: i for i, pid in enumerate(ids)}
        order = sorted(range(rows.num_rows), key=lambda i: position[cached[i]])
        self.reused += len(position)
        return restamp(self.labeler, rows.take(pa.array(order, pa.int64())))

    def put(self, pairs: pa.Table, rows: pa.Table) -> int:
        """Keep a finished run's labels; a run with a transient scoring failure is not kept."""
        if not rows.num_rows or any(failed_to_score(e) for e in rows["error"].to_pylist()):
            return 0
        _write_atomic(rows, self.path(pairs))
        self.stored += pairs.num_rows
        return pairs.num_rows
