"""A new stage is one module and one entry in the spine.

A stage written here (it counts the kept pairs per source and publishes that as a table of
its own) is added to ``curation.spine.SPINE`` and nothing else changes: the local runner
and the Prefect flow run it, the flow caches it like the other stages, its table is in the
published version and its part of the funnel is in the version's counts.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import polars as pl
import pyarrow.parquet as pq
import pytest

from curation import spine
from curation.config import RunConfig
from curation.progress import Progress
from curation.run.runner import curate
from curation.stages.base import APPEND, Stage, StageOutput, pair_files
from curation.store.catalog import DatasetStore
from tests.helpers import recipe_config, write_recipe


class SourceCounts(Stage):
    name = "source_counts"
    sections = ("dedup",)
    upstream = ("dedup",)
    publishes = {"source_counts": APPEND}

    def run(self, cfg: RunConfig, run_dir: str | Path, upstream: Mapping[str, StageOutput], progress: Progress) -> StageOutput:
        kept = pl.concat([pl.read_parquet(f, columns=["source_dataset"]) for f in pair_files(upstream)])
        counts = kept.group_by("source_dataset").len().sort("source_dataset")
        path = Path(run_dir) / "source_counts.parquet"
        pq.write_table(counts.to_arrow(), path)
        return self.marked(StageOutput(self.name, {"source_counts": str(path)}, {"sources": counts.height}, 0.0))

    def funnel(self, out: StageOutput) -> dict[str, Any]:
        return {"source_counts": out.counts["sources"]}


@pytest.fixture
def with_counts_stage(monkeypatch: pytest.MonkeyPatch) -> None:
    stages = list(spine.SPINE)
    stages.insert([s.name for s in stages].index("dedup") + 1, SourceCounts())
    monkeypatch.setattr(spine, "SPINE", tuple(stages))
    monkeypatch.setattr(spine, "BY_NAME", {s.name: s for s in stages})


def sources(hh_path: Path) -> list[dict[str, Any]]:
    return [
        {"name": "hh-a", "path": str(hh_path), "adapter": "hh_rlhf", "limit": 40},
        {"name": "hh-b", "path": str(hh_path), "adapter": "hh_rlhf", "limit": 70},
    ]


def test_a_new_stage_runs_and_publishes_locally(tmp_path: Path, hh_path: Path, with_counts_stage: None) -> None:
    cfg = recipe_config(tmp_path, sources(hh_path), dataset="spine")
    result = curate(cfg)
    table = DatasetStore(cfg.data_root).read("spine", "source_counts", version=result.version).to_pylist()
    kept = DatasetStore(cfg.data_root).read("spine", "pairs", version=result.version, columns=["source_dataset"])
    assert table == [{"source_dataset": name, "len": kept["source_dataset"].to_pylist().count(name)} for name in ("hh-a", "hh-b")]
    # hh-b repeats hh-a's first 40 rows, which dedup drops: the stage saw dedup's output
    assert table[0]["len"] + table[1]["len"] == kept.num_rows < 110
    assert result.funnel["source_counts"] == 2


def test_a_new_stage_runs_in_the_flow_and_is_cached(tmp_path: Path, hh_path: Path, with_counts_stage: None) -> None:
    from flows.curate import run_recipe

    recipe = write_recipe(tmp_path, sources(hh_path), dataset="spine")
    first = run_recipe(str(recipe))
    again = run_recipe(str(recipe), force=True)
    assert "source_counts" not in first["cached"] and "source_counts" in again["cached"]
    store = DatasetStore(tmp_path / "root")
    assert store.read("spine", "source_counts", version=1).equals(store.read("spine", "source_counts", version=2))
    assert store.version("spine", 2).tables["source_counts"] == 2
