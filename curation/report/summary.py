"""What a version's report and ``summary.json`` say about it: built from the version's record."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from curation.config import is_url
from curation.store.catalog import VersionInfo


def version_summary(
    info: VersionInfo, data_root: str | Path, run_id: str | None, funnel: dict, timings: dict[str, float]
) -> dict[str, Any]:
    """What the run report and ``summary.json`` say about a published version."""
    return {
        "dataset": info.dataset,
        "version": info.version,
        "created_at": info.created_at,
        "config_hash": info.config_hash,
        "code_version": info.code_version,
        "parents": info.parents,
        "run_id": run_id,
        "funnel": funnel,
        "timings_s": {k: round(v, 3) for k, v in timings.items()},
        "tables": info.tables,
        "inputs": info.inputs,
        "data_root": str(data_root) if is_url(data_root) else str(Path(data_root).resolve()),
    }
