"""The spine's stages as pure functions over staged Parquet files.

ingest -> validate -> dedup -> publish. Each stage reads the previous stage's files from a
run folder and writes its own, so each can be a Prefect task (or be called from a
notebook), a stage's output can be inspected, and memory stays bounded by one batch.
"""

from __future__ import annotations

import json
import time
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from curation import dedup as exact_dedup
from curation.config import RunConfig
from curation.errors import CurationError, NoPairs, RowError
from curation.ingest.adapters import build_adapter, is_table_adapter
from curation.ingest.readers import FileReader, open_source
from curation.progress import NoProgress, Progress
from curation.records import content_ids
from curation.tables import TableWriter
from curation.validate import check_content, check_structure, pair_as_raw
from curation.validate_fast import suspect_rows
from schemas import arrow_schema


@dataclass
class StageOutput:
    """What a stage hands on: its files (table name -> path), its counts and its time."""

    stage: str
    files: dict[str, str]
    counts: dict[str, Any]
    seconds: float
    inputs: list[dict] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _quarantine_row(
    source: str, file: str, row: int, stage: str, err: RowError, raw: str | None, raw_bytes: int | None, pair_index: int | None = None
) -> dict[str, Any]:
    return {
        "source_dataset": source,
        "source_file": file,
        "source_row": row,
        "source_pair_index": pair_index,
        "stage": stage,
        "field": err.field,
        "error_code": err.code,
        "error": err.message,
        "raw": raw,
        "raw_bytes": raw_bytes,
    }


def ingest(cfg: RunConfig, work_dir: str | Path, progress: Progress | None = None) -> StageOutput:
    """Read every source, adapt rows into canonical pairs; bad rows to quarantine.

    Row accounting per source: rows_in = quarantined + filtered + rows_with_pairs (for a
    table-level adapter, rows_with_pairs counts the rows used in at least one pair).
    """
    progress = progress or NoProgress()
    work = Path(work_dir)
    started = time.perf_counter()
    limits = cfg.validate_
    counts: dict[str, Any] = {"sources": {}}
    inputs: list[dict] = []
    pairs_w = TableWriter(work / "ingested.parquet", "pairs", batch_size=cfg.batch_size)
    quar_w = TableWriter(work / "quarantine-ingest.parquet", "quarantine", batch_size=cfg.batch_size)
    dec_w = TableWriter(work / "decisions-ingest.parquet", "decisions", batch_size=cfg.batch_size)
    with pairs_w, quar_w, dec_w:
        for src in cfg.sources:
            adapter = build_adapter(src.adapter, src.options)
            c = {"rows_in": 0, "quarantined": Counter(), "filtered": Counter(), "rows_with_pairs": 0, "pairs_out": 0}
            readers = open_source(src, max_row_bytes=limits.max_row_bytes, raw_limit_bytes=limits.raw_limit_bytes)
            progress.start(f"ingest {src.name}")
            if is_table_adapter(src.adapter):
                inputs += _ingest_table(src, adapter, readers, c, (pairs_w, quar_w, dec_w), progress)
            else:
                for reader in readers:
                    file = reader.label
                    for raw in reader.rows():
                        c["rows_in"] += 1
                        progress.advance()
                        if raw.error is not None:
                            c["quarantined"][raw.error.code] += 1
                            quar_w.append(_quarantine_row(src.name, file, raw.index, "read", raw.error, raw.raw, raw.raw_bytes))
                            continue
                        try:
                            drafts = adapter(raw.value, f"{src.name}:{raw.index}")
                            if not drafts:
                                raise NoPairs("no_pairs")
                            rows = [_pair_row(d, src, file, raw.index, i) for i, d in enumerate(drafts)]
                        except RowError as err:
                            c["quarantined"][err.code] += 1
                            quar_w.append(_quarantine_row(src.name, file, raw.index, "adapt", err, raw.raw, raw.raw_bytes))
                            continue
                        except NoPairs as np_:
                            c["filtered"][np_.reason] += 1
                            dec_w.append(_filtered_row(src.name, file, raw.index, np_.reason))
                            continue
                        c["rows_with_pairs"] += 1
                        c["pairs_out"] += len(rows)
                        for row in rows:
                            pairs_w.append(row)
                    inputs.append({"source": src.name, **reader.fingerprint()})
            progress.finish()
            c["quarantined"] = dict(c["quarantined"])
            c["filtered"] = dict(c["filtered"])
            counts["sources"][src.name] = c
    counts["rows_in"] = sum(c["rows_in"] for c in counts["sources"].values())
    counts["pairs_out"] = pairs_w.rows_written
    counts["quarantined"] = quar_w.rows_written
    counts["filtered"] = dec_w.rows_written
    files = {"pairs": str(pairs_w.path), "quarantine": str(quar_w.path), "decisions": str(dec_w.path)}
    return StageOutput("ingest", files, counts, time.perf_counter() - started, inputs)


