"""What a version's report and ``summary.json`` say about it: built from the version's record."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from curation.config import is_url
from curation.report.lengths import version_lengths
from curation.store.catalog import VersionInfo


def version_summary(
    info: VersionInfo, data_root: str | Path, run_id: str | None, funnel: dict, timings: dict[str, float]
) -> dict[str, Any]:
    """What the run report and ``summary.json`` say about a published version. ``lengths`` is
    computed here from the version's published pairs (``curation.report.lengths``)."""
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
        "lengths": version_lengths(data_root, info),
        "data_root": str(data_root) if is_url(data_root) else str(Path(data_root).resolve()),
    }
