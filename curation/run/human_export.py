"""The pairs a version's ``route`` step sent to people, as annotation tasks: to files
(``curate route export``) or straight into a Label Studio project (``curate route push``)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import polars as pl

from curation.errors import CurationError
from curation.human.label_studio import LabelStudio, push_tasks
from curation.human.tasks import GUIDELINES, LABEL_STUDIO_CONFIG, label_studio_tasks
from curation.store.catalog import DatasetStore, VersionInfo


@dataclass
class Routed:
    info: VersionInfo
    queue: pl.DataFrame  # pair_id, prompt, chosen, rejected, source_dataset of the routed pairs
    gone: int  # routed pairs no longer in the version's pairs table


def routed_pairs(data_root: str | Path, name: str, version: int | None) -> Routed:
    """The version's routed pairs (its ``routing`` table, joined with its pairs)."""
    store = DatasetStore(data_root)
    info = store.version(name, version)
    if "routing" not in info.tables:
        raise CurationError(f"{info.ref} has no routing table: its recipe has no route step in its filter section")
    routed = store.read(name, "routing", version=info.version, columns=["pair_id", "routed"])
    ids = [pid for pid, r in zip(routed["pair_id"].to_pylist(), routed["routed"].to_pylist(), strict=True) if r]
    pairs = pl.from_arrow(
        store.read(name, "pairs", version=info.version, columns=["pair_id", "prompt", "chosen", "rejected", "source_dataset"])
    )
    queue = pairs.filter(pl.col("pair_id").is_in(ids))
    return Routed(info, queue, len(ids) - queue.height)


def push_to_label_studio(data_root: str | Path, name: str, version: int | None, *, title: str | None, seed: int) -> dict[str, Any]:
    """The routed pairs as tasks of a Label Studio project (found by title, else made with the
    product's labeling config); pairs already there are not imported again."""
    routed = routed_pairs(data_root, name, version)
    title = title or f"curate: {name}"
    with LabelStudio() as client:
        result = push_tasks(client, title, LABEL_STUDIO_CONFIG, label_studio_tasks(routed.queue, seed), description=GUIDELINES)
        result["url"] = client.project_url(result["project"])
    return {"ref": routed.info.ref, "title": title, "routed": routed.queue.height, "gone": routed.gone, **result}
