"""The evaluation set: human-labelled pairs that no training pair may contain, set aside before
the model stages so that proxy models can be measured on preferences they never saw.

Two ways, either or both (the recipe's ``evaluate`` section):

* ``holdout_fraction``: a seeded share of the kept pairs, chosen by a hash of the pair's prompt
  id, so every pair of a prompt goes the same way and the split depends on nothing else (not
  order, not batch size). Held-out pairs get the decision ``held_out_for_eval`` and leave the
  training pairs before generation, labeling and filtering; the row accounting holds
  (kept = training + held out).
* ``sources``: human-labelled sources read by the same readers, adapters and rules as the
  recipe's own (ingest, validate, exact dedup: the stage cores, in a folder of their own),
  with their own row accounting; their quarantine and decisions rows join the version's
  tables like any source's.

Both go to the published ``evaluation_pairs`` table (pairs contract). The evaluate stage
measures on those with a human label.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from curation.config import RunConfig
from curation.progress import NoProgress, Progress
from curation.sources import SourceConfig
from curation.stages.base import APPEND, REPLACE, Stage, StageOutput, pair_files, staged_rows
from curation.stages.dedup.stage import dedup
from curation.stages.ingest.stage import ingest
from curation.stages.validate.stage import validate
from curation.tables import TableWriter, count_rows, link_or_copy
from schemas import arrow_schema

DECISION = "held_out_for_eval"
STAGE = "evaluation_set"


def held_out(prompt_id: str, fraction: float, seed: int) -> bool:
    """Whether a prompt is in the hold-out: a seeded hash of its id, as a number in [0, 1)."""
    digest = hashlib.blake2b(f"{seed}\x00{prompt_id}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") / 2**64 < fraction


def split_holdout(kept: str, work: Path, fraction: float, seed: int, batch_size: int) -> dict[str, Any]:
    """Write the training and held-out pairs of ``kept``, and a decision per held-out pair."""
    train_w = TableWriter(work / "train-pairs.parquet", "pairs", batch_size=batch_size)
    held_w = TableWriter(work / "held-out-pairs.parquet", "pairs", batch_size=batch_size)
    dec_w = TableWriter(work / "decisions-holdout.parquet", "decisions", batch_size=batch_size)
    reason = f"holdout_fraction {fraction:g} by prompt (seed {seed})"
    memo: dict[str, bool] = {}
    with train_w, held_w, dec_w:
        for batch in pq.ParquetFile(kept).iter_batches(batch_size=batch_size):
            ids = batch.column("prompt_id").to_pylist()
            out = [memo.setdefault(p, held_out(p, fraction, seed)) for p in ids]
            mask = pa.array(out, pa.bool_())
            table = pa.Table.from_batches([batch])
            train_w.write_table(table.filter(pc.invert(mask)))
            held = table.filter(mask)
            held_w.write_table(held)
            for row in held.select(["pair_id", "source_dataset", "source_file", "source_row", "source_pair_index"]).to_pylist():
                dec_w.append({**row, "stage": STAGE, "decision": DECISION, "reason": reason})
    return {"train": str(train_w.path), "held_out": str(held_w.path), "decisions": str(dec_w.path)}


def read_sources(cfg: RunConfig, sources: list[SourceConfig], work: Path, progress: Progress) -> dict[str, StageOutput]:
    """``sources`` through ingest, validate and exact dedup, with the recipe's rules (``cfg``)."""
    trial = cfg.model_copy(update={"sources": sources})
    work.mkdir(parents=True, exist_ok=True)
    ingested = ingest(trial, work, progress)
    validated = validate(trial, work, ingested, progress)
    return {"ingest": ingested, "validate": validated, "dedup": dedup(trial, work, validated, progress)}


def read_source_pairs(cfg: RunConfig, sources: list[SourceConfig], work: Path, progress: Progress) -> str:
    """The kept pairs of ``sources`` (``read_sources``'s last stage): what ``curate eval --set`` measures on."""
    return read_sources(cfg, sources, work, progress)["dedup"].files["pairs"]


def evaluation_file(upstream: Mapping[str, StageOutput]) -> str | None:
    """The run's evaluation pairs among a stage's upstream outputs, or None when it has none."""
    held = upstream.get(STAGE)
    return held.files["evaluation_pairs"] if held is not None else None


def _concat(paths: list[str], table: str, target: Path) -> str:
    """One Parquet file of the contract ``table`` holding the rows of ``paths``, in order."""
    schema = arrow_schema(table)
    with pq.ParquetWriter(target, schema, compression="zstd") as writer:
        for path in paths:
            for batch in pq.ParquetFile(path).iter_batches(batch_size=50_000):
                writer.write_table(pa.Table.from_batches([batch]).cast(schema))
    return str(target)


