"""Pipeline runs in forked children of a warm process, so a test can kill -9 many of them cheaply.

A fresh Python that imports the pipeline (polars, DuckDB, Arrow, the openai client) costs
2-4 s, more on a loaded machine; a kill test repeated with 20 seeds per stage would spend
minutes on start-up alone. ``Zygote`` starts one helper process that imports the pipeline
once and then forks a child per job (a few milliseconds); the child runs a function such as
``run_recipe`` (``curation.run.runner.curate`` on a recipe) and can be killed with SIGKILL at
any moment, like any process.

Why forking works here: the helper only imports modules and never runs pipeline code, so
the thread pools that do the work (polars, DuckDB, Arrow) do not exist yet; they start in the
child, on first use. Importing does start a few idle threads, measured: jemalloc's
background threads (Arrow's and polars' allocators), OpenBLAS workers, polars' out-of-core
cleaner and one DuckDB thread. The helper turns off the first two with environment settings
(``FORK_ENV``, inherited by the children, harmless there), which leaves 3 threads when it
forks (``Zygote.threads``: the main one, polars' cleaner and DuckDB's, both idle; a fork copies
only the calling thread, and neither holds a lock the child needs). Observed: hundreds of
forked pipeline runs, none hung. Why not ``multiprocessing``'s forkserver: it re-runs the
parent's main script in every child (under pytest, pytest's own entry point) and needs
picklable arguments; this protocol is a JSON line per job.

Protocol (the helper's stdin/stdout): the parent writes ``{"target": "module:function",
"args": [...], "log": path}``; the helper answers ``started PID`` and, when a child ends,
``exit PID CODE`` (a negative code is the signal that ended it). A child's stdout and
stderr go to its ``log`` file.

``run_recipe`` marks how far the run got in a *marks* file (one ``PHASE TIME`` line per
phase, ``time.monotonic``, comparable with the parent's clock), so a test can tell which
points its kills hit: the pipeline's ``publish`` and ``finish_run`` and the store's test hook
(``staged``: data files written, ``catalog_created``: a new dataset's catalog made under its
temporary name, ``locked``: inside the catalog transaction).
"""

from __future__ import annotations

import importlib
import json
import os
import select
import signal
import subprocess
import sys
import threading
import time
import traceback
from pathlib import Path
from typing import Any

PHASES = ("started", "stages_done", "staged", "catalog_created", "locked", "committed", "finished")
PRELOAD = ("curation.run.runner", "curation.store.query", "curation.stages.label.judge", "curation.models.openai_backend", "openai")
FORK_ENV = {
    "OPENBLAS_NUM_THREADS": "1",  # no BLAS worker threads at import
    "_RJEM_MALLOC_CONF": "background_thread:false",  # polars' jemalloc
    "JE_ARROW_MALLOC_CONF": "background_thread:false",  # Arrow's jemalloc
}


# -- in the child ------------------------------------------------------------------------


def _marker(marks: str) -> Any:
    fd = os.open(marks, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)

    def mark(phase: str) -> None:
        os.write(fd, f"{phase} {time.monotonic():.6f}\n".encode())  # one small O_APPEND write: atomic

    return mark


def run_recipe(recipe: str, data_root: str, marks: str) -> None:
    """The usual job: ``curate`` the recipe into ``data_root``, marking phases in ``marks``."""
    import curation.run.runner as pipeline
    import curation.store.catalog as store
    from curation.config import load_config

    mark = _marker(marks)
    mark("started")
    publish, finish_run = pipeline.publish, pipeline.finish_run

    def marked_publish(*args: Any, **kwargs: Any) -> Any:
        mark("stages_done")
        out = publish(*args, **kwargs)
        mark("committed")
        return out

    def marked_finish(*args: Any, **kwargs: Any) -> Any:
        out = finish_run(*args, **kwargs)
        mark("finished")
        return out

    pipeline.publish, pipeline.finish_run = marked_publish, marked_finish
    store._TEST_HOOK = mark
    pipeline.curate(load_config(recipe, data_root=data_root))


