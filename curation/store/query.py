"""SQL over published datasets, for people and notebooks.

Every published dataset is attached read-only under its own name (``SELECT * FROM hh.pairs``;
quote names with '-': ``"hh-v2".pairs``). One dataset is the *default*: its tables are also
plain views (``pairs``, ``decisions``, ``quarantine``, ...) beside a ``versions`` table,
so the common question is one short query. ``"NAME@N".pairs`` reads version N of NAME, and
``datasets`` lists what is published.

Attached catalogs are private copies (see ``curation.store.catalog``), so a connection held open for
hours never blocks a publish; it simply keeps seeing the versions that existed when it opened.
"""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path

import duckdb
import polars
import pyarrow as pa

from curation.errors import CurationError, DatasetNotFound
from curation.store.catalog import (
    NOTHING_PUBLISHED,
    DatasetStore,
    VersionInfo,
    ident,
    open_duckdb,
)

# "NAME@N" as a quoted identifier in the query text.
VERSION_REF = re.compile(r'"([a-z0-9][a-z0-9_-]{0,63})@([0-9]+)"')


def _versions_table(infos: list[VersionInfo]) -> pa.Table:
    return pa.table(
        {
            "version": pa.array([i.version for i in infos], pa.int64()),
            "created_at": pa.array([i.created_at for i in infos], pa.string()),
            "config_hash": pa.array([i.config_hash for i in infos], pa.string()),
            "code_version": pa.array([i.code_version for i in infos], pa.string()),
            "run_id": pa.array([i.run_id for i in infos], pa.string()),
            "counts": pa.array([json.dumps(i.counts, sort_keys=True) for i in infos], pa.string()),
            "tables": pa.array([list(i.tables.items()) for i in infos], pa.map_(pa.string(), pa.int64())),
            "parents": pa.array([i.parents for i in infos], pa.list_(pa.string())),
            "snapshot_id": pa.array([i.snapshot_id for i in infos], pa.int64()),
        }
    )


def _datasets_table(published: dict[str, list[VersionInfo]]) -> pa.Table:
    latest = [infos[-1] for infos in published.values()]
    return pa.table(
        {
            "dataset": pa.array(list(published), pa.string()),
            "latest_version": pa.array([i.version for i in latest], pa.int64()),
            "versions": pa.array([len(v) for v in published.values()], pa.int64()),
            "published_at": pa.array([i.created_at for i in latest], pa.string()),
            "config_hash": pa.array([i.config_hash for i in latest], pa.string()),
            "rows": pa.array([list(i.tables.items()) for i in latest], pa.map_(pa.string(), pa.int64())),
        }
    )


def _views(con: duckdb.DuckDBPyConnection, schema: str, info: VersionInfo) -> None:
    """Views in ``schema`` over every table of one version (time travel to its snapshot)."""
    for table in info.tables:
        con.execute(
            f"CREATE VIEW {ident(schema)}.{ident(table)} AS "
            f"SELECT * FROM {ident(info.dataset)}.{ident(table)} AT (VERSION => {info.snapshot_id})"
        )


def _load(con: duckdb.DuckDBPyConnection, name: str, arrow: pa.Table) -> None:
    con.register("_curate_tmp", arrow)
    con.execute(f"CREATE TABLE {ident(name)} AS SELECT * FROM _curate_tmp")
    con.unregister("_curate_tmp")


def connect(
    root: str | Path, *, dataset: str | None = None, version: int | None = None, query: str | None = None
) -> duckdb.DuckDBPyConnection:
    """A DuckDB connection with every published dataset attached read-only.

    ``dataset`` picks the default dataset (else the only one, else the most recently
    published, with a note on stderr); ``version`` pins it. ``query`` is scanned for
    ``"NAME@N"`` references, which become schemas of views over that version.
    """
    store = DatasetStore(root)
    con = open_duckdb()
    try:
        published: dict[str, list[VersionInfo]] = {}
        for name in store.datasets():
            infos = store.attach(con, name, name)
            if infos:
                published[name] = infos
            else:
                con.execute(f"DETACH {ident(name)}")
        if not published:
            raise DatasetNotFound(NOTHING_PUBLISHED.format(root=store.root))
        have = ", ".join(published)
        if dataset is None:
            dataset = max(published, key=lambda n: published[n][-1].created_at)
            if len(published) > 1:
                print(
                    f"note: bare table names refer to {dataset!r}, the most recently published "
                    f"dataset (others: {', '.join(n for n in published if n != dataset)}); pass dataset= to choose",
                    file=sys.stderr,
                )
        elif dataset not in published:
            store.check_name(dataset)  # an invalid name is a ConfigError, not "not found"
            raise DatasetNotFound(f"no published dataset named {dataset!r} under {store.root}; published: {have}")
        _views(con, "main", store.pick(published[dataset], dataset, version))
        _load(con, "versions", _versions_table(published[dataset]))
        _load(con, "datasets", _datasets_table(published))
        for name, number in sorted(set(VERSION_REF.findall(query or ""))):
            if name not in published:
                raise DatasetNotFound(f'"{name}@{number}": no published dataset named {name!r}; published: {have}')
            con.execute(f"CREATE SCHEMA {ident(f'{name}@{number}')}")
            _views(con, f"{name}@{number}", store.pick(published[name], name, int(number)))
        return con
    except duckdb.Error as err:
        con.close()
        raise CurationError(str(err)) from None
    except BaseException:
        con.close()
        raise


def _run(query: str, root: str | Path, dataset: str | None, version: int | None) -> pa.Table:
    con = connect(root, dataset=dataset, version=version, query=query)
    try:
        result = con.execute(query)
        if result.description is None:  # a statement with no result set
            return pa.table({})
        return result.to_arrow_table()
    except duckdb.Error as err:
        raise CurationError(str(err)) from None
    finally:
        con.close()


def sql_arrow(query: str, root: str | Path, *, dataset: str | None = None, version: int | None = None) -> pa.Table:
    """Run one query over the published datasets; the result as an Arrow table."""
    return _run(query, root, dataset, version)


def sql(query: str, root: str | Path, *, dataset: str | None = None, version: int | None = None) -> polars.DataFrame:
    """Run one query over the published datasets; the result as a polars DataFrame."""
    return polars.from_arrow(_run(query, root, dataset, version))
