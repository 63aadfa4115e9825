"""The evaluate stage: proxy models trained on the pairs this run publishes, measured on the
evaluation pairs it set aside (``evaluation_set``), before the version is committed, so the
version carries its own evidence (the ``evaluations`` table; the CLI and the report show it).

The training pairs are the ``pairs`` table as the stages before leave it (after the filters),
those with a label; the measurement is ``curation.evaluate.measure``: the recipe's trainers
and the trivial baselines on the same human-labelled pairs, leaked ones left out.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from curation.config import RunConfig
from curation.progress import Progress
from curation.stages.base import REPLACE, Stage, StageOutput, pair_files
from schemas import arrow_schema


def evaluate(cfg: RunConfig, run_dir: str | Path, train_files: list[str], evaluation_file: str, progress: Progress) -> StageOutput:
    from curation.evaluate.measure import evaluation_pairs, measure  # torch and the trainers: only when a run evaluates

    assert cfg.evaluate is not None, "evaluate stage called without an evaluate section"
    started = time.perf_counter()
    work = Path(run_dir) / "evaluate"
    train = pa.concat_tables([pq.read_table(f) for f in train_files]) if train_files else arrow_schema("pairs").empty_table()
    pairs, leaked_out = evaluation_pairs(pq.read_table(evaluation_file), [train], cfg.evaluate)
    base = {
        "evaluation_id": Path(run_dir).name,
        "dataset": cfg.publish.dataset,
        "version": None,
        "eval_set": _described(cfg),
        "leaked_excluded": leaked_out,
    }
    result = measure("this version", train, pairs, cfg.evaluate, work_dir=work, work_root=cfg.work_root, base=base, progress=progress)
    path = Path(run_dir) / "evaluations.parquet"
    pq.write_table(pa.Table.from_pylist(result.rows, schema=arrow_schema("evaluations")), path, compression="zstd")
    counts = {"rows": result.rows, "eval_pairs": pairs.num_rows, "leaked_excluded": leaked_out}
    return StageOutput("evaluate", {"evaluations": str(path)}, counts, time.perf_counter() - started)


def _described(cfg: RunConfig) -> str:
    ev = cfg.evaluate
    assert ev is not None
    parts = [f"hold-out {ev.holdout_fraction:g} (seed {ev.holdout_seed})"] if ev.holdout_fraction is not None else []
    parts += [f"source {s.name}" for s in ev.sources]
    return ", ".join(parts)


class EvaluateStage(Stage):
    """Measure the published pairs (see the module docstring). Not cached: it reads the filter
    stage's output, which the flow does not cache either."""

    name = "evaluate"
    upstream = ("dedup", "evaluation_set", "generate", "filter")
    cached = False
    uses_models = True
    publishes = {"evaluations": REPLACE}

    def enabled(self, cfg: RunConfig) -> bool:
        return cfg.evaluate is not None

    def check(self, cfg: RunConfig) -> None:
        from curation.evaluate.trainers import trainer_class

        assert cfg.evaluate is not None
        for tcfg in cfg.evaluate.trainers:
            checker = getattr(trainer_class(tcfg.kind), "check", None)
            if checker is not None:
                checker(tcfg, cfg.work_root)

    def run(self, cfg: RunConfig, run_dir: str | Path, upstream: Mapping[str, StageOutput], progress: Progress) -> StageOutput:
        evaluation = upstream["evaluation_set"].files["evaluation_pairs"]
        return self.marked(evaluate(cfg, run_dir, pair_files(upstream), evaluation, progress))

    def funnel(self, out: StageOutput) -> dict[str, Any]:
        return {"evaluation": dict(out.counts)}
