"""Versioned dataset storage: one DuckLake catalog per dataset.

Layout under the data root::

    ROOT/datasets/NAME/catalog.ducklake   DuckLake metadata (a DuckDB file)
    ROOT/datasets/NAME/files/             Parquet data files (data inlining is off)

One catalog per dataset so that publishing one dataset never blocks another. A dataset
*version* is one DuckLake snapshot that replaced all of the dataset's tables in a single
transaction and carries the version metadata as the commit's ``extra_info`` JSON; only
snapshots carrying that JSON count as versions, numbered 1, 2, 3 per dataset.

Why publishing is two-phase: DuckDB holds an exclusive file lock on the catalog while it is
attached read-write, which blocks every other reader and writer of that dataset. So the data
is first written ("staged") as Parquet under ``files/`` with no lock held, and only the
metadata commit (create the tables, register the staged files with
``ducklake_add_data_files``, set the commit message) runs under the lock, for about a tenth
of a second whatever the data size. A process killed before that commit leaves no version,
only orphan staged files (``cleanup_orphans`` removes them).

Why readers copy the catalog: a reader that kept the catalog attached, even READ_ONLY,
would block publishers for as long as it reads (a notebook connection, a slow scan). Readers
take the shared lock only long enough to copy the small catalog file, then attach the copy
READ_ONLY; data files are immutable, so the copy stays a consistent snapshot.

Object-store roots (``DatasetStore("s3://bucket/prefix")``, any S3-compatible server). The
format stays DuckLake: the same catalog tables and Parquet files, read by DuckDB (httpfs)
straight from the bucket; only the *transport* of the catalog file is ours, because a DuckDB
file cannot be opened in place on S3 and file locks do not exist there. The layout is the
same, except that the catalog object is gzipped (4 MB of mostly empty DuckDB blocks become
~30 KB)::

    s3://bucket/prefix/datasets/NAME/catalog.ducklake.gz
    s3://bucket/prefix/datasets/NAME/files/...

Every machine that uses the URL shares that one catalog object. A reader downloads it to a
private temp file and attaches that READ_ONLY (exactly the local reader's copy). A publisher
stages each table as Parquet in a local temp folder (linked, not copied, when the pipeline
already wrote contract Parquet), checks it there, uploads it under ``files/`` with no lock
held, then commits *optimistically*: download the catalog and its ETag, run the same short
DuckLake transaction on the local copy, and upload it with a conditional write (``If-Match``
the ETag it downloaded, ``If-None-Match: *`` for a new dataset). S3 checks the condition and
replaces the object atomically, so of two publishers that started from the same catalog one
wins and the other re-downloads and commits again on top (version numbers stay consecutive,
both versions are kept, in commit order); after ``lock_timeout_s`` of lost races it raises
``DatasetBusy`` (retryable). A publisher killed at any point before its upload changes
nothing that readers see: it leaves only orphan staged files (``cleanup_orphans`` works on
S3 too). This relies on conditional writes: AWS S3 has them since 2024 and moto (the tests'
server) enforces them; on a server that ignored them, concurrent publishers could lose a
version (last upload wins, the catalog stays valid), so there publish from one place at a time.

Why not a lock object: a lease-based lock needs clocks and timeouts to recover from a killed
holder; a conditional write has no holder to lose. Why not DuckLake's own multi-writer mode:
it needs a database server as the catalog (DuckLake with a PostgreSQL catalog is the
production choice for many concurrent writers, ``ATTACH 'ducklake:postgres:...'`` with the
same data path); a data root that is just a bucket needs no server, which suits a pipeline
that publishes a few versions a day.
"""

from __future__ import annotations

import json
import os
import random
import re
import shutil
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import duckdb
import pyarrow as pa
import pyarrow.parquet as pq

from curation.config import DATASET_NAME, check_dataset_name, is_url
from curation.errors import ConfigError, CurationError, DatasetNotFound
from curation.store import s3 as objectstore
from schemas import arrow_schema, table_names

MARKER = "curate.version/1"  # key in commit extra_info that marks a snapshot as a dataset version
AUTHOR = "curate"
# DuckDB reserves these catalog names, and query.py attaches each dataset under its own name.
RESERVED_DATASETS = frozenset({"main", "temp", "system", "memory"})
# query.py creates these views beside the dataset's tables.
RESERVED_TABLES = frozenset({"versions", "datasets"})
TABLE_NAME = re.compile(r"^[a-z_][a-z0-9_]{0,63}$")
NOTHING_PUBLISHED = "nothing is published yet under {root}; publish a dataset with `curate run RECIPE`"

TableSource = str | Path | list[Path] | list[str] | pa.Table | pa.RecordBatchReader

# Test seam: called with "staged" (data written, no lock held), "catalog_created" (a new
# dataset's catalog initialised under its temporary name) and "locked" (inside the
# catalog transaction, just before COMMIT; for an object store, before the catalog upload).
# The subprocess tests pause or die there.
_TEST_HOOK: Callable[[str], None] | None = None

# fcntl locks do not exclude threads of one process, so writers in one process also
# serialise on a per-catalog thread lock.
_THREAD_LOCKS: dict[str, threading.Lock] = {}
_THREAD_LOCKS_GUARD = threading.Lock()


