"""Publishing a run: the row accounting, one new version of the dataset, its report.

Every way a version is made goes through here: a recipe run (``publish`` with the stages'
outputs) and an import of human labels (``curation.run.human_import``), so versions record
the same metadata (config and hash, code version, inputs, counts, run id) and get the same
report beside them.
"""

from __future__ import annotations

import datetime as dt
import shutil
import subprocess
import uuid
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from curation import __version__, owners
from curation.config import RunConfig, is_url
from curation.report.html import write_report
from curation.report.summary import version_summary
from curation.run import accounting
from curation.run.empty import check_not_empty
from curation.run.inputs import same_inputs
from curation.stages.base import StageOutput, published_files
from curation.store.catalog import DatasetStore, TableSource, VersionInfo
from curation.tables import ARROW_SUFFIX


def code_version() -> str:
    """Package version, plus the git commit when running from a checkout."""
    try:
        out = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=Path(__file__).parent, capture_output=True, text=True, timeout=5)
        commit = out.stdout.strip() if out.returncode == 0 else ""
    except (OSError, subprocess.SubprocessError):
        commit = ""
    return f"{__version__}+g{commit}" if commit else __version__


def new_run_dir(cfg: RunConfig) -> Path:
    """A fresh folder for the run's staged files, owned by this process (``sweep_runs`` finds
    it if this process dies before it finishes)."""
    stamp = dt.datetime.now(dt.timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    run_dir = Path(cfg.work_root) / "runs" / f"{stamp}-{cfg.publish.dataset}-{uuid.uuid4().hex[:6]}"
    run_dir.mkdir(parents=True, exist_ok=False)
    owners.claim(run_dir)
    return run_dir


def dead_runs(work_root: str | Path) -> list[Path]:
    """Run folders whose owner process is gone and that never finished (no summary.json)."""
    runs = Path(work_root) / "runs"
    if not runs.is_dir():
        return []
    return sorted(d for d in runs.iterdir() if d.is_dir() and not (d / "summary.json").exists() and owners.abandoned(d))


def sweep_runs(work_root: str | Path, *, dry_run: bool = False) -> list[tuple[Path, int]]:
    """Remove the dead runs' folders; (folder, bytes) of each."""
    found = [(d, owners.size_of(d)) for d in dead_runs(work_root)]
    if not dry_run:
        for d, _ in found:
            shutil.rmtree(d, ignore_errors=True)
    return found


def drop_run(run_dir: Path) -> None:
    """A failed run's folder: its staged files are of no use to anyone."""
    shutil.rmtree(run_dir, ignore_errors=True)


def commit_version(
    data_root: str | Path,
    dataset: str,
    tables: Mapping[str, TableSource],
    *,
    config: dict,
    config_hash: str,
    inputs: list[dict],
    counts: dict,
    run_id: str,
    parents: list[str] | None = None,
    extra: dict | None = None,
    unless: Callable[[VersionInfo], bool] | None = None,
) -> VersionInfo:
    """One new version of ``dataset`` holding ``tables``, all or nothing (``unless``: see
    ``DatasetStore.publish``)."""
    return DatasetStore(data_root).publish(
        dataset,
        dict(tables),
        config=config,
        config_hash=config_hash,
        code_version=code_version(),
        inputs=inputs,
        counts=counts,
        parents=parents,
        run_id=run_id,
        extra=extra,
        unless=unless,
    )


def publish(cfg: RunConfig, run_dir: Path, outs: Mapping[str, StageOutput], *, force: bool = False) -> tuple[VersionInfo, dict]:
    """Check the row accounting on the staged files and that every source kept a pair, then
    commit the tables the stages contribute (``Stage.publishes``) as one new version.

    Unless ``force``, ``AlreadyPublished`` when the latest version, looked at inside the
    commit, was built from this config and these inputs: of two identical runs started
    together, the second to commit publishes nothing."""
    funnel = accounting.funnel(outs)
    accounting.check(funnel, outs)
    tables = published_files(outs)
    check_not_empty(cfg, tables)
    inputs = [fp for out in outs.values() for fp in out.inputs]
    config_hash = cfg.config_hash()

    def same_as(latest: VersionInfo) -> bool:
        return latest.config_hash == config_hash and same_inputs(latest.inputs, inputs)

    info = commit_version(
        cfg.data_root,
        cfg.publish.dataset,
        tables,
        config=cfg.content_dict(),
        config_hash=config_hash,
        inputs=inputs,
        counts=funnel,
        run_id=run_dir.name,
        unless=None if force else same_as,
    )
    return info, funnel


def report_dir(data_root: str | Path, work_root: str | Path, dataset: str, version: int) -> Path:
    """Beside the version; for an object-store root, a local copy under the work root
    (``write_version_report`` uploads it beside the version)."""
    root = work_root if is_url(data_root) else data_root
    return Path(root) / "datasets" / dataset / "reports" / f"v{version}"


def write_version_report(
    info: VersionInfo, data_root: str | Path, work_root: str | Path, run_id: str | None, funnel: dict, timings: dict[str, float]
) -> tuple[Path, dict[str, Any]]:
    """The version's report folder (summary.json, report.html, funnel.png), beside the version."""
    out = report_dir(data_root, work_root, info.dataset, info.version)
    summary = version_summary(info, data_root, run_id, funnel, timings)
    write_report(summary, out)
    if is_url(data_root):
        DatasetStore(data_root).put_files(info.dataset, f"reports/v{info.version}", out)
    return out, summary


def drop_staging(run_dir: Path) -> None:
    """The run folder's staged copies (the published files live in the dataset now)."""
    for staged in (*run_dir.glob("*.parquet"), *run_dir.glob(f"*{ARROW_SUFFIX}")):
        staged.unlink()


def keep_summary(out: Path, run_dir: Path) -> None:
    shutil.copy2(out / "summary.json", run_dir / "summary.json")
