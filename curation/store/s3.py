"""Object-store data roots (``s3://bucket/prefix``): credentials, DuckDB access, and the few
object calls the dataset store makes.

Two clients, each for what it does best. DuckDB reads and writes the data files itself
through its ``httpfs`` extension (loaded offline from the pip package, like DuckLake), so a
query streams Parquet straight from the bucket. boto3 moves the small catalog object,
because only it exposes S3's *conditional writes* (``If-None-Match: *`` to create,
``If-Match: ETAG`` to replace), which is what lets many machines publish to one dataset
without a lock server (see ``curation.store.object_store``).

Credentials are resolved once, by boto3's usual chain (``AWS_ACCESS_KEY_ID`` /
``AWS_SECRET_ACCESS_KEY`` / ``AWS_SESSION_TOKEN``, a profile, an instance role), and the
endpoint from ``AWS_ENDPOINT_URL_S3`` or ``AWS_ENDPOINT_URL`` (any S3-compatible server:
MinIO, R2, moto). DuckDB gets the same values as an in-memory secret (``CREATE SECRET`` is
temporary unless asked otherwise), so nothing here writes a credential to disk, and error
messages name the object, never the secret. The values are read once per process (and
again when the AWS_* environment changes): short-lived role credentials that expire during a
long-running process need a new process.
"""

from __future__ import annotations

import gzip
import hashlib
import os
import threading
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import duckdb

from curation.errors import ConfigError, CurationError

SCHEMES = ("s3",)
# The environment that decides which endpoint and credentials are used (the cache key).
AWS_ENV = (
    "AWS_ACCESS_KEY_ID",
    "AWS_SECRET_ACCESS_KEY",
    "AWS_SESSION_TOKEN",
    "AWS_ENDPOINT_URL",
    "AWS_ENDPOINT_URL_S3",
    "AWS_REGION",
    "AWS_DEFAULT_REGION",
    "AWS_PROFILE",
)
BUCKET = r"^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$"


@dataclass(frozen=True)
class S3Root:
    """``s3://bucket/prefix`` split into its bucket and key prefix ('' or 'a/b')."""

    bucket: str
    prefix: str

    @classmethod
    def parse(cls, url: str) -> S3Root:
        import re

        parsed = urlparse(str(url))
        if parsed.scheme not in SCHEMES:
            raise ConfigError(
                f"unsupported data root {url!r}: use a local folder or s3://bucket/prefix "
                "(any S3-compatible server: set AWS_ENDPOINT_URL for MinIO, R2 or moto)"
            )
        if not re.match(BUCKET, parsed.netloc):
            raise ConfigError(f"invalid data root {url!r}: {parsed.netloc!r} is not an S3 bucket name")
        if parsed.query or parsed.fragment:
            raise ConfigError(f"invalid data root {url!r}: no query or fragment allowed")
        parts = [p for p in parsed.path.split("/") if p]
        if any(p in (".", "..") for p in parts):
            raise ConfigError(f"invalid data root {url!r}: '.' and '..' are not allowed in the prefix")
        return cls(parsed.netloc, "/".join(parts))

    def key(self, *parts: str) -> str:
        return "/".join(p.strip("/") for p in (self.prefix, *parts) if p.strip("/"))

    def url(self, *parts: str) -> str:
        return f"s3://{self.bucket}/{self.key(*parts)}".rstrip("/")

    def __str__(self) -> str:
        return self.url()


# -- credentials and clients -------------------------------------------------------------------


@dataclass(frozen=True)
class _Settings:
    key_id: str | None
    secret: str | None
    token: str | None
    region: str
    endpoint: str | None  # scheme://host[:port] of an S3-compatible server; None: AWS itself

    def fingerprint(self) -> str:
        """Identifies the settings without revealing them (names the DuckDB secret)."""
        blob = "\0".join(str(x) for x in (self.key_id, self.secret, self.token, self.region, self.endpoint))
        return hashlib.sha256(blob.encode()).hexdigest()[:16]


_CACHE: dict[tuple, tuple[Any, _Settings]] = {}
_CACHE_GUARD = threading.Lock()
_DUCKDB_GUARD = threading.Lock()


def _env_key() -> tuple:
    return (os.getpid(), *(hashlib.sha256(os.environ.get(k, "").encode()).hexdigest() for k in AWS_ENV))