class DatasetBusy(CurationError):
    """Another process is writing the dataset and did not finish within the lock timeout."""


@dataclass
class VersionInfo:
    """Everything recorded about one published version (stored in the commit's extra_info)."""

    dataset: str
    version: int
    snapshot_id: int
    created_at: str  # ISO-8601 UTC
    parents: list[str]
    config: dict
    config_hash: str
    code_version: str
    inputs: list[dict]
    counts: dict
    schemas: dict[str, str]  # table -> Arrow schema string of what was stored
    tables: dict[str, int]  # table -> rows stored
    run_id: str | None = None
    extra: dict = field(default_factory=dict)

    @property
    def ref(self) -> str:
        return f"{self.dataset}@{self.version}"


VERSION_FIELDS = tuple(VersionInfo.__dataclass_fields__)


@dataclass
class _Staged:
    """One staged table: checked Parquet in ``local``, registered from ``data``.

    For a local root both are the same folder under ``files/``; for an object store
    ``local`` is a temp folder and ``data`` its uploaded copy (``s3://...``).
    """

    local: Path
    data: str
    rows: int
    schema: pa.Schema


def open_duckdb() -> duckdb.DuckDBPyConnection:
    """An in-memory DuckDB with DuckLake loaded, offline first (pip-packaged extension)."""
    con = duckdb.connect()
    con.execute("SET GLOBAL TimeZone='UTC'")
    con.execute("SET autoinstall_known_extensions=false")
    try:
        import duckdb_extensions

        duckdb_extensions.import_extension("ducklake", con=con)
        return con
    except Exception as first:  # noqa: BLE001 - any failure: try the online route
        try:
            con.execute("INSTALL ducklake")
            con.execute("LOAD ducklake")
            return con
        except duckdb.Error as second:
            con.close()
            raise CurationError(
                "cannot load the DuckDB 'ducklake' extension: install the package "
                f"duckdb-extension-ducklake=={duckdb.__version__} (offline) or allow "
                f"`INSTALL ducklake` to reach the network ({first}; {second})"
            ) from None


_SHARED: tuple[int, duckdb.DuckDBPyConnection] | None = None
_SHARED_GUARD = threading.Lock()


def _cursor() -> duckdb.DuckDBPyConnection:
    """A cursor on one DuckDB per process, for readers: loading DuckLake into a fresh database
    and its first attach cost ~0.3 s, a cursor nothing. Catalogs are attached under unique
    aliases. A forked child gets its own database (DuckDB is not fork-safe).

    Writers (publish, cleanup) take a private database instead (``open_duckdb``): with
    DuckDB/DuckLake 1.5.5 a DuckLake write fails when another cursor of the same database
    attaches or detaches a catalog meanwhile (seen with threads: 'Catalog
    "__ducklake_metadata_..." does not exist', 'Failed to get path for schema with id ...');
    concurrent readers of one database were fine."""
    global _SHARED
    with _SHARED_GUARD:
        if _SHARED is None or _SHARED[0] != os.getpid():
            _SHARED = (os.getpid(), open_duckdb())
        return _SHARED[1].cursor()


def _alias() -> str:
    return f"lake_{uuid.uuid4().hex[:16]}"


def _detach(con: duckdb.DuckDBPyConnection, alias: str) -> None:
    try:
        con.execute(f"DETACH DATABASE IF EXISTS {ident(alias)}")
    except duckdb.Error:
        pass


def lit(s: str | Path) -> str:
    """A SQL string literal."""
    return "'" + str(s).replace("'", "''") + "'"


def ident(s: str) -> str:
    """A quoted SQL identifier."""
    return '"' + s.replace('"', '""') + '"'


def is_lock_error(err: BaseException) -> bool:
    msg = str(err)
    return "Could not set lock" in msg or "Conflicting lock" in msg


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
    prompt, or missing statistics) leaves it to the scan in ``_check_nulls``, which costs
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


def contract_schema(table: str) -> pa.Schema | None:
    return arrow_schema(table) if table in table_names() else None


def schema_string(schema: pa.Schema) -> str:
    return schema.to_string(show_field_metadata=False, show_schema_metadata=False)


def _now() -> str:
    return datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def _jsonable(x: Any) -> Any:
    """What will come back from the catalog: publish returns exactly what versions() reads."""
    return json.loads(json.dumps(x, default=str))


