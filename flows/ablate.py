"""``curate eval RECIPE --ablate`` as a Prefect flow: the stages before the filter come from
the stage cache (``flows/caching.py``: a recipe already run costs nothing there), then only the
filter stage reruns, once per variant, and each variant trains the proxy models
(``curation.run.ablation``).

``--local`` runs the same without Prefect: the stages before the filter run in this process.
"""

from __future__ import annotations

import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
from prefect import flow, get_run_logger

from curation.config import RunConfig, load_config
from curation.errors import CurationError
from curation.progress import LineProgress, Progress
from curation.run import ablation
from curation.run import publish as publishing
from curation.run.evaluation import evaluation_set, settings
from curation.stages.base import StageOutput
from curation.stages.evaluation_set.stage import evaluation_file
from curation.stages.filter.stage import FilterStage
from flows import caching
from flows.curate import _progress_for_task, run_stages
from flows.runners import task_runner_for


def _measure(
    cfg: RunConfig, upstream: dict[str, StageOutput], run_dir: Path, eval_set: str | None, adapter: str | None,
    trainers: list[str] | None, seeds: str | None, progress: Progress, say: Callable[[str], Any],
) -> dict[str, Any]:  # fmt: skip
    evaluation, described, section = _evaluation(cfg, upstream, eval_set, adapter, progress)
    chosen = settings(section if section is not None else cfg.evaluate, trainers, seeds)
    return ablation.ablate(
        cfg, upstream, run_dir / "ablation", evaluation, described, chosen, progress=progress,
        on_variant=lambda name, resumed: say(f"{name}: {'taken from an earlier run' if resumed else 'training'}"),
    )  # fmt: skip


def _evaluation(
    cfg: RunConfig, upstream: dict[str, StageOutput], spec: str | None, adapter: str | None, progress: Progress
) -> tuple[pa.Table, str, Any]:
    """The pairs to measure on: ``--set`` when given, else the recipe's own evaluation set."""
    if spec is not None:
        return evaluation_set(spec, adapter, None, cfg.data_root, progress)
    held = evaluation_file(upstream)
    if held is None:
        raise CurationError(
            "--ablate needs evaluation pairs: add an evaluate section to the recipe (evaluate: {holdout_fraction: 0.1}) "
            "or pass --set RECIPE_OR_FILE"
        )
    return pq.read_table(held), "the recipe's evaluation set", cfg.evaluate


@flow(name="ablate", log_prints=True)
def ablate_flow(
    recipe: str, data_root: str | None = None, eval_set: str | None = None, adapter: str | None = None,
    trainers: list[str] | None = None, seeds: str | None = None,
) -> dict:  # fmt: skip
    """Each filter step's contribution to proxy-model accuracy (see the module docstring)."""
    cfg = load_config(recipe, data_root=data_root)
    logger = get_run_logger()
    caching.prune(cfg)
    run_dir = publishing.new_run_dir(cfg)
    try:
        _, outs, cached = run_stages(cfg, str(run_dir), until=FilterStage.name)
        if cached:
            logger.info("reused from the stage cache: %s", ", ".join(cached))
        result = _measure(cfg, outs, run_dir, eval_set, adapter, trainers, seeds, _progress_for_task(), _say or logger.info)
        return result | {"cached": cached}
    finally:
        shutil.rmtree(run_dir, ignore_errors=True)


_say: Callable[[str], Any] | None = None


def set_reporter(say: Callable[[str], Any] | None) -> None:
    """Where an in-process caller (the CLI) wants the flow's one-line notes (each variant
    trained or resumed); the flow's log otherwise."""
    global _say
    _say = say


def ablate_recipe(
    recipe: str, *, data_root: str | None = None, eval_set: str | None = None, adapter: str | None = None,
    trainers: list[str] | None = None, seeds: str | None = None, local: bool = False, progress: Progress | None = None,
    say: Callable[[str], Any] = print,
) -> dict:  # fmt: skip
    """Run the ablation: as a Prefect flow on the recipe's task runner, or in this process (``local``)."""
    cfg = load_config(recipe, data_root=data_root)  # a bad recipe fails before Prefect starts anything
    ablation.step_sets(cfg)  # no filter section: a clear error first
    if not local:
        set_reporter(say)
        runner = task_runner_for(cfg.orchestration)
        return ablate_flow.with_options(task_runner=runner)(
            str(recipe), data_root=data_root, eval_set=eval_set, adapter=adapter, trainers=trainers, seeds=seeds
        )
    publishing.sweep_runs(cfg.work_root)
    run_dir = publishing.new_run_dir(cfg)
    try:
        progress = progress or LineProgress(print)
        outs = ablation.upstream_here(cfg, run_dir, progress)
        return _measure(cfg, outs, run_dir, eval_set, adapter, trainers, seeds, progress, say)
    finally:
        shutil.rmtree(run_dir, ignore_errors=True)
