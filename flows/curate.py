"""The spine as a Prefect flow: ingest -> validate -> dedup -> [generate] -> [label] -> [filter] -> publish,
one task each (one per filter step).

Runs with no Prefect server (ephemeral mode) from the CLI (`curate run`) or from Python
(`curate_flow("recipes/hh-rlhf-sample.yaml")`); on a server the same flow is deployable.
Tasks pass file paths and counts, never tables, so results stay small.
"""

from __future__ import annotations

import logging
import time
from dataclasses import asdict

from prefect import flow, get_run_logger, task
from prefect.artifacts import create_markdown_artifact
from prefect.cache_policies import NO_CACHE

from curation import pipeline, stages
from curation.config import RunConfig, load_config
from curation.filter import stage as filtering
from curation.generate import stage as generation
from curation.label import stage as labeling
from curation.progress import Progress
from curation.report import funnel_steps, reason_rows
from curation.stages import StageOutput
from curation.store import DatasetStore

_progress: Progress | None = None


def set_progress(progress: Progress | None) -> None:
    """Let an in-process caller (the CLI) show progress bars for the flow's stages."""
    global _progress
    _progress = progress


class LogProgress:
    """Progress for runs without a terminal: a log line per stage and every 100k rows."""

    def __init__(self, logger: logging.Logger | logging.LoggerAdapter, every: int = 100_000):
        self.logger, self.every = logger, every
        self.name, self.done, self.t0 = "", 0, 0.0

    def start(self, description: str, total: int | None = None) -> None:
        self.name, self.done, self.t0 = description, 0, time.perf_counter()
        self.logger.info("%s: started%s", description, f" ({total:,} rows)" if total else "")

    def advance(self, n: int = 1) -> None:
        before, self.done = self.done, self.done + n
        if before // self.every != self.done // self.every:
            self.logger.info("%s: %s rows", self.name, f"{self.done:,}")

    def finish(self) -> None:
        self.logger.info("%s: %s rows in %.1f s", self.name, f"{self.done:,}", time.perf_counter() - self.t0)


def _progress_for_task() -> Progress:
    return _progress or LogProgress(get_run_logger())


@task(name="ingest", cache_policy=NO_CACHE)
def ingest_task(cfg: RunConfig, run_dir: str) -> StageOutput:
    return stages.ingest(cfg, run_dir, _progress_for_task())


@task(name="validate", cache_policy=NO_CACHE)
def validate_task(cfg: RunConfig, run_dir: str, ingested: StageOutput) -> StageOutput:
    return stages.validate(cfg, run_dir, ingested, _progress_for_task())


@task(name="dedup", cache_policy=NO_CACHE)
def dedup_task(cfg: RunConfig, run_dir: str, validated: StageOutput) -> StageOutput:
    return stages.dedup(cfg, run_dir, validated, _progress_for_task())


@task(name="generate", cache_policy=NO_CACHE)
def generate_task(cfg: RunConfig, run_dir: str, deduped: StageOutput) -> StageOutput:
    return generation.generate(cfg, run_dir, deduped.files["pairs"], _progress_for_task())


@task(name="label", cache_policy=NO_CACHE)
def label_task(cfg: RunConfig, run_dir: str, deduped: StageOutput, generated: StageOutput | None) -> StageOutput:
    return labeling.label(cfg, run_dir, pipeline.pairs_to_label(deduped, generated), _progress_for_task())


@task(name="filter-step", cache_policy=NO_CACHE)
def filter_step_task(step, pairs, labels, ctx):  # noqa: ANN001, ANN201 - filtering.RunStep
    return filtering.run_step(step, pairs, labels, ctx)


def _step_as_task(step, pairs, labels, ctx):  # noqa: ANN001, ANN202 - filtering.RunStep
    return filter_step_task.with_options(name=f"filter-{step.stage_name}")(step, pairs, labels, ctx)


def filter_stage(
    cfg: RunConfig, run_dir: str, deduped: StageOutput, generated: StageOutput | None, labelled: StageOutput | None
) -> StageOutput:
    """The filter stage in the flow body (it holds the pairs' index between steps); each step
    runs as its own task, so the Prefect UI shows and times every filter."""
    labels = labelled.files["labels"] if labelled is not None else None
    progress = _progress or LogProgress(get_run_logger())
    return filtering.filter_pairs(cfg, run_dir, pipeline.pairs_to_label(deduped, generated), labels, progress, runner=_step_as_task)


@task(name="publish", cache_policy=NO_CACHE)
def publish_task(
    cfg: RunConfig,
    run_dir: str,
    ingested: StageOutput,
    validated: StageOutput,
    deduped: StageOutput,
    generated: StageOutput | None = None,
    labelled: StageOutput | None = None,
    filtered: StageOutput | None = None,
):
    from pathlib import Path

    return pipeline.publish(cfg, Path(run_dir), ingested, validated, deduped, generated, labelled, filtered)


def funnel_markdown(result: pipeline.RunResult) -> str:
    f = result.funnel
    lines = [f"# {result.dataset} v{result.version}", "", "| step | count |", "|---|---:|"]
    lines += [f"| {k} | {abs(v):,} |" for k, v in funnel_steps(f)]
    reasons = reason_rows(f)
    if reasons:
        lines += ["", "| outcome | stage | reason | count |", "|---|---|---|---:|"]
        lines += [f"| {o} | {s} | {r} | {n:,} |" for o, s, r, n in reasons]
    lines += ["", f"Report: `{result.report_dir}/report.html`"]
    return "\n".join(lines)


@flow(name="curate", log_prints=True)
def curate_flow(recipe: str, data_root: str | None = None, force: bool = False, keep_staging: bool = False) -> dict:
    """Curate a recipe into a new version of its dataset (or report it unchanged)."""
    cfg = load_config(recipe, data_root=data_root)
    store = DatasetStore(cfg.data_root)
    if not force and (same := pipeline.find_unchanged(cfg, store)) is not None:
        get_run_logger().info("%s v%d was built from this config and these inputs; nothing to do", same.dataset, same.version)
        return asdict(pipeline.unchanged_result(cfg, same))
    pipeline.check_models(cfg)  # a bad backend or labeler config fails before any work
    run_dir = str(pipeline.new_run_dir(cfg))
    ingested = ingest_task(cfg, run_dir)
    validated = validate_task(cfg, run_dir, ingested)
    deduped = dedup_task(cfg, run_dir, validated)
    generated = generate_task(cfg, run_dir, deduped) if cfg.generate else None
    labelled = label_task(cfg, run_dir, deduped, generated) if cfg.label else None
    filtered = filter_stage(cfg, run_dir, deduped, generated, labelled) if cfg.filter else None
    t0 = time.perf_counter()
    info, funnel = publish_task(cfg, run_dir, ingested, validated, deduped, generated, labelled, filtered)
    timings = {o.stage: o.seconds for o in (ingested, validated, deduped, generated, labelled, filtered) if o is not None}
    timings["publish"] = time.perf_counter() - t0
    from pathlib import Path

    result = pipeline.finish_run(cfg, Path(run_dir), info, funnel, timings, keep_staging=keep_staging)
    create_markdown_artifact(funnel_markdown(result), key=f"funnel-{result.dataset}", description="curation funnel")
    return asdict(result)
