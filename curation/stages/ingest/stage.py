"""The ingest stage: every source's rows -> canonical pairs; bad rows to quarantine.

Each source is read by its reader (``readers``) and turned into pairs by its adapter
(``adapters``). JSONL sources whose adapter has a columnar form take the block path
(``columnar``), which writes the same rows as the row path, faster. The stage writes the
pairs (an Arrow IPC file only validate and dedup read), the quarantined rows and the
rows filtered at adapt (a decisions row each).
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pyarrow as pa

from curation.config import RunConfig
from curation.errors import CurationError, NoPairs, RowError
from curation.parallel import ordered_map
from curation.progress import NoProgress, Progress
from curation.records import quarantine_row
from curation.stages.base import APPEND, Stage, StageOutput, staged_rows
from curation.stages.ingest.adapters import build_adapter, is_table_adapter
from curation.stages.ingest.columnar import BlockResult, column_form, ingest_block
from curation.stages.ingest.readers import FileReader, RawRow, open_source
from curation.stages.ingest.readers.jsonl import LineBlock
from curation.stages.ingest.rows import RowOutcomes, filtered_row, pair_row
from curation.tables import TableWriter

ROWS_PER_RECORD = 1_000
"""The row path counts and writes its outcomes in groups of this many rows."""


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


def _by_reason(sources: dict[str, Any], key: str) -> dict[str, int]:
    total: Counter[str] = Counter()
    for c in sources.values():
        total.update(c[key])
    return dict(total)


class IngestStage(Stage):
    """Read and adapt the recipe's sources (see the module docstring)."""

    name = "ingest"
    sections = ("sources", "validate.max_row_bytes", "validate.raw_limit_bytes")
    reads_sources = True
    publishes = {"decisions": APPEND, "quarantine": APPEND}
    retry = "io"

    def run(self, cfg: RunConfig, run_dir: str | Path, upstream: Mapping[str, StageOutput], progress: Progress) -> StageOutput:
        return self.marked(ingest(cfg, run_dir, progress))

    def funnel(self, out: StageOutput) -> dict[str, Any]:
        sources = out.counts["sources"]
        quarantined, filtered = _by_reason(sources, "quarantined"), _by_reason(sources, "filtered")
        return {
            "rows_in": out.counts["rows_in"],
            "rows_quarantined": sum(quarantined.values()),
            "rows_filtered": sum(filtered.values()),
            "rows_with_pairs": sum(c["rows_with_pairs"] for c in sources.values()),
            "pairs_out": out.counts["pairs_out"],
            "quarantined_by_error": {"read/adapt": quarantined},
            "filtered_by_reason": {"adapt": filtered},
            "sources": sources,
        }

    def audit(self, out: StageOutput, funnel: dict[str, Any], upstream: Mapping[str, StageOutput]) -> list[str]:
        """rows_in = quarantined + filtered + rows with pairs, per source and in all; staged files match."""
        problems = []
        for name, c in funnel["sources"].items():
            ended = sum(c["quarantined"].values()) + sum(c["filtered"].values()) + c["rows_with_pairs"]
            if c["rows_in"] != ended:
                problems.append(f"source {name}: {c['rows_in']} rows in but {ended} accounted for")
        if funnel["rows_in"] != funnel["rows_quarantined"] + funnel["rows_filtered"] + funnel["rows_with_pairs"]:
            problems.append("rows in != quarantined + filtered + rows with pairs")
        return problems + staged_rows(
            {
                "ingested pairs": (out.files["pairs"], funnel["pairs_out"]),
                "read/adapt quarantine": (out.files["quarantine"], funnel["rows_quarantined"]),
                "adapt decisions": (out.files["decisions"], funnel["rows_filtered"]),
            }
        )
