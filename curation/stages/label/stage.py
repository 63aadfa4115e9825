"""The label stage: kept (and generated) pairs -> one labels row per (pair, labeler) -> agreement.

Runs after dedup and generation. Labelers read the staged pairs in chunks (an ensemble that
trains on the data reads its selection at once), write into one staged ``labels`` table and
never touch the pairs: a human label stays as it was, AI labels sit next to it. The stage
then checks that every selected pair got a row from every labeler (a labeler that silently
skips pairs is a bug, not a filter) and computes the agreement table against the human
labels.

Resuming and failures (per-pair labelers, i.e. ``streaming``): every finished chunk is kept
in the label cache (``cache.py``), so a killed or failed run labels only what is missing when
it runs again. A chunk the labeler fails on is split in halves until the failing pairs are
alone; each of those gets an ``invalid`` row whose error says why (``scoring failed: ...``)
instead of failing the run, so a flaky server costs labels, never the run, and no pair goes
missing. When nothing of a chunk succeeds and several pairs have failed alone, the server
is taken to be down: the run stops with that error (finished chunks stay cached).
The per-labeler counts say how many pairs were reused, scored and failed. A labeler trained
on the whole selection (the BT ensemble) is cached per run instead: the same selection with the
same human labels reuses every label, without embedding or training (``cache.RunCache``).
"""

from __future__ import annotations

import sys
import time
from collections import Counter
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import polars as pl
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from curation.config import RunConfig
from curation.errors import ConfigError, CurationError
from curation.messages import message_chars
from curation.models.base import Unsupported
from curation.progress import NoProgress, Progress
from curation.stages.base import REPLACE, Stage, StageOutput, pair_files
from curation.stages.label import BackendPool, build_labeler, check_labeler
from curation.stages.label.agreement import (
    agreement,
    breakdown_rows,
    calibration_rows,
    margin_histograms,
    pairwise_agreement,
    read_labels,
    summary_rows,
)
from curation.stages.label.base import LABELER_PAIR_COLUMNS, Labeler, scoring_failure
from curation.stages.label.cache import LabelCache, RunCache, cache_root, failed_to_score, open_cache
from curation.stages.label.config import LabelConfig
from schemas import arrow_schema

SELECT = {"all": None, "human": ["human"], "unlabeled": ["unlabeled"]}
# agreement row fields the run summary leaves out: of the binned rows, of the summary rows
BIN_KEYS = ("bin", "bin_by", "margin_low", "margin_high", "log_ratio_low", "log_ratio_high")
SUMMARY_ONLY = (
    "source_dataset",
    "breakdown",
    "breakdown_value",
    "ci_low",
    "ci_high",
    "consistency_rate",
    "tie_rate",
    "invalid_rate",
    "length_correlation",
    "position_bias",
)
DOWN_AFTER = 8
"""Pairs failing alone, with nothing of their chunk labelled yet, that mean the backend is down
(fewer could be a run of bad pairs at the head of a chunk: over-long prompts, say)."""


def check(cfg: RunConfig) -> None:
    """Every labeler's config and backends, before any work."""
    if cfg.label is not None:
        for lab in cfg.label.labelers:
            check_labeler(lab, cfg.work_root)


def selected_pairs(files: list[str], mode: str, limit: int | None, chunk_size: int) -> Iterator[pa.Table]:
    """Chunks of the pairs to label: from each file in order, those whose label_source
    matches ``mode``, at most ``limit`` per source dataset (so a quick run still covers every
    source). Only the columns labelers read are loaded."""
    sources = SELECT[mode]
    for path in files:
        taken: Counter[str] = Counter()
        for batch in pq.ParquetFile(path).iter_batches(batch_size=chunk_size, columns=LABELER_PAIR_COLUMNS):
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


def count_selected(files: list[str], mode: str, limit: int | None) -> int:
    """How many pairs ``selected_pairs`` yields (two small columns read): the total a long
    labeling step's progress lines count towards."""
    sources = SELECT[mode]
    total = 0
    for path in files:
        frame = pl.read_parquet(path, columns=["label_source", "source_dataset"])
        if sources is not None:
            frame = frame.filter(pl.col("label_source").is_in(sources))
        per_source = frame["source_dataset"].value_counts()["count"]
        total += int(per_source.clip(upper_bound=limit).sum() if limit is not None else per_source.sum())
    return total


def _check_coverage(labeler: Labeler, expected: set[str], got: set[str]) -> None:
    missing, extra = expected - got, got - expected
    if missing or extra:
        raise CurationError(
            f"labeler {labeler.name!r} ({labeler.kind}) returned labels for {len(got)} pairs but was given {len(expected)}: "
            f"{len(missing)} missing, {len(extra)} unknown; nothing was published"
        )


