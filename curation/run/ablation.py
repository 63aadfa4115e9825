"""``curate eval RECIPE --ablate``: what each filter step of a recipe contributes.

The stages before the filter run once (from the flow's stage cache when it holds them,
``flows/ablate.py``); then only the filter stage reruns, once per variant:

* ``no filter steps``: the pairs as they enter the filter stage (the reference of every
  difference: what curation by filtering adds to the raw, deduplicated pairs),
* ``all steps``: the recipe's filter stage as it is,
* ``without STEP``: every step but one (leave-one-out; only with two or more steps).

Each variant's pairs train the same proxy models and are measured on the same evaluation
pairs (``curation.run.evaluation``). A step's contribution is ``all steps`` minus ``without
STEP``, with the paired bootstrap interval of that difference: positive means the step helps
the others, an interval across zero means this evaluation cannot tell.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from curation.config import RunConfig
from curation.errors import CurationError
from curation.evaluate.measure import Measured, difference
from curation.progress import NoProgress, Progress
from curation.run.evaluation import Variant, run_evaluation, write_log
from curation.stages.base import StageOutput
from curation.stages.filter.stage import FilterStage, filter_pairs, run_step

NONE = "no filter steps"
ALL = "all steps"


def without(step: str) -> str:
    return f"without {step}"


def step_sets(cfg: RunConfig) -> dict[str, list[Any]]:
    """The variants' filter steps, by variant name, in the order they are measured."""
    if cfg.filter is None or not cfg.filter.steps:
        raise CurationError("--ablate measures a recipe's filter steps, and this recipe has no filter section")
    steps = list(cfg.filter.steps)
    sets: dict[str, list[Any]] = {NONE: [], ALL: steps}
    if len(steps) > 1:
        for step in steps:
            sets[without(step.stage_name)] = [s for s in steps if s is not step]
    return sets


def filter_variants(
    cfg: RunConfig, work: Path, upstream: Mapping[str, StageOutput], progress: Progress | None = None, runner: Any = run_step
) -> list[Variant]:
    """A variant per step set: the filter stage's core over the staged upstream pairs, each
    into a folder of its own under ``work``, run when the variant's pairs are first asked for."""
    assert cfg.filter is not None
    progress = progress or NoProgress()
    files, labels, prompts_file = FilterStage.inputs(upstream)
    out = []
    for i, (name, steps) in enumerate(step_sets(cfg).items()):
        trial = FilterStage.with_steps(cfg, steps)
        folder = work / f"variant-{i}"

        def pairs(trial: RunConfig = trial, folder: Path = folder, name: str = name) -> pa.Table:
            folder.mkdir(parents=True, exist_ok=True)
            progress.start(f"ablation: pairs kept by {name!r}", None)
            done = filter_pairs(trial, folder, files, labels, progress, runner=runner, evaluation_file=prompts_file)
            table = pq.read_table(done.files["pairs"])
            progress.advance(table.num_rows)
            progress.finish()
            return table

        out.append(Variant(name, pairs))
    return out


def contributions(measured: Mapping[str, Measured], steps: list[str], bootstrap: int) -> list[dict[str, Any]]:
    """Per trainer and step: accuracy of all steps minus that of all steps but this one, with
    the paired bootstrap interval (same evaluation pairs, same resamples)."""
    rows = []
    everything = measured[ALL]
    for step in steps:
        left_out = measured.get(without(step)) or (measured[NONE] if len(steps) == 1 else None)
        if left_out is None:
            continue
        for trainer in everything.correct:
            if trainer.startswith("baseline:") or trainer not in left_out.correct:
                continue
            diff, low, high = difference(everything, left_out, trainer, bootstrap)
            rows.append({"step": step, "trainer": trainer, "difference": diff, "low": low, "high": high})
    return rows


def describe(c: Mapping[str, Any]) -> str:
    """One line per contribution, saying whether the interval excludes zero."""
    verdict = "helps" if c["low"] > 0 else "hurts" if c["high"] < 0 else "no clear effect"
    return f"{c['step']} ({c['trainer']}): {c['difference']:+.3f} accuracy [{c['low']:+.3f}, {c['high']:+.3f}]: {verdict}"


def upstream_here(cfg: RunConfig, run_dir: Path, progress: Progress | None = None) -> dict[str, StageOutput]:
    """The stages before the filter, run in this process into ``run_dir`` (no stage cache:
    ``curate eval --ablate --local``; ``flows/ablate.py`` reads them from the cache)."""
    from curation.run.runner import check_stages, run_stages

    check_stages(cfg)
    return run_stages(cfg, run_dir, progress, until=FilterStage.name)


def ablate(
    cfg: RunConfig,
    upstream: Mapping[str, StageOutput],
    work: Path,
    evaluation: pa.Table,
    eval_set: str,
    settings: Any,
    *,
    progress: Progress | None = None,
    on_variant: Callable[[str, bool], None] | None = None,
    runner: Any = run_step,
) -> dict[str, Any]:
    """Measure every variant of ``step_sets`` on ``evaluation`` with ``settings`` (an
    ``EvaluateConfig``); log the rows in the dataset's evaluation log. Returns the rows, the
    contributions (``contributions``, and each as a sentence) and the evaluation id."""
    assert cfg.filter is not None
    variants = filter_variants(cfg, work, upstream, progress, runner)
    eid, rows, measured = run_evaluation(
        cfg.publish.dataset,
        variants,
        evaluation,
        eval_set,
        settings,
        work_root=str(cfg.work_root),
        progress=progress,
        on_variant=on_variant,
    )
    found = contributions(measured, [s.stage_name for s in cfg.filter.steps], settings.bootstrap)
    write_log(cfg.data_root, cfg.publish.dataset, eid, rows)
    return {
        "dataset": cfg.publish.dataset,
        "evaluation_id": eid,
        "rows": rows,
        "contributions": [describe(c) for c in found],
        "contribution_rows": found,
    }
