"""``curate gc``: what killed and crashed runs left behind, found and removed, with sizes.

* the folders of runs whose process is gone before they finished (``curation.run.publish``);
* the staged data files of publishes killed before their commit (``DatasetStore``);
* the stage cache's half-built entries of killed runs, and entries evicted by the cache's
  own policy (``flows.caching``: the most recent few per stage, none unused for 14 days).

Every run already does the first three for its own dataset before it starts; ``gc`` does
them for every dataset under a data root, and can only report (``--dry-run``).
"""

from __future__ import annotations

from pathlib import Path

from curation.config import is_url
from curation.owners import size_of
from curation.run.publish import sweep_runs
from curation.store.catalog import DatasetStore
from flows.caching import prune_dataset


def collect(data_root: str, work_root: str | None = None, *, dry_run: bool = False) -> list[tuple[str, str, int]]:
    """(what, path, bytes) of everything removed (or, with ``dry_run``, to remove)."""
    work = Path(work_root or ("data" if is_url(data_root) else data_root))
    found = [("dead run folder", str(path), size) for path, size in sweep_runs(work, dry_run=dry_run)]
    store = DatasetStore(data_root)
    for dataset in store.datasets():
        found += [("killed publish's file", path, size) for path, size in store.sweep_dead_publishes(dataset, dry_run=dry_run)]
    cache = work.resolve() / "cache"
    for dataset_dir in sorted(d for d in (cache / "stages").glob("*") if d.is_dir()):
        for entry in prune_dataset(cache, dataset_dir.name, dry_run=True):
            what = "half-built cache entry" if ".tmp-" in entry.name or ".old-" in entry.name else "expired cache entry"
            found.append((what, str(entry), size_of(entry)))
        if not dry_run:
            prune_dataset(cache, dataset_dir.name)
    return found