def _client_and_settings() -> tuple[Any, _Settings]:
    """One boto3 client per process and environment (creating one costs ~0.1 s)."""
    key = _env_key()
    with _CACHE_GUARD:
        if key in _CACHE:
            return _CACHE[key]
    try:
        import boto3
        from botocore.config import Config
    except ImportError:
        raise CurationError("s3:// data roots need boto3: pip install boto3") from None
    session = boto3.Session()
    region = session.region_name or "us-east-1"
    client = session.client("s3", region_name=region, config=Config(retries={"max_attempts": 5, "mode": "standard"}))
    endpoint = os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL") or None
    if endpoint is None and not urlparse(client.meta.endpoint_url).netloc.endswith("amazonaws.com"):
        endpoint = client.meta.endpoint_url  # set in an AWS config profile
    creds = session.get_credentials()
    frozen = creds.get_frozen_credentials() if creds is not None else None
    settings = _Settings(
        key_id=frozen.access_key if frozen else None,
        secret=frozen.secret_key if frozen else None,
        token=frozen.token if frozen else None,
        region=region,
        endpoint=endpoint,
    )
    with _CACHE_GUARD:
        _CACHE[key] = (client, settings)
    return client, settings


def _lit(s: str) -> str:
    return "'" + s.replace("'", "''") + "'"


def configure_duckdb(con: duckdb.DuckDBPyConnection, root: S3Root) -> None:
    """Load httpfs (offline first) and give the database an in-memory secret for the bucket.

    The secret is scoped to the data root (bucket and prefix) and named by a hash of the settings, so a changed
    environment (new credentials, another endpoint) replaces it and an unchanged one costs
    one catalog lookup. Serialised in the process: two cursors of one database creating the
    same secret at once would conflict.
    """
    _, s = _client_and_settings()
    scope = root.url() + "/"  # the data root, not the whole bucket
    stem = f"curate_s3_{hashlib.sha256(scope.encode()).hexdigest()[:8]}_"
    name = stem + s.fingerprint()
    with _DUCKDB_GUARD:
        _load_httpfs(con)
        have = [r[0] for r in con.execute("SELECT name FROM duckdb_secrets() WHERE starts_with(name, ?)", [stem]).fetchall()]
        if name not in have:
            for old in have:
                con.execute(f"DROP SECRET IF EXISTS {old}")
            _create_secret(con, name, scope, s)


def _create_secret(con: duckdb.DuckDBPyConnection, name: str, scope: str, s: _Settings) -> None:
    opts = [f"REGION {_lit(s.region)}", f"SCOPE {_lit(scope)}"]
    if s.key_id:
        opts += [f"KEY_ID {_lit(s.key_id)}", f"SECRET {_lit(s.secret or '')}"]
    if s.token:
        opts.append(f"SESSION_TOKEN {_lit(s.token)}")
    if s.endpoint:
        ep = urlparse(s.endpoint if "://" in s.endpoint else f"https://{s.endpoint}")
        opts += [f"ENDPOINT {_lit(ep.netloc)}", "URL_STYLE 'path'", f"USE_SSL {'true' if ep.scheme == 'https' else 'false'}"]
    try:
        con.execute(f"CREATE OR REPLACE SECRET {name} (TYPE s3, {', '.join(opts)})")
    except duckdb.Error:
        # The statement holds the credentials: never echo it or DuckDB's message about it.
        raise CurationError(f"cannot set up DuckDB access to {scope} (check the AWS_* settings)") from None


def _load_httpfs(con: duckdb.DuckDBPyConnection) -> None:
    if con.execute("SELECT count(*) FROM duckdb_extensions() WHERE extension_name = 'httpfs' AND loaded").fetchone()[0]:
        return
    try:
        import duckdb_extensions

        duckdb_extensions.import_extension("httpfs", con=con)
    except Exception as first:  # noqa: BLE001 - any failure: try the online route
        try:
            con.execute("INSTALL httpfs")
            con.execute("LOAD httpfs")
        except duckdb.Error as second:
            raise CurationError(
                "cannot load the DuckDB 'httpfs' extension for s3:// data roots: install the package "
                f"duckdb-extension-httpfs=={duckdb.__version__} (offline) or allow `INSTALL httpfs` ({first}; {second})"
            ) from None


# -- object calls -------------------------------------------------------------------------------

# Error codes the callers expect rather than fail on (S3, and S3-compatible servers, differ).
NOT_FOUND = ("NoSuchKey", "404", "NotFound")
# Another writer got there first: HTTP 412, or 409 for a concurrent conditional write.
LOST_RACE = ("PreconditionFailed", "ConditionalRequestConflict", "412", "409")


def _code(err: Exception) -> str | None:
    return getattr(err, "response", {}).get("Error", {}).get("Code")


