"""Vectorised helpers over the flat items of Arrow list columns (messages of a pair, turns of a
transcript): each item's position within its row, index ranges, per-row counts. Shared by the
columnar adapters and the validate stage's pre-check."""

from __future__ import annotations

import numpy as np


def positions(lengths: np.ndarray) -> np.ndarray:
    """Concatenated ``arange(lengths[i])``: each item's position within its row."""
    return np.arange(int(lengths.sum())) - np.repeat(np.cumsum(lengths) - lengths, lengths)


def ranges(starts: np.ndarray, lengths: np.ndarray) -> np.ndarray:
    """Concatenated ``arange(starts[i], starts[i] + lengths[i])``, vectorised."""
    return np.repeat(starts, lengths) + positions(lengths)


def count_per_row(flags: np.ndarray, lengths: np.ndarray) -> np.ndarray:
    """Per row, how many of its ``lengths[i]`` consecutive items are True."""
    total = np.concatenate(([0], np.cumsum(flags, dtype=np.int64)))
    ends = np.cumsum(lengths)
    return total[ends] - total[ends - lengths]