class _Isolation:
    """Bookkeeping of one chunk's splitting: pairs labelled, pairs failed alone, first error."""

    def __init__(self) -> None:
        self.ok = 0
        self.failed: list[Exception] = []


def label_chunk(labeler: Labeler, pairs: pa.Table, state: _Isolation | None = None) -> pa.Table:
    """``labeler.label(pairs)``; when that raises, the halves are labelled apart (recursively),
    and a pair that fails alone gets an invalid row with the error. A ``ConfigError`` is fatal;
    so is ``Unsupported`` that hits every pair (the backend lacks the capability) and a chunk
    where ``DOWN_AFTER`` pairs failed alone and none succeeded (the backend is down)."""
    state = state or _Isolation()
    try:
        out = labeler.label(pairs)
        state.ok += pairs.num_rows
        return out
    except ConfigError:
        raise
    except Exception as err:  # noqa: BLE001 - any backend failure: find the pair(s) that caused it
        if pairs.num_rows == 1:
            state.failed.append(err)
            if not state.ok and len(state.failed) >= DOWN_AFTER:
                _give_up(labeler, state)
            (pid,) = pairs["pair_id"].to_pylist()
            return labeler.table([labeler.row(pid, None, None, verdict="invalid", error=scoring_failure(err))])
    half = pairs.num_rows // 2
    return pa.concat_tables([label_chunk(labeler, part, state) for part in (pairs.slice(0, half), pairs.slice(half))])


def _give_up(labeler: Labeler, state: _Isolation) -> None:
    first = state.failed[0]
    if all(isinstance(e, Unsupported) for e in state.failed):
        raise first
    raise CurationError(
        f"labeler {labeler.name!r} ({labeler.kind}): {len(state.failed)} pairs failed one by one and none succeeded, "
        f"so its backend looks unusable; nothing was published (finished chunks are cached). First error: {scoring_failure(first)}"
    ) from None


def _in_pair_order(pairs: pa.Table, parts: list[pa.Table]) -> pa.Table:
    """Rows of ``parts`` ordered as their pairs are in ``pairs`` (stable within a pair): the
    order an uncached run writes them in."""
    rows = pa.concat_tables(parts)
    position = {pid: i for i, pid in enumerate(pairs["pair_id"].to_pylist())}
    order = sorted(range(rows.num_rows), key=lambda i, ids=rows["pair_id"].to_pylist(): position.get(ids[i], len(position)))
    return rows.take(pa.array(order, pa.int64()))


def _failed_pairs(out: pa.Table) -> set[str]:
    return {pid for pid, err in zip(out["pair_id"].to_pylist(), out["error"].to_pylist()) if failed_to_score(err)}


def run_labeler(
    labeler: Labeler,
    label_cfg: LabelConfig,
    files: list[str],
    writer: pq.ParquetWriter,
    progress: Progress,
    cache: LabelCache | RunCache | None = None,
) -> dict[str, Any]:
    limit = labeler.cfg.limit or label_cfg.limit
    chunks = selected_pairs(files, label_cfg.pairs, limit, label_cfg.chunk_size)
    if not labeler.streaming:
        chunks = iter([pa.concat_tables(list(chunks))] if files else [])
    started = time.perf_counter()
    verdicts: Counter[str] = Counter()
    expected: set[str] = set()
    labelled: set[str] = set()
    failed: set[str] = set()
    rows = reused = scored = 0
    own = NoProgress() if not labeler.streaming else progress
    if not labeler.streaming and hasattr(labeler, "progress"):
        labeler.progress = progress  # one call on every pair: the labeler reports its own slow steps
    own.start(f"label: {labeler.name}", count_selected(files, label_cfg.pairs, limit) if labeler.streaming else None)
    for pairs in chunks:
        if not pairs.num_rows:
            continue
        if isinstance(cache, RunCache):  # the whole selection: reused only with unchanged training inputs
            cached = cache.get(pairs)
            if cached is None:
                out = new = labeler.label(pairs)
                cache.put(pairs, new)
                scored += pairs.num_rows
            else:
                out, new = cached, labeler.table([])
                reused += pairs.num_rows
        elif cache is not None:
            hits = cache.get(pairs["pair_id"].to_pylist())
            hit_ids = set(hits["pair_id"].to_pylist())
            todo = pairs.filter(pc.invert(pc.is_in(pairs["pair_id"], pa.array(sorted(hit_ids), pa.string())))) if hit_ids else pairs
            new = label_chunk(labeler, todo) if todo.num_rows else labeler.table([])
            cache.put(new)
            out = _in_pair_order(pairs, [hits, new]) if hit_ids else new
            reused += len(hit_ids)
            scored += todo.num_rows
        else:
            out = label_chunk(labeler, pairs) if labeler.streaming else labeler.label(pairs)
            new = out
            scored += pairs.num_rows
        failed |= _failed_pairs(new)
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
        # pairs whose labels came from the label cache / were labelled in this run / of those,
        # pairs recorded invalid because scoring them failed (retried by the next run)
        "labels_reused": reused,
        "labels_scored": scored,
        "labels_failed": len(failed),
    }


