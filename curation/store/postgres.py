"""DuckLake catalogs kept in PostgreSQL: many publishers on one store, with real transactions.

A data root bound to PostgreSQL (``ROOT/catalog.json``; see ``curation.store.binding``)
keeps each dataset's DuckLake metadata in its own PostgreSQL schema, named from the root's
namespace and the dataset name, and lists its datasets in ``NAMESPACE.datasets``. The
Parquet data files stay where the root is (a local folder or ``s3://``), handled by the
root's own transport (``files``): staging, placing, digests and report files are its
business, exactly as with a file catalog.

Why a lock on top of PostgreSQL's transactions: DuckLake commits concurrent writers
optimistically, but two publishes of one dataset both replace the same tables, which
DuckLake can only report as a conflict. So a publish takes ``pg_advisory_lock`` on its
dataset (PostgreSQL's own lock manager: the server releases it when the publisher's
connection ends, a kill -9 included) for the short metadata commit, and the commit itself is
one PostgreSQL transaction: a publisher killed, or a server restarted, before COMMIT leaves
nothing behind but staged files no version references (swept like a file catalog's).

Readers attach the catalog READ_ONLY in place (PostgreSQL runs their reads in read-only
transactions; MVCC lets a long read block no publisher), so no catalog copy is needed.

Credentials: ``CURATE_PG_DSN`` (a libpq conninfo string or a ``postgresql://`` URI) and/or
libpq's own ``PG*`` variables (``PGHOST``, ``PGPORT``, ``PGUSER``, ``PGPASSWORD``,
``PGDATABASE``, ``PGPASSFILE``, ``PGSSLMODE``). DuckDB gets them as an in-memory secret
(shown redacted by ``duckdb_secrets()``), never inside an ATTACH string; every message
naming the server says only ``user@host:port/database``, and error texts from the driver are
scrubbed of the password and the DSN before anyone sees them.
"""

from __future__ import annotations

import hashlib
import os
import re
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import duckdb
import pyarrow as pa

from curation.errors import CurationError
from curation.store.duck import detach, ident, lit, load_postgres, new_alias, open_duckdb
from curation.store.local import LocalCatalog
from curation.store.names import check_name
from curation.store.transport import CatalogTransport, DatasetBusy, Staged, Staging, Transaction, unreferenced_files

ENV_DSN = "CURATE_PG_DSN"
SECRET = "curate_pg_catalog"
CONNECT_TIMEOUT_S = 10
# What the driver says when the server went away (restart, network): worth a retry.
LOST = re.compile(
    r"server closed the connection|connection to server|terminating connection|connection refused|could not connect|"
    r"no connection to the server|database system is (shutting down|starting up|in recovery)|SSL SYSCALL|"
    r"connection (is )?(lost|closed|bad)|broken pipe|Unable to connect to Postgres",
    re.IGNORECASE,
)


class CatalogUnavailable(DatasetBusy):
    """The PostgreSQL server holding the catalog cannot be reached (down, restarting, wrong
    address or credentials). Nothing was changed; retry when it is back."""


@dataclass(frozen=True)
class PgSettings:
    """Where the catalog server is, as libpq resolved it (``CURATE_PG_DSN`` and ``PG*``)."""

    host: str
    port: int
    dbname: str
    user: str
    password: str | None = field(default=None, repr=False)
    dsn: str = field(default="", repr=False)

    @property
    def where(self) -> str:
        """For messages: never the password."""
        return f"{self.user}@{self.host}:{self.port}/{self.dbname}"

    def redact(self, text: str) -> str:
        return redact(text, self.dsn, self.password)


def redact(text: str, *secrets: str | None) -> str:
    """``text`` with the DSN, the password and any ``password=...`` / URI password removed."""
    for s in sorted((s for s in secrets if s), key=len, reverse=True):
        text = text.replace(s, "***")
    text = re.sub(r"(password\s*=\s*)('[^']*'|\S+)", r"\1***", text, flags=re.IGNORECASE)
    return re.sub(r"(postgres(?:ql)?://[^:/@\s]+:)[^@\s]+@", r"\1***@", text)


def _env_key() -> tuple:
    return tuple(sorted((k, v) for k, v in os.environ.items() if k == ENV_DSN or k.startswith("PG")))


_SETTINGS: dict[tuple, PgSettings] = {}


