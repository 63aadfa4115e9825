"""The spine's stages as pure functions over staged Parquet files.

ingest -> validate -> dedup -> publish. Each stage reads the previous stage's files from a
run folder and writes its own, so each can be a Prefect task (or be called from a
notebook), a stage's output can be inspected, and memory stays bounded by one batch.
"""

from __future__ import annotations

import time
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa

from curation import dedup as exact_dedup
from curation.config import RunConfig
from curation.errors import CurationError, NoPairs, RowError
from curation.ingest.adapters import build_adapter, is_table_adapter
from curation.ingest.columnar import BlockResult, column_form, ingest_block
from curation.ingest.readers import FileReader, RawRow, open_source
from curation.ingest.readers.jsonl import LineBlock
from curation.ingest.rows import RowOutcomes, filtered_row, pair_row, quarantine_row
from curation.parallel import ordered_map
from curation.progress import NoProgress, Progress
from curation.tables import TableWriter, iter_batches, link_or_copy, read_positions, selected_batches, write_positions
from curation.validate import check_content, pair_as_raw
from curation.validate_fast import suspect_rows
from schemas import arrow_schema

ROWS_PER_RECORD = 1_000
"""The row path counts and writes its outcomes in groups of this many rows."""


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


def ingest(cfg: RunConfig, work_dir: str | Path, progress: Progress | None = None) -> StageOutput:
    """Read every source, adapt rows into canonical pairs; bad rows to quarantine.

    Row accounting per source: rows_in = quarantined + filtered + rows_with_pairs (for a
    table-level adapter, rows_with_pairs counts the rows used in at least one pair). JSONL
    sources whose adapter has a columnar form take the block path (``ingest.columnar``),
    which writes the same rows as the row path, faster.
    """
    progress = progress or NoProgress()
    work = Path(work_dir)
    started = time.perf_counter()
    limits = cfg.validate_
    counts: dict[str, Any] = {"sources": {}}
    inputs: list[dict] = []
    pairs_w = TableWriter(work / "ingested.arrow", "pairs", batch_size=cfg.batch_size, compression=cfg.ingest.staging_compression)
    quar_w = TableWriter(work / "quarantine-ingest.parquet", "quarantine", batch_size=cfg.batch_size)
    dec_w = TableWriter(work / "decisions-ingest.parquet", "decisions", batch_size=cfg.batch_size)
    with pairs_w, quar_w, dec_w:
        writers = (pairs_w, quar_w, dec_w)
        for src in cfg.sources:
            adapter = build_adapter(src.adapter, src.options)
            c = {"rows_in": 0, "quarantined": Counter(), "filtered": Counter(), "rows_with_pairs": 0, "pairs_out": 0}
            readers = open_source(src, max_row_bytes=limits.max_row_bytes, raw_limit_bytes=limits.raw_limit_bytes)
            progress.start(f"ingest {src.name}")
            if is_table_adapter(src.adapter):
                inputs += _ingest_table(src, adapter, readers, c, writers, progress)
            else:
                for reader in readers:
                    form = column_form(src, reader) if cfg.ingest.columnar else None
                    if form is None:
                        _ingest_rows(src, adapter, reader, c, writers, progress)
                    else:
                        _ingest_blocks(src, adapter, form, reader, c, writers, progress, cfg.threads)
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


def _record(outcomes: RowOutcomes, c: dict[str, Any], writers: tuple, pairs: pa.Table | None = None) -> None:
    """Count and write what some rows came to (``pairs``: their pairs as Arrow, if not in ``outcomes``)."""
    pairs_w, quar_w, dec_w = writers
    c["rows_in"] += outcomes.rows_in
    c["rows_with_pairs"] += outcomes.rows_with_pairs
    for row in outcomes.quarantined:
        c["quarantined"][row["error_code"]] += 1
        quar_w.append(row)
    for row in outcomes.filtered:
        c["filtered"][row["reason"]] += 1
        dec_w.append(row)
    for row in outcomes.pairs:
        pairs_w.append(row)
    c["pairs_out"] += len(outcomes.pairs)
    if pairs is not None:
        pairs_w.write_table(pairs)
        c["pairs_out"] += pairs.num_rows


def _ingest_rows(src, adapter, reader: FileReader, c: dict[str, Any], writers: tuple, progress: Progress) -> None:
    outcomes = RowOutcomes()
    for raw in reader.rows():
        outcomes.add(raw, adapter, src, reader.label)
        progress.advance()
        if outcomes.rows_in >= ROWS_PER_RECORD:
            _record(outcomes, c, writers)
            outcomes = RowOutcomes()
    _record(outcomes, c, writers)


