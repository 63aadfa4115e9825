"""A dataset's inbox of completed human labels, and merging it into versions.

Completed annotation files are inputs of the dataset like its sources: ``curate route import``
copies each into ``DATA_ROOT/datasets/NAME/human_labels/`` (named by its content hash, so the
same file twice is one file) and publishes a new version with the labels merged, without
rerunning any model. A later ``curate run`` of the recipe merges the same inbox at the end of
its filter stage and fingerprints it with the sources, so the labels survive reruns and an
unchanged inbox still means an unchanged dataset.

For an object-store data root (``s3://...``) the inbox is a local folder under the work root
(``inbox_root``): it is not shared between machines, so import labels and run the recipe on
the same machine (or copy its ``human_labels`` folder along).
"""

from __future__ import annotations

import hashlib
import shutil
import uuid
from pathlib import Path
from typing import Any

import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq

from curation.config import RunConfig, is_url
from curation.errors import CurationError
from curation.filter.base import StepResult
from curation.route.human_labels import HUMAN_SCHEMA, merge, read_completed, unknown_count
from schemas import arrow_schema

INBOX = "human_labels"
STAGE = "human_label"
INPUT_SOURCE = "human_labels"  # the "source" of the inbox files' input fingerprints


def inbox_root(cfg: RunConfig) -> str:
    """The folder whose ``datasets/NAME/human_labels`` is the inbox: the data root itself, or
    the local work root when the data root is an object store."""
    return cfg.work_root if is_url(cfg.data_root) else cfg.data_root


def inbox_dir(data_root: str | Path, dataset: str) -> Path:
    return Path(data_root) / "datasets" / dataset / INBOX


def inbox_files(data_root: str | Path, dataset: str) -> list[Path]:
    folder = inbox_dir(data_root, dataset)
    return sorted(p for p in folder.iterdir() if p.is_file() and not p.name.startswith(".")) if folder.is_dir() else []


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def fingerprints(data_root: str | Path, dataset: str) -> list[dict[str, Any]]:
    return [
        {"source": INPUT_SOURCE, "path": str(p), "bytes": p.stat().st_size, "sha256": _sha256(p)} for p in inbox_files(data_root, dataset)
    ]


def read_inbox(data_root: str | Path, dataset: str) -> pl.DataFrame:
    frames = [read_completed(p) for p in inbox_files(data_root, dataset)]
    return pl.concat(frames) if frames else pl.DataFrame(schema=HUMAN_SCHEMA)


def add(data_root: str | Path, dataset: str, path: str | Path) -> tuple[Path, bool]:
    """Check a completed file (every bad row is named) and copy it into the inbox.
    Returns (where it is, whether it is new)."""
    src = Path(path)
    if not src.is_file():
        raise CurationError(f"completed labels file not found: {src}")
    read_completed(src)
    suffix = "".join(src.suffixes[-2:]) if src.name.endswith(".gz") else src.suffix
    dest = inbox_dir(data_root, dataset) / f"{_sha256(src)[:16]}{suffix}"
    if dest.exists():
        return dest, False
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = dest.with_name(f".{uuid.uuid4().hex}{suffix}")
    shutil.copy2(src, tmp)
    tmp.replace(dest)
    return dest, True


def _decision_rows(decisions: pl.DataFrame, pairs: pl.DataFrame) -> pl.DataFrame:
    from curation.filter.stage import decision_rows

    return decision_rows(STAGE, StepResult(decisions), pairs)


def _summary(decisions: pl.DataFrame, rows: pl.DataFrame) -> dict[str, int]:
    by = decisions["decision"].value_counts()
    count = dict(zip(by["decision"].to_list(), by["count"].to_list()))
    return {
        "answers": rows.height,
        "pairs_labelled": rows["pair_id"].n_unique(),
        "kept": count.get("kept", 0),
        "flipped": count.get("flipped", 0),
        "filtered": count.get("filtered", 0),
        "already_applied": rows.filter(pl.col("outcome") == "already_applied")["pair_id"].n_unique(),
        "unknown_pairs": unknown_count(rows),
    }


