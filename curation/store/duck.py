"""DuckDB helpers the store shares: opening a database with DuckLake, the per-process reader
database, SQL quoting, and the aliases catalogs are attached under."""

from __future__ import annotations

import os
import threading
import uuid
from pathlib import Path

import duckdb

from curation.errors import CurationError


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


def load_postgres(con: duckdb.DuckDBPyConnection) -> None:
    """Load DuckDB's postgres extension (pip-packaged, offline) into ``con``: DuckLake needs it
    to keep a catalog in PostgreSQL. Loading twice is a no-op."""
    try:
        import duckdb_extensions

        duckdb_extensions.import_extension("postgres", con=con)
    except Exception as err:  # noqa: BLE001 - any failure is the same missing package for the user
        raise CurationError(
            f"cannot load the DuckDB 'postgres' extension: install duckdb-extension-postgres=={duckdb.__version__} ({err})"
        ) from None


_SHARED: tuple[int, duckdb.DuckDBPyConnection] | None = None
_SHARED_GUARD = threading.Lock()


def reader_cursor() -> duckdb.DuckDBPyConnection:
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


def new_alias() -> str:
    """A unique name to attach a catalog under: cursors of one database share its catalogs."""
    return f"lake_{uuid.uuid4().hex[:16]}"


def detach(con: duckdb.DuckDBPyConnection, alias: str) -> None:
    """Detach ``alias`` if attached; never fails (it runs in cleanup paths)."""
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
    """Whether DuckDB failed on another process's file lock on the catalog (worth a retry)."""
    msg = str(err)
    return "Could not set lock" in msg or "Conflicting lock" in msg