def agreement_pairs(files: list[str], by: list[str]) -> pl.DataFrame:
    """What agreement needs of the pairs, scanned per file: ids, label source, source, the
    responses' lengths, and the metadata only when a breakdown names fields of it."""
    columns = ["pair_id", "label_source", "source_dataset", *(["metadata"] if by else [])]
    parts = [
        pl.scan_parquet(f)
        .select(*columns, message_chars("chosen").alias("len_chosen"), message_chars("rejected").alias("len_rejected"))
        .collect()
        for f in files
    ]
    if parts:
        return pl.concat(parts, how="vertical")
    schema = {
        "pair_id": pl.String,
        "label_source": pl.String,
        "source_dataset": pl.String,
        "len_chosen": pl.Float64,
        "len_rejected": pl.Float64,
    }
    return pl.DataFrame(schema={**schema, **({"metadata": pl.String} if by else {})})


def unmatched(by: list[str], breakdown: list[dict[str, Any]]) -> list[str]:
    """The ``by`` fields that produced no breakdown row, each said once on stderr."""
    found = {r["breakdown"] for r in breakdown}
    missing = [f for f in by if f not in found]
    for field in missing:
        print(f"label: agreement.by field {field!r} is in no human-labelled pair's metadata; no breakdown for it", file=sys.stderr)
    return missing


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
    pool = BackendPool(cfg.work_root)
    per_labeler: dict[str, Any] = {}
    writer = pq.ParquetWriter(labels_path, arrow_schema("labels"), compression="zstd")
    try:
        for lab_cfg in label_cfg.labelers:
            labeler = build_labeler(lab_cfg, pool)
            cache = open_cache(cache_root(cfg.work_root), labeler)
            per_labeler[lab_cfg.name] = run_labeler(labeler, label_cfg, files, writer, progress, cache)
    finally:
        writer.close()
        pool.close()
    a = label_cfg.agreement
    pairs = agreement_pairs(files, a.by)
    labels = read_labels(str(labels_path))
    table = agreement(labels, pairs, resamples=a.bootstrap, bins=a.bins, seed=a.seed, by=a.by)
    pq.write_table(table, agreement_path, compression="zstd")
    counts = {
        "labelers": per_labeler,
        "label_rows": sum(c["rows"] for c in per_labeler.values()),
        "labels_reused": sum(c["labels_reused"] for c in per_labeler.values()),
        "labels_scored": sum(c["labels_scored"] for c in per_labeler.values()),
        "labels_failed": sum(c["labels_failed"] for c in per_labeler.values()),
        "agreement": [_drop(r, *BIN_KEYS, "source_dataset", "breakdown", "breakdown_value") for r in summary_rows(table)],
        "calibration": [_drop(r, *SUMMARY_ONLY, "log_ratio_low", "log_ratio_high") for r in calibration_rows(table)],
        "length_bins": [_drop(r, *SUMMARY_ONLY, "margin_low", "margin_high") for r in calibration_rows(table, "length")],
        "agreement_breakdown": (breakdown := [_drop(r, *BIN_KEYS) for r in breakdown_rows(table)]),
        # label.agreement.by fields no human-labelled pair's metadata holds (a typo, or the adapter lacks metadata_fields)
        "agreement_by_unmatched": unmatched(a.by, breakdown),
        # for the run report, which never reads the labels table itself
        "pairwise": pairwise_agreement(labels),
        "margins": margin_histograms(labels),
    }
    return StageOutput("label", {"labels": str(labels_path), "agreement": str(agreement_path)}, counts, time.perf_counter() - started)


class LabelStage(Stage):
    """Every configured labeler over the kept and generated pairs; labels and agreement."""

    name = "label"
    sections = ("label",)
    upstream = ("dedup", "evaluation_set", "generate")
    publishes = {"labels": REPLACE, "agreement": REPLACE}
    uses_models = True
    retry = "api"

    def enabled(self, cfg: RunConfig) -> bool:
        return cfg.label is not None

    def check(self, cfg: RunConfig) -> None:
        check(cfg)

    def run(self, cfg: RunConfig, run_dir: str | Path, upstream: Mapping[str, StageOutput], progress: Progress) -> StageOutput:
        return self.marked(label(cfg, run_dir, pair_files(upstream), progress))

    def funnel(self, out: StageOutput) -> dict[str, Any]:
        return {"labels": dict(out.counts)}