def merge_into_file(pairs_path: str | Path, human: pl.DataFrame, run_dir: str | Path) -> dict[str, Any]:
    """Merge the inbox into the staged pairs file (rewritten in place) at the end of a run."""
    pairs = pl.read_parquet(pairs_path)
    out, decisions, rows = merge(pairs, human)
    pq.write_table(out.to_arrow().cast(arrow_schema("pairs")), pairs_path, compression="zstd")
    labels_path = Path(run_dir) / "human_labels.parquet"
    pq.write_table(rows.to_arrow().cast(arrow_schema("human_labels")), labels_path, compression="zstd")
    return {
        "human_labels_file": str(labels_path),
        "decisions": _decision_rows(decisions, pairs) if decisions.height else None,
        **_summary(decisions, rows),
    }


def import_labels(data_root: str | Path, dataset: str, files: list[str | Path], *, work_root: str | Path | None = None) -> dict[str, Any]:
    """``curate route import``: add files to the inbox and publish the merged labels as a new
    version of the dataset (parent: the latest). Nothing new -> no new version.
    ``work_root``: the local folder for the inbox and report when ``data_root`` is an object
    store (default ./data, as a recipe's ``work_dir``)."""
    from curation.filter.stage import _to_decisions_table
    from curation.pipeline import code_version
    from curation.store import DatasetStore

    store = DatasetStore(data_root)
    local = (work_root or "data") if is_url(data_root) else data_root
    latest = store.version(dataset)
    if not (latest.config or {}).get("filter"):
        raise CurationError(
            f"{latest.ref} was built by a recipe without a filter section; human labels are merged by its filter stage "
            "(add filter: steps: [{kind: route, budget: ...}] to the recipe and run it first)"
        )
    added = [add(local, dataset, f) for f in files]
    fps = fingerprints(local, dataset)
    known = {i.get("sha256") for i in latest.inputs if i.get("source") == INPUT_SOURCE}
    if all(fp["sha256"] in known for fp in fps):
        return {"dataset": dataset, "version": latest.version, "unchanged": True, "files": [str(p) for p, _ in added]}
    pairs = pl.from_arrow(store.read(dataset, "pairs", version=latest.version))
    out, decisions, rows = merge(pairs, read_inbox(local, dataset))
    summary = _summary(decisions, rows)
    tables: dict[str, Any] = {
        "pairs": out.to_arrow().cast(arrow_schema("pairs")),
        INBOX: rows.to_arrow().cast(arrow_schema("human_labels")),
    }
    if decisions.height:
        new = _to_decisions_table(_decision_rows(decisions, pairs))
        tables["decisions"] = pa.concat_tables([store.read(dataset, "decisions", version=latest.version), new])
    for name in latest.tables:  # the rest carried over as they are, streamed
        if name not in tables:
            tables[name] = store.scan(dataset, name, version=latest.version)
    counts = dict(latest.counts)
    if "filter" in counts:
        fc = counts["filter"]
        counts["filter"] = {**fc, "pairs_out": out.height, "filtered": fc["filtered"] + summary["filtered"], "human_labels": summary}
    info = store.publish(
        dataset,
        tables,
        config=latest.config,
        config_hash=latest.config_hash,
        code_version=code_version(),
        inputs=[i for i in latest.inputs if i.get("source") != INPUT_SOURCE] + fps,
        counts=counts,
        parents=[latest.ref],
        run_id=f"import-{uuid.uuid4().hex[:8]}",
        extra={"human_label_import": summary},
    )
    _write_report(data_root, local, info)
    return {"dataset": dataset, "version": info.version, "unchanged": False, "files": [str(p) for p, _ in added], **summary}


def _write_report(data_root: str | Path, local: str | Path, info: Any) -> None:
    from curation.pipeline import version_summary
    from curation.report import write_report
    from curation.store import DatasetStore

    summary = version_summary(info, data_root, info.run_id, info.counts, {})
    out = Path(local) / "datasets" / info.dataset / "reports" / f"v{info.version}"
    write_report(summary, out)
    if is_url(data_root):
        DatasetStore(data_root).put_files(info.dataset, f"reports/v{info.version}", out)