def _filtered_row(source: str, file: str, row: int, reason: str) -> dict[str, Any]:
    return {"source_dataset": source, "source_file": file, "source_row": row, "stage": "adapt", "decision": "filtered", "reason": reason}


def _ingest_table(src, adapter, readers: list[FileReader], c: dict[str, Any], writers: tuple, progress: Progress) -> list[dict]:
    """A table-level adapter (see adapters/_table.py) sees every readable row of the source
    at once; read errors are quarantined as they come. Returns the files' fingerprints."""
    pairs_w, quar_w, dec_w = writers
    rows: list[tuple[str, Any]] = []
    inputs = []
    for reader in readers:
        for raw in reader.rows():
            c["rows_in"] += 1
            progress.advance()
            if raw.error is not None:
                c["quarantined"][raw.error.code] += 1
                quar_w.append(_quarantine_row(src.name, reader.label, raw.index, "read", raw.error, raw.raw, raw.raw_bytes))
            else:
                rows.append((reader.label, raw))
        inputs.append({"source": src.name, **reader.fingerprint()})
    result = adapter([raw.value for _, raw in rows])
    result.check(len(rows), src.adapter)
    for (file, raw), outcome in zip(rows, result.outcomes):
        if isinstance(outcome, RowError):
            c["quarantined"][outcome.code] += 1
            quar_w.append(_quarantine_row(src.name, file, raw.index, "adapt", outcome, raw.raw, raw.raw_bytes))
        elif isinstance(outcome, NoPairs):
            c["filtered"][outcome.reason] += 1
            dec_w.append(_filtered_row(src.name, file, raw.index, outcome.reason))
        else:
            c["rows_with_pairs"] += 1
    for pos in sorted(result.pairs):
        file, raw = rows[pos]
        for i, draft in enumerate(result.pairs[pos]):
            try:
                pairs_w.append(_pair_row(draft, src, file, raw.index, i))
            except RowError as err:  # the adapter checks its rows' fields, so this is its bug, not the data's
                raise CurationError(f"adapter {src.adapter!r} built an invalid pair at {file} row {raw.index}: {err.message}") from None
            c["pairs_out"] += 1
    return inputs


def _pair_row(draft, src, file: str, row: int, index: int) -> dict[str, Any]:
    pair = {"prompt": draft.prompt, "chosen": draft.chosen, "rejected": draft.rejected}
    check_structure(pair)
    for name in ("chosen_score", "rejected_score"):
        value = getattr(draft, name)
        if value is not None and not isinstance(value, (int, float)):
            raise RowError("wrong_type", f"{name} must be a number, got {type(value).__name__}", name)
    ids = content_ids(draft.prompt, draft.chosen, draft.rejected)
    pair.update(
        pair_id=ids[1],
        prompt_id=ids[0],
        chosen_score=draft.chosen_score,
        rejected_score=draft.rejected_score,
        label_source=src.label_source,
        label_model=src.label_model or draft.label_model,
        source_dataset=src.name,
        source_file=file,
        source_row=row,
        source_pair_index=index,
        metadata=json.dumps(draft.metadata, ensure_ascii=False, default=str) if draft.metadata else None,
    )
    return pair


