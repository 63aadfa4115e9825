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

from curation.config import RunConfig
from curation.dedup import ExactDeduper
from curation.errors import NoPairs, RowError
from curation.ingest.adapters import build_adapter
from curation.ingest.readers import open_source
from curation.progress import NoProgress, Progress
from curation.records import pair_id, prompt_id
from curation.tables import TableWriter, iter_rows
from curation.validate import check_content, check_structure, pair_as_raw


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

    Row accounting per source: rows_in = quarantined + filtered + rows_with_pairs.
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
                        dec_w.append(
                            {
                                "source_dataset": src.name,
                                "source_file": file,
                                "source_row": raw.index,
                                "stage": "adapt",
                                "decision": "filtered",
                                "reason": np_.reason,
                            }
                        )
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


def _pair_row(draft, src, file: str, row: int, index: int) -> dict[str, Any]:
    pair = {"prompt": draft.prompt, "chosen": draft.chosen, "rejected": draft.rejected}
    check_structure(pair)
    for name in ("chosen_score", "rejected_score"):
        value = getattr(draft, name)
        if value is not None and not isinstance(value, (int, float)):
            raise RowError("wrong_type", f"{name} must be a number, got {type(value).__name__}", name)
    pair.update(
        pair_id=pair_id(draft.prompt, draft.chosen, draft.rejected),
        prompt_id=prompt_id(draft.prompt),
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
    """Apply the recipe's content rules; failing pairs go to quarantine (stage 'validate')."""
    progress = progress or NoProgress()
    work = Path(work_dir)
    started = time.perf_counter()
    rules = cfg.validate_
    roles = frozenset(rules.allowed_roles)
    by_code: Counter[str] = Counter()
    progress.start("validate", ingested.counts["pairs_out"])
    with (
        TableWriter(work / "validated.parquet", "pairs", batch_size=cfg.batch_size) as ok_w,
        TableWriter(work / "quarantine-validate.parquet", "quarantine", batch_size=cfg.batch_size) as quar_w,
    ):
        for batch in iter_rows(ingested.files["pairs"], batch_size=cfg.batch_size):
            for pair in batch:
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
                ok_w.append(pair)
            progress.advance(len(batch))
    progress.finish()
    counts = {"pairs_in": ingested.counts["pairs_out"], "valid": ok_w.rows_written, "quarantined": dict(by_code)}
    files = {"pairs": str(ok_w.path), "quarantine": str(quar_w.path)}
    return StageOutput("validate", files, counts, time.perf_counter() - started)


def dedup(cfg: RunConfig, work_dir: str | Path, validated: StageOutput, progress: Progress | None = None) -> StageOutput:
    """Keep the first of each set of exact duplicates (normalised text); record the rest.

    Every pair gets a decision at this stage, kept or filtered, so a duplicate's row in the
    decisions table names the kept pair it matched.
    """
    progress = progress or NoProgress()
    work = Path(work_dir)
    started = time.perf_counter()
    deduper = ExactDeduper(enabled=cfg.dedup.exact)
    progress.start("dedup", validated.counts["valid"])
    with (
        TableWriter(work / "kept.parquet", "pairs", batch_size=cfg.batch_size) as kept_w,
        TableWriter(work / "decisions-dedup.parquet", "decisions", batch_size=cfg.batch_size) as dec_w,
    ):
        for batch in iter_rows(validated.files["pairs"], batch_size=cfg.batch_size):
            for pair in batch:
                matched = deduper.seen(pair)
                dec_w.append(
                    {
                        "pair_id": pair["pair_id"],
                        "source_dataset": pair["source_dataset"],
                        "source_file": pair["source_file"],
                        "source_row": pair["source_row"],
                        "source_pair_index": pair["source_pair_index"],
                        "stage": "dedup_exact",
                        "decision": "kept" if matched is None else "filtered",
                        "reason": None if matched is None else "exact_duplicate",
                        "matched_pair_id": matched,
                    }
                )
                if matched is None:
                    kept_w.append(pair)
            progress.advance(len(batch))
    progress.finish()
    counts = {
        "pairs_in": validated.counts["valid"],
        "kept": kept_w.rows_written,
        "filtered": {"exact_duplicate": deduper.duplicates} if deduper.duplicates else {},
    }
    files = {"pairs": str(kept_w.path), "decisions": str(dec_w.path)}
    return StageOutput("dedup", files, counts, time.perf_counter() - started)
