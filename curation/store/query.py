"""SQL over published datasets, for people and notebooks.

Every published dataset is attached read-only under its own name (``SELECT * FROM hh.pairs``;
quote names with '-': ``"hh-v2".pairs``). One dataset is the *default*: its tables are also
plain views (``pairs``, ``decisions``, ``quarantine``, ...) beside a ``versions`` table and
its ``evaluation_log`` (every ``curate eval`` of it), so the common question is one short
query. ``"NAME@N".pairs`` reads version N of NAME, and
``datasets`` lists what is published.

Attached catalogs are private copies (see ``curation.store.local``), so a connection held open for
hours never blocks a publish; it simply keeps seeing the versions that existed when it opened.

Read-only, and confined to the datasets' files. A published version must never change, and
one SQL statement could otherwise ATTACH a catalog and UPDATE it, COPY over a data file or
read any file the user can. So (1) the input is split into statements by DuckDB's own parser
and runs only if every statement reads (SELECT, WITH, FROM-first, DESCRIBE, SUMMARIZE, SHOW,
VALUES, table-valued PRAGMAs, EXPLAIN of a read); anything else is refused before any
statement runs, naming the statement; (2) the connection itself can then reach only the
datasets' data files (``allowed_directories`` with ``enable_external_access`` off; the
catalogs are attached read-only before that), and ``lock_configuration`` keeps any statement
from undoing it. ``allow_external_reads`` leaves file access on, so a query can join the
user's own files; statements that write stay refused.
"""

from __future__ import annotations

import json
import re
import sys
from dataclasses import dataclass
from pathlib import Path

import duckdb
import polars
import pyarrow as pa

from curation.errors import CurationError, DatasetNotFound
from curation.store.catalog import NOTHING_PUBLISHED, DatasetStore, VersionInfo
from curation.store.duck import ident, lit, open_duckdb

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


def evaluation_log(store: DatasetStore, dataset: str) -> pa.Table:
    """Every ``curate eval`` result of a dataset (``DATASET/evaluations/*.parquet``, written
    beside its versions): small, so loaded whole into the connection."""
    import tempfile

    import pyarrow.parquet as pq

    from schemas import arrow_schema

    schema = arrow_schema("evaluations")
    with tempfile.TemporaryDirectory(prefix="curate-evallog-") as tmp:
        folder = store.get_files(dataset, "evaluations", tmp)
        files = sorted(folder.glob("*.parquet")) if folder is not None else []
        return pa.concat_tables([pq.read_table(f).cast(schema) for f in files]) if files else schema.empty_table()


def evaluations_of(store: DatasetStore, dataset: str, version: int) -> list[list[dict]]:
    """The ``curate eval`` runs that measured ``dataset@version``, each whole (its rows for the
    other variants compared and the baselines too: a difference needs its reference)."""
    by_id: dict[str, list[dict]] = {}
    for row in evaluation_log(store, dataset).to_pylist():
        by_id.setdefault(row["evaluation_id"], []).append(row)
    return [rows for rows in by_id.values() if any(r.get("version") == version for r in rows)]


def _load(con: duckdb.DuckDBPyConnection, name: str, arrow: pa.Table) -> None:
    con.register("_curate_tmp", arrow)
    con.execute(f"CREATE TABLE {ident(name)} AS SELECT * FROM _curate_tmp")
    con.unregister("_curate_tmp")


READ_STATEMENTS = {duckdb.StatementType.SELECT, duckdb.StatementType.EXPLAIN}
# Functions a SELECT may call that run SQL of their own: postgres_query() sends any text to the
# PostgreSQL server holding a catalog (functions there can change things, even in a read-only
# transaction), query()/query_table() run a string this check never saw.
PASS_THROUGH = re.compile(r"^(postgres_\w+|mysql_\w+|query|query_table)$", re.IGNORECASE)
PASS_THROUGH_TEXT = re.compile(r"\b(postgres_\w+|mysql_\w+|query|query_table)\s*\(", re.IGNORECASE)
EXPLAIN_PREFIX = re.compile(r"^\s*EXPLAIN\s+(ANALY[SZ]E\s+)?", re.IGNORECASE)


