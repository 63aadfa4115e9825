"""The ephemeral Prefect server never outlives the process that started it.

With no ``PREFECT_API_URL``, Prefect starts a temporary API server for the run as a child
process (``SubprocessASGIServer``) and stops it at exit. A ``curate run`` killed with
SIGKILL never gets to stop it: the child is re-parented to init and keeps running (about
200 MB, a port, the SQLite database open) until someone finds it. So the child is started
through ``python -m flows.ephemeral`` instead of ``python -m uvicorn``: the same server with
the same arguments and environment, plus a watchdog thread that exits the server as soon as
the process that started it is gone.

``install()`` swaps Prefect's command for that one (Prefect 3.8.8's
``SubprocessASGIServer._run_uvicorn_command``, whose arguments this mirrors); a server
given by ``PREFECT_API_URL`` is never touched.
"""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from typing import Any

WATCH_INTERVAL_S = 0.5


def _command(server: Any) -> subprocess.Popen[Any]:
    import prefect
    from prefect.settings import get_current_settings

    server_env = {"PREFECT_UI_ENABLED": "0", "PREFECT__SERVER_EPHEMERAL": "1", "PREFECT__SERVER_FINAL": "1"}
    uvicorn = ["--app-dir", str(prefect.__module_path__.parent), "--factory", "prefect.server.api.server:create_app"]
    uvicorn += ["--host", "127.0.0.1", "--port", str(server.port), "--log-level", "error", "--lifespan", "on"]
    return subprocess.Popen(
        args=[sys.executable, "-m", "flows.ephemeral", "--parent", str(os.getpid()), *uvicorn],
        env={**os.environ, **server_env, **get_current_settings().to_environment_variables(exclude_unset=True)},
    )


def install() -> None:
    """Start Prefect's temporary servers through ``main`` (idempotent)."""
    from prefect.server.api.server import SubprocessASGIServer

    SubprocessASGIServer._run_uvicorn_command = _command  # type: ignore[method-assign]


def _watch(parent: int) -> None:
    """Exit the whole server when the parent is gone (this process was re-parented)."""
    while os.getppid() == parent:
        time.sleep(WATCH_INTERVAL_S)
    os._exit(0)  # SQLite is crash-safe; nothing else is held


def main(argv: list[str]) -> None:
    if len(argv) < 2 or argv[0] != "--parent":
        raise SystemExit("usage: python -m flows.ephemeral --parent PID UVICORN_ARGS...")
    parent = int(argv[1])
    if os.getppid() != parent:  # the parent died before we got here
        return
    threading.Thread(target=_watch, args=(parent,), name="parent-watchdog", daemon=True).start()
    import uvicorn.main

    sys.argv = ["uvicorn", *argv[2:]]
    uvicorn.main.main()


if __name__ == "__main__":
    main(sys.argv[1:])