class DatasetStore:
    """Publish and read versioned datasets under one data root."""

    def __init__(self, root: str | Path, *, lock_timeout_s: float = 30.0):
        """``root``: a local folder or an object-store URL (``s3://bucket/prefix``)."""
        self.remote = objectstore.S3Root.parse(str(root)) if is_url(root) else None
        self.root: Path | str = str(self.remote) if self.remote else Path(root).expanduser().resolve()
        self.lock_timeout_s = lock_timeout_s

    # -- paths ---------------------------------------------------------------------------
    @staticmethod
    def check_name(dataset: str) -> str:
        """A valid dataset name (it becomes a folder or key prefix, so none can leave the root)."""
        check_dataset_name(dataset)
        if dataset in RESERVED_DATASETS:
            raise ConfigError(f"invalid dataset name {dataset!r}: {sorted(RESERVED_DATASETS)} are reserved by DuckDB")
        return dataset

    def dataset_dir(self, dataset: str) -> Path:
        """The dataset's local folder; the name is validated so no name can leave the root."""
        self.check_name(dataset)
        if self.remote:
            raise CurationError(f"{self.location(dataset)} is in an object store, not a local folder")
        base = (self.root / "datasets").resolve()
        d = (base / dataset).resolve()
        if d.parent != base:  # belt and braces: the regex already forbids '/' and '..'
            raise ConfigError(f"invalid dataset name {dataset!r}: resolves outside {base}")
        return d

    def location(self, dataset: str) -> str:
        """Where the dataset lives, for messages: a folder or an ``s3://`` URL."""
        if self.remote:
            return self.remote.url("datasets", self.check_name(dataset))
        return str(self.dataset_dir(dataset))

    def _catalog(self, dataset: str) -> Path:
        return self.dataset_dir(dataset) / "catalog.ducklake"

    def _catalog_key(self, dataset: str) -> str:
        assert self.remote is not None
        return self.remote.key("datasets", self.check_name(dataset), "catalog.ducklake.gz")

    def _catalog_ref(self, dataset: str) -> str:
        return f"s3://{self.remote.bucket}/{self._catalog_key(dataset)}" if self.remote else str(self._catalog(dataset))

    def _files(self, dataset: str) -> Path | str:
        """DuckLake's data path (the S3 one ends in '/': keys are not folders)."""
        if self.remote:
            return self.remote.url("datasets", self.check_name(dataset), "files") + "/"
        return self.dataset_dir(dataset) / "files"

    @property
    def _bucket(self) -> objectstore.Bucket:
        assert self.remote is not None
        return objectstore.Bucket(self.remote)

    def _connect_store(self, con: duckdb.DuckDBPyConnection) -> None:
        """Give ``con`` access to the object store (no-op for a local root)."""
        if self.remote:
            objectstore.configure_duckdb(con, self.remote)

    # -- locking ---------------------------------------------------------------------------
    def _busy(self, dataset: str) -> DatasetBusy:
        return DatasetBusy(
            f"dataset {dataset!r} is being written by another process (waited {self.lock_timeout_s:g} s for "
            f"{self._catalog_ref(dataset)}); retry when that publish has finished"
        )

    def _retry(self, dataset: str, deadline: float, fn: Callable[[], Any]) -> Any:
        """Run ``fn`` until it stops failing on the catalog's file lock, or the deadline."""
        delay = 0.02
        while True:
            try:
                return fn()
            except duckdb.Error as err:
                if not is_lock_error(err):
                    raise
                left = deadline - time.monotonic()
                if left <= 0:
                    raise self._busy(dataset) from None
                time.sleep(min(left, delay * random.uniform(0.5, 1.0)))
                delay = min(delay * 2, 0.5)

    @contextmanager
    def _thread_lock(self, dataset: str, deadline: float) -> Iterator[None]:
        key = str(self._catalog(dataset))
        with _THREAD_LOCKS_GUARD:
            lock = _THREAD_LOCKS.setdefault(key, threading.Lock())
        if not lock.acquire(timeout=max(0.0, deadline - time.monotonic())):
            raise self._busy(dataset)
        try:
            yield
        finally:
            lock.release()

    # -- reading ---------------------------------------------------------------------------
    def attach(self, con: duckdb.DuckDBPyConnection, dataset: str, alias: str) -> list[VersionInfo]:
        """Attach a private read-only copy of the dataset's catalog as ``alias``; its versions.

        The shared lock is held only while the catalog file is copied (an object store's
        catalog is simply downloaded: objects are replaced atomically).
        """
        if self.remote:
            return self._attach_remote(con, dataset, alias)
        catalog = self._catalog(dataset)
        if not catalog.exists():
            raise self._not_found(dataset)
        tmp = Path(tempfile.mkdtemp(prefix="curate-catalog-"))
        copy = tmp / "catalog.ducklake"

        def snapshot() -> None:
            locker = _alias()
            con.execute(f"ATTACH {lit(catalog)} AS {locker} (READ_ONLY)")  # the shared lock
            try:
                shutil.copyfile(catalog, copy)
                wal = catalog.with_name(catalog.name + ".wal")
                if wal.exists():
                    shutil.copyfile(wal, copy.with_name(copy.name + ".wal"))
            finally:
                _detach(con, locker)

        deadline = time.monotonic() + self.lock_timeout_s
        try:
            with self._thread_lock(dataset, deadline):
                self._retry(dataset, deadline, snapshot)
            con.execute(
                f"ATTACH {lit('ducklake:' + str(copy))} AS {ident(alias)} "
                f"(READ_ONLY, DATA_PATH {lit(self._files(dataset))}, OVERRIDE_DATA_PATH true)"
            )
            return self._read_versions(con, alias, dataset)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)  # DuckDB keeps the open file; POSIX lets us unlink it

    def _attach_remote(self, con: duckdb.DuckDBPyConnection, dataset: str, alias: str) -> list[VersionInfo]:
        self._connect_store(con)
        tmp = Path(tempfile.mkdtemp(prefix="curate-catalog-"))
        try:
            if self._download_catalog(dataset, tmp / "catalog.ducklake") is None:
                raise self._not_found(dataset)
            con.execute(
                f"ATTACH {lit('ducklake:' + str(tmp / 'catalog.ducklake'))} AS {ident(alias)} "
                f"(READ_ONLY, DATA_PATH {lit(self._files(dataset))}, OVERRIDE_DATA_PATH true)"
            )
            return self._read_versions(con, alias, dataset)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)

    def _download_catalog(self, dataset: str, path: Path) -> str | None:
        """Write the catalog object's DuckDB file to ``path``; its ETag (None: no catalog)."""
        got = self._bucket.get(self._catalog_key(dataset))
        if got is None:
            return None
        try:
            path.write_bytes(objectstore.unpack(got[0]))
        except (OSError, EOFError, ValueError) as err:  # gzip.BadGzipFile is an OSError
            raise CurationError(f"catalog {self._catalog_ref(dataset)} is not a gzipped DuckLake catalog ({err})") from None
        return got[1]

    def _read_versions(self, con: duckdb.DuckDBPyConnection, alias: str, dataset: str) -> list[VersionInfo]:
        rows = con.execute(
            f"SELECT snapshot_id, commit_extra_info FROM ducklake_snapshots({lit(alias)}) WHERE author = ? ORDER BY snapshot_id",
            [AUTHOR],
        ).fetchall()
        out = []
        for snapshot_id, extra in rows:
            try:
                meta = json.loads(extra or "")
            except json.JSONDecodeError:
                continue
            if not isinstance(meta, dict) or meta.pop(MARKER, None) is None:
                continue
            meta.update(dataset=dataset, snapshot_id=snapshot_id)
            out.append(VersionInfo(**{k: meta[k] for k in VERSION_FIELDS if k in meta}))
        return out

    def _not_found(self, dataset: str) -> DatasetNotFound:
        names = self.datasets()
        if not names:
            return DatasetNotFound(NOTHING_PUBLISHED.format(root=self.root))
        return DatasetNotFound(f"no dataset named {dataset!r} under {self.root}; published: {', '.join(names)}")

    def datasets(self) -> list[str]:
        """Names of datasets that have a catalog (sorted). A first publish that was killed
        before committing leaves a catalog with no versions; ``versions`` is then empty."""
        if self.remote:
            names = self._bucket.folders(self.remote.key("datasets"))
            ok = [n for n in names if DATASET_NAME.match(n) and n not in RESERVED_DATASETS]
            return sorted(n for n in ok if self._bucket.exists(self._catalog_key(n)))
        base = self.root / "datasets"
        if not base.is_dir():
            return []
        resolved = base.resolve()
        # a dataset folder or catalog symlinked out of the root is not listed (dataset_dir refuses it)
        names = (p.parent.name for p in base.glob("*/catalog.ducklake") if p.resolve().parent.parent == resolved)
        return sorted(n for n in names if DATASET_NAME.match(n) and n not in RESERVED_DATASETS)

    def versions(self, dataset: str) -> list[VersionInfo]:
        """All versions of a dataset, oldest first."""
        with self._reading(dataset) as (_, _, infos):
            return infos

    @contextmanager
    def _reading(self, dataset: str) -> Iterator[tuple[duckdb.DuckDBPyConnection, str, list[VersionInfo]]]:
        """(cursor, alias, versions) with a private copy of the catalog attached as alias."""
        con, alias = _cursor(), _alias()
        try:
            yield con, alias, self.attach(con, dataset, alias)
        finally:
            _detach(con, alias)
            con.close()

    @staticmethod
    def pick(infos: list[VersionInfo], dataset: str, version: int | None) -> VersionInfo:
        """The requested version (latest when None) or a DatasetNotFound saying what exists."""
        if not infos:
            raise DatasetNotFound(f"dataset {dataset!r} has no published version yet (a publish may have been interrupted)")
        if version is None:
            return infos[-1]
        for info in infos:
            if info.version == version:
                return info
        have = ", ".join(str(i.version) for i in infos)
        raise DatasetNotFound(f"dataset {dataset!r} has no version {version}; versions: {have} (latest {infos[-1].version})")

    def version(self, dataset: str, version: int | None = None) -> VersionInfo:
        """One version's metadata, the latest by default."""
        return self.pick(self.versions(dataset), dataset, version)

    def scan(
        self,
        dataset: str,
        table: str,
        *,
        version: int | None = None,
        columns: list[str] | None = None,
        batch_size: int = 10_000,
    ) -> pa.RecordBatchReader:
        """Stream a table of one version in record batches, typed as the contract says."""
        con, alias = _cursor(), _alias()
        try:
            info = self.pick(self.attach(con, dataset, alias), dataset, version)
            if table not in info.tables:
                raise DatasetNotFound(f"{info.ref} has no table {table!r}; tables: {', '.join(sorted(info.tables))}")
            src = f"{alias}.{ident(table)} AT (VERSION => {info.snapshot_id})"
            stored = con.execute(f"SELECT * FROM {src} LIMIT 0").to_arrow_table().schema
            cols = columns if columns is not None else stored.names
            if not cols:
                raise CurationError(f"scan {info.ref}.{table}: no columns asked for")
            unknown = [c for c in cols if c not in stored.names]
            if unknown:
                raise CurationError(f"{info.ref}.{table} has no column(s) {unknown}; columns: {stored.names}")
            reader = con.execute(f"SELECT {', '.join(map(ident, cols))} FROM {src}").to_arrow_reader(batch_size)
        except BaseException:
            _detach(con, alias)
            con.close()
            raise
        contract = contract_schema(table)
        if contract is None:
            target = reader.schema
        else:
            target = pa.schema([contract.field(c) for c in cols], metadata=contract.metadata)

        def batches() -> Iterator[pa.RecordBatch]:
            try:
                for batch in reader:
                    yield batch.cast(target) if contract is not None else batch
            finally:
                _detach(con, alias)
                con.close()

        return pa.RecordBatchReader.from_batches(target, batches())

    def read(self, dataset: str, table: str, *, version: int | None = None, columns: list[str] | None = None) -> pa.Table:
        """A whole table of one version in memory (use ``scan`` for big ones)."""
        return self.scan(dataset, table, version=version, columns=columns, batch_size=100_000).read_all()

    # -- publishing ------------------------------------------------------------------------
    def publish(
        self,
        dataset: str,
        tables: dict[str, TableSource],
        *,
        config: dict,
        config_hash: str,
        code_version: str,
        inputs: list[dict],
        counts: dict,
        parents: list[str] | None = None,
        run_id: str | None = None,
        extra: dict | None = None,
    ) -> VersionInfo:
        """Publish ``tables`` as the next version of ``dataset``, all or nothing.

        A table is Parquet file(s) (a path, a glob, or a list of paths) or an Arrow table or
        reader; Parquet is streamed by DuckDB, never loaded into Python. The new version holds
        exactly the tables passed: tables of the previous version that are not passed are
        dropped from it (they stay readable in older versions). Contract tables (pairs,
        decisions, quarantine) must match their Arrow schema exactly, nulls included.
        """
        self.check_name(dataset)
        if not tables:
            raise CurationError(f"publish {dataset}: no tables given")
        for name in tables:
            if not isinstance(name, str) or not TABLE_NAME.match(name) or name in RESERVED_TABLES:
                raise ConfigError(
                    f"invalid table name {name!r}: use lowercase letters, digits and '_' (not {', '.join(sorted(RESERVED_TABLES))})"
                )
        if self.remote:
            staging = Path(tempfile.mkdtemp(prefix="curate-stage-"))
        else:
            staging = self.dataset_dir(dataset) / "files"
            staging.mkdir(parents=True, exist_ok=True)
        staged: dict[str, _Staged] = {}
        meta = {
            "config": config,
            "config_hash": config_hash,
            "code_version": code_version,
            "inputs": inputs,
            "counts": counts,
            "run_id": run_id,
            "extra": extra or {},
        }
        con = open_duckdb()  # private: see _cursor
        uploading: list[bool] = []  # set while the catalog upload's outcome is unknown
        try:
            self._connect_store(con)
            for name, src in tables.items():
                staged[name] = self._stage(con, dataset, name, src, staging)
            if _TEST_HOOK:
                _TEST_HOOK("staged")
            if self.remote:
                return self._commit_remote(con, dataset, staged, meta, parents or [], uploading)
            return self._commit(con, dataset, staged, meta, parents or [])
        except BaseException:
            if not self.remote:
                for s in staged.values():
                    shutil.rmtree(s.local, ignore_errors=True)
            elif not uploading:  # an upload that failed midway may have landed: keep its files
                self._discard_remote(staged)
            raise
        finally:
            con.close()
            if self.remote:
                shutil.rmtree(staging, ignore_errors=True)

    def _discard_remote(self, staged: dict[str, _Staged]) -> None:
        """Best effort: a killed process leaves its staged files for ``cleanup_orphans``."""
        try:
            self._bucket.delete([k for s in staged.values() if s.rows for k in self._bucket.keys(self._key_of(s.data) + "/")])
        except CurationError:
            pass

    def _key_of(self, url: str) -> str:
        assert self.remote is not None
        return url.removeprefix(f"s3://{self.remote.bucket}/")

    def _source_sql(self, con: duckdb.DuckDBPyConnection, name: str, src: TableSource) -> str:
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

    def _stage(self, con: duckdb.DuckDBPyConnection, dataset: str, name: str, src: TableSource, files: Path) -> _Staged:
        """Write one table as Parquet under ``files`` (no lock held), check it, and for an
        object store upload it beside the catalog."""
        rel = f"main/{name}/staged-{uuid.uuid4().hex}"
        folder = files / rel
        folder.parent.mkdir(parents=True, exist_ok=True)
        try:
            folder.mkdir()
            if not _link_contract_files(name, src, folder, symlink=self.remote is not None):
                sql = self._source_sql(con, name, src)
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
                self._check_nulls(con, dataset, name, folder, contract)
        except duckdb.Error as err:
            shutil.rmtree(folder, ignore_errors=True)
            raise CurationError(f"cannot publish {dataset}: table {name}: {err}") from None
        except BaseException:
            shutil.rmtree(folder, ignore_errors=True)
            raise
        if not self.remote:
            return _Staged(folder, str(folder), rows, schema)
        data = f"{self._files(dataset)}{rel}"
        if rows:  # an empty table needs no data file: its schema comes from the local copy
            for p in sorted(folder.glob("*.parquet")):
                self._bucket.upload(p, f"{self._key_of(data)}/{p.name}")
        return _Staged(folder, data, rows, schema)

    @staticmethod
    def _check_nulls(con: duckdb.DuckDBPyConnection, dataset: str, name: str, folder: Path, contract: pa.Schema) -> None:
        checks = {f.name: preds for f in contract if (preds := _null_predicates(ident(f.name), f))}
        if not checks or _footers_rule_out_nulls(sorted(folder.glob("*.parquet")), set(checks)):
            return
        sel = ", ".join(f"count(*) FILTER (WHERE {' OR '.join(p)})" for p in checks.values())
        found = con.execute(f"SELECT {sel} FROM read_parquet({lit(folder / '*.parquet')})").fetchone()
        bad = [f"{c} ({n} rows)" for c, n in zip(checks, found) if n]
        if bad:
            raise CurationError(f"cannot publish {dataset}: {name} has nulls where the contract forbids them: {', '.join(bad)}")

    def _attach_sql(self, dataset: str, catalog: Path, lake: str) -> str:
        return (
            f"ATTACH {lit('ducklake:' + str(catalog))} AS {lake} "
            f"(DATA_PATH {lit(self._files(dataset))}, OVERRIDE_DATA_PATH true, DATA_INLINING_ROW_LIMIT 0)"
        )

    def _commit(
        self, con: duckdb.DuckDBPyConnection, dataset: str, staged: dict[str, _Staged], meta: dict, parents: list[str]
    ) -> VersionInfo:
        """The short critical section: register the staged files as one snapshot."""
        deadline = time.monotonic() + self.lock_timeout_s
        lake = _alias()
        attach = self._attach_sql(dataset, self._catalog(dataset), lake)
        with self._thread_lock(dataset, deadline):
            if not self._catalog(dataset).exists():
                self._create_catalog(con, dataset)
            self._retry(dataset, deadline, lambda: con.execute(attach))
            try:
                record, snapshot_id = self._transaction(con, lake, dataset, staged, meta, parents)
            finally:
                _detach(con, lake)
        for s in staged.values():
            if not s.rows:  # an empty table has no data file; drop the empty staged one
                shutil.rmtree(s.local, ignore_errors=True)
        return VersionInfo(dataset=dataset, snapshot_id=snapshot_id, **record)

    def _create_catalog(self, con: duckdb.DuckDBPyConnection, dataset: str) -> None:
        """A new dataset's catalog, initialised under a temporary name and hard-linked into place.

        DuckLake writes its metadata tables when it first attaches a catalog; a publish killed
        then would leave a catalog without them, which every reader (and so every rerun)
        rejects. Linking never replaces a catalog another publisher created meanwhile."""
        catalog = self._catalog(dataset)
        tmp = catalog.with_name(f".{catalog.name}.{uuid.uuid4().hex}.tmp")
        lake = _alias()
        try:
            con.execute(self._attach_sql(dataset, tmp, lake))
            _detach(con, lake)
            if _TEST_HOOK:
                _TEST_HOOK("catalog_created")
            try:
                os.link(tmp, catalog)
            except FileExistsError:
                pass
        finally:
            for leftover in (tmp, tmp.with_name(tmp.name + ".wal")):
                leftover.unlink(missing_ok=True)

    def _commit_remote(
        self,
        con: duckdb.DuckDBPyConnection,
        dataset: str,
        staged: dict[str, _Staged],
        meta: dict,
        parents: list[str],
        uploading: list[bool],
    ) -> VersionInfo:
        """Optimistic commit: the transaction on a downloaded copy, uploaded only if the catalog
        object is still the one downloaded; else again on top of the newer one."""
        key = self._catalog_key(dataset)
        deadline = time.monotonic() + self.lock_timeout_s
        delay = 0.05
        while True:
            tmp = Path(tempfile.mkdtemp(prefix="curate-catalog-"))
            try:
                catalog = tmp / "catalog.ducklake"
                etag = self._download_catalog(dataset, catalog)
                lake = _alias()
                con.execute(self._attach_sql(dataset, catalog, lake))
                try:
                    record, snapshot_id = self._transaction(con, lake, dataset, staged, meta, parents)
                    con.execute(f"CHECKPOINT {ident('__ducklake_metadata_' + lake)}")
                finally:
                    _detach(con, lake)
                if catalog.with_name(catalog.name + ".wal").exists():  # never upload half a catalog
                    raise CurationError(f"cannot publish {dataset}: the catalog was not checkpointed; nothing was published")
                uploading.append(True)
                if self._bucket.put_if(key, objectstore.pack(catalog.read_bytes()), etag):
                    return VersionInfo(dataset=dataset, snapshot_id=snapshot_id, **record)
                uploading.clear()  # refused: another publisher committed first
            finally:
                shutil.rmtree(tmp, ignore_errors=True)
            left = deadline - time.monotonic()
            if left <= 0:
                raise self._busy(dataset)
            time.sleep(min(left, delay * random.uniform(0.5, 1.0)))
            delay = min(delay * 2, 1.0)

    def _transaction(
        self, con: duckdb.DuckDBPyConnection, lake: str, dataset: str, staged: dict[str, _Staged], meta: dict, parents: list[str]
    ) -> tuple[dict, int]:
        """Replace the dataset's tables with the staged files in one DuckLake snapshot carrying
        the version record; (record, snapshot id)."""
        try:
            con.execute("BEGIN")
            previous = self._read_versions(con, lake, dataset)
            number = previous[-1].version + 1 if previous else 1
            lineage = list(dict.fromkeys(([previous[-1].ref] if previous else []) + parents))
            existing = {r[0] for r in con.execute("SELECT table_name FROM duckdb_tables() WHERE database_name = ?", [lake]).fetchall()}
            schemas: dict[str, str] = {}
            for name, s in staged.items():
                con.execute(
                    f"CREATE OR REPLACE TABLE {lake}.{ident(name)} AS SELECT * FROM read_parquet({lit(s.local / '*.parquet')}) LIMIT 0"
                )
                if s.rows:
                    con.execute(f"CALL ducklake_add_data_files({lit(lake)}, {lit(name)}, {lit(s.data + '/*.parquet')})")
                stored = con.execute(f"SELECT * FROM {lake}.{ident(name)} LIMIT 0").to_arrow_table().schema
                contract = contract_schema(name)
                if contract is not None:
                    problems = schema_problems(name, stored, contract)
                    if problems:
                        raise CurationError(
                            f"cannot publish {dataset}: stored table differs from its contract:\n  " + "\n  ".join(problems)
                        )
                    stored = contract
                schemas[name] = schema_string(stored)
            for name in sorted(existing - set(staged)):
                con.execute(f"DROP TABLE {lake}.{ident(name)}")
            record = _jsonable(
                dict(
                    version=number,
                    created_at=_now(),
                    parents=lineage,
                    schemas=schemas,
                    tables={n: s.rows for n, s in staged.items()},
                    **meta,
                )
            )
            con.execute(
                f"CALL {lake}.set_commit_message(?, ?, extra_info => ?)",
                [AUTHOR, f"publish {dataset} v{number}", json.dumps({MARKER: 1, **record})],
            )
            if _TEST_HOOK:
                _TEST_HOOK("locked")
            con.execute("COMMIT")
            snapshot_id = con.execute(f"SELECT max(snapshot_id) FROM ducklake_snapshots({lit(lake)})").fetchone()[0]
            return record, snapshot_id
        except duckdb.Error as err:
            self._rollback(con)
            raise CurationError(f"cannot publish {dataset}: {err}") from None
        except BaseException:
            self._rollback(con)
            raise

    @staticmethod
    def _rollback(con: duckdb.DuckDBPyConnection) -> None:
        try:
            con.execute("ROLLBACK")
        except duckdb.Error:
            pass

    # -- comparing and cleaning ------------------------------------------------------------
    def diff(self, dataset: str, a: int, b: int) -> dict:
        """What changed from version ``a`` to ``b``: row counts, pair ids, config, inputs."""
        with self._reading(dataset) as (con, lake, infos):
            va, vb = self.pick(infos, dataset, a), self.pick(infos, dataset, b)
            out: dict[str, Any] = {
                "dataset": dataset,
                "a": a,
                "b": b,
                "tables": {t: {"a": va.tables.get(t), "b": vb.tables.get(t)} for t in sorted(set(va.tables) | set(vb.tables))},
                "pairs": None,
                "config": _config_changes(va.config, vb.config),
                "config_hash_changed": va.config_hash != vb.config_hash,
                "inputs_changed": va.inputs != vb.inputs,
                "code_version_changed": va.code_version != vb.code_version,
            }
            if all(re.search(r"^pair_id: ", v.schemas.get("pairs", ""), re.MULTILINE) for v in (va, vb)):
                ids = f"SELECT pair_id FROM {lake}.pairs AT (VERSION => {{}})"
                pairs: dict[str, Any] = {}
                for key, new, old in (("added", vb, va), ("removed", va, vb)):
                    q = f"({ids.format(new.snapshot_id)} EXCEPT {ids.format(old.snapshot_id)})"
                    pairs[key] = con.execute(f"SELECT count(*) FROM {q}").fetchone()[0]
                    pairs[f"{key}_examples"] = [r[0] for r in con.execute(f"SELECT pair_id FROM {q} ORDER BY 1 LIMIT 10").fetchall()]
                out["pairs"] = pairs
            return out

    def cleanup_orphans(self, dataset: str, *, older_than_s: float = 3600.0) -> list[str]:
        """Delete data files no version references (left by killed publishes).

        Only files older than ``older_than_s``: a younger one may be staged by a publish
        that is still running. Returns the deleted paths.
        """
        if self.remote:
            return self._cleanup_remote(dataset, older_than_s)
        ddir = self.dataset_dir(dataset)
        con, lake = open_duckdb(), _alias()  # a writer: private database (see _cursor)
        deadline = time.monotonic() + self.lock_timeout_s
        try:
            with self._thread_lock(dataset, deadline):
                self._retry(
                    dataset,
                    deadline,
                    lambda: con.execute(
                        f"ATTACH {lit('ducklake:' + str(ddir / 'catalog.ducklake'))} AS {lake} "
                        f"(DATA_PATH {lit(self._files(dataset))}, OVERRIDE_DATA_PATH true)"
                    ),
                )
                cutoff = datetime.now(timezone.utc).timestamp() - older_than_s
                rows = con.execute(f"CALL ducklake_delete_orphaned_files({lit(lake)}, older_than => to_timestamp(?))", [cutoff]).fetchall()
        finally:
            _detach(con, lake)
            con.close()
        for d in sorted((self._files(dataset) / "main").glob("*/staged-*"), reverse=True):
            if d.is_dir() and not any(d.iterdir()):
                d.rmdir()
        return [r[0] for r in rows]

    def _cleanup_remote(self, dataset: str, older_than_s: float) -> list[str]:
        """DuckLake lists and deletes the orphans through httpfs, on a downloaded catalog copy
        (deleting files changes no metadata, so nothing is uploaded)."""
        con, lake = open_duckdb(), _alias()  # attached read-write: private database (see _cursor)
        tmp = Path(tempfile.mkdtemp(prefix="curate-catalog-"))
        try:
            self._connect_store(con)
            if self._download_catalog(dataset, tmp / "catalog.ducklake") is None:
                raise self._not_found(dataset)
            con.execute(self._attach_sql(dataset, tmp / "catalog.ducklake", lake))
            cutoff = datetime.now(timezone.utc).timestamp() - older_than_s
            rows = con.execute(f"CALL ducklake_delete_orphaned_files({lit(lake)}, older_than => to_timestamp(?))", [cutoff]).fetchall()
        except duckdb.Error as err:
            raise CurationError(f"cannot clean up {self.location(dataset)}: {err}") from None
        finally:
            _detach(con, lake)
            con.close()
            shutil.rmtree(tmp, ignore_errors=True)
        return [r[0] for r in rows]

    # -- files beside the versions (reports) -----------------------------------------------
    def put_files(self, dataset: str, subdir: str, folder: str | Path) -> str:
        """Copy the files of a local ``folder`` to ``DATASET/subdir`` in the store (a run's
        report beside its version); where they are now. A no-op when already there."""
        parts = self._subdir(subdir)
        src = Path(folder)
        files = sorted(p for p in src.iterdir() if p.is_file())
        if self.remote:
            for p in files:
                self._bucket.upload(p, self.remote.key("datasets", self.check_name(dataset), *parts, p.name))
            return self.remote.url("datasets", dataset, *parts)
        dest = self.dataset_dir(dataset).joinpath(*parts)
        if dest.resolve() != src.resolve():
            dest.mkdir(parents=True, exist_ok=True)
            for p in files:
                shutil.copy2(p, dest / p.name)
        return str(dest)

    def get_files(self, dataset: str, subdir: str, dest: str | Path) -> Path | None:
        """A local folder holding ``DATASET/subdir``'s files: the store's own folder for a
        local root, else ``dest`` after downloading them. None when there are none."""
        parts = self._subdir(subdir)
        if not self.remote:
            d = self.dataset_dir(dataset).joinpath(*parts)
            return d if d.is_dir() and any(d.iterdir()) else None
        prefix = self.remote.key("datasets", self.check_name(dataset), *parts) + "/"
        keys = [k for k in self._bucket.keys(prefix) if "/" not in k[len(prefix) :]]
        if not keys:
            return None
        out = Path(dest)
        out.mkdir(parents=True, exist_ok=True)
        for k in keys:
            self._bucket.download(k, out / k[len(prefix) :])
        return out

    @staticmethod
    def _subdir(subdir: str) -> list[str]:
        parts = [p for p in str(subdir).split("/") if p]
        if (
            not parts
            or any(p in (".", "..") or "\\" in p for p in parts)
            or parts[0] in ("files", "catalog.ducklake", "catalog.ducklake.gz")
        ):
            raise CurationError(f"invalid folder {subdir!r} beside a dataset's versions (e.g. reports/v3)")
        return parts


def _flatten(d: Any, prefix: str = "") -> dict[str, Any]:
    if not isinstance(d, dict) or (prefix and not d):
        return {prefix: d}
    out: dict[str, Any] = {}
    for k, v in d.items():
        out.update(_flatten(v, f"{prefix}.{k}" if prefix else str(k)))
    return out


def _config_changes(old: dict, new: dict) -> dict[str, dict[str, Any]]:
    """Dotted config paths whose value differs; a missing side is left out of the entry."""
    fa, fb = _flatten(old), _flatten(new)
    out: dict[str, dict[str, Any]] = {}
    for key in sorted(set(fa) | set(fb)):
        if fa.get(key, ...) != fb.get(key, ...):
            out[key] = {**({"old": fa[key]} if key in fa else {}), **({"new": fb[key]} if key in fb else {})}
    return out