def publish_files(root: str, dataset: str, tables: dict[str, str], run_id: str, lock_timeout_s: float, go: str, result: str) -> None:
    """A publisher for concurrency tests: wait until the file ``go`` exists (so several
    children start together), publish the Parquet ``tables``, write the outcome to ``result``
    as JSON: ``{"version": N}``, or ``{"busy": message}`` for ``DatasetBusy``."""
    from curation.store.catalog import DatasetBusy, DatasetStore

    store = DatasetStore(root, lock_timeout_s=lock_timeout_s)
    while not os.path.exists(go):
        time.sleep(0.001)
    meta = {"config": {"run": run_id}, "config_hash": run_id, "code_version": "test", "inputs": [], "counts": {}}
    try:
        info = store.publish(dataset, dict(tables), **meta, run_id=run_id)
        outcome: dict[str, Any] = {"version": info.version}
    except DatasetBusy as err:
        outcome = {"busy": str(err)}
    Path(result).write_text(json.dumps(outcome))


def read_marks(marks: str | Path) -> dict[str, float]:
    """Phase -> when it was reached (``time.monotonic``), from a marks file."""
    path = Path(marks)
    if not path.exists():
        return {}
    out = {}
    for line in path.read_text().splitlines():
        name, _, when = line.partition(" ")
        if name and when:
            out.setdefault(name, float(when))
    return out


def last_phase(marks: str | Path) -> str | None:
    """The furthest phase a run reached (in ``PHASES`` order), or None before it started."""
    seen = read_marks(marks)
    return max(seen, key=PHASES.index, default=None)


# -- the helper process ------------------------------------------------------------------


def _child(job: dict[str, Any]) -> None:
    """In the fresh fork: output to the job's log, run the target, exit without cleanup."""
    code = 1
    try:
        log = os.open(job["log"], os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
        os.dup2(log, 1)
        os.dup2(log, 2)
        devnull = os.open(os.devnull, os.O_RDONLY)
        os.dup2(devnull, 0)
        signal.signal(signal.SIGINT, signal.default_int_handler)
        import random

        random.seed()
        module, _, name = job["target"].partition(":")
        getattr(importlib.import_module(module), name)(*job.get("args", []))
        code = 0
    except BaseException:  # noqa: BLE001 - reported in the log; the exit code says it failed
        traceback.print_exc()
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)


def serve(preload: list[str]) -> None:
    """The helper's loop: import ``preload``, then fork a child per job line; report exits."""
    for name in preload:
        importlib.import_module(name)
    out = sys.stdout
    out.write(f"ready {len(os.listdir('/proc/self/task')) if os.path.isdir('/proc/self/task') else -1}\n")
    out.flush()
    stdin = sys.stdin.buffer
    buffer = b""
    open_input = True
    children: set[int] = set()
    while open_input or children:
        ready, _, _ = select.select([stdin] if open_input else [], [], [], 0.005)
        if ready:
            chunk = os.read(stdin.fileno(), 65536)
            if not chunk:
                open_input = False
            buffer += chunk
            while b"\n" in buffer:
                line, buffer = buffer.split(b"\n", 1)
                if line.strip():
                    job = json.loads(line)
                    pid = os.fork()
                    if pid == 0:
                        _child(job)
                    children.add(pid)
                    out.write(f"started {pid}\n")
                    out.flush()
        while children:
            pid, status = os.waitpid(-1, os.WNOHANG)
            if pid == 0:
                break
            children.discard(pid)
            out.write(f"exit {pid} {os.waitstatus_to_exitcode(status)}\n")
            out.flush()


# -- in the test -------------------------------------------------------------------------


def fork_env(base: Any) -> dict[str, str]:
    """``base`` with ``FORK_ENV`` applied; an allocator setting already there (polars sets
    ``_RJEM_MALLOC_CONF`` in its importer's environment) is extended, not replaced."""
    env = dict(base)
    for key, value in FORK_ENV.items():
        env[key] = f"{env[key]},{value}" if key.endswith("MALLOC_CONF") and env.get(key) else value
    return env


