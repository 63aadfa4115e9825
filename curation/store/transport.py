"""How a dataset's catalog is kept: the one thing that differs between data roots.

The format is the same everywhere (a DuckLake catalog beside its Parquet ``files/``); what
differs is how a reader gets a consistent view of the catalog, where a publisher stages its
files, and how a publisher's commit is made safe against other publishers: file locks on a
local catalog file (``curation.store.local``), conditional writes of a gzipped catalog object
(``curation.store.object_store``), or PostgreSQL's advisory locks and transactions, with the
files handled by one of the other two (``curation.store.postgres``). ``DatasetStore`` picks
one ``CatalogTransport`` per root and leaves all of that to it.
"""

from __future__ import annotations

import shutil
import tempfile
from abc import ABC, abstractmethod
from collections.abc import Callable
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

import duckdb
import pyarrow as pa

from curation.errors import CurationError
from curation.store.duck import ident, lit

# The DuckLake transaction a commit runs on an attached catalog: (con, alias) -> (version
# record, snapshot id). ``DatasetStore`` writes it; the transport decides where it runs.
Transaction = Callable[[duckdb.DuckDBPyConnection, str], tuple[dict, int]]


class DatasetBusy(CurationError):
    """Another process is writing the dataset and did not finish within the lock timeout."""


@dataclass
class Staged:
    """One staged table: checked Parquet in ``local``, registered from ``data``.

    For a local root both are the same folder under ``files/``; for an object store
    ``local`` is a temp folder and ``data`` its uploaded copy (``s3://...``).
    """

    local: Path
    data: str
    rows: int
    schema: pa.Schema
    files: list[dict] = field(default_factory=list)  # {"path" (under the data path), "bytes", "sha256"} of each data file


@dataclass
class Staging:
    """One publish's staging: the folder its tables are written under, what is staged so far,
    and ``uploading``: set while an object store's catalog upload has an unknown outcome
    (it may have landed, so its staged files must be kept)."""

    folder: Path
    tables: dict[str, Staged] = field(default_factory=dict)
    uploading: bool = False