def pg_connect(*, autocommit: bool = True):  # -> psycopg.Connection (imported lazily: only PostgreSQL roots need it)
    """A psycopg connection from ``CURATE_PG_DSN`` and the ``PG*`` variables, or
    ``CatalogUnavailable`` saying where it tried and why (scrubbed)."""
    import psycopg

    dsn = os.environ.get(ENV_DSN, "")
    try:
        return psycopg.connect(dsn, autocommit=autocommit, connect_timeout=CONNECT_TIMEOUT_S, application_name="curate")
    except psycopg.Error as err:
        first = redact(str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__, dsn, os.environ.get("PGPASSWORD"))
        raise CatalogUnavailable(
            f"cannot reach the PostgreSQL catalog ({_target_hint()}): {first}. Set {ENV_DSN} (a libpq conninfo or "
            "postgresql:// URI) or PGHOST/PGPORT/PGUSER/PGPASSWORD/PGDATABASE; nothing was changed, retry when it is up"
        ) from None


def _target_hint() -> str:
    if os.environ.get(ENV_DSN):
        return f"from {ENV_DSN}"
    parts = [f"{k}={os.environ[k]}" for k in ("PGHOST", "PGPORT", "PGDATABASE", "PGUSER") if os.environ.get(k)]
    return "from " + ", ".join(parts) if parts else f"{ENV_DSN} and PGHOST are not set: libpq's defaults"


def settings() -> PgSettings:
    """The resolved connection settings (one connection the first time, per environment)."""
    key = _env_key()
    if key not in _SETTINGS:
        with pg_connect() as conn:
            info = conn.info
            _SETTINGS[key] = PgSettings(info.host, int(info.port), info.dbname, info.user, info.password, os.environ.get(ENV_DSN, ""))
    return _SETTINGS[key]


def create_secret(con: duckdb.DuckDBPyConnection, s: PgSettings) -> None:
    """The connection as an in-memory DuckDB secret (DuckDB shows it redacted)."""
    load_postgres(con)
    password = f", PASSWORD {lit(s.password)}" if s.password else ""
    con.execute(
        f"CREATE OR REPLACE SECRET {SECRET} (TYPE postgres, HOST {lit(s.host)}, PORT {int(s.port)}, "
        f"DATABASE {lit(s.dbname)}, USER {lit(s.user)}{password})"
    )


def _alive(pg) -> bool:  # noqa: ANN001 - psycopg.Connection
    """Whether the lock connection still reaches the server (a restart terminates it)."""
    try:
        pg.execute("SELECT 1")
        return True
    except Exception:  # noqa: BLE001 - any failure means it does not
        return False


