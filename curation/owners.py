"""Who owns a work folder: a run's folder, a stage-cache entry being built, a publish's staged
files. A folder records its owner process; when that process is gone (killed, crashed), the
folder is debris that the next run or ``curate gc`` removes.

An owner is its PID plus the process's start time (``/proc/PID/stat``, where there is one),
so a PID the system has since given to another process does not keep debris alive.
"""

from __future__ import annotations

import json
import os
import socket
from pathlib import Path
from typing import Any

OWNER_FILE = ".owner.json"


def _start_time(pid: int) -> str | None:
    """The process's start time in clock ticks since boot (Linux), or None where unknown."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return stat.rsplit(")", 1)[1].split()[19]  # field 22; the name in parentheses may hold spaces


def me() -> dict[str, Any]:
    return {"pid": os.getpid(), "start": _start_time(os.getpid()), "host": socket.gethostname()}


def claim(folder: Path) -> None:
    """Record this process as the folder's owner."""
    (folder / OWNER_FILE).write_text(json.dumps(me()))


def owner_of(folder: Path) -> dict[str, Any] | None:
    try:
        return json.loads((folder / OWNER_FILE).read_text())
    except (OSError, ValueError):
        return None


def alive(owner: dict[str, Any]) -> bool:
    """Whether the owner process still runs (an owner on another host counts as alive)."""
    if owner.get("host") not in (None, socket.gethostname()):
        return True
    pid = owner.get("pid")
    if not isinstance(pid, int):
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass  # someone else's process: it exists
    start = owner.get("start")
    return start is None or _start_time(pid) in (None, start)


def abandoned(folder: Path) -> bool:
    """The folder has an owner record and its owner is gone."""
    owner = owner_of(folder)
    return owner is not None and not alive(owner)


def size_of(path: Path) -> int:
    """Bytes of the files under ``path``."""
    if path.is_file():
        return path.stat().st_size
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file() and not p.is_symlink())
