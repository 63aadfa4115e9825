"""The spine as a Prefect flow: one task per stage of ``curation.spine`` (one per filter step), then publish.

Runs with no Prefect server (ephemeral mode) from the CLI (`curate run`) or from Python
(`run_recipe("recipes/hh-rlhf-sample.yaml")`); on a server the same flow is deployable
(`curate_recipe_flow`, see ``flows/deployments.py`` and ``prefect.yaml``).

Why it looks like this:

* Tasks are **submitted**, so the flow's task runner runs them: Prefect's thread pool, or Ray
  when the recipe says ``orchestration: {task_runner: ray}`` (``run_recipe`` picks the runner
  with ``flows.runners.task_runner_for``). Tasks pass file paths and counts, never tables,
  so results stay small and cross process boundaries cheaply.
* The stages before filtering are **cached** by input fingerprints (``flows/caching.py``): a
  recipe that changes only its filters reuses ingest, validate, dedup, generate and label
  (their task runs end in Prefect's ``Cached`` state).
* **Retries** with exponential backoff for I/O tasks (ingest, publish) and model-server tasks
  (generate, label), for transient errors only (``flows/retries.py``). A retried stage writes
  a fresh folder; a retried publish first checks whether its version already committed.
* Tasks that call models carry the tag ``model-server``: a Prefect tag concurrency limit
  (``prefect concurrency-limit create model-server 4``) caps how many of them run at once
  across every flow run on the server; with no limit set they run unthrottled.
* Each run leaves artifacts: funnel (markdown and table), per-stage timings, a link to the
  version's report (``flows/artifacts.py``).
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

from prefect import flow, get_run_logger, runtime, task
from prefect.cache_policies import NO_CACHE
from prefect.futures import PrefectFuture

from curation import spine
from curation.config import RunConfig, load_config
from curation.models.config import BackendConfig
from curation.progress import LineProgress, NoProgress, Progress
from curation.run import accounting
from curation.run import publish as publishing
from curation.run import runner as pipeline
from curation.run.inputs import find_unchanged, source_fingerprints
from curation.stages.base import Stage, StageOutput
from curation.stages.filter import stage as filtering
from curation.store.catalog import AlreadyPublished, DatasetStore, VersionInfo
from flows import caching
from flows.artifacts import funnel_markdown, publish_artifacts
from flows.retries import API_RETRIES, IO_RETRIES
from flows.runners import task_runner_for

__all__ = ["curate_flow", "curate_recipe_flow", "funnel_markdown", "run_recipe", "set_progress"]

MODEL_SERVER_TAG = "model-server"
"""Tag of every task that calls a model; Prefect's tag concurrency limit of this name caps them."""

_progress: Progress | None = None


_on_curated: pipeline.OnCurated | None = None


def set_progress(progress: Progress | None, on_curated: pipeline.OnCurated | None = None) -> None:
    """Let an in-process caller (the CLI) show progress bars for the flow's stages (tasks that
    run in another process, Ray workers, log their progress instead) and hear the funnel as
    soon as the stages before the model stages finished."""
    global _progress, _on_curated
    _progress, _on_curated = progress, on_curated


def _progress_for_task() -> Progress:
    return _progress or LineProgress(get_run_logger().info)


RETRIES = {"io": IO_RETRIES, "api": API_RETRIES, None: {}}


@task(name="stage", cache_policy=caching.STAGE_CACHE, cache_expiration=caching.CACHE_EXPIRATION)
def stage_task(stage_name: str, cfg: RunConfig, slot: caching.StageSlot, upstream: dict[str, StageOutput]) -> StageOutput:
    """One cached stage of the spine, built into its cache slot."""
    stage = spine.stage(stage_name)
    return caching.build(slot, lambda folder: stage.run(cfg, folder, upstream, _progress_for_task()))


def _stage_as_task(stage: Stage, records: Path) -> Any:
    return stage_task.with_options(
        name=stage.name, tags=[MODEL_SERVER_TAG] if stage.uses_models else [], result_storage=records, **RETRIES[stage.retry]
    )