@contextmanager
def _translated(what: str, expected: tuple[str, ...] = ()) -> Iterator[None]:
    """Turn boto3/botocore errors in the block into a ``CurationError`` saying ``what`` failed.

    botocore's messages name the operation and the error code, never the credentials, so
    they are kept. A ``ClientError`` whose code is in ``expected`` is swallowed instead: the
    caller goes on after the block (say, to return None for a missing object).
    """
    from botocore.exceptions import ClientError

    try:
        yield
    except ClientError as err:
        if _code(err) in expected:
            return
        raise CurationError(f"object store: {what} failed: {err}") from None
    except _other_errors() as err:
        raise CurationError(f"object store: {what} failed: {err}") from None


def _other_errors() -> tuple[type[Exception], ...]:
    """What boto3 and botocore raise besides ``ClientError``: boto3's own (its transfers)
    only when it is installed; without it there is no client, and ``Bucket.client`` says so."""
    from botocore.exceptions import BotoCoreError

    try:
        from boto3.exceptions import Boto3Error
    except ImportError:
        return (BotoCoreError,)
    return (BotoCoreError, Boto3Error)


class Bucket:
    """The calls the store makes on one root, with clear errors."""

    def __init__(self, root: S3Root):
        self.root = root

    @property
    def client(self) -> Any:
        return _client_and_settings()[0]

    def _url(self, key: str) -> str:
        return f"s3://{self.root.bucket}/{key}"

    def get(self, key: str) -> tuple[bytes, str] | None:
        """An object's bytes and ETag, or None when it does not exist."""
        with _translated(f"reading {self._url(key)}", NOT_FOUND):
            r = self.client.get_object(Bucket=self.root.bucket, Key=key)
            return r["Body"].read(), r["ETag"]
        return None

    def put_if(self, key: str, body: bytes, etag: str | None) -> bool:
        """Write ``body`` only if the object still has ``etag`` (None: only if it does not exist).

        False when another writer got there first (HTTP 412, or 409 for a concurrent
        conditional write); S3 applies the condition and the write atomically.
        """
        cond = {"IfMatch": etag} if etag else {"IfNoneMatch": "*"}
        with _translated(f"writing {self._url(key)}", LOST_RACE):
            self.client.put_object(Bucket=self.root.bucket, Key=key, Body=body, **cond)
            return True
        return False

    def upload(self, path: Path, key: str) -> None:
        """A local file to ``key`` (multipart for big files)."""
        with _translated(f"uploading {path} to {self._url(key)}"):
            self.client.upload_file(str(path), self.root.bucket, key)

    def download(self, key: str, path: Path) -> None:
        with _translated(f"downloading {self._url(key)}"):
            self.client.download_file(self.root.bucket, key, str(path))

    def exists(self, key: str) -> bool:
        with _translated(f"checking {self._url(key)}", NOT_FOUND):
            self.client.head_object(Bucket=self.root.bucket, Key=key)
            return True
        return False

    def keys(self, prefix: str, *, limit: int | None = None) -> Iterator[str]:
        """Keys that start with ``prefix``, in key order."""
        yield from (k for k, _ in self._list(prefix, limit=limit))

    def folders(self, prefix: str) -> list[str]:
        """Names of the 'folders' directly under ``prefix/``."""
        prefix = prefix.rstrip("/") + "/"
        out: list[str] = []
        with _translated(f"listing {self._url(prefix)}"):
            for page in self.client.get_paginator("list_objects_v2").paginate(Bucket=self.root.bucket, Prefix=prefix, Delimiter="/"):
                out += [p["Prefix"][len(prefix) :].rstrip("/") for p in page.get("CommonPrefixes", [])]
        return out

    def _list(self, prefix: str, *, limit: int | None = None) -> Iterator[tuple[str, int]]:
        args: dict[str, Any] = {"Bucket": self.root.bucket, "Prefix": prefix}
        if limit:
            args["PaginationConfig"] = {"MaxItems": limit}
        with _translated(f"listing {self._url(prefix)}"):
            for page in self.client.get_paginator("list_objects_v2").paginate(**args):
                for obj in page.get("Contents", []):
                    yield obj["Key"], obj["Size"]

    def delete(self, keys: list[str]) -> None:
        """Best effort: used to clean up after a failed publish."""
        for i in range(0, len(keys), 1000):
            with suppress(CurationError), _translated(f"deleting in s3://{self.root.bucket}"):
                self.client.delete_objects(Bucket=self.root.bucket, Delete={"Objects": [{"Key": k} for k in keys[i : i + 1000]]})


def pack(data: bytes) -> bytes:
    """A DuckDB catalog file is mostly empty blocks: 4.2 MB gzips to ~26 KB in ~25 ms."""
    return gzip.compress(data, compresslevel=1, mtime=0)


def unpack(data: bytes) -> bytes:
    return gzip.decompress(data)
