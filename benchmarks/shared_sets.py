"""The shared human-labelled sets as benchmark inputs (pairs as the ingest adapters make them)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pyarrow as pa

from curation.errors import NoPairs, RowError
from curation.records import pair_id, response_text
from curation.stages.ingest.adapters import build_adapter, is_table_adapter
from schemas import arrow_schema

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared" / "data"
DATASETS = {
    "hh": ("hh-rlhf-harmless-base/test-dev-1200.jsonl", "hh_rlhf", {}),
    "pandalm": (
        "pandalm-testset/testset-v1.json",
        "shp",
        {
            "prompt_fields": ["instruction", "input"],
            "response_a_field": "response1",
            "response_b_field": "response2",
            "vote_fields": ["annotator1", "annotator2", "annotator3"],
        },
    ),
    # ranked sibling replies, each against every lower-ranked one (a table adapter: the whole file at once)
    "oasst": ("oasst1-en-validation/en-validation.jsonl", "oasst", {"rule": "all_ordered", "languages": ["en"]}),
}
PAIR_FIELDS = ["pair_id", "prompt", "chosen", "rejected", "label_source", "source_dataset"]
PAIRS_SCHEMA = pa.schema([arrow_schema("pairs").field(name) for name in PAIR_FIELDS])


def load_pairs(dataset: str, data_dir: Path) -> list[dict[str, Any]]:
    """The dataset's human-labelled pairs as the ingest adapter makes them (rows it rejects and
    PandaLM ties skipped), one per pair id, without pairs whose two responses are the same."""
    relative, adapter_name, options = DATASETS[dataset]
    path = data_dir / relative
    adapter = build_adapter(adapter_name, options)
    rows = [json.loads(line) for line in path.open(encoding="utf-8")] if path.suffix == ".jsonl" else json.loads(path.read_text())
    pairs: dict[str, dict[str, Any]] = {}
    if is_table_adapter(adapter_name):
        per_row = [d for drafts in adapter(rows).pairs.values() for d in drafts]
    else:
        per_row = []
        for i, row in enumerate(rows):
            try:
                per_row += adapter(row, f"{dataset}:{i}")
            except (RowError, NoPairs):
                continue
    for d in per_row:
        if response_text(d.chosen) == response_text(d.rejected):
            continue
        pid = pair_id(d.prompt, d.chosen, d.rejected)
        pairs.setdefault(pid, {"pair_id": pid, "prompt": d.prompt, "chosen": d.chosen, "rejected": d.rejected})
    return [{**p, "label_source": "human", "source_dataset": dataset} for p in pairs.values()]