def evaluation_set(cfg: RunConfig, work_dir: str | Path, kept: str, progress: Progress | None = None) -> StageOutput:
    """Split the hold-out off ``kept`` (dedup's pairs) and read the evaluation sources."""
    assert cfg.evaluate is not None, "evaluation_set stage called without an evaluate section"
    progress = progress or NoProgress()
    started = time.perf_counter()
    work = Path(work_dir)
    ev = cfg.evaluate
    counts: dict[str, Any] = {"pairs_in": count_rows(kept), "held_out": 0, "held_out_human": 0, "sources": {}, "source_pairs": 0}
    decisions, quarantine, evaluation, inputs = [], [], [], []
    if ev.holdout_fraction is not None:
        progress.start("evaluation set: hold-out", counts["pairs_in"])
        split = split_holdout(kept, work, ev.holdout_fraction, ev.holdout_seed, cfg.batch_size)
        progress.advance(counts["pairs_in"])
        progress.finish()
        train, held = split["train"], split["held_out"]
        decisions.append(split["decisions"])
        evaluation.append(held)
        counts["held_out"] = count_rows(held)
        counts["held_out_human"] = sum(s == "human" for s in pq.read_table(held, columns=["label_source"])["label_source"].to_pylist())
    else:
        train = str(link_or_copy(kept, work / "train-pairs.parquet"))
    if ev.sources:
        outs = read_sources(cfg, ev.sources, work / "sources", progress)
        counts["sources"] = outs["ingest"].counts["sources"]
        counts["source_rows_in"] = outs["ingest"].counts["rows_in"]
        counts["source_quarantined"] = outs["ingest"].counts["quarantined"] + sum(outs["validate"].counts["quarantined"].values())
        counts["source_filtered"] = outs["ingest"].counts["filtered"] + sum(outs["dedup"].counts["filtered"].values())
        counts["source_pairs"] = outs["dedup"].counts["kept"]
        evaluation.append(outs["dedup"].files["pairs"])
        decisions += [outs["ingest"].files["decisions"], outs["dedup"].files["decisions"]]
        quarantine += [outs["ingest"].files["quarantine"], outs["validate"].files["quarantine"]]
        inputs = outs["ingest"].inputs
    counts["train_pairs"] = count_rows(train)
    files = {
        "pairs": train,
        "evaluation_pairs": _concat(evaluation, "pairs", work / "evaluation-pairs.parquet"),
        "decisions": _concat(decisions, "decisions", work / "decisions-evaluation-set.parquet"),
        "quarantine": _concat(quarantine, "quarantine", work / "quarantine-evaluation-set.parquet"),
    }
    counts["evaluation_pairs"] = count_rows(files["evaluation_pairs"])
    counts["evaluation_pairs_human"] = sum(
        s == "human" for s in pq.read_table(files["evaluation_pairs"], columns=["label_source"])["label_source"].to_pylist()
    )
    return StageOutput(STAGE, files, counts, time.perf_counter() - started, inputs)


class EvaluationSetStage(Stage):
    """Set aside the evaluation pairs (see the module docstring)."""

    name = STAGE
    sections = ("evaluate.holdout_fraction", "evaluate.holdout_seed", "evaluate.sources", "validate", "dedup")
    reads_sources = True  # the evaluation sources' files
    upstream = ("dedup",)
    publishes = {"pairs": REPLACE, "evaluation_pairs": REPLACE, "decisions": APPEND, "quarantine": APPEND}

    def enabled(self, cfg: RunConfig) -> bool:
        return cfg.evaluate is not None

    def run(self, cfg: RunConfig, run_dir: str | Path, upstream: Mapping[str, StageOutput], progress: Progress) -> StageOutput:
        (kept,) = pair_files(upstream)
        return self.marked(evaluation_set(cfg, run_dir, kept, progress))

    def funnel(self, out: StageOutput) -> dict[str, Any]:
        return {"evaluation_set": dict(out.counts)}

    def audit(self, out: StageOutput, funnel: dict[str, Any], upstream: Mapping[str, StageOutput]) -> list[str]:
        """kept = training + held out; each evaluation source's rows all accounted for."""
        c = funnel["evaluation_set"]
        problems = []
        if c["pairs_in"] != c["train_pairs"] + c["held_out"]:
            problems.append(f"evaluation set: {c['pairs_in']} kept pairs != {c['train_pairs']} training + {c['held_out']} held out")
        for name, s in c["sources"].items():
            ended = sum(s["quarantined"].values()) + sum(s["filtered"].values()) + s["rows_with_pairs"]
            if s["rows_in"] != ended:
                problems.append(f"evaluation source {name}: {s['rows_in']} rows in but {ended} accounted for")
        return problems + staged_rows(
            {
                "training pairs": (out.files["pairs"], c["train_pairs"]),
                "evaluation pairs": (out.files["evaluation_pairs"], c["held_out"] + c["source_pairs"]),
            }
        )
