"""A data root that is a local folder: ``ROOT/datasets/NAME/catalog.ducklake`` beside its
``files/``, kept safe by DuckDB's own file locks.

DuckDB holds an exclusive file lock on a catalog attached read-write and a shared one on a
catalog attached READ_ONLY. A publisher takes the exclusive lock only for its short commit
(the data is staged in place under ``files/`` first, with no lock held); a lock that is busy
is retried until ``lock_timeout_s``, then the publish raises ``DatasetBusy`` (retryable).

Why readers copy the catalog: a reader that kept the catalog attached, even READ_ONLY,
would block publishers for as long as it reads (a notebook connection, a slow scan). Readers
take the shared lock only long enough to copy the small catalog file, then attach the copy
READ_ONLY; data files are immutable, so the copy stays a consistent snapshot.

fcntl locks do not exclude threads of one process, so writers in one process also
serialise on a per-catalog thread lock.
"""

from __future__ import annotations

import os
import random
import shutil
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import duckdb
import pyarrow as pa

from curation import owners
from curation.errors import ConfigError
from curation.files import file_digest
from curation.sources import DATASET_NAME
from curation.store.duck import detach, is_lock_error, lit, new_alias, open_duckdb
from curation.store.names import RESERVED_DATASETS, check_name
from curation.store.transport import CatalogTransport, Staged, Staging, Transaction, unreferenced_files

_THREAD_LOCKS: dict[str, threading.Lock] = {}
_THREAD_LOCKS_GUARD = threading.Lock()


