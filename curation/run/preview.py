"""``curate check``'s trial run: the first rows of each source through the stages that need no
model, in a scratch folder, so a misspelt field or a wrong adapter shows before a real run.

Nothing is published and nothing is left behind. The stages run are the spine's stages up
to the first that calls a model or that the flow does not cache (for a usual recipe:
ingest, validate, dedup).
"""

from __future__ import annotations

import tempfile
from collections import Counter
from typing import Any

import polars as pl

from curation import spine
from curation.config import RunConfig
from curation.progress import NoProgress
from curation.run.accounting import funnel as run_funnel
from curation.run.runner import upstream_of
from curation.stages.base import StageOutput, published_files

PREVIEW_ROWS = 100


def preview(cfg: RunConfig, rows: int = PREVIEW_ROWS) -> dict[str, dict[str, Any]]:
    """Per source: rows read, pairs kept, rows or pairs quarantined and filtered, and the reasons."""
    trial = cfg.model_copy(deep=True)
    for src in trial.sources:
        src.limit = min(src.limit or rows, rows)
    outs: dict[str, StageOutput] = {}
    with tempfile.TemporaryDirectory(prefix="curate-check-") as tmp:
        for stage in spine.active(trial):
            if stage.uses_models or not stage.cached:
                break
            outs[stage.name] = stage.run(trial, tmp, upstream_of(stage.name, outs), NoProgress())
        return _per_source(trial, run_funnel(outs), published_files(outs))


def _per_source(cfg: RunConfig, funnel: dict[str, Any], tables: dict[str, list[str]]) -> dict[str, dict[str, Any]]:
    kept: Counter[str] = Counter()
    for path in tables.get("pairs", []):
        kept.update(pl.read_parquet(path, columns=["source_dataset"])["source_dataset"].to_list())
    reasons: dict[str, Counter[str]] = {src.name: Counter() for src in cfg.sources}
    quarantined: Counter[str] = Counter()
    filtered: Counter[str] = Counter()
    for path in tables.get("quarantine", []):
        for source, stage, code in pl.read_parquet(path, columns=["source_dataset", "stage", "error_code"]).iter_rows():
            if source in reasons:
                quarantined[source] += 1
                reasons[source][f"{code} (quarantined at {stage})"] += 1
    for path in tables.get("decisions", []):
        d = pl.read_parquet(path, columns=["source_dataset", "stage", "decision", "reason"]).filter(pl.col("decision") == "filtered")
        for source, stage, _, reason in d.iter_rows():
            if source in reasons:
                filtered[source] += 1
                reasons[source][f"{reason} (filtered at {stage})"] += 1
    sources = funnel.get("sources", {})
    return {
        src.name: {
            "rows": sources.get(src.name, {}).get("rows_in", 0),
            "kept": kept[src.name],
            "filtered": filtered[src.name],
            "quarantined": quarantined[src.name],
            "reasons": reasons[src.name].most_common(3),
        }
        for src in cfg.sources
    }
