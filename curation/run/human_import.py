"""``curate route import``: completed human labels merged into a new version, no model rerun.

A run of its own kind: the files go into the dataset's inbox (``curation.human.inbox``), the
latest version's pairs are merged with the whole inbox, and the result is published through
the same path as a recipe run (``curation.run.publish``), with the inbox's files as inputs.
"""

from __future__ import annotations

import uuid
from pathlib import Path
from typing import Any

import polars as pl
import pyarrow as pa

from curation.config import is_url
from curation.decisions import decision_rows, decisions_table
from curation.errors import CurationError
from curation.human.completed import merge
from curation.human.inbox import COORDINATES, INBOX, INPUT_SOURCE, STAGE, add, fingerprints, read_inbox, summary
from curation.run.publish import commit_version, write_version_report
from curation.stages.filter import stage as filter_stage
from curation.store.catalog import DatasetStore
from schemas import arrow_schema


def import_labels(data_root: str | Path, dataset: str, files: list[str | Path], *, work_root: str | Path | None = None) -> dict[str, Any]:
    """Add ``files`` to the inbox and publish the merged labels as a new version of the dataset
    (parent: the latest). Nothing new -> no new version. ``work_root``: the local folder for
    the inbox and report when ``data_root`` is an object store (default ./data, as a recipe's
    ``work_dir``)."""
    store = DatasetStore(data_root)
    local = (work_root or "data") if is_url(data_root) else data_root
    latest = store.version(dataset)
    if not filter_stage.ran(latest.config or {}):
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
    result = summary(decisions, rows)
    tables: dict[str, Any] = {
        "pairs": out.to_arrow().cast(arrow_schema("pairs")),
        INBOX: rows.to_arrow().cast(arrow_schema("human_labels")),
    }
    if decisions.height:
        new = decisions_table(decision_rows(STAGE, decisions, pairs.select(COORDINATES)))
        tables["decisions"] = pa.concat_tables([store.read(dataset, "decisions", version=latest.version), new])
    for name in latest.tables:  # the rest carried over as they are, streamed
        if name not in tables:
            tables[name] = store.scan(dataset, name, version=latest.version)
    counts = filter_stage.with_human_labels(latest.counts, out.height, result)
    info = commit_version(
        data_root,
        dataset,
        tables,
        config=latest.config,
        config_hash=latest.config_hash,
        inputs=[i for i in latest.inputs if i.get("source") != INPUT_SOURCE] + fps,
        counts=counts,
        parents=[latest.ref],
        run_id=f"import-{uuid.uuid4().hex[:8]}",
        extra={"human_label_import": result},
    )
    write_version_report(info, data_root, local, info.run_id, info.counts, {})
    return {"dataset": dataset, "version": info.version, "unchanged": False, "files": [str(p) for p, _ in added], **result}


def pull_from_label_studio(data_root: str | Path, dataset: str, title: str, *, work_root: str | Path | None = None) -> dict[str, Any]:
    """The annotations of the Label Studio project ``title`` (its own JSON export), imported as
    ``import_labels`` imports a file. The export is written in a stable form, so an unchanged
    project gives the same inbox file and no new version."""
    import tempfile

    from curation.human.label_studio import LabelStudio, export_json

    with LabelStudio() as client:
        project = client.find_project(title)
        if project is None:
            raise CurationError(f"Label Studio at {client.url} has no project {title!r}; send the pairs first: curate route push {dataset}")
        data = export_json(client, project["id"])
    with tempfile.TemporaryDirectory(prefix="curate-ls-") as tmp:
        path = Path(tmp) / f"label-studio-project-{project['id']}.json"
        path.write_bytes(data)
        return {**import_labels(data_root, dataset, [path], work_root=work_root), "project": project["id"]}
