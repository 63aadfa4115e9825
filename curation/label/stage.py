"""The label stage: kept (and generated) pairs -> one labels row per (pair, labeler) -> agreement.

Runs after dedup and generation. Labelers read the staged pairs in chunks (an ensemble that
trains on the data reads its selection at once), write into one staged ``labels`` table and
never touch the pairs: a human label stays as it was, AI labels sit next to it. The stage
then checks that every selected pair got a row from every labeler (a labeler that silently
skips pairs is a bug, not a filter) and computes the agreement table against the human
labels.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import polars as pl
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from curation.config import RunConfig
from curation.errors import CurationError
from curation.label import BackendPool, build_labeler, check_labeler
from curation.label.agreement import agreement, calibration_rows, summary_rows
from curation.label.base import PAIR_COLUMNS, Labeler
from curation.label.config import LabelConfig
from curation.progress import NoProgress, Progress
from curation.stages import StageOutput
from schemas import arrow_schema

SELECT = {"all": None, "human": ["human"], "unlabeled": ["unlabeled"]}


def check(cfg: RunConfig) -> None:
    """Every labeler's config and backends, before any work."""
    if cfg.label is not None:
        for lab in cfg.label.labelers:
            check_labeler(lab, cfg.data_root)


def selected_pairs(files: list[str], mode: str, limit: int | None, chunk_size: int) -> Iterator[pa.Table]:
    """Chunks of the pairs to label: from each file in order, those whose label_source
    matches ``mode``, at most ``limit`` per source dataset (so a quick run still covers every
    source). Only the columns labelers read are loaded."""
    sources = SELECT[mode]
    for path in files:
        taken: Counter[str] = Counter()
        for batch in pq.ParquetFile(path).iter_batches(batch_size=chunk_size, columns=PAIR_COLUMNS):
            table = pa.Table.from_batches([batch])
            if sources is not None:
                table = table.filter(pc.is_in(table["label_source"], pa.array(sources)))
            if limit is not None:
                keep = []
                for source in table["source_dataset"].to_pylist():
                    keep.append(taken[source] < limit)
                    taken[source] += keep[-1]
                table = table.filter(pa.array(keep, pa.bool_()))
            if table.num_rows:
                yield table


def _check_coverage(labeler: Labeler, expected: set[str], got: set[str]) -> None:
    missing, extra = expected - got, got - expected
    if missing or extra:
        raise CurationError(
            f"labeler {labeler.name!r} ({labeler.kind}) returned labels for {len(got)} pairs but was given {len(expected)}: "
            f"{len(missing)} missing, {len(extra)} unknown; nothing was published"
        )


def run_labeler(labeler: Labeler, label_cfg: LabelConfig, files: list[str], writer: pq.ParquetWriter, progress: Progress) -> dict[str, Any]:
    limit = labeler.cfg.limit or label_cfg.limit
    chunks = selected_pairs(files, label_cfg.pairs, limit, label_cfg.chunk_size)
    if not labeler.streaming:
        chunks = iter([pa.concat_tables(list(chunks))] if files else [])
    started = time.perf_counter()
    verdicts: Counter[str] = Counter()
    expected: set[str] = set()
    labelled: set[str] = set()
    rows = 0
    own = NoProgress() if not labeler.streaming else progress
    if not labeler.streaming and hasattr(labeler, "progress"):
        labeler.progress = progress  # one call on every pair: the labeler reports its own slow steps
    own.start(f"label: {labeler.name}", None)
    for pairs in chunks:
        if not pairs.num_rows:
            continue
        out = labeler.label(pairs)
        if out.schema != arrow_schema("labels"):
            out = out.cast(arrow_schema("labels"))
        writer.write_table(out)
        expected.update(pairs["pair_id"].to_pylist())
        labelled.update(out["pair_id"].to_pylist())
        verdicts.update(out["verdict"].to_pylist())
        rows += out.num_rows
        own.advance(pairs.num_rows)
    own.finish()
    _check_coverage(labeler, expected, labelled)
    return {
        "kind": labeler.kind,
        "pairs": len(expected),
        "rows": rows,
        "verdicts": dict(verdicts),
        "models": labeler.models(),
        "seconds": round(time.perf_counter() - started, 3),
    }


def _drop(row: dict[str, Any], *keys: str) -> dict[str, Any]:
    return {k: v for k, v in row.items() if k not in keys}


def label(cfg: RunConfig, run_dir: str | Path, pair_files: list[str], progress: Progress | None = None) -> StageOutput:
    """Label the staged pairs with every configured labeler; write labels + agreement."""
    label_cfg = cfg.label
    if label_cfg is None:
        raise CurationError("the recipe has no label section")
    progress = progress or NoProgress()
    started = time.perf_counter()
    run_dir = Path(run_dir)
    labels_path, agreement_path = run_dir / "labels.parquet", run_dir / "agreement.parquet"
    files = [f for f in pair_files if f]
    pool = BackendPool(cfg.data_root)
    per_labeler: dict[str, Any] = {}
    writer = pq.ParquetWriter(labels_path, arrow_schema("labels"), compression="zstd")
    try:
        for lab_cfg in label_cfg.labelers:
            per_labeler[lab_cfg.name] = run_labeler(build_labeler(lab_cfg, pool), label_cfg, files, writer, progress)
    finally:
        writer.close()
        pool.close()
    pairs = (
        pl.concat([pl.read_parquet(f, columns=["pair_id", "label_source", "source_dataset"]) for f in files], how="vertical")
        if files
        else pl.DataFrame(schema={"pair_id": pl.String, "label_source": pl.String, "source_dataset": pl.String})
    )
    a = label_cfg.agreement
    table = agreement(pl.read_parquet(labels_path), pairs, resamples=a.bootstrap, bins=a.bins, seed=a.seed)
    pq.write_table(table, agreement_path, compression="zstd")
    counts = {
        "labelers": per_labeler,
        "label_rows": sum(c["rows"] for c in per_labeler.values()),
        "agreement": [_drop(r, "bin", "margin_low", "margin_high", "source_dataset") for r in summary_rows(table)],
        "calibration": [
            _drop(r, "source_dataset", "ci_low", "ci_high", "consistency_rate", "tie_rate", "invalid_rate") for r in calibration_rows(table)
        ],
    }
    return StageOutput("label", {"labels": str(labels_path), "agreement": str(agreement_path)}, counts, time.perf_counter() - started)
