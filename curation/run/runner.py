"""A whole run in this process, without Prefect: the spine's stages in order, then publish.

``flows/curate.py`` runs the same stages as Prefect tasks; this module is what ``curate run
--local``, a notebook or a test calls. Runs are idempotent: if the dataset's latest version
was built from the same config hash and the same input bytes, no new version is published.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from curation import spine
from curation.config import RunConfig, is_url
from curation.progress import NoProgress, Progress
from curation.report.html import write_report
from curation.report.plots import plt
from curation.report.summary import version_summary
from curation.run import accounting
from curation.run.inputs import find_unchanged
from curation.run.publish import drop_run, drop_staging, keep_summary, new_run_dir, publish, report_dir, sweep_runs, write_version_report
from curation.stages.base import Stage, StageOutput
from curation.store.catalog import AlreadyPublished, DatasetStore, VersionInfo


@dataclass
class RunResult:
    """What a run did: the version it published (or found unchanged) and where things are."""

    dataset: str
    version: int
    unchanged: bool
    funnel: dict[str, Any]
    timings: dict[str, float]
    run_dir: str
    report_dir: str
    summary: dict[str, Any] = field(default_factory=dict)


def check_stages(cfg: RunConfig) -> None:
    """Unknown backend, missing model, unreachable server, bad labeler or step config: before any work."""
    for stage in spine.active(cfg):
        stage.check(cfg)


def upstream_of(stage_name: str, outs: dict[str, Any]) -> dict[str, Any]:
    """The outputs (or the flow's futures of them) a stage reads, in spine order."""
    wanted = spine.stage(stage_name).upstream
    return {name: out for name, out in outs.items() if name in wanted}


OnCurated = Callable[[dict[str, Any], list[str]], None]
"""Told the funnel of the stages that need no model, and the names of the model stages left."""


def first_model_stage(stages: list[Stage]) -> int | None:
    """Where the curation part of a run ends: the position of its first stage that calls a model
    (the funnel before it takes seconds; the stages from it on can take minutes)."""
    return next((i for i, s in enumerate(stages) if s.uses_models), None)


def run_stages(
    cfg: RunConfig,
    run_dir: Path,
    progress: Progress | None = None,
    *,
    until: str | None = None,
    on_curated: OnCurated | None = None,
) -> dict[str, StageOutput]:
    """The recipe's stages in spine order, in this process, each into ``run_dir``; ``until``:
    stop before that stage (``curate eval --ablate --local`` reruns only the filter itself).
    ``on_curated`` hears the funnel before the first model stage starts."""
    outs: dict[str, StageOutput] = {}
    stages = spine.active(cfg)
    boundary = first_model_stage(stages)
    for i, stage in enumerate(stages):
        if stage.name == until:
            break
        if i == boundary and on_curated is not None and outs:
            on_curated(accounting.funnel(outs), [s.name for s in stages[i:]])
        outs[stage.name] = stage.run(cfg, run_dir, upstream_of(stage.name, outs), progress or NoProgress())
    return outs


def curate(
    cfg: RunConfig,
    *,
    progress: Progress | None = None,
    force: bool = False,
    keep_staging: bool = False,
    on_curated: OnCurated | None = None,
) -> RunResult:
    """Run the spine in this process. ``force`` republishes even if nothing changed;
    ``on_curated`` hears the funnel as soon as the stages before the model stages finished."""
    sweep_runs(cfg.work_root)  # the folders of runs killed before they finished
    store = DatasetStore(cfg.data_root, catalog=cfg.catalog)
    store.bind_catalog()  # a new root takes the recipe's catalog; a conflicting one stops the run here
    if not force and (same := find_unchanged(cfg, store)) is not None:
        return unchanged_result(cfg, same)
    check_stages(cfg)
    run_dir = new_run_dir(cfg)
    try:
        outs = run_stages(cfg, run_dir, progress, on_curated=on_curated)
        timings = {name: out.seconds for name, out in outs.items()}
        t0 = time.perf_counter()
        # the report's plotting library takes ~0.6 s to import: do it while publish waits on DuckDB
        threading.Thread(target=plt, name="curation-report-import", daemon=True).start()
        info, funnel = publish(cfg, run_dir, outs, force=force)
        timings["publish"] = time.perf_counter() - t0
    except AlreadyPublished as same:  # an identical run committed first
        drop_run(run_dir)
        return unchanged_result(cfg, same.info, raced=True)
    except BaseException:
        if not keep_staging:
            drop_run(run_dir)
        raise
    return finish_run(cfg, run_dir, info, funnel, timings, keep_staging=keep_staging)


def finish_run(
    cfg: RunConfig, run_dir: Path, info: VersionInfo, funnel: dict, timings: dict[str, float], *, keep_staging: bool = False
) -> RunResult:
    """Write the run summary and report next to the version; drop the staged copies."""
    out, summary = write_version_report(info, cfg.data_root, cfg.work_root, run_dir.name, funnel, timings)
    keep_summary(out, run_dir)
    if not keep_staging:
        drop_staging(run_dir)
    return RunResult(info.dataset, info.version, False, funnel, timings, str(run_dir), str(out), summary)


def unchanged_result(cfg: RunConfig, info: VersionInfo, *, raced: bool = False) -> RunResult:
    """Nothing to publish: ``info`` was built from this config and these inputs (``raced``: by
    an identical run that committed while this one ran)."""
    out = report_dir(cfg.data_root, cfg.work_root, info.dataset, info.version)
    if not is_url(cfg.data_root) and not (out / "report.html").is_file():
        # the run that published this version was killed after its commit, before its report
        write_report(version_summary(info, cfg.data_root, info.run_id, info.counts, {}), out)
    summary = {"dataset": info.dataset, "version": info.version, "raced": raced}
    return RunResult(info.dataset, info.version, True, info.counts, {}, "", str(out), summary)