class LocalCatalog(CatalogTransport):
    """Catalogs and files in a local folder; publishers exclude each other with file locks."""

    # Staged files stay under files/ as the version's data, so they must not point at
    # sources that may be deleted: hard links or copies, never symlinks.
    symlink_staged = False

    def __init__(self, root: Path, lock_timeout_s: float, hook: Callable[[str], None]):
        super().__init__(lock_timeout_s, hook)
        self.root: Path = root

    # -- where things are ------------------------------------------------------------------
    def dataset_dir(self, dataset: str) -> Path:
        check_name(dataset)
        base = (self.root / "datasets").resolve()
        d = (base / dataset).resolve()
        if d.parent != base:  # belt and braces: the regex already forbids '/' and '..'
            raise ConfigError(f"invalid dataset name {dataset!r}: resolves outside {base}")
        return d

    def location(self, dataset: str) -> str:
        return str(self.dataset_dir(dataset))

    def catalog(self, dataset: str) -> Path:
        return self.dataset_dir(dataset) / "catalog.ducklake"

    def catalog_ref(self, dataset: str) -> str:
        return str(self.catalog(dataset))

    def files(self, dataset: str) -> Path:
        return self.dataset_dir(dataset) / "files"

    def data_path(self, dataset: str) -> Path:
        return self.files(dataset)

    def datasets(self) -> list[str]:
        base = self.root / "datasets"
        if not base.is_dir():
            return []
        resolved = base.resolve()
        # a dataset folder or catalog symlinked out of the root is not listed (dataset_dir refuses it)
        names = (p.parent.name for p in base.glob("*/catalog.ducklake") if p.resolve().parent.parent == resolved)
        return sorted(n for n in names if DATASET_NAME.match(n) and n not in RESERVED_DATASETS)

    def connect(self, con: duckdb.DuckDBPyConnection) -> None:
        """Local files need no setup."""

    # -- reading ---------------------------------------------------------------------------
    def copy_catalog(self, con: duckdb.DuckDBPyConnection, dataset: str, path: Path) -> bool:
        """Copy the catalog (and its WAL) to ``path`` holding the shared lock only meanwhile."""
        catalog = self.catalog(dataset)
        if not catalog.exists():
            return False

        def snapshot() -> None:
            locker = new_alias()
            con.execute(f"ATTACH {lit(catalog)} AS {locker} (READ_ONLY)")  # the shared lock
            try:
                shutil.copyfile(catalog, path)
                wal = catalog.with_name(catalog.name + ".wal")
                if wal.exists():
                    shutil.copyfile(wal, path.with_name(path.name + ".wal"))
            finally:
                detach(con, locker)

        deadline = time.monotonic() + self.lock_timeout_s
        with self._thread_lock(dataset, deadline):
            self._retry(dataset, deadline, snapshot)
        return True

    # -- publishing ------------------------------------------------------------------------
    @contextmanager
    def staging(self, dataset: str) -> Iterator[Staging]:
        """Tables are staged in place under ``files/``: the commit then only registers them."""
        folder = self.files(dataset)
        folder.mkdir(parents=True, exist_ok=True)
        yield Staging(folder)

    def place(self, dataset: str, rel: str, folder: Path, rows: int, schema: pa.Schema) -> Staged:
        """The staged files stay where they are, read-only from now on (a published version's
        files never change; ``curate datasets verify`` checks they did not). The folder records
        its publisher, so a killed publish's files are found (``sweep_dead_publishes``)."""
        for f in folder.glob("*.parquet"):
            f.chmod(0o444)
        return Staged(folder, str(folder), rows, schema)

    def commit(self, con: duckdb.DuckDBPyConnection, dataset: str, staging: Staging, transaction: Transaction) -> tuple[dict, int]:
        """The short critical section: register the staged files as one snapshot."""
        deadline = time.monotonic() + self.lock_timeout_s
        lake = new_alias()
        attach = self.attach_sql(dataset, self.catalog(dataset), lake)
        with self._thread_lock(dataset, deadline):
            if not self.catalog(dataset).exists():
                self._create_catalog(con, dataset)
            self._retry(dataset, deadline, lambda: con.execute(attach))
            try:
                result = transaction(con, lake)
            finally:
                detach(con, lake)
        self.committed(staging)
        return result

    def committed(self, staging: Staging) -> None:
        """The staged files belong to the version now, not to this process."""
        for s in staging.tables.values():
            if not s.rows:  # an empty table has no data file; drop the empty staged one
                shutil.rmtree(s.local, ignore_errors=True)
            else:
                (s.local / owners.OWNER_FILE).unlink(missing_ok=True)

    def _create_catalog(self, con: duckdb.DuckDBPyConnection, dataset: str) -> None:
        """A new dataset's catalog, initialised under a temporary name and hard-linked into place.

        DuckLake writes its metadata tables when it first attaches a catalog; a publish killed
        then would leave a catalog without them, which every reader (and so every rerun)
        rejects. Linking never replaces a catalog another publisher created meanwhile."""
        catalog = self.catalog(dataset)
        tmp = catalog.with_name(f".{catalog.name}.{uuid.uuid4().hex}.tmp")
        lake = new_alias()
        try:
            con.execute(self.attach_sql(dataset, tmp, lake))
            detach(con, lake)
            self.hook("catalog_created")
            try:
                os.link(tmp, catalog)
            except FileExistsError:
                pass
        finally:
            for leftover in (tmp, tmp.with_name(tmp.name + ".wal")):
                leftover.unlink(missing_ok=True)

    def abandon(self, staging: Staging) -> None:
        for s in staging.tables.values():
            shutil.rmtree(s.local, ignore_errors=True)

    def cleanup_orphans(self, dataset: str, older_than_s: float) -> list[str]:
        ddir = self.dataset_dir(dataset)
        con, lake = open_duckdb(), new_alias()  # a writer: private database (see duck.reader_cursor)
        deadline = time.monotonic() + self.lock_timeout_s
        try:
            with self._thread_lock(dataset, deadline):
                self._retry(
                    dataset,
                    deadline,
                    lambda: con.execute(
                        f"ATTACH {lit('ducklake:' + str(ddir / 'catalog.ducklake'))} AS {lake} "
                        f"(DATA_PATH {lit(self.files(dataset))}, OVERRIDE_DATA_PATH true)"
                    ),
                )
                deleted = self.delete_orphans(con, lake, older_than_s)
        finally:
            detach(con, lake)
            con.close()
        for d in sorted((self.files(dataset) / "main").glob("*/staged-*"), reverse=True):
            if d.is_dir() and not any(d.iterdir()):
                d.rmdir()
        return deleted

    def sweep_dead_publishes(self, dataset: str, *, dry_run: bool = False) -> list[tuple[str, int]]:
        return self.sweep_staged(dataset, self._unreferenced, dry_run=dry_run)

    def sweep_staged(self, dataset: str, unreferenced: Callable[[str], set[str] | None], *, dry_run: bool = False) -> list[tuple[str, int]]:
        """A staged folder whose publisher is gone was either never committed (its files are
        orphans: removed) or committed just before the kill (its files are the version's:
        only the owner record goes). The catalog decides which: ``unreferenced(dataset)`` is
        the set of resolved paths no snapshot references (None: no catalog yet)."""
        dead = [d for d in sorted((self.files(dataset) / "main").glob("*/staged-*")) if d.is_dir() and owners.abandoned(d)]
        if not dead:
            return []
        orphans = unreferenced(dataset)
        removed: list[tuple[str, int]] = []
        for d in dead:
            files = [f for f in d.iterdir() if f.name != owners.OWNER_FILE]
            if orphans is None or all(str(f.resolve()) in orphans for f in files if f.suffix == ".parquet"):
                removed += [(str(f), f.stat().st_size) for f in files]
                if not dry_run:
                    shutil.rmtree(d, ignore_errors=True)
            elif not dry_run:
                (d / owners.OWNER_FILE).unlink(missing_ok=True)
        return removed

    def _unreferenced(self, dataset: str) -> set[str] | None:
        """``ducklake_delete_orphaned_files`` in a dry run lists every file no snapshot references."""
        catalog = self.catalog(dataset)
        if not catalog.exists():
            return None
        con, lake = open_duckdb(), new_alias()
        deadline = time.monotonic() + self.lock_timeout_s
        try:
            with self._thread_lock(dataset, deadline):
                self._retry(dataset, deadline, lambda: con.execute(self.attach_sql(dataset, catalog, lake)))
                return unreferenced_files(con, lake)
        finally:
            detach(con, lake)
            con.close()

    def digest(self, dataset: str, path: str) -> tuple[int, str] | None:
        try:
            return file_digest(self.files(dataset) / path)
        except FileNotFoundError:
            return None

    # -- files beside the versions ---------------------------------------------------------
    def put_files(self, dataset: str, parts: list[str], src: Path, files: list[Path]) -> str:
        """A no-op when ``src`` is already that folder."""
        dest = self.dataset_dir(dataset).joinpath(*parts)
        if dest.resolve() != src.resolve():
            dest.mkdir(parents=True, exist_ok=True)
            for p in files:
                shutil.copy2(p, dest / p.name)
        return str(dest)

    def get_files(self, dataset: str, parts: list[str], dest: str | Path) -> Path | None:
        """The store's own folder: nothing is copied."""
        d = self.dataset_dir(dataset).joinpath(*parts)
        return d if d.is_dir() and any(d.iterdir()) else None

    # -- small files at the root ---------------------------------------------------------
    def read_root_file(self, name: str) -> bytes | None:
        try:
            return (self.root / name).read_bytes()
        except FileNotFoundError:
            return None

    def create_root_file(self, name: str, data: bytes) -> bool:
        """Written under a temporary name and hard-linked into place: never half a file, and
        never over one another process created meanwhile."""
        self.root.mkdir(parents=True, exist_ok=True)
        tmp = self.root / f".{name}.{uuid.uuid4().hex}.tmp"
        try:
            tmp.write_bytes(data)
            os.link(tmp, self.root / name)
            return True
        except FileExistsError:
            return False
        finally:
            tmp.unlink(missing_ok=True)

    # -- locking ---------------------------------------------------------------------------
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
                    raise self.busy(dataset) from None
                time.sleep(min(left, delay * random.uniform(0.5, 1.0)))
                delay = min(delay * 2, 0.5)

    @contextmanager
    def _thread_lock(self, dataset: str, deadline: float) -> Iterator[None]:
        key = str(self.catalog(dataset))
        with _THREAD_LOCKS_GUARD:
            lock = _THREAD_LOCKS.setdefault(key, threading.Lock())
        if not lock.acquire(timeout=max(0.0, deadline - time.monotonic())):
            raise self.busy(dataset)
        try:
            yield
        finally:
            lock.release()
