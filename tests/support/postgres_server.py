"""A real, throwaway PostgreSQL server for the tests: ``initdb`` and ``pg_ctl`` in a temp folder,
on a free loopback port, with password (SCRAM) authentication.

PostgreSQL refuses to run as root, so when the tests run as root the server runs as the
unprivileged ``nobody`` (its folder is handed to that user); otherwise as the test's user.
The binaries come from Debian's ``postgresql`` package (``install.sh`` installs it when it
runs as root) or whatever ``initdb`` is on the PATH. ``start_postgres`` raises
``PostgresUnavailable`` with the reason when it cannot start one.
"""

from __future__ import annotations

import glob
import os
import pwd
import shutil
import subprocess
import tempfile
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

from tests.support.vllm_server import free_port


class PostgresUnavailable(RuntimeError):
    pass


def find_bindir() -> Path | None:
    """Debian's newest ``/usr/lib/postgresql/N/bin``, else ``initdb`` on the PATH."""
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"), key=lambda p: int(Path(p).parent.parent.name))
    if found:
        return Path(found[-1]).parent
    initdb = shutil.which("initdb")
    return Path(initdb).parent if initdb else None


@dataclass
class PgServer:
    bindir: Path
    folder: Path
    port: int
    user: str = "curate"
    password: str = field(default_factory=lambda: f"pg-planted-{uuid.uuid4().hex}")
    database: str = "curate"
    run_as: pwd.struct_passwd | None = None

    @property
    def data(self) -> Path:
        return self.folder / "data"

    @property
    def dsn(self) -> str:
        """What a user puts in ``CURATE_PG_DSN`` (the password included)."""
        return f"postgresql://{self.user}:{self.password}@127.0.0.1:{self.port}/{self.database}"

    def env(self) -> dict[str, str]:
        return {"CURATE_PG_DSN": self.dsn}

    def _demote(self) -> None:
        if self.run_as is not None:
            os.setgid(self.run_as.pw_gid)
            os.setuid(self.run_as.pw_uid)

    def ctl(self, *args: str, timeout: float = 60) -> subprocess.CompletedProcess:
        options = f"-p {self.port} -k {self.folder} -c listen_addresses=127.0.0.1 -c max_connections=200"
        cmd = [str(self.bindir / "pg_ctl"), "-D", str(self.data), "-l", str(self.folder / "server.log"), "-o", options, "-w", *args]
        return subprocess.run(cmd, preexec_fn=self._demote, capture_output=True, text=True, timeout=timeout, check=False)

    def start(self) -> None:
        proc = self.ctl("start")
        if proc.returncode != 0:
            log = (self.folder / "server.log").read_text(errors="replace")[-2000:] if (self.folder / "server.log").exists() else ""
            raise PostgresUnavailable(f"pg_ctl start failed: {proc.stderr.strip() or proc.stdout.strip()} {log}")

    def stop(self, mode: str = "fast") -> None:
        self.ctl("stop", "-m", mode)

    def restart(self) -> None:
        """A fast restart: connections are terminated, open transactions roll back."""
        proc = self.ctl("restart", "-m", "fast")
        if proc.returncode != 0:
            raise PostgresUnavailable(f"pg_ctl restart failed: {proc.stderr.strip()}")

    def psql(self, sql: str, database: str | None = None) -> str:
        env = {**os.environ, "PGPASSWORD": self.password}
        cmd = [
            str(self.bindir / "psql"),
            "-h",
            "127.0.0.1",
            "-p",
            str(self.port),
            "-U",
            self.user,
            "-d",
            database or self.database,
            "-Atc",
            sql,
        ]
        return subprocess.run(cmd, env=env, capture_output=True, text=True, check=True, timeout=60).stdout

    def close(self) -> None:
        self.stop("immediate")
        shutil.rmtree(self.folder, ignore_errors=True)


def start_postgres() -> PgServer:
    """A fresh cluster with one password-protected user and database, started and ready."""
    bindir = find_bindir()
    if bindir is None:
        raise PostgresUnavailable("PostgreSQL server binaries not found (install.sh installs Debian's postgresql when run as root)")
    run_as = pwd.getpwnam("nobody") if os.geteuid() == 0 else None
    folder = Path(tempfile.mkdtemp(prefix="curate-pg-"))
    server = PgServer(bindir, folder, free_port(), run_as=run_as)
    if run_as is not None:
        os.chown(folder, run_as.pw_uid, run_as.pw_gid)
    pwfile = folder / "pw"
    pwfile.write_text(server.password + "\n")
    if run_as is not None:
        os.chown(pwfile, run_as.pw_uid, run_as.pw_gid)
    init = subprocess.run(
        [str(bindir / "initdb"), "-D", str(server.data), "-U", server.user, f"--pwfile={pwfile}", "--auth=scram-sha-256"]
        + ["-E", "UTF8", "--locale=C", "--no-sync"],
        preexec_fn=server._demote,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    pwfile.unlink()
    if init.returncode != 0:
        shutil.rmtree(folder, ignore_errors=True)
        raise PostgresUnavailable(f"initdb failed: {init.stderr.strip()[-1000:]}")
    server.start()
    deadline = time.monotonic() + 30
    while True:
        try:
            server.psql("SELECT 1", database="postgres")
            break
        except subprocess.CalledProcessError as err:
            if time.monotonic() > deadline:
                server.close()
                raise PostgresUnavailable(f"the server did not answer: {err.stderr}") from None
            time.sleep(0.2)
    env = {**os.environ, "PGPASSWORD": server.password}
    subprocess.run(
        [str(bindir / "createdb"), "-h", "127.0.0.1", "-p", str(server.port), "-U", server.user, server.database],
        env=env,
        check=True,
        capture_output=True,
        timeout=60,
    )
    return server
