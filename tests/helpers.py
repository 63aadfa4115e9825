"""Small helpers shared by tests: write recipes and inputs into a temp folder."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import yaml

from curation.config import RunConfig, load_config


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
