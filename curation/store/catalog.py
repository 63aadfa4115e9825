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

Readers never keep the catalog itself attached: they attach a private copy READ_ONLY, so a
long read never blocks a publish (why and how: ``curation.store.local``).

How the catalog is kept is the transport's business (``curation.store.transport``): a local
folder with file locks (``curation.store.local``), an object store (``s3://bucket/prefix``)
with a gzipped catalog object committed by conditional writes, optimistically
(``curation.store.object_store``), or, for a root bound to it (``curation.store.binding``),
PostgreSQL with advisory locks and real transactions (``curation.store.postgres``). This
module is the same for all of them: names, versions, reading, and a publish's steps (stage
each table and check it against the contract, then one DuckLake transaction, committed
through the transport).
"""

from __future__ import annotations

import json
import re
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import duckdb
import pyarrow as pa

from curation.config import is_url
from curation.errors import CurationError, DatasetNotFound
from curation.files import file_digest
from curation.store.binding import bind, read_binding
from curation.store.contract import contract_schema, schema_problems, schema_string
from curation.store.duck import detach, ident, lit, new_alias, open_duckdb, reader_cursor
from curation.store.local import LocalCatalog
from curation.store.names import RESERVED_DATASETS, RESERVED_TABLES, check_name, check_table_name
from curation.store.object_store import ObjectStoreCatalog
from curation.store.s3 import S3Root
from curation.store.stage import TableSource, stage_table
from curation.store.transport import CatalogTransport, DatasetBusy, Staged

__all__ = [
    "MARKER",
    "AlreadyPublished",
    "NOTHING_PUBLISHED",
    "RESERVED_DATASETS",
    "RESERVED_TABLES",
    "DatasetBusy",
    "DatasetStore",
    "TableSource",
    "VersionInfo",
]

MARKER = "curate.version/1"  # key in commit extra_info that marks a snapshot as a dataset version
AUTHOR = "curate"
NOTHING_PUBLISHED = "nothing is published yet under {root}; publish a dataset with `curate run RECIPE`"

# Test seam: called with "staged" (data written, no lock held), "catalog_created" (a new
# dataset's catalog initialised under its temporary name) and "locked" (inside the
# catalog transaction, just before COMMIT; for an object store, before the catalog upload).
# The subprocess tests pause or die there.
_TEST_HOOK: Callable[[str], None] | None = None


def _hook(phase: str) -> None:
    """Call ``_TEST_HOOK`` as it is now (tests set it after import; the transports get this)."""
    if _TEST_HOOK:
        _TEST_HOOK(phase)


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
    files: dict[str, list[dict]] = field(default_factory=dict)  # table -> its data files: path, bytes, sha256

    @property
    def ref(self) -> str:
        return f"{self.dataset}@{self.version}"


class AlreadyPublished(CurationError):
    """The latest version already is what a publish would add (``publish(unless=...)``): an
    identical run finished first. ``info`` is that version."""

    def __init__(self, info: VersionInfo):
        super().__init__(f"{info.ref} was built from the same config and inputs; nothing to do")
        self.info = info


VERSION_FIELDS = tuple(VersionInfo.__dataclass_fields__)


def _now() -> str:
    return datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def _jsonable(x: Any) -> Any:
    """What will come back from the catalog: publish returns exactly what versions() reads."""
    return json.loads(json.dumps(x, default=str))


class DatasetStore:
    """Publish and read versioned datasets under one data root."""

    def __init__(self, root: str | Path, *, lock_timeout_s: float = 30.0, catalog: str | None = None):
        """``root``: a local folder or an object-store URL (``s3://bucket/prefix``).

        ``catalog`` (``file`` or ``postgres``) binds a new root to that kind of catalog and
        checks an existing root's binding; None uses whatever the root records
        (``curation.store.binding``)."""
        files: CatalogTransport
        if is_url(root):
            files = ObjectStoreCatalog(S3Root.parse(str(root)), lock_timeout_s, _hook)
        else:
            files = LocalCatalog(Path(root).expanduser().resolve(), lock_timeout_s, _hook)
        self._files = files
        self._catalog = catalog
        self._chosen: CatalogTransport | None = None
        self._kind = "file"
        self.root: Path | str = files.root

    @property
    def _transport(self) -> CatalogTransport:
        """The root's transport, with its catalog kind read (or bound) on first use, so that
        constructing a store never touches the network."""
        if self._chosen is None:
            binding = bind(self._files, self._catalog) if self._catalog is not None else read_binding(self._files)
            self._chosen, self._kind = self._files, binding.kind
            if binding.kind == "postgres":
                from curation.store.postgres import PostgresCatalog  # psycopg only where a root needs it

                self._chosen = PostgresCatalog(self._files, str(binding.namespace), self._files.lock_timeout_s, _hook)
        return self._chosen

    def bind_catalog(self) -> str:
        """Record the catalog kind asked for in a new root, or check it against what an
        existing root records (a ConfigError on a conflict); the kind in use. A database
        catalog's server is reached now: a run finds out before its stages, not at publish."""
        kind = self.catalog_kind
        if kind != "file":
            self.datasets()
        return kind

    @property
    def catalog_kind(self) -> str:
        """``file`` or ``postgres``: where this root keeps its catalogs."""
        self._transport  # noqa: B018 - reads (or binds) the root's record
        return self._kind

    @property
    def lock_timeout_s(self) -> float:
        """How long a publish (or a reader's catalog copy) waits for other publishers."""
        return self._files.lock_timeout_s

    @lock_timeout_s.setter
    def lock_timeout_s(self, value: float) -> None:
        self._files.lock_timeout_s = value
        if self._chosen is not None:
            self._chosen.lock_timeout_s = value

    # -- paths ---------------------------------------------------------------------------
    @staticmethod
    def check_name(dataset: str) -> str:
        """A valid dataset name (it becomes a folder or key prefix, so none can leave the root)."""
        return check_name(dataset)

    def dataset_dir(self, dataset: str) -> Path:
        """The dataset's local folder; the name is validated so no name can leave the root."""
        return self._transport.dataset_dir(dataset)

    def data_path(self, dataset: str) -> Path | str:
        """The folder (or ``s3://`` prefix) that holds the dataset's data files."""
        return self._transport.data_path(self.check_name(dataset))

    def location(self, dataset: str) -> str:
        """Where the dataset lives, for messages: a folder or an ``s3://`` URL."""
        return self._transport.location(dataset)

    # -- reading ---------------------------------------------------------------------------
    def attach(self, con: duckdb.DuckDBPyConnection, dataset: str, alias: str) -> list[VersionInfo]:
        """Attach a private read-only copy of the dataset's catalog as ``alias``; its versions.

        The shared lock is held only while the catalog file is copied (an object store's
        catalog is simply downloaded: objects are replaced atomically).
        """
        self._transport.connect(con)
        if not self._transport.attach_reader(con, dataset, alias):
            raise self._not_found(dataset)
        return self._read_versions(con, alias, dataset)

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
        return self._transport.datasets()

    def versions(self, dataset: str) -> list[VersionInfo]:
        """All versions of a dataset, oldest first."""
        with self._reading(dataset) as (_, _, infos):
            return infos

    @contextmanager
    def _reading(self, dataset: str) -> Iterator[tuple[duckdb.DuckDBPyConnection, str, list[VersionInfo]]]:
        """(cursor, alias, versions) with a private copy of the catalog attached as alias."""
        con, alias = reader_cursor(), new_alias()
        try:
            yield con, alias, self.attach(con, dataset, alias)
        finally:
            detach(con, alias)
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
        con, alias = reader_cursor(), new_alias()
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
            detach(con, alias)
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
                detach(con, alias)
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
        unless: Callable[[VersionInfo], bool] | None = None,
    ) -> VersionInfo:
        """Publish ``tables`` as the next version of ``dataset``, all or nothing.

        A table is Parquet file(s) (a path, a glob, or a list of paths) or an Arrow table or
        reader; Parquet is streamed by DuckDB, never loaded into Python. The new version holds
        exactly the tables passed: tables of the previous version that are not passed are
        dropped from it (they stay readable in older versions). Contract tables (pairs,
        decisions, quarantine) must match their Arrow schema exactly, nulls included.

        ``unless`` is asked about the latest version inside the commit (under the dataset's
        lock, or on the catalog an optimistic commit is about to replace): True raises
        ``AlreadyPublished`` and nothing is published, so two identical runs started together
        publish one version. The sha256 and size of every data file are recorded with the
        version (``verify`` checks them); staged files of publishes killed before their commit
        are removed first.
        """
        self.check_name(dataset)
        try:
            self._transport.sweep_dead_publishes(dataset)
        except (CurationError, duckdb.Error, OSError):
            pass  # cleanup is best effort: it never stops a publish
        if not tables:
            raise CurationError(f"publish {dataset}: no tables given")
        for name in tables:
            check_table_name(name)
        meta = {
            "config": config,
            "config_hash": config_hash,
            "code_version": code_version,
            "inputs": inputs,
            "counts": counts,
            "run_id": run_id,
            "extra": extra or {},
        }
        with self._transport.staging(dataset) as staging:
            con = open_duckdb()  # private: see duck.reader_cursor
            try:
                self._transport.connect(con)
                for name, src in tables.items():
                    staging.tables[name] = self._stage(con, dataset, name, src, staging.folder)
                _hook("staged")

                def transaction(db: duckdb.DuckDBPyConnection, lake: str) -> tuple[dict, int]:
                    return self._transaction(db, lake, dataset, staging.tables, meta, parents or [], unless)

                record, snapshot_id = self._transport.commit(con, dataset, staging, transaction)
                return VersionInfo(dataset=dataset, snapshot_id=snapshot_id, **record)
            except BaseException:
                self._transport.abandon(staging)
                raise
            finally:
                con.close()

    def _stage(self, con: duckdb.DuckDBPyConnection, dataset: str, name: str, src: TableSource, files: Path) -> Staged:
        """Write one table as Parquet under ``files`` (no lock held), check it, and for an
        object store upload it beside the catalog."""
        rel = f"main/{name}/staged-{uuid.uuid4().hex}"
        folder = files / rel
        rows, schema = stage_table(con, dataset, name, src, folder, symlink=self._transport.symlink_staged)
        digests = [(f.name, *file_digest(f)) for f in sorted(folder.glob("*.parquet"))] if rows else []
        staged = self._transport.place(dataset, rel, folder, rows, schema)
        staged.files = [{"path": f"{rel}/{n}", "bytes": size, "sha256": sha} for n, size, sha in digests]
        return staged

    def _transaction(
        self,
        con: duckdb.DuckDBPyConnection,
        lake: str,
        dataset: str,
        staged: dict[str, Staged],
        meta: dict,
        parents: list[str],
        unless: Callable[[VersionInfo], bool] | None = None,
    ) -> tuple[dict, int]:
        """Replace the dataset's tables with the staged files in one DuckLake snapshot carrying
        the version record; (record, snapshot id)."""
        try:
            con.execute("BEGIN")
            previous = self._read_versions(con, lake, dataset)
            if unless is not None and previous and unless(previous[-1]):
                raise AlreadyPublished(previous[-1])
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
                    files={n: s.files for n, s in staged.items() if s.files},
                    **meta,
                )
            )
            con.execute(
                f"CALL {lake}.set_commit_message(?, ?, extra_info => ?)",
                [AUTHOR, f"publish {dataset} v{number}", json.dumps({MARKER: 1, **record})],
            )
            _hook("locked")
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

    # -- checking ----------------------------------------------------------------------------
    def verify(self, dataset: str, version: int | None = None) -> dict[str, Any]:
        """Recompute the sha256 and size of every data file the version recorded at publish;
        ``problems`` names each file missing or changed (empty: the version is intact)."""
        info = self.version(dataset, version)
        problems: list[str] = []
        checked = size = 0
        for table, files in info.files.items():
            for f in files:
                got = self._transport.digest(dataset, f["path"])
                checked += 1
                size += f["bytes"]
                if got is None:
                    problems.append(f"missing: {f['path']} (table {table})")
                elif got != (f["bytes"], f["sha256"]):
                    problems.append(
                        f"changed: {f['path']} (table {table}): now {got[0]:,} bytes, sha256 {got[1][:12]}...; "
                        f"published {f['bytes']:,} bytes, sha256 {f['sha256'][:12]}..."
                    )
        return {"ref": info.ref, "recorded": bool(info.files), "files": checked, "bytes": size, "problems": problems}

    def sweep_dead_publishes(self, dataset: str, *, dry_run: bool = False) -> list[tuple[str, int]]:
        """The staged files of publishes killed before their commit: removed (or listed)."""
        return self._transport.sweep_dead_publishes(self.check_name(dataset), dry_run=dry_run)

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
        deleted = self._transport.cleanup_orphans(dataset, older_than_s)
        if deleted is None:
            raise self._not_found(dataset)
        return deleted

    # -- files beside the versions (reports) -----------------------------------------------
    def put_files(self, dataset: str, subdir: str, folder: str | Path) -> str:
        """Copy the files of a local ``folder`` to ``DATASET/subdir`` in the store (a run's
        report beside its version); where they are now. A no-op when already there."""
        parts = self._subdir(subdir)
        src = Path(folder)
        files = sorted(p for p in src.iterdir() if p.is_file())
        return self._transport.put_files(dataset, parts, src, files)

    def get_files(self, dataset: str, subdir: str, dest: str | Path) -> Path | None:
        """A local folder holding ``DATASET/subdir``'s files: the store's own folder for a
        local root, else ``dest`` after downloading them. None when there are none."""
        return self._transport.get_files(dataset, self._subdir(subdir), dest)

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
    """Dotted paths to the leaves of a config; list items by position (``filter.steps.2.min_margin``),
    so one changed threshold in a list of steps is one changed key, not the whole list."""
    if isinstance(d, list) and d:
        items: Any = {str(i): v for i, v in enumerate(d)}
    elif isinstance(d, dict) and (d or not prefix):
        items = d
    else:
        return {prefix: d}
    out: dict[str, Any] = {}
    for k, v in items.items():
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
