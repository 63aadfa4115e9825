"""A tiny progress interface, so the core can report progress without knowing who listens.

The CLI plugs in a rich progress bar on a terminal and ``LineProgress`` elsewhere (a pipe,
a CI log, a log file), Prefect tasks a logger through ``LineProgress``; notebooks pass nothing.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Protocol


class Progress(Protocol):
    def start(self, description: str, total: int | None = None) -> None: ...
    def advance(self, n: int = 1) -> None: ...
    def finish(self) -> None: ...


class NoProgress:
    def start(self, description: str, total: int | None = None) -> None:
        pass

    def advance(self, n: int = 1) -> None:
        pass

    def finish(self) -> None:
        pass


def _duration(seconds: float) -> str:
    seconds = int(round(seconds))
    if seconds < 60:
        return f"{seconds} s"
    minutes, seconds = divmod(seconds, 60)
    if minutes < 60:
        return f"{minutes} min {seconds:02d} s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours} h {minutes:02d} min"


class LineProgress:
    """Progress as lines of text, for anything that is not a terminal: a line when a piece of
    work starts, one at least every ``every_s`` seconds while it runs (done/total, rate, ETA;
    a timer writes it even while one long call has not advanced), one when it finishes.
    ``write`` gets each line (``print`` to stderr, a logger's ``info``, a log file)."""

    def __init__(self, write: Callable[[str], None], every_s: float = 30.0):
        self.write, self.every_s = write, every_s
        self.description, self.total, self.done = "", None, 0
        self._t0 = self._last = 0.0
        self._lock = threading.Lock()
        self._stop: threading.Event | None = None

    def start(self, description: str, total: int | None = None) -> None:
        self.finish_timer()
        with self._lock:
            self.description, self.total, self.done = description, total, 0
            self._t0 = self._last = time.monotonic()
        self.write(f"{description}: started" + (f", {total:,} to do" if total else ""))
        self._stop = threading.Event()
        threading.Thread(target=self._tick, args=(self._stop,), name="progress-lines", daemon=True).start()

    def advance(self, n: int = 1) -> None:
        with self._lock:
            self.done += n
            due = time.monotonic() - self._last >= self.every_s
        if due:
            self._report()

    def finish(self) -> None:
        self.finish_timer()
        elapsed = time.monotonic() - self._t0
        rate = f", {self.done / elapsed:,.1f}/s" if elapsed > 0 and self.done else ""
        self.write(f"{self.description}: done, {self.done:,} in {_duration(elapsed)}{rate}")

    def finish_timer(self) -> None:
        if self._stop is not None:
            self._stop.set()
            self._stop = None

    def line(self) -> str:
        """Where the current piece of work stands: done/total, rate, ETA."""
        with self._lock:
            done, total, elapsed = self.done, self.total, time.monotonic() - self._t0
        rate = done / elapsed if elapsed > 0 else 0.0
        parts = [f"{done:,}/{total:,} ({100 * done / total:.0f}%)" if total else f"{done:,} done"]
        parts.append(f"{rate:,.1f}/s" if rate else "nothing done yet")
        if total and rate and done < total:
            parts.append(f"ETA {_duration((total - done) / rate)}")
        parts.append(f"{_duration(elapsed)} so far")
        return f"{self.description}: " + ", ".join(parts)

    def _report(self) -> None:
        with self._lock:
            self._last = time.monotonic()
        self.write(self.line())

    def _tick(self, stop: threading.Event) -> None:
        while not stop.wait(self.every_s / 2):
            with self._lock:
                due = time.monotonic() - self._last >= self.every_s
            if due and not stop.is_set():
                self._report()


class TeeProgress:
    """Several listeners at once (a bar on the terminal and lines in a log file)."""

    def __init__(self, *listeners: Progress):
        self.listeners = listeners

    def start(self, description: str, total: int | None = None) -> None:
        for p in self.listeners:
            p.start(description, total)

    def advance(self, n: int = 1) -> None:
        for p in self.listeners:
            p.advance(n)

    def finish(self) -> None:
        for p in self.listeners:
            p.finish()