@task(name="filter-step", cache_policy=NO_CACHE)
def filter_step_task(step, pairs, labels, ctx):  # noqa: ANN001, ANN201 - filtering.RunStep
    return filtering.run_step(step, pairs, labels, replace(ctx, progress=_progress_for_task()))


def _uses_model(step: Any) -> bool:
    return any(isinstance(getattr(step, name, None), BackendConfig) for name in type(step).model_fields)


def _step_as_task(step, pairs, labels, ctx):  # noqa: ANN001, ANN202 - filtering.RunStep
    """Submit one filter step to the task runner; its progress is the task's own (a bar in
    this process, log lines in a Ray worker), so the context travels without it."""
    tagged = filter_step_task.with_options(name=f"filter-{step.stage_name}", tags=[MODEL_SERVER_TAG] if _uses_model(step) else [])
    return tagged.submit(step, pairs, labels, replace(ctx, progress=NoProgress())).result()


def _published_by(cfg: RunConfig, run_id: str) -> VersionInfo | None:
    store = DatasetStore(cfg.data_root)
    if cfg.publish.dataset not in store.datasets():
        return None
    return next((v for v in reversed(store.versions(cfg.publish.dataset)) if v.run_id == run_id), None)


@task(name="publish", cache_policy=NO_CACHE, **IO_RETRIES)
def publish_task(cfg: RunConfig, run_dir: str, outs: dict[str, StageOutput], force: bool = False) -> tuple[VersionInfo, dict | None]:
    """Commit the version; (version, funnel). A retry first looks for a version this run
    already committed (the failure came after the commit), so a retried publish never
    publishes twice. (version, None): an identical run committed that version first."""
    if runtime.task_run.run_count > 1 and (done := _published_by(cfg, Path(run_dir).name)) is not None:
        return done, done.counts
    try:
        return pipeline.publish(cfg, Path(run_dir), outs, force=force)
    except AlreadyPublished as same:
        return same.info, None


def run_stages(
    cfg: RunConfig, run_dir: str, *, until: str | None = None
) -> tuple[dict[str, PrefectFuture | StageOutput], dict[str, StageOutput], list[str]]:
    """Every stage of the spine the recipe runs (those before ``until`` only, when given): the
    cached ones submitted as tasks, each on its upstream stages' futures (Prefect records the
    edges), the others in the flow body. Call it inside a flow.
    Returns (futures or outputs by stage, outputs by stage, the stages reused from the cache)."""
    records = caching.records_dir(cfg)
    slots = caching.slots(cfg, caching.stage_keys(cfg, source_fingerprints(cfg)))
    handles: dict[str, PrefectFuture | StageOutput] = {}
    outs: dict[str, StageOutput] = {}
    stages = spine.active(cfg)
    if until is not None:
        stages = stages[: next((i for i, s in enumerate(stages) if s.name == until), len(stages))]
    boundary = pipeline.first_model_stage(stages)
    for i, stage in enumerate(stages):
        if i == boundary and _on_curated is not None and handles:
            done = {name: h.result() if isinstance(h, PrefectFuture) else h for name, h in handles.items()}
            _on_curated(accounting.funnel(done), [s.name for s in stages[i:]])
        upstream = pipeline.upstream_of(stage.name, handles)
        if stage.cached:
            handles[stage.name] = _stage_as_task(stage, records).submit(stage.name, cfg, slots[stage.name], upstream)
            continue
        ready = {name: h.result() if isinstance(h, PrefectFuture) else h for name, h in upstream.items()}
        progress = _progress or LineProgress(get_run_logger().info)
        handles[stage.name] = stage.with_step_runner(_step_as_task).run(cfg, run_dir, ready, progress)
    for name, h in handles.items():
        outs[name] = h.result() if isinstance(h, PrefectFuture) else h
    cached = [name for name, h in handles.items() if isinstance(h, PrefectFuture) and h.state.name == "Cached"]
    return handles, outs, cached


