"""A run's inputs and whether they changed: read before any work, so an unchanged run costs one hash."""

from __future__ import annotations

from curation.config import RunConfig
from curation.human.inbox import fingerprints, inbox_root
from curation.stages.ingest.readers import open_source
from curation.store.catalog import DatasetStore, VersionInfo


def source_fingerprints(cfg: RunConfig) -> list[dict]:
    """Fingerprints of the sources' files, the evaluation sources' too (what the ingest and
    evaluation-set stages read; the flow's stage cache keys on them)."""
    limits = cfg.validate_
    fps = []
    for src in [*cfg.sources, *(cfg.evaluate.sources if cfg.evaluate else [])]:
        for reader in open_source(src, max_row_bytes=limits.max_row_bytes, raw_limit_bytes=limits.raw_limit_bytes):
            fps.append({"source": src.name, **reader.fingerprint()})
    return fps


def input_fingerprints(cfg: RunConfig) -> list[dict]:
    """Fingerprints of every input: the sources, and the completed human labels the filter
    stage merges (the dataset's inbox)."""
    fps = source_fingerprints(cfg)
    if cfg.filter is not None:
        fps += fingerprints(inbox_root(cfg), cfg.publish.dataset)
    return fps


def find_unchanged(cfg: RunConfig, store: DatasetStore) -> VersionInfo | None:
    """The latest version if it was built from this exact config and these exact inputs."""
    if cfg.publish.dataset not in store.datasets():
        return None
    versions = store.versions(cfg.publish.dataset)
    if not versions:  # a first publish was killed before its commit: a catalog with no version
        return None
    latest = versions[-1]
    if latest.config_hash != cfg.config_hash():
        return None
    return latest if same_inputs(latest.inputs, input_fingerprints(cfg)) else None


def same_inputs(a: list[dict], b: list[dict]) -> bool:
    def key(fp: dict) -> tuple:
        return (fp.get("source"), fp.get("sha256") or fp.get("fingerprint"), fp.get("bytes"))

    return sorted(map(key, a)) == sorted(map(key, b))