@dataclass
class Opened:
    """A confined connection, and which dataset bare table names mean (``others``: the rest)."""

    con: duckdb.DuckDBPyConnection
    default: str
    others: list[str]
    chosen: bool  # the caller named the default dataset


def connect(
    root: str | Path,
    *,
    dataset: str | None = None,
    version: int | None = None,
    query: str | None = None,
    allow_external_reads: bool = False,
) -> duckdb.DuckDBPyConnection:
    """A read-only DuckDB connection with every published dataset attached, confined to the
    datasets' files (see the module docstring).

    ``dataset`` picks the default dataset (else the only one, else the most recently
    published, with a note on stderr); ``version`` pins it. ``query`` is scanned for
    ``"NAME@N"`` references, which become schemas of views over that version.
    """
    opened = _open(root, dataset, version, query, allow_external_reads)
    if not opened.chosen and opened.others:
        print(_bare_names_note(opened), file=sys.stderr)
    return opened.con


def _bare_names_note(opened: Opened) -> str:
    return (
        f"note: bare table names refer to {opened.default!r}, the most recently published dataset "
        f"(others: {', '.join(opened.others)}); pass --dataset (dataset=) to choose"
    )


def _open(root: str | Path, dataset: str | None, version: int | None, query: str | None, allow_external_reads: bool) -> Opened:
    store = DatasetStore(root)
    con = open_duckdb()
    chosen = dataset is not None
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
        elif dataset not in published:
            store.check_name(dataset)  # an invalid name is a ConfigError, not "not found"
            raise DatasetNotFound(f"no published dataset named {dataset!r} under {store.root}; published: {have}")
        _views(con, "main", store.pick(published[dataset], dataset, version))
        _load(con, "versions", _versions_table(published[dataset]))
        if query is None or "evaluation_log" in query.lower():  # read (and fetched from S3) only when asked for
            _load(con, "evaluation_log", evaluation_log(store, dataset))
        _load(con, "datasets", _datasets_table(published))
        for name, number in sorted(set(VERSION_REF.findall(query or ""))):
            if name not in published:
                raise DatasetNotFound(f'"{name}@{number}": no published dataset named {name!r}; published: {have}')
            con.execute(f"CREATE SCHEMA {ident(f'{name}@{number}')}")
            _views(con, f"{name}@{number}", store.pick(published[name], name, int(number)))
        if not allow_external_reads:
            dirs = [str(store.data_path(name)).rstrip("/") + "/" for name in published]
            con.execute(f"SET allowed_directories = [{', '.join(lit(d) for d in dirs)}]")
            con.execute("SET enable_external_access = false")
        con.execute("SET lock_configuration = true")
        return Opened(con, dataset, [n for n in published if n != dataset], chosen)
    except duckdb.Error as err:
        con.close()
        raise CurationError(str(err)) from None
    except BaseException:
        con.close()
        raise


def read_statements(con: duckdb.DuckDBPyConnection, query: str) -> list[str]:
    """The statements of ``query`` (DuckDB's parser, on the confined connection), or a
    CurationError naming the first that would not only read."""
    try:
        statements = con.extract_statements(query)
    except duckdb.Error as err:  # a syntax error, or IMPORT DATABASE, which reads files as it parses
        raise CurationError(f"curate sql could not take the query apart: {_one_line(err, True)}; nothing was run") from None
    if not statements:
        raise CurationError("no SQL statement given")
    texts = []
    for i, statement in enumerate(statements, start=1):
        kind = statement.type
        text = statement.query.strip()
        if kind == duckdb.StatementType.EXPLAIN:  # EXPLAIN ANALYZE runs what it explains
            inner = read_statements(con, EXPLAIN_PREFIX.sub("", text, count=1)) if EXPLAIN_PREFIX.match(text) else []
            if len(inner) != 1:
                raise CurationError(
                    f"curate sql only reads: statement {i} ({_head(text)}) explains something it cannot check; nothing was run"
                )
        elif kind in READ_STATEMENTS and (name := _pass_through(con, text)):
            raise CurationError(
                f"curate sql only reads the published datasets: statement {i} calls {name}(), which runs SQL this check "
                "cannot see (on the catalog's server or from a string); nothing was run"
            )
        elif kind not in READ_STATEMENTS:
            raise CurationError(
                f"curate sql only reads: statement {i} is {kind.name} ({_head(text)}), which would change data, files or "
                "settings; nothing was run. Published versions never change: publish a new one with curate run."
            )
        texts.append(text)
    return texts


