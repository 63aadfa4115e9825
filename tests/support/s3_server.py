"""A real S3-compatible server on 127.0.0.1 for tests and demos: moto's server mode.

Why a server and not ``mock_aws``: DuckDB's httpfs talks HTTP from C++, where no Python
mock reaches, and the store's conditional writes must be checked over a real socket. moto
(``pip install "moto[server]"``) keeps buckets in memory and supports ``If-Match`` /
``If-None-Match`` on PutObject, which the store's optimistic commit relies on.

    with S3Server() as s3:
        s3.create_bucket("curate-test")
        with s3.environment():  # AWS_* variables pointing boto3 and DuckDB at it
            DatasetStore("s3://curate-test/root")

The credentials are dummies that moto accepts; ``env`` gives them to subprocesses. Run it on
its own (``python -m tests.support.s3_server``) to point a shell at one.
"""

from __future__ import annotations

import argparse
import logging
import os
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

INSTALL_HINT = 'moto\'s S3 server is needed: pip install "moto[server]==5.2.5" (it is in the dev extra: pip install -e ".[dev]")'


def available() -> bool:
    try:
        import moto.server  # noqa: F401
    except ImportError:
        return False
    return True


class S3Server:
    """moto's S3 in a background thread on 127.0.0.1 and a free port."""

    def __init__(self, *, key_id: str = "curate-test-key-id", secret: str = "curate-test-secret-key", region: str = "us-east-1"):
        self.key_id, self.secret, self.region = key_id, secret, region
        self._server: Any = None
        self.endpoint = ""

    def start(self) -> S3Server:
        from moto.server import ThreadedMotoServer

        logging.getLogger("werkzeug").setLevel(logging.WARNING)  # not a line per request

        self._server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
        self._server.start()
        host, port = self._server.get_host_and_port()
        self.endpoint = f"http://{host}:{port}"
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.stop()
            self._server = None

    def __enter__(self) -> S3Server:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def env(self) -> dict[str, str]:
        """The AWS_* variables that point boto3 and the store's DuckDB at this server."""
        return {
            "AWS_ACCESS_KEY_ID": self.key_id,
            "AWS_SECRET_ACCESS_KEY": self.secret,
            "AWS_REGION": self.region,
            "AWS_DEFAULT_REGION": self.region,
            "AWS_ENDPOINT_URL": self.endpoint,
        }

    @contextmanager
    def environment(self) -> Iterator[dict[str, str]]:
        """Set :attr:`env` in ``os.environ`` (dropping a profile or session token), then restore it."""
        drop = ("AWS_SESSION_TOKEN", "AWS_PROFILE", "AWS_ENDPOINT_URL_S3")
        saved = {k: os.environ.get(k) for k in (*self.env, *drop)}
        for k in drop:
            os.environ.pop(k, None)
        os.environ.update(self.env)
        try:
            yield self.env
        finally:
            for k, v in saved.items():
                if v is None:
                    os.environ.pop(k, None)
                else:
                    os.environ[k] = v

    def client(self) -> Any:
        import boto3

        return boto3.client(
            "s3", endpoint_url=self.endpoint, region_name=self.region, aws_access_key_id=self.key_id, aws_secret_access_key=self.secret
        )

    def create_bucket(self, name: str) -> str:
        self.client().create_bucket(Bucket=name)
        return name


def main() -> None:
    ap = argparse.ArgumentParser(description="Run moto's S3 server on 127.0.0.1 until interrupted; prints the env to use it.")
    ap.add_argument("--bucket", action="append", default=[], help="create this bucket (repeatable)")
    args = ap.parse_args()
    with S3Server() as s3:
        for b in args.bucket:
            s3.create_bucket(b)
        for k, v in s3.env.items():
            print(f"export {k}={v}", flush=True)
        try:
            while True:
                time.sleep(3600)
        except KeyboardInterrupt:
            pass


if __name__ == "__main__":
    main()
