"""Benchmark decontamination: drop training pairs whose prompt overlaps a benchmark prompt.

A preference set that contains a benchmark's prompts (or near-copies of them) trains on the
test: the scores measured later on that benchmark, or on the run's own evaluation pairs, are
inflated. This step compares every judged pair's prompt (``curation.overlap.prompt_text``)
against the prompts of the benchmark files the recipe names, and, with ``use_evaluation``,
against the run's evaluation prompts (``ctx.evaluation_prompts``, reference name
``evaluation``), with the matcher the evaluation's leakage guard uses (``curation.overlap``:
exact, the n-gram coverage rule of open-instruct's Tulu 3 decontamination, MinHash).

Benchmark files: JSONL, JSON (a list of objects), Parquet, each with a prompt field (``field``,
or the first of ``FIELDS`` the file has), or ``.txt`` with one prompt per line. A ``messages``
field (a list of ``{role, content}``) gives the turns before its final assistant replies. Item
numbers are 0-based rows: lines of a .txt (blank ones included, never matched), records of a
JSONL (blank lines skipped), entries of a JSON list, rows of a Parquet file. A missing file or
field is a ``ConfigError`` naming it, raised by ``check`` before any work.

Decisions: a matched pair is ``filtered`` with reason ``exact_overlap`` / ``ngram_overlap`` /
``minhash_overlap``, ``matched_pair_id`` = ``"{reference}:{item}"`` and score ``overlap``; every
other judged pair (of ``cfg.sources``, default all) is ``kept``. Pairs sharing a prompt are
matched once.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import polars as pl

from curation.decisions import decisions_frame
from curation.errors import ConfigError
from curation.overlap import OverlapIndex, prompt_text, prompt_text_expr
from curation.stages.filter.base import PairSource, StepContext, StepResult, in_sources
from curation.stages.filter.config import BenchmarkFile, DecontaminateStep

FIELDS = ("prompt", "question", "instruction", "text", "messages")
REASONS = {"exact": "exact_overlap", "ngram": "ngram_overlap", "minhash": "minhash_overlap"}
EVALUATION = "evaluation"
BATCH = 65_536
MATCH_SCHEMA = {"kind": pl.String, "reference": pl.String, "matched_pair_id": pl.String, "overlap": pl.Float64}


# --------------------------------------------------------------------------- benchmark files


def load_benchmark(bench: BenchmarkFile) -> list[str]:
    """The benchmark's prompt texts, item i at position i."""
    path = Path(bench.path)
    where = f"benchmark {bench.name!r} ({path})"
    if not path.is_file():
        raise ConfigError(f"{where}: file not found")
    suffix = path.suffix.lower()
    if suffix == ".txt":
        if bench.field is not None:
            raise ConfigError(f"{where}: a .txt file has one prompt per line and no fields; drop field: {bench.field}")
        return path.read_text(encoding="utf-8").splitlines()
    if suffix == ".parquet":
        frame = pl.read_parquet(path)
        field = pick_field(bench, frame.columns, where)
        return [as_prompt(v, where, i) for i, v in enumerate(frame[field].to_list())]
    if suffix in (".jsonl", ".ndjson", ".json"):
        records = read_json_records(path, suffix, where)
        keys = list(dict.fromkeys(k for r in records for k in r))
        field = pick_field(bench, keys, where)
        return [as_prompt(r.get(field), where, i) for i, r in enumerate(records)]
    raise ConfigError(f"{where}: unknown format {suffix or '(no suffix)'}; use .jsonl, .json, .parquet or .txt")


def read_json_records(path: Path, suffix: str, where: str) -> list[dict[str, Any]]:
    text = path.read_text(encoding="utf-8")
    try:
        if suffix == ".json":
            records = json.loads(text)
            if not isinstance(records, list):
                raise ConfigError(f"{where}: expected a JSON list of objects, got {type(records).__name__}")
        else:
            records = [json.loads(line) for line in text.splitlines() if line.strip()]
    except json.JSONDecodeError as err:
        raise ConfigError(f"{where}: not valid JSON: {err}") from None
    if not all(isinstance(r, dict) for r in records):
        raise ConfigError(f"{where}: every record must be a JSON object")
    return records


def pick_field(bench: BenchmarkFile, columns: list[str], where: str) -> str:
    if bench.field is not None:
        if bench.field not in columns:
            raise ConfigError(f"{where}: no field {bench.field!r}; it has: {', '.join(columns) or 'none'}")
        return bench.field
    for name in FIELDS:
        if name in columns:
            return name
    raise ConfigError(f"{where}: none of the fields {', '.join(FIELDS)}; set field: (it has: {', '.join(columns) or 'none'})")


