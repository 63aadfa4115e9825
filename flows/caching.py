"""Stage caching for the flow: a rerun of an unchanged stage is free.

Why it is built this way:

* **What a key covers.** A stage's key hashes the stage name, the recipe sections the stage
  declares it reads (``Stage.sections``: ingest the sources and read limits, validate
  ``validate``, and so on), the source files' fingerprints (a stage with ``reads_sources``),
  the key of every upstream stage, and a fingerprint of the package's code. So a recipe that
  changes only its ``filter:`` section reuses every cached stage; a changed input file, rule or
  code invalidates that stage and everything after it. Keys are computed once,
  up front, in the flow body (``stage_keys``) and handed to each task in a ``StageSlot``.
* **Where outputs live.** A stage's files normally go to the run folder, which
  ``finish_run`` empties; a cached result must point at files that still exist. A cached
  stage therefore writes into ``WORK_ROOT/cache/stages/DATASET/STAGE/KEY`` instead: first
  into a temporary sibling folder, then renamed into place once complete, with a
  ``stage.json`` listing its files and sizes. A retried, crashed or concurrent attempt never
  leaves a half-written folder under the key, and two runs computing the same key both end
  up with one complete copy (the contents are identical by construction).
* **Prefect's part.** ``StageCachePolicy`` returns the slot's key as the task's cache key, and
  the task's result records go to ``WORK_ROOT/cache/prefect`` (``records_dir``), not to
  PREFECT_HOME or PREFECT_LOCAL_STORAGE_PATH: in ephemeral mode those default to the user's
  ``~/.prefect/storage``, which a served or worker-run flow may not share, and records there
  would outlive the stage files they point at. A hit is the Prefect state ``Cached``.
* **Trust, but verify.** Before Prefect looks a key up, the policy checks that the stage
  folder is complete (every listed file present, same size). If not (pruned, deleted by
  hand, a crash between the folder and the record), it deletes the record, so Prefect
  recomputes instead of handing back paths to missing files.
* **Bounded disk.** ``prune`` (run after each publish) keeps the ``KEEP_PER_STAGE`` most
  recently used entries of each stage of a dataset and drops entries unused for
  ``MAX_AGE_DAYS``; records expire after the same time (``CACHE_EXPIRATION``).
  ``PREFECT_TASKS_REFRESH_CACHE=true`` recomputes every stage. Deleting a stage's folder (or
  all of ``WORK_ROOT/cache/stages``) is always safe: the next run recomputes what is missing.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import os
import shutil
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from prefect.cache_policies import CachePolicy

from curation import owners, spine
from curation.config import RunConfig
from curation.stages.base import StageOutput

MAX_AGE_DAYS = 14
CACHE_EXPIRATION = dt.timedelta(days=MAX_AGE_DAYS)
KEEP_PER_STAGE = 3
MARKER = "stage.json"
_PACKAGE_DIRS = ("curation", "schemas", "flows")


def cache_root(cfg: RunConfig) -> Path:
    return Path(cfg.work_root).resolve() / "cache"


def records_dir(cfg: RunConfig) -> Path:
    """Where the stage tasks' Prefect result records go (their ``result_storage``)."""
    return cache_root(cfg) / "prefect"


def code_fingerprint() -> str:
    """sha256 over the package's source, flows and schema files (~10 ms, once per run): an edit
    in a working tree (same git commit) still invalidates the cache, which a version would not."""
    repo = Path(__file__).resolve().parents[1]
    sha = hashlib.sha256()
    for name in _PACKAGE_DIRS:
        for path in sorted((repo / name).rglob("*")):
            if (
                path.is_file()
                and path.suffix in (".py", ".yaml", ".yml", ".json", ".j2", ".txt", ".html")
                and "__pycache__" not in path.parts
            ):
                sha.update(str(path.relative_to(repo)).encode() + b"\0" + path.read_bytes() + b"\0")
    return sha.hexdigest()[:16]


def _digest(*parts: Any) -> str:
    blob = json.dumps(parts, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:32]


def _inputs_key(fingerprints: list[dict]) -> list[tuple]:
    """What identifies an input's content and how rows name it (path or dataset id)."""
    return sorted(
        (fp.get("source"), fp.get("path") or fp.get("id"), fp.get("sha256") or fp.get("fingerprint"), fp.get("bytes"))
        for fp in fingerprints
    )


def _section(content: dict[str, Any], path: str) -> Any:
    """The value at a dotted path of the recipe's content (None where it is absent)."""
    value: Any = content
    for part in path.split("."):
        value = value.get(part) if isinstance(value, dict) else None
    return value


def stage_keys(cfg: RunConfig, fingerprints: list[dict], code: str | None = None) -> dict[str, str]:
    """The cache key of each cached stage the recipe runs, chained through its upstream stages:
    the stage's name, the code, the recipe sections it declares, the sources' fingerprints if
    it reads them, and its upstream stages' keys (None for one the recipe does not run)."""
    code = code or code_fingerprint()
    content = cfg.content_dict()
    keys: dict[str, str] = {}
    for stage in spine.active(cfg):
        if not stage.cached:
            continue
        sections = [_section(content, path) for path in stage.sections]
        inputs = _inputs_key(fingerprints) if stage.reads_sources else None
        keys[stage.name] = _digest(stage.name, code, sections, inputs, [keys.get(u) for u in stage.upstream])
    return keys