class PostgresCatalog(CatalogTransport):
    """Each dataset's DuckLake catalog in a PostgreSQL schema; data files with ``files``."""

    def __init__(self, files: CatalogTransport, namespace: str, lock_timeout_s: float, hook: Callable[[str], None]):
        super().__init__(lock_timeout_s, hook)
        self.files = files
        self.namespace = namespace
        self.root = files.root
        self.symlink_staged = files.symlink_staged

    # -- where things are (the data files are the root transport's) ------------------------
    def dataset_dir(self, dataset: str) -> Path:
        return self.files.dataset_dir(dataset)

    def location(self, dataset: str) -> str:
        return self.files.location(dataset)

    def data_path(self, dataset: str) -> Path | str:
        return self.files.data_path(dataset)

    def connect(self, con: duckdb.DuckDBPyConnection) -> None:
        self.files.connect(con)

    def schema(self, dataset: str) -> str:
        """The dataset's PostgreSQL schema: readable, unique, within PostgreSQL's 63 bytes."""
        check_name(dataset)
        digest = hashlib.sha256(dataset.encode()).hexdigest()[:8]
        return f"{self.namespace}_{dataset[:24].replace('-', '_')}_{digest}"

    def catalog_ref(self, dataset: str) -> str:
        try:
            where = settings().where
        except CurationError:
            where = "PostgreSQL"
        return f"postgresql://{where} schema {self.schema(dataset)}"

    def datasets(self) -> list[str]:
        with self._pg() as pg:
            if not self._table_exists(pg, self.namespace, "datasets"):
                return []
            rows = pg.execute(
                f"SELECT name FROM {ident(self.namespace)}.datasets "
                "WHERE to_regclass(quote_ident(metadata_schema) || '.ducklake_snapshot') IS NOT NULL ORDER BY name"
            ).fetchall()
        return [r[0] for r in rows]

    # -- reading ---------------------------------------------------------------------------
    def copy_catalog(self, con: duckdb.DuckDBPyConnection, dataset: str, path: Path) -> bool:
        raise CurationError("a PostgreSQL catalog is read in place, not copied")

    def attach_reader(self, con: duckdb.DuckDBPyConnection, dataset: str, alias: str) -> bool:
        """READ_ONLY in place; False when the dataset has no catalog yet."""
        if dataset not in self.datasets():
            return False
        self._attach(con, dataset, alias, read_only=True)
        return True

    def _attach(self, con: duckdb.DuckDBPyConnection, dataset: str, alias: str, *, read_only: bool) -> None:
        s = settings()
        try:
            create_secret(con, s)
            mode = "READ_ONLY, " if read_only else "DATA_INLINING_ROW_LIMIT 0, "
            con.execute(
                f"ATTACH 'ducklake:postgres:' AS {ident(alias)} ({mode}METADATA_SCHEMA {lit(self.schema(dataset))}, "
                f"METADATA_PARAMETERS MAP {{'SECRET': {lit(SECRET)}}}, DATA_PATH {lit(self.data_path(dataset))}, "
                "OVERRIDE_DATA_PATH true)"
            )
        except duckdb.Error as err:
            raise self._failure(f"cannot open the catalog of {dataset!r}", err) from None

    # -- publishing ------------------------------------------------------------------------
    def staging(self, dataset: str):  # noqa: ANN201 - the root transport's context manager
        return self.files.staging(dataset)

    def place(self, dataset: str, rel: str, folder: Path, rows: int, schema: pa.Schema) -> Staged:
        return self.files.place(dataset, rel, folder, rows, schema)

    def commit(self, con: duckdb.DuckDBPyConnection, dataset: str, staging: Staging, transaction: Transaction) -> tuple[dict, int]:
        """The metadata commit under the dataset's advisory lock, as one PostgreSQL transaction."""
        lake = new_alias()
        with self._pg() as pg:
            self._register(pg, dataset)
            ready = self._table_exists(pg, self.schema(dataset), "ducklake_snapshot")  # DuckLake made its tables
            try:
                if ready:  # attaching takes ~0.3 s: done before the lock, so publishers queue only for the commit
                    self._attach(con, dataset, lake, read_only=False)
                self._lock(pg, dataset)
                if not ready:  # DuckLake creates its tables on the first attach: one publisher at a time
                    self._attach(con, dataset, lake, read_only=False)
                    self.hook("catalog_created")
                try:
                    result = transaction(con, lake)
                except CurationError as err:
                    if LOST.search(str(err)) or not _alive(pg):  # the server went away under the transaction
                        staging.uploading = True  # the COMMIT's outcome is unknown: leave the files to the sweep
                        raise self._failure(f"cannot publish {dataset}", err, lost=True) from None
                    raise
            finally:
                detach(con, lake)
        # closing the connection released the lock
        self.files.committed(staging)
        return result

    def abandon(self, staging: Staging) -> None:
        """A publish whose COMMIT may have landed keeps its files (the sweep decides later)."""
        if not staging.uploading:
            self.files.abandon(staging)

    def cleanup_orphans(self, dataset: str, older_than_s: float) -> list[str] | None:
        if dataset not in self.datasets():
            return None
        with self._writer(dataset) as (con, lake):
            return self.delete_orphans(con, lake, older_than_s)

    def sweep_dead_publishes(self, dataset: str, *, dry_run: bool = False) -> list[tuple[str, int]]:
        if isinstance(self.files, LocalCatalog):
            return self.files.sweep_staged(check_name(dataset), self._unreferenced, dry_run=dry_run)
        return self.files.sweep_dead_publishes(dataset, dry_run=dry_run)

    def _unreferenced(self, dataset: str) -> set[str] | None:
        if dataset not in self.datasets():
            return None
        with self._writer(dataset) as (con, lake):
            return unreferenced_files(con, lake)

    @contextmanager
    def _writer(self, dataset: str) -> Iterator[tuple[duckdb.DuckDBPyConnection, str]]:
        """A private DuckDB with the catalog attached read-write (DuckLake's orphan listing
        and deletion need it; they change no metadata)."""
        con, lake = open_duckdb(), new_alias()
        try:
            self.files.connect(con)
            self._attach(con, dataset, lake, read_only=False)
            yield con, lake
        except duckdb.Error as err:
            raise self._failure(f"cannot clean up {dataset!r}", err) from None
        finally:
            detach(con, lake)
            con.close()

    def digest(self, dataset: str, path: str) -> tuple[int, str] | None:
        return self.files.digest(dataset, path)

    # -- files beside the versions and at the root ---------------------------------------------
    def put_files(self, dataset: str, parts: list[str], src: Path, files: list[Path]) -> str:
        return self.files.put_files(dataset, parts, src, files)

    def get_files(self, dataset: str, parts: list[str], dest: str | Path) -> Path | None:
        return self.files.get_files(dataset, parts, dest)

    def read_root_file(self, name: str) -> bytes | None:
        return self.files.read_root_file(name)

    def create_root_file(self, name: str, data: bytes) -> bool:
        return self.files.create_root_file(name, data)

    # -- PostgreSQL ------------------------------------------------------------------------
    @contextmanager
    def _pg(self) -> Iterator:
        """A psycopg connection; driver errors become one scrubbed, retryable line."""
        import psycopg

        conn = pg_connect()
        try:
            yield conn
        except psycopg.Error as err:
            raise self._failure("PostgreSQL catalog", err) from None
        finally:
            conn.close()

    @staticmethod
    def _table_exists(pg, schema: str, table: str) -> bool:  # noqa: ANN001 - psycopg.Connection
        return pg.execute("SELECT to_regclass(%s) IS NOT NULL", [f"{ident(schema)}.{table}"]).fetchone()[0]

    def _register(self, pg, dataset: str) -> bool:  # noqa: ANN001
        """Record the dataset in the namespace's registry (creating both once); True when new.

        One transaction under a transaction-level advisory lock: concurrent ``CREATE ... IF NOT
        EXISTS`` of one name can still fail in PostgreSQL with a unique violation."""
        ns = ident(self.namespace)
        with pg.transaction():
            pg.execute("SELECT pg_advisory_xact_lock(hashtextextended(%s, 0))", [f"curate:register:{self.namespace}"])
            pg.execute(f"CREATE SCHEMA IF NOT EXISTS {ns}")
            pg.execute(
                f"CREATE TABLE IF NOT EXISTS {ns}.datasets "
                "(name text PRIMARY KEY, metadata_schema text UNIQUE NOT NULL, created_at timestamptz NOT NULL DEFAULT now())"
            )
            pg.execute(f"CREATE SCHEMA IF NOT EXISTS {ident(self.schema(dataset))}")
            cur = pg.execute(
                f"INSERT INTO {ns}.datasets (name, metadata_schema) VALUES (%s, %s) ON CONFLICT (name) DO NOTHING",
                [dataset, self.schema(dataset)],
            )
            return cur.rowcount == 1

    def _lock(self, pg, dataset: str) -> None:  # noqa: ANN001 - psycopg.Connection
        """Take the dataset's advisory lock on ``pg``, waiting up to ``lock_timeout_s`` (then
        ``DatasetBusy``). It is held until the connection closes, which the server also does
        when this process dies."""
        import psycopg

        try:
            pg.execute(f"SET lock_timeout = {max(1, int(self.lock_timeout_s * 1000))}")
            pg.execute("SELECT pg_advisory_lock(hashtextextended(%s, 0))", [f"curate:{self.schema(dataset)}"])
        except psycopg.errors.LockNotAvailable:
            raise self.busy(dataset) from None

    def _failure(self, what: str, err: BaseException, *, lost: bool = False) -> CurationError:
        """One scrubbed line; retryable (``CatalogUnavailable``) when the server went away."""
        try:
            s: PgSettings | None = settings()
        except CurationError:
            s = None
        text = " ".join(str(err).split())
        text = s.redact(text) if s else redact(text, os.environ.get(ENV_DSN), os.environ.get("PGPASSWORD"))
        if lost or LOST.search(text):
            where = s.where if s else "PostgreSQL"
            return CatalogUnavailable(
                f"{what}: the PostgreSQL catalog at {where} is unavailable ({text[:300]}); nothing was published or "
                "changed, retry when the server is back"
            )
        return CurationError(f"{what}: {text[:500]}")