def as_prompt(value: Any, where: str, row: int) -> str:
    """A field value as prompt text: a string as is, messages without their final assistant replies."""
    if value is None or isinstance(value, str):
        return value or ""
    if isinstance(value, list) and all(isinstance(m, dict) and "content" in m for m in value):
        turns = list(value)
        while turns and turns[-1].get("role") == "assistant":
            turns.pop()
        return prompt_text(turns)
    raise ConfigError(f"{where}: row {row}: expected a string or a list of messages, got {type(value).__name__}")


def check(cfg: DecontaminateStep, data_root: str | Path) -> None:
    """Every benchmark file readable, with its prompt field: before any work."""
    for bench in cfg.benchmarks:
        try:
            load_benchmark(bench)
        except ConfigError as err:
            raise ConfigError(f"filter step {cfg.stage_name!r}: {err}") from None


def references(cfg: DecontaminateStep, ctx: StepContext) -> dict[str, list[str]]:
    refs = {b.name: load_benchmark(b) for b in cfg.benchmarks}
    if cfg.use_evaluation and ctx.evaluation_prompts is not None:
        refs[EVALUATION] = list(ctx.evaluation_prompts)
    return refs


# --------------------------------------------------------------------------- the step


def match_prompts(index: OverlapIndex, prompts: pl.DataFrame) -> pl.DataFrame:
    """(prompt_id, kind, reference, matched_pair_id, overlap) of each row of ``prompts``; nulls: no match."""
    found = index.match(prompts.select(prompt_text_expr())["prompt"])
    columns = {
        "kind": [m.kind if m else None for m in found],
        "reference": [m.reference if m else None for m in found],
        "matched_pair_id": [f"{m.reference}:{m.item}" if m else None for m in found],
        "overlap": [m.overlap if m else None for m in found],
    }
    return prompts.select("prompt_id").hstack(pl.DataFrame(columns, schema=MATCH_SCHEMA))


def run(cfg: DecontaminateStep, pairs: PairSource, labels: pl.DataFrame, ctx: StepContext) -> StepResult:
    refs = references(cfg, ctx)
    index = OverlapIndex(refs, ngram=cfg.ngram, ngram_threshold=cfg.ngram_threshold, minhash_threshold=cfg.minhash_threshold)
    parts: list[pl.DataFrame] = []
    prompts = 0
    ctx.progress.start(f"{cfg.stage_name}: prompts against {len(index):,} reference prompts", total=len(pairs))
    try:
        for batch in pairs.batches(["pair_id", "prompt_id", "source_dataset", "prompt"], BATCH):
            judged = in_sources(batch, cfg.sources)
            if judged.height:
                unique = judged.unique("prompt_id", keep="first", maintain_order=True)
                prompts += unique.height
                matched = match_prompts(index, unique)
                parts.append(judged.select("pair_id", "prompt_id").join(matched, on="prompt_id", how="left", maintain_order="left"))
            ctx.progress.advance(batch.height)
    finally:
        ctx.progress.finish()
    frame = pl.concat(parts) if parts else pl.DataFrame(schema={"pair_id": pl.String, "prompt_id": pl.String, **MATCH_SCHEMA})
    hit = frame["kind"].is_not_null()
    decisions = decisions_frame(
        frame["pair_id"],
        frame.select(pl.when(hit).then(pl.lit("filtered")).otherwise(pl.lit("kept")))[:, 0],
        frame["kind"].replace_strict(REASONS, default=None, return_dtype=pl.String),
        matched=frame["matched_pair_id"],
        overlap=frame["overlap"],
    )
    counts: dict[str, dict[str, int]] = {}
    for ref, kind, n in frame.filter(hit).group_by("reference", "kind").len().sort("reference", "kind").iter_rows():
        counts.setdefault(ref, {})[kind] = n
    summary = {
        "references": {name: len(texts) for name, texts in refs.items()},
        "evaluation_prompts": None if ctx.evaluation_prompts is None else len(ctx.evaluation_prompts),
        "ngram": cfg.ngram,
        "ngram_threshold": cfg.ngram_threshold,
        "minhash_threshold": cfg.minhash_threshold,
        "pairs": frame.height,
        "prompts": prompts,
        "matches": counts,
        "filtered": int(hit.sum()),
    }
    return StepResult(decisions=decisions, scores=["overlap"], summary=summary)