def _ingest_blocks(src, adapter, form, reader, c: dict[str, Any], writers: tuple, progress: Progress, threads: int) -> None:
    """Blocks are adapted on a few threads and written in file order, with the error rows the
    reader yields between them (``ordered_map`` keeps memory to a few blocks)."""
    file = reader.label

    def outcome(item: LineBlock | RawRow) -> BlockResult:
        if isinstance(item, LineBlock):
            return ingest_block(item, form, adapter, src, file)
        single = RowOutcomes()
        single.add(item, adapter, src, file)
        return BlockResult(1, None, single)

    for result in ordered_map(outcome, reader.blocks(), threads):
        _record(result.outcomes, c, writers, result.pairs)
        progress.advance(result.lines)


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
                quar_w.append(quarantine_row(src.name, reader.label, raw.index, "read", raw.error, raw.raw, raw.raw_bytes))
            else:
                rows.append((reader.label, raw))
        inputs.append({"source": src.name, **reader.fingerprint()})
    result = adapter([raw.value for _, raw in rows])
    result.check(len(rows), src.adapter)
    for (file, raw), outcome in zip(rows, result.outcomes):
        if isinstance(outcome, RowError):
            c["quarantined"][outcome.code] += 1
            quar_w.append(quarantine_row(src.name, file, raw.index, "adapt", outcome, raw.raw, raw.raw_bytes))
        elif isinstance(outcome, NoPairs):
            c["filtered"][outcome.reason] += 1
            dec_w.append(filtered_row(src.name, file, raw.index, outcome.reason))
        else:
            c["rows_with_pairs"] += 1
    for pos in sorted(result.pairs):
        file, raw = rows[pos]
        for i, draft in enumerate(result.pairs[pos]):
            try:
                pairs_w.append(pair_row(draft, src, file, raw.index, i))
            except RowError as err:  # the adapter checks its rows' fields, so this is its bug, not the data's
                raise CurationError(f"adapter {src.adapter!r} built an invalid pair at {file} row {raw.index}: {err.message}") from None
            c["pairs_out"] += 1
    return inputs


def validate(cfg: RunConfig, work_dir: str | Path, ingested: StageOutput, progress: Progress | None = None) -> StageOutput:
    """Apply the recipe's content rules; failing pairs go to quarantine (stage 'validate').

    A vectorised pre-check flags the pairs that fail (see ``validate_fast``); only those are
    checked row by row, which words the error. Validation removes pairs and changes none, so the stage
    hands on the ingested pairs file as it is (hard-linked into its folder) with the
    positions it excluded (``excluded``), instead of writing the pairs again: at a million
    pairs that write was a third of the spine's time. ``selected_batches`` reads the two.
    """
    progress = progress or NoProgress()
    work = Path(work_dir)
    started = time.perf_counter()
    rules = cfg.validate_
    roles = frozenset(rules.allowed_roles)
    by_code: Counter[str] = Counter()
    schema = arrow_schema("pairs")
    progress.start("validate", ingested.counts["pairs_out"])
    excluded: list[int] = []
    offset = 0
    with TableWriter(work / "quarantine-validate.parquet", "quarantine", batch_size=cfg.batch_size) as quar_w:

        def flagged(batch: pa.RecordBatch) -> tuple[pa.RecordBatch, np.ndarray]:
            return batch, suspect_rows(batch.cast(schema), allowed_roles=roles, allow_empty_prompt=rules.allow_empty_prompt)

        for batch, suspect in ordered_map(flagged, iter_batches(ingested.files["pairs"], batch_size=cfg.batch_size), cfg.threads):
            for i in np.flatnonzero(suspect).tolist():
                pair = batch.slice(i, 1).to_pylist()[0]
                try:
                    check_content(pair, allowed_roles=roles, allow_empty_prompt=rules.allow_empty_prompt)
                except RowError as err:
                    by_code[err.code] += 1
                    excluded.append(offset + i)
                    raw, size = pair_as_raw(pair, rules.raw_limit_bytes)
                    quar_w.append(
                        quarantine_row(
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
            offset += batch.num_rows
            progress.advance(batch.num_rows)
    progress.finish()
    pairs = link_or_copy(ingested.files["pairs"], work / ("validated" + Path(ingested.files["pairs"]).suffix))
    excluded_path = write_positions(excluded, work / "validated-excluded.parquet")
    counts = {"pairs_in": ingested.counts["pairs_out"], "valid": offset - len(excluded), "quarantined": dict(by_code)}
    files = {"pairs": str(pairs), "excluded": str(excluded_path), "quarantine": str(quar_w.path)}
    return StageOutput("validate", files, counts, time.perf_counter() - started)


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