def validate(cfg: RunConfig, work_dir: str | Path, ingested: StageOutput, progress: Progress | None = None) -> StageOutput:
    """Apply the recipe's content rules; failing pairs go to quarantine (stage 'validate').

    A vectorised pre-check flags the pairs that might fail; only those are checked row by
    row (see ``validate_fast``), and the rest are copied through as Arrow batches.
    """
    progress = progress or NoProgress()
    work = Path(work_dir)
    started = time.perf_counter()
    rules = cfg.validate_
    roles = frozenset(rules.allowed_roles)
    by_code: Counter[str] = Counter()
    schema = arrow_schema("pairs")
    progress.start("validate", ingested.counts["pairs_out"])
    ok_path = work / "validated.parquet"
    valid = 0
    with (
        pq.ParquetWriter(ok_path, schema, compression="zstd") as ok_w,
        TableWriter(work / "quarantine-validate.parquet", "quarantine", batch_size=cfg.batch_size) as quar_w,
    ):
        for batch in pq.ParquetFile(ingested.files["pairs"]).iter_batches(batch_size=cfg.batch_size):
            table = pa.Table.from_batches([batch]).cast(schema)
            suspect = suspect_rows(pl.from_arrow(table), allowed_roles=roles, allow_empty_prompt=rules.allow_empty_prompt)
            keep = pa.array(~suspect.to_numpy())
            for i in suspect.arg_true().to_list():
                pair = table.slice(i, 1).to_pylist()[0]
                try:
                    check_content(pair, allowed_roles=roles, allow_empty_prompt=rules.allow_empty_prompt)
                except RowError as err:
                    by_code[err.code] += 1
                    raw, size = pair_as_raw(pair, rules.raw_limit_bytes)
                    quar_w.append(
                        _quarantine_row(
                            pair["source_dataset"],
                            pair["source_file"],
                            pair["source_row"],
                            "validate",
                            err,
                            raw,
                            size,
                            pair["source_pair_index"],
                        )
                    )
                    continue
                keep = pc.if_else(pa.array(np.arange(len(keep)) == i), True, keep)
            good = table.filter(keep)
            valid += good.num_rows
            ok_w.write_table(good)
            progress.advance(batch.num_rows)
    progress.finish()
    counts = {"pairs_in": ingested.counts["pairs_out"], "valid": valid, "quarantined": dict(by_code)}
    files = {"pairs": str(ok_path), "quarantine": str(quar_w.path)}
    return StageOutput("validate", files, counts, time.perf_counter() - started)


def dedup(cfg: RunConfig, work_dir: str | Path, validated: StageOutput, progress: Progress | None = None) -> StageOutput:
    """Keep the first of each set of exact duplicates (normalised text); record the rest.

    Every pair gets a decision at this stage, kept or filtered, so a duplicate's row in the
    decisions table names the kept pair it matched.
    """
    progress = progress or NoProgress()
    work = Path(work_dir)
    started = time.perf_counter()
    source = validated.files["pairs"]
    progress.start("dedup", validated.counts["valid"])
    columns = ["pair_id", "prompt", "chosen", "rejected"]
    dplan = exact_dedup.plan(pq.ParquetFile(source).iter_batches(batch_size=cfg.batch_size, columns=columns), enabled=cfg.dedup.exact)
    kept_path, dec_path = work / "kept.parquet", work / "decisions-dedup.parquet"
    kept = exact_dedup.apply(source, kept_path, dec_path, dplan, batch_size=cfg.batch_size)
    progress.advance(validated.counts["valid"])
    progress.finish()
    counts = {
        "pairs_in": validated.counts["valid"],
        "kept": kept,
        "filtered": {"exact_duplicate": dplan.duplicates} if dplan.duplicates else {},
    }
    return StageOutput("dedup", {"pairs": str(kept_path), "decisions": str(dec_path)}, counts, time.perf_counter() - started)
