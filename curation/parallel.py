"""Ordered, bounded fan-out over a thread pool, for the spine's vectorised stages.

Their heavy steps run in Polars, pyarrow and numpy, which release the GIL, so threads use
every core without the pickling and start-up of processes. Results come back in input
order (stages write rows in file order), and only ``window`` items are in flight, so memory
stays bounded by a few batches whatever the input size.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from typing import TypeVar

T = TypeVar("T")
R = TypeVar("R")


def ordered_map(fn: Callable[[T], R], items: Iterable[T], threads: int, window: int | None = None) -> Iterator[R]:
    """``map(fn, items)`` on ``threads`` threads (in this thread when 1), in order, at most
    ``window`` (default ``2 * threads``) items in flight."""
    if threads <= 1:
        yield from map(fn, items)
        return
    window = window or 2 * threads
    pending: deque[Future[R]] = deque()
    with ThreadPoolExecutor(max_workers=threads, thread_name_prefix="curation") as pool:
        try:
            for item in items:
                pending.append(pool.submit(fn, item))
                if len(pending) >= window:
                    yield pending.popleft().result()
            while pending:
                yield pending.popleft().result()
        finally:
            for future in pending:
                future.cancel()
