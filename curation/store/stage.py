"""Staging one table for a publish: its rows written as Parquet in a folder of their own and
checked against the contract, before any catalog is touched (so no lock is held while the
data is written; see ``curation.store.catalog``)."""

from __future__ import annotations

import os
import shutil
import uuid
from pathlib import Path

import duckdb
import pyarrow as pa
import pyarrow.parquet as pq

from curation import owners
from curation.errors import CurationError
from curation.store.contract import check_nulls, contract_schema, schema_problems
from curation.store.duck import ident, lit

TableSource = str | Path | list[Path] | list[str] | pa.Table | pa.RecordBatchReader


def stage_table(
    con: duckdb.DuckDBPyConnection, dataset: str, name: str, src: TableSource, folder: Path, *, symlink: bool
) -> tuple[int, pa.Schema]:
    """Write table ``name`` as Parquet into the new ``folder`` and check it; (rows, schema).

    On any failure the folder is removed and a contract or DuckDB problem is a
    ``CurationError`` naming the dataset. ``symlink``: see ``_link_contract_files``.
    """
    folder.parent.mkdir(parents=True, exist_ok=True)
    try:
        folder.mkdir()
        owners.claim(folder)  # before any data file: a publish killed from here on leaves findable debris
        if not _link_contract_files(name, src, folder, symlink=symlink):
            sql = _source_sql(con, name, src)
            # One file: COPY with FILE_SIZE_BYTES does not keep row order (seen with DuckDB 1.5.5).
            con.execute(f"COPY (SELECT * FROM {sql}) TO {lit(folder / 'data_0.parquet')} (FORMAT parquet, COMPRESSION zstd)")
        glob = lit(folder / "*.parquet")
        schema = con.execute(f"SELECT * FROM read_parquet({glob}) LIMIT 0").to_arrow_table().schema
        rows = con.execute(f"SELECT count(*) FROM read_parquet({glob})").fetchone()[0]
        contract = contract_schema(name)
        if contract is not None:
            problems = schema_problems(name, schema, contract)
            if problems:
                raise CurationError(f"cannot publish {dataset}: table does not match its contract:\n  " + "\n  ".join(problems))
            check_nulls(con, dataset, name, folder, contract)
    except duckdb.Error as err:
        shutil.rmtree(folder, ignore_errors=True)
        raise CurationError(f"cannot publish {dataset}: table {name}: {err}") from None
    except BaseException:
        shutil.rmtree(folder, ignore_errors=True)
        raise
    return rows, schema


def _source_sql(con: duckdb.DuckDBPyConnection, name: str, src: TableSource) -> str:
    """What DuckDB reads the table from: a registered Arrow view or ``read_parquet``."""
    if hasattr(src, "to_arrow") and not isinstance(src, (pa.Table, pa.RecordBatchReader)):
        src = src.to_arrow()  # a polars DataFrame
    if isinstance(src, (pa.Table, pa.RecordBatchReader)):
        view = f"_src_{uuid.uuid4().hex}"
        con.register(view, src)
        return ident(view)
    if not isinstance(src, (str, Path, list, tuple)):
        raise CurationError(f"table {name}: expected Parquet path(s) or an Arrow table/reader, got {type(src).__name__}")
    paths = [src] if isinstance(src, (str, Path)) else list(src)
    if not paths:
        raise CurationError(f"table {name}: empty list of Parquet files")
    for p in paths:
        if not any(ch in str(p) for ch in "*?[") and not Path(p).is_file():
            raise CurationError(f"table {name}: Parquet file not found: {p}")
    return f"read_parquet([{', '.join(lit(p) for p in paths)}])"


def _link_contract_files(name: str, src: TableSource, folder: Path, *, symlink: bool = False) -> bool:
    """Hard-link (or copy) Parquet files that already match the contract into ``folder``.

    The pipeline's stages write contract-schema Parquet, so rewriting it through DuckDB
    would only cost time and memory (a 1M-row COPY peaked at ~0.9 GB). Anything else
    (globs, other schemas, Arrow tables, non-contract tables) goes through COPY instead.
    ``symlink``: the folder is a temp folder that is uploaded and deleted before the
    sources are, so a symlink is enough (and works across file systems).
    """
    contract = contract_schema(name)
    if contract is None or not isinstance(src, (str, Path, list, tuple)):
        return False
    paths = [Path(src)] if isinstance(src, (str, Path)) else [Path(p) for p in src]
    if not paths or any(any(ch in str(p) for ch in "*?[") or not p.is_file() for p in paths):
        return False
    try:
        metas = [pq.read_metadata(p) for p in paths]
    except (OSError, pa.ArrowException):
        return False
    if any(schema_problems(name, m.schema.to_arrow_schema(), contract) for m in metas):
        return False
    keep = [p for p, m in zip(paths, metas) if m.num_rows]
    if not keep:
        return False  # COPY writes the one empty file the catalog needs for the schema
    for i, p in enumerate(keep):
        target = folder / f"data_{i}.parquet"
        if symlink:
            target.symlink_to(p.resolve())
            continue
        try:
            os.link(p, target)
        except OSError:
            shutil.copyfile(p, target)
    return True
