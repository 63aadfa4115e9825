"""The dedup stage: keep the first of each set of exact duplicates (normalised text).

The keys and the one-pass streaming dedup are in ``exact``; near-duplicate and semantic
dedup are filter steps (``curation.stages.filter``), since they need the whole set and a
threshold to tune.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from curation.config import RunConfig
from curation.progress import NoProgress, Progress
from curation.stages.base import APPEND, Stage, StageOutput, staged_rows
from curation.stages.dedup import exact as exact_dedup
from curation.tables import read_positions, selected_batches


def dedup(cfg: RunConfig, work_dir: str | Path, validated: StageOutput, progress: Progress | None = None) -> StageOutput:
    """Keep the first of each set of exact duplicates (normalised text); record the rest.

    Every pair gets a decision at this stage, kept or filtered, so a duplicate's row in the
    decisions table names the kept pair it matched.
    """
    progress = progress or NoProgress()
    work = Path(work_dir)
    started = time.perf_counter()
    source, excluded = validated.files["pairs"], read_positions(validated.files.get("excluded"))
    progress.start("dedup", validated.counts["valid"])
    kept_path, dec_path = work / "kept.parquet", work / "decisions-dedup.parquet"
    batches = selected_batches(source, excluded, batch_size=cfg.batch_size)
    kept, duplicates = exact_dedup.deduplicate(
        batches, kept_path, dec_path, enabled=cfg.dedup.exact, threads=cfg.threads, batch_rows=cfg.batch_size
    )
    progress.advance(validated.counts["valid"])
    progress.finish()
    counts = {
        "pairs_in": validated.counts["valid"],
        "kept": kept,
        "filtered": {"exact_duplicate": duplicates} if duplicates else {},
    }
    return StageOutput("dedup", {"pairs": str(kept_path), "decisions": str(dec_path)}, counts, time.perf_counter() - started)


class DedupStage(Stage):
    """Exact dedup (see the module docstring); every pair gets a decision here."""

    name = "dedup"
    sections = ("dedup",)
    upstream = ("validate",)
    publishes = {"pairs": APPEND, "decisions": APPEND}

    def run(self, cfg: RunConfig, run_dir: str | Path, upstream: Mapping[str, StageOutput], progress: Progress) -> StageOutput:
        return self.marked(dedup(cfg, run_dir, upstream["validate"], progress))

    def funnel(self, out: StageOutput) -> dict[str, Any]:
        filtered = dict(out.counts["filtered"])
        return {"pairs_filtered": sum(filtered.values()), "kept": out.counts["kept"], "filtered_by_reason": {"dedup_exact": filtered}}

    def audit(self, out: StageOutput, funnel: dict[str, Any], upstream: Mapping[str, StageOutput]) -> list[str]:
        """pairs_out = quarantined at validate + filtered by dedup + kept; staged files match."""
        f = funnel
        problems = []
        if f["pairs_out"] != f["pairs_quarantined"] + f["pairs_filtered"] + f["kept"]:
            problems.append(
                f"{f['pairs_out']} pairs produced != {f['pairs_quarantined']} quarantined + {f['pairs_filtered']} filtered + {f['kept']} kept"
            )
        return problems + staged_rows(
            {
                "dedup decisions": (out.files["decisions"], f["pairs_out"] - f["pairs_quarantined"]),
                "kept pairs": (out.files["pairs"], f["kept"]),
            }
        )
