"""Errors a user can act on.

A ``RowError`` is about one input row: it is caught by the pipeline and the row goes to
quarantine, the run goes on. A ``CurationError`` stops the run and its message alone must
tell the user what to fix (file, row, field), with no traceback from inside a library.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable


class CurationError(Exception):
    """An error that stops the run; its message is shown to the user as is."""


class ConfigError(CurationError):
    """The recipe is invalid."""


def repeated(names: Iterable[str]) -> list[str]:
    """The names that occur more than once, sorted: what a "must be unique" recipe check lists."""
    return sorted(name for name, n in Counter(names).items() if n > 1)


class SourceError(CurationError):
    """A source file or dataset cannot be read at all."""


class DatasetNotFound(CurationError):
    """No published dataset (or version) with that name."""


class RowError(Exception):
    """One row cannot become a valid pair.

    ``code`` is short and stable (it is grouped on in the funnel); ``field`` names the
    offending field when there is one.
    """

    def __init__(self, code: str, message: str, field: str | None = None):
        super().__init__(message)
        self.code = code
        self.message = message
        self.field = field

    def __repr__(self) -> str:  # pragma: no cover - debugging aid
        return f"RowError({self.code!r}, {self.message!r}, field={self.field!r})"


class NoPairs(Exception):
    """A valid row that yields no pair by the recipe's rule (e.g. all ratings equal).

    Such rows are *filtered* with this reason, not quarantined: nothing is wrong with them.
    """

    def __init__(self, reason: str):
        super().__init__(reason)
        self.reason = reason