class Zygote:
    """The parent's handle on the helper: start jobs, kill them, wait for their exit codes."""

    def __init__(self, preload: tuple[str, ...] = PRELOAD, *, env: dict[str, str] | None = None, timeout: float = 180.0):
        started = time.monotonic()
        self.threads = -1
        """Threads the helper had when it was ready to fork (-1: unknown, no /proc)."""
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "tests.support.killable", *preload],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            env=fork_env(os.environ if env is None else env),
            text=True,
            bufsize=1,
        )
        self._exits: dict[int, int] = {}
        self._started: list[int] = []
        self._cond = threading.Condition()
        self._ready = False
        self._reader = threading.Thread(target=self._read, name="zygote-reader", daemon=True)
        self._reader.start()
        with self._cond:
            if not self._cond.wait_for(lambda: self._ready or self.proc.poll() is not None, timeout):
                self.close()
                raise TimeoutError(f"the zygote did not import {preload} within {timeout:g} s")
        if not self._ready:
            raise RuntimeError(f"the zygote exited with code {self.proc.returncode} while importing {preload}")
        self.startup_s = time.monotonic() - started

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            word, *rest = line.split()
            with self._cond:
                if word == "ready":
                    self._ready, self.threads = True, int(rest[0])
                elif word == "started":
                    self._started.append(int(rest[0]))
                elif word == "exit":
                    self._exits[int(rest[0])] = int(rest[1])
                self._cond.notify_all()
        with self._cond:
            self._cond.notify_all()

    def start(self, target: str, *args: Any, log: str | Path, timeout: float = 30.0) -> int:
        """Fork a child running ``target(*args)`` (``"module:function"``); its pid."""
        assert self.proc.stdin is not None
        with self._cond:
            before = len(self._started)
            self.proc.stdin.write(json.dumps({"target": target, "args": list(args), "log": str(log)}) + "\n")
            self.proc.stdin.flush()
            if not self._cond.wait_for(lambda: len(self._started) > before or self.proc.poll() is not None, timeout):
                raise TimeoutError("the zygote did not fork the job")
            if len(self._started) <= before:
                raise RuntimeError(f"the zygote died (exit code {self.proc.returncode})")
            return self._started[before]

    def wait(self, pid: int, timeout: float = 120.0) -> int:
        """The child's exit code (negative: killed by that signal); kills it after ``timeout``."""
        with self._cond:
            if not self._cond.wait_for(lambda: pid in self._exits or self.proc.poll() is not None, timeout):
                self.kill(pid)
                self._cond.wait_for(lambda: pid in self._exits, 10)
                raise TimeoutError(f"job {pid} did not end within {timeout:g} s (killed)")
            if pid not in self._exits:
                raise RuntimeError(f"the zygote died (exit code {self.proc.returncode}) before job {pid} ended")
            return self._exits[pid]

    def done(self, pid: int) -> bool:
        with self._cond:
            return pid in self._exits

    @staticmethod
    def kill(pid: int) -> None:
        """SIGKILL the child (it may have ended already)."""
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass

    def close(self) -> None:
        """End the helper once its children have ended (they are killed first)."""
        with self._cond:
            running = [p for p in self._started if p not in self._exits]
        for pid in running:
            self.kill(pid)
        if self.proc.stdin is not None and not self.proc.stdin.closed:
            self.proc.stdin.close()
        try:
            self.proc.wait(30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(10)

    def __enter__(self) -> Zygote:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


if __name__ == "__main__":
    serve(sys.argv[1:])


def publish_repeatedly(root: str, dataset: str, count: int, tag: str, go: str, result: str, marks: str) -> None:
    """A publisher for the many-writers tests: wait for ``go``, publish ``count`` versions of
    one table whose rows are derived from the run id (``rows_for``), appending each outcome to
    ``result`` (JSON lines) and the store's phases to ``marks`` (so a kill can be placed)."""
    import curation.store.catalog as catalog
    from curation.store.catalog import DatasetBusy, DatasetStore

    mark = _marker(marks)
    catalog._TEST_HOOK = mark
    store = DatasetStore(root, lock_timeout_s=60)
    while not os.path.exists(go):
        time.sleep(0.001)
    for i in range(count):
        run_id = f"{tag}-{i}"
        meta = {"config": {"run": run_id}, "config_hash": run_id, "code_version": "test", "inputs": [], "counts": {}}
        mark("started")
        try:
            info = store.publish(dataset, {"things": rows_for(run_id)}, **meta, run_id=run_id)
            outcome: dict[str, Any] = {"run_id": run_id, "version": info.version, "parents": info.parents}
        except DatasetBusy as err:
            outcome = {"run_id": run_id, "busy": str(err)}
        mark("committed")
        with open(result, "a") as f:
            f.write(json.dumps(outcome) + "\n")


def rows_for(run_id: str) -> Any:
    """The table a ``publish_repeatedly`` run publishes: its size and values follow from the id."""
    import pyarrow as pa

    n = 50 + sum(map(ord, run_id)) % 200
    return pa.table({"run_id": [run_id] * n, "i": list(range(n))})
