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

import shutil
import uuid
from pathlib import Path
from typing import Any

import polars as pl
import pyarrow.parquet as pq

from curation.config import RunConfig, is_url
from curation.errors import CurationError
from curation.files import file_digest
from curation.human.completed import HUMAN_SCHEMA, merge, read_completed, unknown_count
from schemas import arrow_schema

INBOX = "human_labels"
STAGE = "human_label"
COORDINATES = ["pair_id", "source_dataset", "source_file", "source_row", "source_pair_index"]
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


def fingerprints(data_root: str | Path, dataset: str) -> list[dict[str, Any]]:
    return [
        {"source": INPUT_SOURCE, "path": str(p), "bytes": p.stat().st_size, "sha256": file_digest(p)[1]}
        for p in inbox_files(data_root, dataset)
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
    dest = inbox_dir(data_root, dataset) / f"{file_digest(src)[1][:16]}{suffix}"
    if dest.exists():
        return dest, False
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = dest.with_name(f".{uuid.uuid4().hex}{suffix}")
    shutil.copy2(src, tmp)
    tmp.replace(dest)
    return dest, True


def summary(decisions: pl.DataFrame, rows: pl.DataFrame) -> dict[str, int]:
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
    """Merge the inbox into the staged pairs file (rewritten in place) at the end of a run.

    ``decisions`` is the merge's (pair_id, decision, reason, matched_pair_id) frame and
    ``coordinates`` the source coordinates of the pairs it names, for the decisions rows."""
    pairs = pl.read_parquet(pairs_path)
    out, decisions, rows = merge(pairs, human)
    pq.write_table(out.to_arrow().cast(arrow_schema("pairs")), pairs_path, compression="zstd")
    labels_path = Path(run_dir) / "human_labels.parquet"
    pq.write_table(rows.to_arrow().cast(arrow_schema("human_labels")), labels_path, compression="zstd")
    return {
        "human_labels_file": str(labels_path),
        "decisions": decisions,
        "coordinates": pairs.select(COORDINATES),
        **summary(decisions, rows),
    }
