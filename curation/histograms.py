"""Histograms as plain numbers: what a stage hands the run report instead of the values.

A stage summarises its scores with ``histogram`` into its counts (JSON-able, a few hundred
bytes), so the report draws them without ever reading a table back.
"""

from __future__ import annotations

from typing import Any

import numpy as np


def histogram(values: list[float], bins: int = 20, cut: float | None = None) -> dict[str, Any] | None:
    """A JSON-able histogram of the finite values (None for fewer than two)."""
    xs = np.asarray([v for v in values if v is not None], dtype=float)
    xs = xs[np.isfinite(xs)]
    if xs.size < 2:
        return None
    counts, edges = np.histogram(xs, bins=bins)
    return {"counts": counts.tolist(), "edges": [float(e) for e in edges], "cut": cut, "n": int(xs.size)}
