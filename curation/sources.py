"""A recipe's input sources, and the naming rule every dataset and source name follows.

Apart from the recipe root (``curation.config``) so that other recipe sections can hold
sources of their own (the ``evaluate`` section's human-labelled sets) without an import
circle.
"""

from __future__ import annotations

import re
from typing import Any, Literal

from pydantic import Field, field_validator

from curation.errors import ConfigError
from curation.strict import Strict

DATASET_NAME = re.compile(r"^[a-z0-9][a-z0-9_-]{0,63}$")

SourceFormat = Literal["auto", "jsonl", "json", "csv", "parquet", "hf_disk", "hf"]


def check_dataset_name(name: str) -> str:
    """Dataset names become directory names under the data root: no path can escape it."""
    if not isinstance(name, str) or not DATASET_NAME.match(name):
        raise ConfigError(
            f"invalid dataset name {name!r}: use 1-64 lowercase letters, digits, '-' or '_', "
            "starting with a letter or digit (names become folders under the data root)"
        )
    return name


class SourceConfig(Strict):
    """One input: where it is, how to read it, and which adapter turns rows into pairs."""

    name: str = Field(description="short name, recorded on every pair as source_dataset")
    path: str = Field(description="file, glob, saved HF dataset folder, or HF hub name (format: hf)")
    format: SourceFormat = "auto"
    adapter: str = Field(description="hh_rlhf | trl | rated | shp | mapping | oasst")
    options: dict[str, Any] = Field(default_factory=dict, description="adapter options (see the adapter)")
    split: str | None = Field(default=None, description="HF datasets split (default: train, or the only one)")
    hf_config: str | None = Field(default=None, description="HF datasets config name")
    label_source: Literal["human", "ai", "model", "unlabeled"] = "human"
    label_model: str | None = None
    limit: int | None = Field(default=None, ge=1, description="read at most this many rows (for quick runs)")

    @field_validator("name")
    @classmethod
    def _name(cls, v: str) -> str:
        return check_dataset_name(v)