@dataclass(frozen=True)
class StageSlot:
    """Where one stage's cached output lives; a task's cache key comes from it alone."""

    stage: str
    key: str
    root: str  # WORK_ROOT/cache
    dataset: str

    @property
    def dir(self) -> Path:
        return Path(self.root) / "stages" / self.dataset / self.stage / self.key

    @property
    def record_key(self) -> str:
        return f"{self.stage}-{self.key}"

    @property
    def record_path(self) -> Path:
        return Path(self.root) / "prefect" / self.record_key

    def complete(self) -> bool:
        """The folder holds every file its marker lists, at the listed size."""
        try:
            files = json.loads((self.dir / MARKER).read_text())["files"]
            return all((self.dir / name).stat().st_size == size for name, size in files.items())
        except (OSError, ValueError, KeyError, TypeError):
            return False

    def forget(self) -> None:
        """Drop the Prefect record, so a lookup misses and the stage runs again."""
        self.record_path.unlink(missing_ok=True)

    def touch(self) -> None:
        try:
            os.utime(self.dir / MARKER)
        except OSError:
            pass


def slots(cfg: RunConfig, keys: dict[str, str]) -> dict[str, StageSlot]:
    root = str(cache_root(cfg))
    return {stage: StageSlot(stage, key, root, cfg.publish.dataset) for stage, key in keys.items()}


@dataclass
class StageCachePolicy(CachePolicy):
    """Cache key = the ``slot`` input's key; a stale record (its files gone) is dropped first."""

    def compute_key(self, task_ctx: Any, inputs: dict[str, Any], flow_parameters: dict[str, Any], **kwargs: Any) -> str | None:
        slot = (inputs or {}).get("slot")
        if not isinstance(slot, StageSlot):
            return None  # called without a slot: no caching
        if slot.complete():
            slot.touch()
        else:
            slot.forget()
        return slot.record_key


STAGE_CACHE = StageCachePolicy()


def build(slot: StageSlot, run: Callable[[Path], StageOutput]) -> StageOutput:
    """Run a stage into a fresh temporary folder, then move it into the slot, complete.

    Idempotent: every attempt (a Prefect retry, a rerun after a crash) starts from an empty
    folder of its own, and a failed attempt removes it.
    """
    final = slot.dir
    tmp = final.with_name(f"{final.name}.tmp-{uuid.uuid4().hex[:8]}")
    tmp.mkdir(parents=True)
    owners.claim(tmp)  # a killed attempt's folder is debris for the next prune
    try:
        out = run(tmp)
        sizes, files = {}, {}
        for table, path in out.files.items():
            p = Path(path)
            if p.parent.resolve() == tmp.resolve():
                sizes[p.name] = p.stat().st_size
                files[table] = str(final / p.name)
            else:
                files[table] = path
        (tmp / MARKER).write_text(json.dumps({"stage": slot.stage, "key": slot.key, "files": sizes}, indent=1))
        (tmp / owners.OWNER_FILE).unlink()
        _install(tmp, final, slot)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return replace(out, files=files)


def _install(tmp: Path, final: Path, slot: StageSlot) -> None:
    try:
        os.rename(tmp, final)  # atomic when nothing is there yet
        return
    except OSError:
        pass
    if slot.complete():  # another run finished the same key first: same contents, keep theirs
        shutil.rmtree(tmp, ignore_errors=True)
        return
    old = final.with_name(f"{final.name}.old-{uuid.uuid4().hex[:8]}")
    os.rename(final, old)  # an incomplete or refreshed entry
    os.rename(tmp, final)
    shutil.rmtree(old, ignore_errors=True)


def prune(cfg: RunConfig, *, keep: int = KEEP_PER_STAGE, max_age_days: float = MAX_AGE_DAYS) -> list[Path]:
    """Drop the recipe's dataset's stale cache entries (``prune_dataset``)."""
    return prune_dataset(cache_root(cfg), cfg.publish.dataset, keep=keep, max_age_days=max_age_days)


def prune_dataset(
    root: Path, dataset: str, *, keep: int = KEEP_PER_STAGE, max_age_days: float = MAX_AGE_DAYS, dry_run: bool = False
) -> list[Path]:
    """Drop a dataset's cache entries (under the cache ``root``) beyond the ``keep`` most
    recently used per stage, entries unused for ``max_age_days``, and the half-built folders
    of attempts whose process is gone (or older than a day, for those without an owner
    record). ``dry_run``: only list them."""
    now = time.time()
    removed: list[Path] = []
    for stage_dir in (root / "stages" / dataset).glob("*"):
        entries: list[tuple[float, Path]] = []
        for entry in stage_dir.iterdir():
            if ".tmp-" in entry.name or ".old-" in entry.name:
                if owners.abandoned(entry) or (owners.owner_of(entry) is None and now - entry.stat().st_mtime > 86_400):
                    removed.append(entry)
                continue
            marker = entry / MARKER
            entries.append((marker.stat().st_mtime if marker.exists() else 0.0, entry))
        entries.sort(reverse=True)
        for rank, (used, entry) in enumerate(entries):
            if rank >= keep or now - used > max_age_days * 86_400:
                removed.append(entry)
    if dry_run:
        return removed
    for entry in removed:
        shutil.rmtree(entry, ignore_errors=True)
        (root / "prefect" / f"{entry.parent.name}-{entry.name}").unlink(missing_ok=True)
    return removed
