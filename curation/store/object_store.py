"""A data root in an object store (``DatasetStore("s3://bucket/prefix")``, any S3-compatible
server), kept safe by conditional writes of the catalog object.

The format stays DuckLake: the same catalog tables and Parquet files, read by DuckDB (httpfs)
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

import hashlib
import random
import shutil
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import duckdb
import pyarrow as pa

from curation.errors import CurationError
from curation.sources import DATASET_NAME
from curation.store import s3 as objectstore
from curation.store.duck import detach, ident, new_alias, open_duckdb
from curation.store.names import RESERVED_DATASETS, check_name
from curation.store.transport import CatalogTransport, Staged, Staging, Transaction


class ObjectStoreCatalog(CatalogTransport):
    """Catalogs and files in a bucket; publishers commit with conditional writes."""

    # The staging folder is a temp folder that is uploaded and deleted before the sources
    # are, so links to the sources are enough (and work across file systems).
    symlink_staged = True

    def __init__(self, remote: objectstore.S3Root, lock_timeout_s: float, hook: Callable[[str], None]):
        super().__init__(lock_timeout_s, hook)
        self.remote = remote
        self.root: str = str(remote)

    @property
    def bucket(self) -> objectstore.Bucket:
        return objectstore.Bucket(self.remote)

    # -- where things are ------------------------------------------------------------------
    def dataset_dir(self, dataset: str) -> Path:
        check_name(dataset)
        raise CurationError(f"{self.location(dataset)} is in an object store, not a local folder")

    def location(self, dataset: str) -> str:
        return self.remote.url("datasets", check_name(dataset))

    def catalog_key(self, dataset: str) -> str:
        return self.remote.key("datasets", check_name(dataset), "catalog.ducklake.gz")

    def catalog_ref(self, dataset: str) -> str:
        return f"s3://{self.remote.bucket}/{self.catalog_key(dataset)}"

    def data_path(self, dataset: str) -> str:
        """Ends in '/': keys are not folders."""
        return self.remote.url("datasets", check_name(dataset), "files") + "/"

    def datasets(self) -> list[str]:
        names = self.bucket.folders(self.remote.key("datasets"))
        ok = [n for n in names if DATASET_NAME.match(n) and n not in RESERVED_DATASETS]
        return sorted(n for n in ok if self.bucket.exists(self.catalog_key(n)))

    def connect(self, con: duckdb.DuckDBPyConnection) -> None:
        """DuckDB reads and writes the data files itself, through httpfs."""
        objectstore.configure_duckdb(con, self.remote)

    def _key_of(self, url: str) -> str:
        return url.removeprefix(f"s3://{self.remote.bucket}/")

    # -- reading ---------------------------------------------------------------------------
    def copy_catalog(self, con: duckdb.DuckDBPyConnection, dataset: str, path: Path) -> bool:
        """Objects are replaced atomically: a plain download is a consistent copy."""
        return self._download_catalog(dataset, path) is not None

    def _download_catalog(self, dataset: str, path: Path) -> str | None:
        """Write the catalog object's DuckDB file to ``path``; its ETag (None: no catalog)."""
        got = self.bucket.get(self.catalog_key(dataset))
        if got is None:
            return None
        try:
            path.write_bytes(objectstore.unpack(got[0]))
        except (OSError, EOFError, ValueError) as err:  # gzip.BadGzipFile is an OSError
            raise CurationError(f"catalog {self.catalog_ref(dataset)} is not a gzipped DuckLake catalog ({err})") from None
        return got[1]

    # -- publishing ------------------------------------------------------------------------
    @contextmanager
    def staging(self, dataset: str) -> Iterator[Staging]:
        """Tables are staged and checked in a local temp folder, removed when the publish ends."""
        folder = Path(tempfile.mkdtemp(prefix="curate-stage-"))
        try:
            yield Staging(folder)
        finally:
            shutil.rmtree(folder, ignore_errors=True)

    def place(self, dataset: str, rel: str, folder: Path, rows: int, schema: pa.Schema) -> Staged:
        """Upload the staged table under ``files/`` (no lock held: nothing refers to it yet)."""
        data = f"{self.data_path(dataset)}{rel}"
        if rows:  # an empty table needs no data file: its schema comes from the local copy
            for p in sorted(folder.glob("*.parquet")):
                self.bucket.upload(p, f"{self._key_of(data)}/{p.name}")
        return Staged(folder, data, rows, schema)

    def commit(self, con: duckdb.DuckDBPyConnection, dataset: str, staging: Staging, transaction: Transaction) -> tuple[dict, int]:
        """Optimistic commit: the transaction on a downloaded copy, uploaded only if the catalog
        object is still the one downloaded; else again on top of the newer one."""
        key = self.catalog_key(dataset)
        deadline = time.monotonic() + self.lock_timeout_s
        delay = 0.05
        while True:
            tmp = Path(tempfile.mkdtemp(prefix="curate-catalog-"))
            try:
                catalog = tmp / "catalog.ducklake"
                etag = self._download_catalog(dataset, catalog)
                lake = new_alias()
                con.execute(self.attach_sql(dataset, catalog, lake))
                try:
                    result = transaction(con, lake)
                    con.execute(f"CHECKPOINT {ident('__ducklake_metadata_' + lake)}")
                finally:
                    detach(con, lake)
                if catalog.with_name(catalog.name + ".wal").exists():  # never upload half a catalog
                    raise CurationError(f"cannot publish {dataset}: the catalog was not checkpointed; nothing was published")
                staging.uploading = True
                if self.bucket.put_if(key, objectstore.pack(catalog.read_bytes()), etag):
                    return result
                staging.uploading = False  # refused: another publisher committed first
            finally:
                shutil.rmtree(tmp, ignore_errors=True)
            left = deadline - time.monotonic()
            if left <= 0:
                raise self.busy(dataset)
            time.sleep(min(left, delay * random.uniform(0.5, 1.0)))
            delay = min(delay * 2, 1.0)

    def abandon(self, staging: Staging) -> None:
        """Best effort: a killed process leaves its staged files for ``cleanup_orphans``. An
        upload that failed midway may have landed, so then its files are kept."""
        if staging.uploading:
            return
        try:
            self.bucket.delete([k for s in staging.tables.values() if s.rows for k in self.bucket.keys(self._key_of(s.data) + "/")])
        except CurationError:
            pass

    def cleanup_orphans(self, dataset: str, older_than_s: float) -> list[str] | None:
        """DuckLake lists and deletes the orphans through httpfs, on a downloaded catalog copy
        (deleting files changes no metadata, so nothing is uploaded)."""
        con, lake = open_duckdb(), new_alias()  # attached read-write: private database (see duck.reader_cursor)
        tmp = Path(tempfile.mkdtemp(prefix="curate-catalog-"))
        try:
            self.connect(con)
            if self._download_catalog(dataset, tmp / "catalog.ducklake") is None:
                return None
            con.execute(self.attach_sql(dataset, tmp / "catalog.ducklake", lake))
            return self.delete_orphans(con, lake, older_than_s)
        except duckdb.Error as err:
            raise CurationError(f"cannot clean up {self.location(dataset)}: {err}") from None
        finally:
            detach(con, lake)
            con.close()
            shutil.rmtree(tmp, ignore_errors=True)

    def sweep_dead_publishes(self, dataset: str, *, dry_run: bool = False) -> list[tuple[str, int]]:
        """Staged objects carry no owner record: a killed publish's files go with the age-based
        ``cleanup_orphans`` (``curate gc``), which leaves files younger than an hour alone."""
        return []

    def digest(self, dataset: str, path: str) -> tuple[int, str] | None:
        got = self.bucket.get(self._key_of(f"{self.data_path(dataset)}{path}"))
        if got is None:
            return None
        return len(got[0]), hashlib.sha256(got[0]).hexdigest()

    # -- small files at the root ---------------------------------------------------------
    def read_root_file(self, name: str) -> bytes | None:
        got = self.bucket.get(self.remote.key(name))
        return None if got is None else got[0]

    def create_root_file(self, name: str, data: bytes) -> bool:
        return self.bucket.put_if(self.remote.key(name), data, None)

    # -- files beside the versions ---------------------------------------------------------
    def put_files(self, dataset: str, parts: list[str], src: Path, files: list[Path]) -> str:
        for p in files:
            self.bucket.upload(p, self.remote.key("datasets", check_name(dataset), *parts, p.name))
        return self.remote.url("datasets", dataset, *parts)

    def get_files(self, dataset: str, parts: list[str], dest: str | Path) -> Path | None:
        """Downloads the files into ``dest``."""
        prefix = self.remote.key("datasets", check_name(dataset), *parts) + "/"
        keys = [k for k in self.bucket.keys(prefix) if "/" not in k[len(prefix) :]]
        if not keys:
            return None
        out = Path(dest)
        out.mkdir(parents=True, exist_ok=True)
        for k in keys:
            self.bucket.download(k, out / k[len(prefix) :])
        return out
