"""The data contracts, one source of truth.

Each table is described once, in a YAML file beside this module, with a doc line per
field. From those files we build the Arrow schemas that every stage writes and the
validation that every stage relies on, so a field is added in exactly one place.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cache
from pathlib import Path

import pyarrow as pa
import yaml

SCHEMA_DIR = Path(__file__).parent

MESSAGE = pa.struct([pa.field("role", pa.string(), nullable=False), pa.field("content", pa.string(), nullable=False)])

# Logical types used in the YAML files, and the Arrow type each one means.
TYPES: dict[str, pa.DataType] = {
    "string": pa.string(),
    "int64": pa.int64(),
    "int32": pa.int32(),
    "float64": pa.float64(),
    "bool": pa.bool_(),
    "timestamp": pa.timestamp("us", tz="UTC"),
    "messages": pa.list_(MESSAGE),
    "json": pa.string(),  # a JSON document; DuckDB reads it with json functions
    "scores": pa.map_(pa.string(), pa.float64()),
    "strings": pa.list_(pa.string()),
}

VALID_ROLES = frozenset({"system", "user", "assistant", "tool"})
LABEL_SOURCES = frozenset({"human", "ai", "model", "unlabeled"})
DECISIONS = frozenset({"kept", "filtered", "flipped", "routed", "held_out_for_eval"})


@dataclass(frozen=True)
class FieldSpec:
    name: str
    type: str
    nullable: bool
    doc: str


@dataclass(frozen=True)
class TableSpec:
    name: str
    doc: str
    fields: tuple[FieldSpec, ...]

    @property
    def arrow_schema(self) -> pa.Schema:
        return pa.schema(
            [pa.field(f.name, TYPES[f.type], nullable=f.nullable, metadata={"doc": f.doc}) for f in self.fields],
            metadata={"table": self.name},
        )

    @property
    def names(self) -> list[str]:
        return [f.name for f in self.fields]

    @property
    def required(self) -> list[str]:
        return [f.name for f in self.fields if not f.nullable]


@cache
def table_spec(name: str) -> TableSpec:
    path = SCHEMA_DIR / f"{name}.yaml"
    if not path.exists():
        known = ", ".join(sorted(p.stem for p in SCHEMA_DIR.glob("*.yaml")))
        raise KeyError(f"no schema named {name!r} in {SCHEMA_DIR} (known: {known})")
    raw = yaml.safe_load(path.read_text())
    fields = []
    for f in raw["fields"]:
        if f["type"] not in TYPES:
            raise ValueError(f"{path}: field {f['name']!r} has unknown type {f['type']!r}")
        fields.append(FieldSpec(f["name"], f["type"], bool(f.get("nullable", True)), f.get("doc", "")))
    return TableSpec(raw["name"], raw.get("doc", ""), tuple(fields))


def arrow_schema(name: str) -> pa.Schema:
    """Arrow schema of a table in the contract, e.g. ``arrow_schema("pairs")``."""
    return table_spec(name).arrow_schema


def table_names() -> list[str]:
    return sorted(p.stem for p in SCHEMA_DIR.glob("*.yaml"))


PAIRS = "pairs"
QUARANTINE = "quarantine"
DECISIONS_TABLE = "decisions"