@flow(name="curate", log_prints=True)
def curate_flow(
    recipe: str, data_root: str | None = None, force: bool = False, keep_staging: bool = False, allow_empty: bool = False
) -> dict:
    """Curate a recipe into a new version of its dataset (or report it unchanged)."""
    cfg = load_config(recipe, data_root=data_root)
    cfg.allow_empty = cfg.allow_empty or allow_empty
    logger = get_run_logger()
    publishing.sweep_runs(cfg.work_root)  # the folders of runs killed before they finished
    store = DatasetStore(cfg.data_root, catalog=cfg.catalog)
    store.bind_catalog()  # a new root takes the recipe's catalog; a conflicting one stops the run here
    if not force and (same := find_unchanged(cfg, store)) is not None:
        logger.info("%s v%d was built from this config and these inputs; nothing to do", same.dataset, same.version)
        return asdict(pipeline.unchanged_result(cfg, same))
    pipeline.check_stages(cfg)  # a bad backend or labeler config fails before any work
    caching.prune(cfg)  # half-built cache entries of killed runs first
    run_dir = str(publishing.new_run_dir(cfg))
    try:
        handles, outs, cached = run_stages(cfg, run_dir)
        if cached:
            logger.info("reused from the stage cache: %s", ", ".join(cached))
        t0 = time.perf_counter()
        info, funnel = publish_task.submit(cfg, run_dir, handles, force).result()
    except BaseException:
        if not keep_staging:
            publishing.drop_run(Path(run_dir))
        raise
    if funnel is None:  # an identical run committed first
        publishing.drop_run(Path(run_dir))
        logger.info("%s was published meanwhile from this config and these inputs; nothing to do", info.ref)
        return asdict(pipeline.unchanged_result(cfg, info, raced=True)) | {"cached": cached, "flow_run_id": str(runtime.flow_run.id)}
    timings = {name: 0.0 if name in cached else out.seconds for name, out in outs.items()}
    timings["publish"] = time.perf_counter() - t0
    staged = {name: {"files": out.files, "cached": name in cached} for name, out in outs.items()}
    (Path(run_dir) / "stages.json").write_text(json.dumps(staged, indent=1))
    result = pipeline.finish_run(cfg, Path(run_dir), info, funnel, timings, keep_staging=keep_staging)
    publish_artifacts(result, cached)
    caching.prune(cfg)
    return asdict(result) | {"cached": cached, "flow_run_id": str(runtime.flow_run.id)}


def run_recipe(
    recipe: str, data_root: str | None = None, force: bool = False, keep_staging: bool = False, allow_empty: bool = False
) -> dict:
    """Run ``curate_flow`` on the task runner the recipe's ``orchestration`` section names.

    A flow's task runner is fixed when the flow starts, so the runner is chosen here, from the
    config, and applied with ``with_options``; called inside another flow (a deployment's
    ``curate_recipe_flow``), the curation runs as its subflow.
    """
    cfg = load_config(recipe, data_root=data_root)  # a bad recipe fails before Prefect starts anything
    runner = task_runner_for(cfg.orchestration)
    return curate_flow.with_options(task_runner=runner)(
        str(recipe), data_root=data_root, force=force, keep_staging=keep_staging, allow_empty=allow_empty
    )


@flow(name="curate-recipe", log_prints=True)
def curate_recipe_flow(
    recipe: str, data_root: str | None = None, force: bool = False, keep_staging: bool = False, allow_empty: bool = False
) -> dict:
    """Deployable entry point (scheduled runs, `curate serve`, `prefect deploy`): curates the
    recipe as ``run_recipe`` does, on the task runner its ``orchestration`` section names.
    ``recipe`` is a path on the machine that runs the flow (relative to its working folder)."""
    return run_recipe(recipe, data_root=data_root, force=force, keep_staging=keep_staging, allow_empty=allow_empty)
