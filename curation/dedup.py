"""Exact dedup of pairs on normalised text.

The first occurrence wins (sources in recipe order, rows in file order), so the result is
deterministic. Memory is one digest and one pair id per distinct pair.
"""

from __future__ import annotations

from typing import Any

from curation.records import dedup_key


class ExactDeduper:
    def __init__(self, enabled: bool = True):
        self.enabled = enabled
        self._first: dict[str, str] = {}
        self.duplicates = 0

    def seen(self, pair: dict[str, Any]) -> str | None:
        """The pair id of the earlier pair this one duplicates, or None if it is new."""
        if not self.enabled:
            return None
        key = dedup_key(pair["prompt"], pair["chosen"], pair["rejected"])
        first = self._first.get(key)
        if first is None:
            self._first[key] = pair["pair_id"]
            return None
        self.duplicates += 1
        return first
