"""Small helpers shared by tests: write recipes and inputs into a temp folder."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from itertools import islice
from pathlib import Path
from typing import Any

import pyarrow as pa
import yaml

from curation.config import RunConfig, load_config
from curation.errors import RowError
from curation.records import PairDraft, pair_id
from curation.stages.ingest.adapters import build_adapter
from schemas import arrow_schema


def write_jsonl(path: Path, rows: list[Any]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", encoding="utf-8") as fh:
        for r in rows:
            fh.write((r if isinstance(r, str) else json.dumps(r, ensure_ascii=False)) + "\n")
    return path


def write_recipe(tmp: Path, sources: list[dict], dataset: str = "test-ds", *, own_root: bool = True, **extra: Any) -> Path:
    """A recipe file in ``tmp``; with ``own_root`` its data root is ``tmp/root`` (else ./data)."""
    recipe: dict[str, Any] = {"publish": {"dataset": dataset}, "sources": sources, **extra}
    if own_root:
        recipe["data_root"] = str(tmp / "root")
    tmp.mkdir(parents=True, exist_ok=True)
    path = tmp / "recipe.yaml"
    path.write_text(yaml.safe_dump(recipe, sort_keys=False))
    return path


def recipe_config(tmp: Path, sources: list[dict], dataset: str = "test-ds", **extra: Any) -> RunConfig:
    return load_config(write_recipe(tmp, sources, dataset, **extra))


def hh(prompt_turns: list[tuple[str, str]], chosen: str, rejected: str) -> dict[str, str]:
    """An HH-RLHF row from (role, text) turns ending in a Human turn, plus two final replies."""
    prefix = "".join(f"\n\n{'Human' if r == 'user' else 'Assistant'}: {t}" for r, t in prompt_turns)
    return {"chosen": f"{prefix}\n\nAssistant: {chosen}", "rejected": f"{prefix}\n\nAssistant: {rejected}"}


# --------------------------------------------------------------------------- labeler inputs

LABEL_PAIR_FIELDS = ["pair_id", "prompt", "chosen", "rejected", "label_source", "source_dataset"]
LABEL_PAIRS_SCHEMA = pa.schema([arrow_schema("pairs").field(name) for name in LABEL_PAIR_FIELDS])


def label_rows(table: pa.Table) -> list[dict[str, Any]]:
    """A labeler's output as dicts, checked against the labels contract, its JSON columns
    (``details``, ``raw``) decoded."""
    assert table.schema == arrow_schema("labels")
    rows = table.to_pylist()
    for r in rows:
        r["raw"] = json.loads(r["raw"]) if r["raw"] else None
        r["details"] = json.loads(r["details"]) if r["details"] else None
    return rows


def labeler_pair(
    prompt: list, chosen: list, rejected: list, *, label_source: str = "human", source_dataset: str = "hh-rlhf-harmless-base"
) -> dict[str, Any]:
    """A pairs-table row with the columns labelers read, its id computed as ingest does."""
    return {
        "pair_id": pair_id(prompt, chosen, rejected),
        "prompt": prompt,
        "chosen": chosen,
        "rejected": rejected,
        "label_source": label_source,
        "source_dataset": source_dataset,
    }


def hh_drafts(hh_path: Path) -> Iterator[PairDraft]:
    """The real HH-RLHF file's pairs as the adapter makes them, in file order, skipping the
    rows it rejects (the ingest tests cover those)."""
    adapt = build_adapter("hh_rlhf", {})
    with hh_path.open(encoding="utf-8") as fh:
        for i, line in enumerate(fh):
            try:
                yield from adapt(json.loads(line), f"hh:{i}")
            except RowError:
                continue


def first_hh_pairs(hh_path: Path, n: int, keep: Callable[[PairDraft], bool] = lambda d: True, **row: Any) -> list[dict[str, Any]]:
    """The first ``n`` real HH-RLHF pairs that ``keep`` accepts, as ``labeler_pair`` rows."""
    rows = list(islice((labeler_pair(d.prompt, d.chosen, d.rejected, **row) for d in hh_drafts(hh_path) if keep(d)), n))
    assert len(rows) == n, f"only {len(rows)} usable pairs in {hh_path}"
    return rows
