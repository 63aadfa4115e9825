"""The spine end to end, without Prefect: ingest -> validate -> dedup -> publish.

``flows/curate.py`` runs the same stage functions as Prefect tasks; this module is what a
notebook or a test calls. Runs are idempotent: if the dataset's latest version was built
from the same config hash and the same input bytes, no new version is published.
"""

from __future__ import annotations

import datetime as dt
import shutil
import subprocess
import threading
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from curation import __version__, accounting, report_plots, stages
from curation.config import RunConfig, is_url
from curation.filter import stage as filtering
from curation.generate import stage as generation
from curation.ingest.readers import open_source
from curation.label import stage as labeling
from curation.progress import Progress
from curation.report import write_report
from curation.stages import StageOutput
from curation.store import DatasetStore, VersionInfo
from curation.tables import ARROW_SUFFIX


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


def code_version() -> str:
    """Package version, plus the git commit when running from a checkout."""
    try:
        out = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=Path(__file__).parent, capture_output=True, text=True, timeout=5)
        commit = out.stdout.strip() if out.returncode == 0 else ""
    except (OSError, subprocess.SubprocessError):
        commit = ""
    return f"{__version__}+g{commit}" if commit else __version__


def new_run_dir(cfg: RunConfig) -> Path:
    stamp = dt.datetime.now(dt.timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    run_dir = Path(cfg.work_root) / "runs" / f"{stamp}-{cfg.publish.dataset}-{uuid.uuid4().hex[:6]}"
    run_dir.mkdir(parents=True, exist_ok=False)
    return run_dir


def source_fingerprints(cfg: RunConfig) -> list[dict]:
    """Fingerprints of the sources' files (what the ingest stage reads; the flow's stage cache keys on them)."""
    limits = cfg.validate_
    fps = []
    for src in cfg.sources:
        for reader in open_source(src, max_row_bytes=limits.max_row_bytes, raw_limit_bytes=limits.raw_limit_bytes):
            fps.append({"source": src.name, **reader.fingerprint()})
    return fps


def input_fingerprints(cfg: RunConfig) -> list[dict]:
    """Fingerprints of every input, read before any work so an unchanged run costs one hash."""
    fps = source_fingerprints(cfg)
    if cfg.filter is not None:  # completed human labels merged by the filter stage are inputs too
        from curation.route.inbox import fingerprints, inbox_root

        fps += fingerprints(inbox_root(cfg), cfg.publish.dataset)
    return fps


def find_unchanged(cfg: RunConfig, store: DatasetStore) -> VersionInfo | None:
    """The latest version if it was built from this exact config and these exact inputs."""
    if cfg.publish.dataset not in store.datasets():
        return None
    versions = store.versions(cfg.publish.dataset)
    if not versions:  # a first publish was killed before its commit: a catalog with no version
        return None
    latest = versions[-1]
    if latest.config_hash != cfg.config_hash():
        return None
    return latest if _same_inputs(latest.inputs, input_fingerprints(cfg)) else None


def _same_inputs(a: list[dict], b: list[dict]) -> bool:
    def key(fp: dict) -> tuple:
        return (fp.get("source"), fp.get("sha256") or fp.get("fingerprint"), fp.get("bytes"))

    return sorted(map(key, a)) == sorted(map(key, b))


def publish(
    cfg: RunConfig,
    run_dir: Path,
    ingested: StageOutput,
    validated: StageOutput,
    deduped: StageOutput,
    generated: StageOutput | None = None,
    labelled: StageOutput | None = None,
    filtered: StageOutput | None = None,
) -> tuple[VersionInfo, dict]:
    """Check the row accounting on the staged files, then commit one new version."""
    funnel = accounting.funnel(ingested, validated, deduped, generated, labelled, filtered)
    accounting.check(funnel, ingested, validated, deduped, generated, filtered)
    store = DatasetStore(cfg.data_root)
    tables: dict[str, Any] = {
        "pairs": [deduped.files["pairs"]],
        "decisions": [ingested.files["decisions"], deduped.files["decisions"]],
        "quarantine": [ingested.files["quarantine"], validated.files["quarantine"]],
    }
    if generated is not None:
        tables["pairs"].append(generated.files["pairs"])
        tables["decisions"].append(generated.files["decisions"])
        tables["candidates"] = generated.files["candidates"]
    if labelled is not None:
        tables["labels"] = labelled.files["labels"]
        tables["agreement"] = labelled.files["agreement"]
    if filtered is not None:
        tables["pairs"] = [filtered.files["pairs"]]
        tables["decisions"].append(filtered.files["decisions"])
        for name in ("routing", "human_labels"):
            if name in filtered.files:
                tables[name] = filtered.files[name]
    info = store.publish(
        cfg.publish.dataset,
        tables,
        config=cfg.content_dict(),
        config_hash=cfg.config_hash(),
        code_version=code_version(),
        inputs=ingested.inputs + (inbox_fingerprints(cfg) if filtered is not None else []),
        counts=funnel,
        run_id=run_dir.name,
    )
    return info, funnel


def inbox_fingerprints(cfg: RunConfig) -> list[dict]:
    from curation.route.inbox import fingerprints, inbox_root

    return fingerprints(inbox_root(cfg), cfg.publish.dataset)


def check_models(cfg: RunConfig) -> None:
    """Unknown backend, missing model, unreachable server, bad labeler config: before any work."""
    generation.check(cfg)
    labeling.check(cfg)
    filtering.check(cfg)


def pairs_to_label(deduped: StageOutput, generated: StageOutput | None) -> list[str]:
    return [deduped.files["pairs"]] + ([generated.files["pairs"]] if generated is not None else [])


def report_dir(cfg: RunConfig, version: int) -> Path:
    """Beside the version; for an object-store root, a local copy under the work root
    (``finish_run`` uploads it beside the version)."""
    root = cfg.work_root if is_url(cfg.data_root) else cfg.data_root
    return Path(root) / "datasets" / cfg.publish.dataset / "reports" / f"v{version}"


def curate(cfg: RunConfig, *, progress: Progress | None = None, force: bool = False, keep_staging: bool = False) -> RunResult:
    """Run the whole spine in this process. ``force`` republishes even if nothing changed."""
    store = DatasetStore(cfg.data_root)
    if not force and (same := find_unchanged(cfg, store)) is not None:
        return unchanged_result(cfg, same)
    check_models(cfg)
    run_dir = new_run_dir(cfg)
    timings: dict[str, float] = {}
    ingested = stages.ingest(cfg, run_dir, progress)
    validated = stages.validate(cfg, run_dir, ingested, progress)
    deduped = stages.dedup(cfg, run_dir, validated, progress)
    generated = generation.generate(cfg, run_dir, deduped.files["pairs"], progress) if cfg.generate else None
    labelled = labeling.label(cfg, run_dir, pairs_to_label(deduped, generated), progress) if cfg.label else None
    filtered = (
        filtering.filter_pairs(cfg, run_dir, pairs_to_label(deduped, generated), labelled.files["labels"] if labelled else None, progress)
        if cfg.filter
        else None
    )
    for out in (ingested, validated, deduped, generated, labelled, filtered):
        if out is not None:
            timings[out.stage] = out.seconds
    t0 = time.perf_counter()
    # the report's plotting library takes ~0.6 s to import: do it while publish waits on DuckDB
    threading.Thread(target=report_plots.plt, name="curation-report-import", daemon=True).start()
    info, funnel = publish(cfg, run_dir, ingested, validated, deduped, generated, labelled, filtered)
    timings["publish"] = time.perf_counter() - t0
    return finish_run(cfg, run_dir, info, funnel, timings, keep_staging=keep_staging)


def finish_run(
    cfg: RunConfig, run_dir: Path, info: VersionInfo, funnel: dict, timings: dict[str, float], *, keep_staging: bool = False
) -> RunResult:
    """Write the run summary and report next to the version; drop the staged copies."""
    out = report_dir(cfg, info.version)
    summary = version_summary(info, cfg.data_root, run_dir.name, funnel, timings)
    write_report(summary, out)
    if is_url(cfg.data_root):
        DatasetStore(cfg.data_root).put_files(info.dataset, f"reports/v{info.version}", out)
    shutil.copy2(out / "summary.json", run_dir / "summary.json")
    if not keep_staging:
        for staged in (*run_dir.glob("*.parquet"), *run_dir.glob(f"*{ARROW_SUFFIX}")):
            staged.unlink()
    return RunResult(info.dataset, info.version, False, funnel, timings, str(run_dir), str(out), summary)


def version_summary(
    info: VersionInfo, data_root: str | Path, run_id: str | None, funnel: dict, timings: dict[str, float]
) -> dict[str, Any]:
    """What the run report and ``summary.json`` say about a published version."""
    return {
        "dataset": info.dataset,
        "version": info.version,
        "created_at": info.created_at,
        "config_hash": info.config_hash,
        "code_version": info.code_version,
        "parents": info.parents,
        "run_id": run_id,
        "funnel": funnel,
        "timings_s": {k: round(v, 3) for k, v in timings.items()},
        "tables": info.tables,
        "inputs": info.inputs,
        "data_root": str(data_root) if is_url(data_root) else str(Path(data_root).resolve()),
    }


def unchanged_result(cfg: RunConfig, info: VersionInfo) -> RunResult:
    out = report_dir(cfg, info.version)
    if not is_url(cfg.data_root) and not (out / "report.html").is_file():
        # the run that published this version was killed after its commit, before its report
        write_report(version_summary(info, cfg.data_root, info.run_id, info.counts, {}), out)
    return RunResult(info.dataset, info.version, True, info.counts, {}, "", str(out), {"dataset": info.dataset, "version": info.version})