def _pass_through(con: duckdb.DuckDBPyConnection, text: str) -> str | None:
    """The first function in ``text`` that runs SQL of its own (``PASS_THROUGH``), from
    DuckDB's parse tree; from the text itself when the tree cannot be serialised (PIVOT)."""
    try:
        tree = json.loads(con.execute("SELECT json_serialize_sql(?)", [text]).fetchone()[0])
    except (duckdb.Error, TypeError, ValueError):
        tree = {"error": True}
    if tree.get("error"):
        found = PASS_THROUGH_TEXT.search(text)
        return found.group(1) if found else None
    stack: list = [tree]
    while stack:
        node = stack.pop()
        if isinstance(node, dict):
            name = node.get("function_name")
            if isinstance(name, str) and PASS_THROUGH.match(name):
                return name
            stack.extend(node.values())
        elif isinstance(node, list):
            stack.extend(node)
    return None


def _head(text: str) -> str:
    one = " ".join(text.split())
    return one if len(one) <= 60 else one[:57] + "..."


def _bare_names(con: duckdb.DuckDBPyConnection, statements: list[str], names: set[str]) -> bool:
    """Whether a statement reads a table by a bare name (the default dataset's)."""
    for text in statements:
        try:
            tree = json.loads(con.execute("SELECT json_serialize_sql(?)", [text]).fetchone()[0])
        except (duckdb.Error, TypeError, ValueError):
            return True  # cannot tell: say it
        stack = [tree]
        while stack:
            node = stack.pop()
            if isinstance(node, dict):
                if node.get("type") == "BASE_TABLE" and not node.get("schema_name") and node.get("table_name") in names:
                    return True
                stack.extend(node.values())
            elif isinstance(node, list):
                stack.extend(node)
    return False


def _run(query: str, root: str | Path, dataset: str | None, version: int | None, allow_external_reads: bool) -> pa.Table:
    opened = _open(root, dataset, version, query, allow_external_reads)
    con = opened.con
    try:
        statements = read_statements(con, query)
        if not opened.chosen and opened.others:
            bare = {r[0] for r in con.execute("SELECT table_name FROM duckdb_tables() WHERE database_name = 'memory'").fetchall()}
            bare |= {
                r[0] for r in con.execute("SELECT view_name FROM duckdb_views() WHERE database_name = 'memory' AND NOT internal").fetchall()
            }
            if _bare_names(con, statements, bare):
                print(_bare_names_note(opened), file=sys.stderr)
        result = None
        for text in statements:
            result = con.execute(text)
        if result is None or result.description is None:  # a statement with no result set
            return pa.table({})
        return result.to_arrow_table()
    except duckdb.Error as err:
        raise CurationError(_one_line(err, allow_external_reads)) from None
    finally:
        con.close()


def _one_line(err: duckdb.Error, external: bool) -> str:
    """DuckDB's message without the query echo it appends (``LINE 1: ...`` and a caret)."""
    message = " ".join(str(err).split("\nLINE ")[0].split())
    if isinstance(err, duckdb.PermissionException) and not external:
        message += " (curate sql reads only the published datasets' files; --allow-external-reads lets a query read files of your own)"
    return message


def sql_arrow(
    query: str, root: str | Path, *, dataset: str | None = None, version: int | None = None, allow_external_reads: bool = False
) -> pa.Table:
    """Run read-only SQL over the published datasets; the last statement's result as Arrow."""
    return _run(query, root, dataset, version, allow_external_reads)


def sql(
    query: str, root: str | Path, *, dataset: str | None = None, version: int | None = None, allow_external_reads: bool = False
) -> polars.DataFrame:
    """Run read-only SQL over the published datasets; the last statement's result as polars."""
    return polars.from_arrow(_run(query, root, dataset, version, allow_external_reads))
