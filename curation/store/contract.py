"""The data contract a published table is held to: the Arrow schema of its name in
``schemas`` (pairs, decisions, quarantine), column names, order and types exactly, and no
null where the contract says a field is not nullable. Other tables have no contract.

Parquet and DuckDB keep neither nullability nor list child names, so types are compared
without them (``plain_type``) and nulls are checked on the data instead (``check_nulls``).
"""

from __future__ import annotations

from pathlib import Path

import duckdb
import pyarrow as pa
import pyarrow.parquet as pq

from curation.errors import CurationError
from curation.store.duck import ident, lit
from schemas import arrow_schema, table_names


def contract_schema(table: str) -> pa.Schema | None:
    """The contract's Arrow schema for ``table``; None for a table without a contract."""
    return arrow_schema(table) if table in table_names() else None


def schema_string(schema: pa.Schema) -> str:
    """A schema as recorded in a version's metadata (no field or schema metadata)."""
    return schema.to_string(show_field_metadata=False, show_schema_metadata=False)


def plain_type(t: pa.DataType) -> pa.DataType:
    """The type without nullability or list child names: Parquet/DuckDB keep neither."""
    if pa.types.is_list(t) or pa.types.is_large_list(t):
        return pa.list_(plain_type(t.value_type))
    if pa.types.is_map(t):
        return pa.map_(plain_type(t.key_type), plain_type(t.item_type))
    if pa.types.is_struct(t):
        return pa.struct([pa.field(f.name, plain_type(f.type)) for f in t])
    return t


def schema_problems(table: str, got: pa.Schema, want: pa.Schema) -> list[str]:
    """Differences between a stored schema and the contract, one readable line each."""
    if got.names != want.names:
        return [f"{table}: columns are {got.names}, the contract {table} has {want.names} (same names, same order)"]
    return [
        f"{table}.{w.name}: stored as {g.type}, the contract says {w.type}"
        for g, w in zip(got, want)
        if plain_type(g.type) != plain_type(w.type)
    ]


def _null_predicates(expr: str, f: pa.Field, depth: int = 0) -> list[str]:
    """SQL predicates that are true where a non-nullable contract field holds a null."""
    preds = [] if f.nullable else [f"{expr} IS NULL"]
    t = f.type
    if pa.types.is_struct(t):
        for child in t:
            preds += [f"({expr} IS NOT NULL AND {p})" for p in _null_predicates(f"{expr}.{ident(child.name)}", child, depth + 1)]
    elif pa.types.is_list(t):
        var = f"x{depth}"
        inner = _null_predicates(var, t.value_field, depth + 1)
        if inner:
            preds.append(f"coalesce(list_bool_or(list_transform({expr}, {var} -> {' OR '.join(inner)})), false)")
    return preds


def _footers_rule_out_nulls(files: list[Path], guarded: set[str]) -> bool:
    """True when the Parquet footers prove that no ``guarded`` top-level field (one holding a
    non-nullable contract field) holds a null: every column under it counts no nulls in any
    row group. A leaf's null count covers nulls and empty lists at every level above it, so
    zero rules them all out. Anything else (a count above zero, say from an allowed empty
    prompt, or missing statistics) leaves it to the scan in ``check_nulls``, which costs
    0.65 s at a million pairs."""
    try:
        for path in files:
            meta = pq.read_metadata(path)
            for g in range(meta.num_row_groups):
                group = meta.row_group(g)
                for c in range(group.num_columns):
                    column = group.column(c)
                    if column.path_in_schema.split(".")[0] not in guarded:
                        continue
                    stats = column.statistics
                    if stats is None or not stats.has_null_count or stats.null_count:
                        return False
    except (OSError, pa.ArrowException):
        return False
    return True


def check_nulls(con: duckdb.DuckDBPyConnection, dataset: str, name: str, folder: Path, contract: pa.Schema) -> None:
    """Refuse the Parquet files in ``folder`` if a non-nullable contract field holds a null:
    proven absent by the footers when possible, else counted by one scan."""
    checks = {f.name: preds for f in contract if (preds := _null_predicates(ident(f.name), f))}
    if not checks or _footers_rule_out_nulls(sorted(folder.glob("*.parquet")), set(checks)):
        return
    sel = ", ".join(f"count(*) FILTER (WHERE {' OR '.join(p)})" for p in checks.values())
    found = con.execute(f"SELECT {sel} FROM read_parquet({lit(folder / '*.parquet')})").fetchone()
    bad = [f"{c} ({n} rows)" for c, n in zip(checks, found) if n]
    if bad:
        raise CurationError(f"cannot publish {dataset}: {name} has nulls where the contract forbids them: {', '.join(bad)}")