class CatalogTransport(ABC):
    """Where one data root keeps its catalogs and files, and how they are read and committed.

    ``hook`` is called with a test phase name (``curation.store.catalog._TEST_HOOK``).
    """

    root: Path | str
    # Whether staged contract files may be symlinks to their sources (see stage.py).
    symlink_staged: bool

    def __init__(self, lock_timeout_s: float, hook: Callable[[str], None]):
        self.lock_timeout_s = lock_timeout_s
        self.hook = hook

    # -- where things are ------------------------------------------------------------------
    @abstractmethod
    def dataset_dir(self, dataset: str) -> Path:
        """The dataset's local folder (an object store has none: it raises)."""

    @abstractmethod
    def location(self, dataset: str) -> str:
        """Where the dataset lives, for messages: a folder or an ``s3://`` URL."""

    @abstractmethod
    def catalog_ref(self, dataset: str) -> str:
        """The catalog's path or URL, for messages."""

    @abstractmethod
    def data_path(self, dataset: str) -> Path | str:
        """DuckLake's data path for the dataset."""

    @abstractmethod
    def datasets(self) -> list[str]:
        """Names of datasets that have a catalog (sorted)."""

    @abstractmethod
    def connect(self, con: duckdb.DuckDBPyConnection) -> None:
        """Give ``con`` access to the data files (no-op for a local root)."""

    # -- reading ---------------------------------------------------------------------------
    @abstractmethod
    def copy_catalog(self, con: duckdb.DuckDBPyConnection, dataset: str, path: Path) -> bool:
        """Write a consistent private copy of the catalog to ``path``; False: there is none."""

    def attach_reader(self, con: duckdb.DuckDBPyConnection, dataset: str, alias: str) -> bool:
        """Attach a consistent read-only view of the catalog as ``alias``; False: there is none.

        A catalog file is copied first and the copy attached, so the reader holds no lock
        on the real one however long it reads (a database catalog overrides this)."""
        tmp = Path(tempfile.mkdtemp(prefix="curate-catalog-"))
        copy = tmp / "catalog.ducklake"
        try:
            if not self.copy_catalog(con, dataset, copy):
                return False
            con.execute(
                f"ATTACH {lit('ducklake:' + str(copy))} AS {ident(alias)} "
                f"(READ_ONLY, DATA_PATH {lit(self.data_path(dataset))}, OVERRIDE_DATA_PATH true)"
            )
            return True
        finally:
            shutil.rmtree(tmp, ignore_errors=True)  # DuckDB keeps the open file; POSIX lets us unlink it

    # -- publishing ------------------------------------------------------------------------
    @abstractmethod
    def staging(self, dataset: str) -> AbstractContextManager[Staging]:
        """One publish's staging area, for the duration of the publish."""

    @abstractmethod
    def place(self, dataset: str, rel: str, folder: Path, rows: int, schema: pa.Schema) -> Staged:
        """Make a staged, checked table folder (``rel`` under the staging folder) readable
        from where the catalog will register it."""

    @abstractmethod
    def commit(self, con: duckdb.DuckDBPyConnection, dataset: str, staging: Staging, transaction: Transaction) -> tuple[dict, int]:
        """Run ``transaction`` on the dataset's catalog so that it lands whole or not at all."""

    def committed(self, staging: Staging) -> None:  # noqa: B027 - a hook most transports need not fill
        """The staged files now belong to a version: forget they were staged (no-op here)."""

    @abstractmethod
    def abandon(self, staging: Staging) -> None:
        """Remove what a failed publish staged, where that is safe."""

    @abstractmethod
    def cleanup_orphans(self, dataset: str, older_than_s: float) -> list[str] | None:
        """Delete unreferenced data files older than ``older_than_s``; None: no catalog."""

    @abstractmethod
    def sweep_dead_publishes(self, dataset: str, *, dry_run: bool = False) -> list[tuple[str, int]]:
        """Remove the staged files of publishes whose process died before its commit (a
        killed ``curate run``); (path, bytes) of each file removed (or, dry, to remove)."""

    @abstractmethod
    def digest(self, dataset: str, path: str) -> tuple[int, str] | None:
        """(bytes, sha256) of one data file (``path`` under the data path); None: missing."""

    # -- files beside the versions ---------------------------------------------------------
    @abstractmethod
    def put_files(self, dataset: str, parts: list[str], src: Path, files: list[Path]) -> str:
        """Copy ``files`` (of the folder ``src``) to ``DATASET/parts``; where they are now."""

    @abstractmethod
    def get_files(self, dataset: str, parts: list[str], dest: str | Path) -> Path | None:
        """A local folder holding ``DATASET/parts``'s files; None when there are none."""

    # -- small files at the root (which catalog the root uses) ------------------------------
    @abstractmethod
    def read_root_file(self, name: str) -> bytes | None:
        """The bytes of ``ROOT/name``; None when there is no such file."""

    @abstractmethod
    def create_root_file(self, name: str, data: bytes) -> bool:
        """Write ``ROOT/name`` unless it exists (atomically); False: it already existed."""

    # -- shared ----------------------------------------------------------------------------
    def busy(self, dataset: str) -> DatasetBusy:
        return DatasetBusy(
            f"dataset {dataset!r} is being written by another process (waited {self.lock_timeout_s:g} s for "
            f"{self.catalog_ref(dataset)}); retry when that publish has finished"
        )

    def attach_sql(self, dataset: str, catalog: Path, lake: str) -> str:
        """Attach a catalog file read-write, as a publish does (no data inlining: every row
        lives in the Parquet files)."""
        return (
            f"ATTACH {lit('ducklake:' + str(catalog))} AS {lake} "
            f"(DATA_PATH {lit(self.data_path(dataset))}, OVERRIDE_DATA_PATH true, DATA_INLINING_ROW_LIMIT 0)"
        )

    @staticmethod
    def delete_orphans(con: duckdb.DuckDBPyConnection, lake: str, older_than_s: float) -> list[str]:
        """DuckLake's own orphan cleanup on the catalog attached as ``lake``; the deleted paths."""
        cutoff = datetime.now(timezone.utc).timestamp() - older_than_s
        rows = con.execute(f"CALL ducklake_delete_orphaned_files({lit(lake)}, older_than => to_timestamp(?))", [cutoff]).fetchall()
        return [r[0] for r in rows]


def unreferenced_files(con: duckdb.DuckDBPyConnection, lake: str) -> set[str]:
    """Resolved paths of the data files no snapshot of the catalog attached as ``lake``
    references (DuckLake's own orphan listing, in a dry run)."""
    rows = con.execute(f"CALL ducklake_delete_orphaned_files({lit(lake)}, dry_run => true, cleanup_all => true)")
    return {str(Path(r[0]).resolve()) for r in rows.fetchall()}
