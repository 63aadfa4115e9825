"""Which task failures Prefect retries, and how long it waits.

A retry helps only when the next attempt can go differently: another process held the
dataset (``DatasetBusy``), the disk or object store hiccupped (``OSError``), the model server
stayed down or rate-limited past the backend's own per-request retries (``BackendError``).
A bad recipe (``ConfigError``), bad input (``SourceError``), an accounting mismatch or any
other ``CurationError`` gives the same answer every time, so it fails at once with its
message; so do bugs (``KeyError``, ``ValueError``...). An exception may decide for itself with
a boolean ``retryable`` attribute.

Waits grow exponentially with jitter (Prefect's ``exponential_backoff`` and
``retry_jitter_factor``), so many runs hitting one server do not retry in lockstep. The
model-server tasks wait longer: the backend has already retried each request for seconds.
"""

from __future__ import annotations

from typing import Any

from prefect.tasks import exponential_backoff

from curation.errors import CurationError
from curation.models.base import BackendError, Unsupported
from curation.models.openai_backend import ServerRejected
from curation.store.catalog import DatasetBusy

IO_BACKOFF_S = 2.0  # 2, 4, 8 s
API_BACKOFF_S = 10.0  # 10, 20, 40 s
JITTER = 0.5
_DETERMINISTIC_OS_ERRORS = (FileNotFoundError, PermissionError, IsADirectoryError, NotADirectoryError)


def is_transient(exc: BaseException) -> bool:
    """Whether another attempt might succeed (see the module docstring)."""
    flag = getattr(exc, "retryable", None)
    if isinstance(flag, bool):
        return flag
    if isinstance(exc, DatasetBusy):
        return True
    if isinstance(exc, (ServerRejected, Unsupported)):
        return False  # a 4xx answer or a missing capability: the same request fails again
    if isinstance(exc, BackendError):
        return True
    if isinstance(exc, CurationError):
        return False
    if isinstance(exc, _DETERMINISTIC_OS_ERRORS):
        return False
    return isinstance(exc, OSError)  # includes TimeoutError and ConnectionError


def retry_transient(task: Any, task_run: Any, state: Any) -> bool:
    """Prefect ``retry_condition_fn``: retry only a transient failure."""
    exc = state.data if isinstance(getattr(state, "data", None), BaseException) else None
    if exc is None:
        try:
            exc = state.result(raise_on_failure=False)
        except Exception:  # noqa: BLE001 - an unreadable state is not worth a retry
            return False
    return isinstance(exc, BaseException) and is_transient(exc)


def _policy(backoff_s: float, retries: int = 3) -> dict[str, Any]:
    return {
        "retries": retries,
        "retry_delay_seconds": exponential_backoff(backoff_factor=backoff_s),
        "retry_jitter_factor": JITTER,
        "retry_condition_fn": retry_transient,
    }


IO_RETRIES = _policy(IO_BACKOFF_S)
"""ingest and publish: local or object-store I/O, the dataset lock."""

API_RETRIES = _policy(API_BACKOFF_S)
"""generate and label: model-server calls."""
