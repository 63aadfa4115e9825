"""The run report's length section: per source, how often the published chosen response is the
longer one, and a histogram of log(len_chosen / len_rejected).

A preference set whose chosen response is usually the longer (or the shorter) one teaches
length; the ``length_balance`` filter step evens that out, and this section shows where a
version stands. Lengths are characters of the responses' message contents, summed, as the
filter step counts them (``curation.messages.message_chars``).

The figures are computed from the version's published pairs when its summary is written
(``curation.report.summary``): the table is scanned in batches, reading only
``source_dataset``, ``chosen`` and ``rejected``, and only two lengths per pair are kept. The
share leaves pairs of equal length out (they favour neither side), as the filter step does.
The histogram leaves out pairs with an empty response (the logarithm is undefined); it has an
odd number of bins, symmetric around 0, so equal lengths fall in the middle bin.
"""

from __future__ import annotations

import html
from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import polars as pl
import pyarrow as pa

from curation.messages import message_chars
from curation.report.plots import Section, histogram_grid, table

if TYPE_CHECKING:
    from curation.store.catalog import VersionInfo

HEADER = ["source", "pairs", "chosen longer", "chosen shorter", "equal length", "share chosen longer"]
BINS = 21
ALL = "all sources"
MAX_PANELS = 9
SCAN_BATCH = 20_000


def log_ratio_histogram(values: np.ndarray, bins: int = BINS) -> dict[str, Any] | None:
    """A histogram symmetric around 0 (``bins`` odd: equal lengths fall in the middle bin), as
    ``curation.histograms.histogram`` shapes it, with a line at 0; None for no values."""
    if values.size == 0:
        return None
    top = float(np.abs(values).max()) or 1.0
    counts, edges = np.histogram(values, bins=bins, range=(-top, top))
    return {"counts": counts.tolist(), "edges": [float(e) for e in edges], "cut": 0.0, "n": int(values.size)}


def _figures(longer: int, shorter: int, equal: int, ratios: list[np.ndarray]) -> dict[str, Any]:
    values = np.concatenate(ratios) if ratios else np.empty(0)
    return {
        "pairs": longer + shorter + equal,
        "chosen_longer": longer,
        "chosen_shorter": shorter,
        "equal_length": equal,
        "share_chosen_longer": longer / (longer + shorter) if longer + shorter else None,
        "with_empty_response": longer + shorter + equal - int(values.size),
        "log_ratio": log_ratio_histogram(values),
    }


def length_figures(batches: Iterable[pa.RecordBatch | pa.Table | pl.DataFrame]) -> dict[str, Any] | None:
    """Per source (in order of appearance) and over all sources: pairs, chosen longer / shorter /
    equal, the share of chosen-longer among pairs of unequal length, and the log-ratio histogram.
    ``batches`` hold ``source_dataset``, ``chosen`` and ``rejected``; None when they hold no pair."""
    counts: dict[str, dict[int, int]] = {}
    ratios: dict[str, list[np.ndarray]] = {}
    for batch in batches:
        frame = batch if isinstance(batch, pl.DataFrame) else pl.from_arrow(batch)
        assert isinstance(frame, pl.DataFrame)
        sized = frame.select("source_dataset", c=message_chars("chosen"), r=message_chars("rejected")).with_columns(
            side=(pl.col("c") - pl.col("r")).sign()
        )
        for source, side, n in sized.group_by("source_dataset", "side", maintain_order=True).len().iter_rows():
            counts.setdefault(source, {}).setdefault(side, 0)
            counts[source][side] += n
        logs = sized.filter((pl.col("c") > 0) & (pl.col("r") > 0)).select(
            "source_dataset", x=(pl.col("c").cast(pl.Float64) / pl.col("r")).log()
        )
        for (source,), part in logs.group_by("source_dataset", maintain_order=True):
            ratios.setdefault(str(source), []).append(part["x"].to_numpy())
    if not counts:
        return None
    sources = {s: _figures(c.get(1, 0), c.get(-1, 0), c.get(0, 0), ratios.get(s, [])) for s, c in counts.items()}
    total = {k: sum(c.get(k, 0) for c in counts.values()) for k in (1, -1, 0)}
    every = _figures(total[1], total[-1], total[0], [a for parts in ratios.values() for a in parts])
    return {"unit": "characters", "sources": sources, "all": every}


def version_lengths(data_root: str | Path, info: VersionInfo) -> dict[str, Any] | None:
    """The figures of a published version's pairs (None when it has no pairs table), scanned in batches."""
    if "pairs" not in info.tables:
        return None
    from curation.store.catalog import DatasetStore

    columns = ["source_dataset", "chosen", "rejected"]
    return length_figures(DatasetStore(data_root).scan(info.dataset, "pairs", version=info.version, columns=columns, batch_size=SCAN_BATCH))


def _share(x: float | None) -> str:
    return "" if x is None else f"{100 * x:.1f}%"


def length_rows(lengths: dict[str, Any]) -> list[list[Any]]:
    """One row per source, then all sources when there are several (the CLI can print these)."""
    named = list(lengths["sources"].items()) + ([(ALL, lengths["all"])] if len(lengths["sources"]) > 1 else [])
    return [
        [
            name,
            f"{s['pairs']:,}",
            f"{s['chosen_longer']:,}",
            f"{s['chosen_shorter']:,}",
            f"{s['equal_length']:,}",
            _share(s["share_chosen_longer"]),
        ]
        for name, s in named
    ]


def lengths_section(summary: dict[str, Any]) -> Section | None:
    """The section, or None for a summary without length figures (an older version's, or no pairs)."""
    lengths = summary.get("lengths")
    if not lengths:
        return None
    out = (
        "<p>Of the published pairs, per source: how often the chosen response is the longer one (in characters). "
        "The share is over pairs of unequal length; a set far from 50% teaches a length preference "
        "(the <code>length_balance</code> filter step evens it out). Which pairs: "
        '<code>curate sql "SELECT source_dataset, count(*) FROM pairs GROUP BY 1"</code>.</p>'
    )
    out += table(HEADER, length_rows(lengths))
    panels = [(name, s["log_ratio"]) for name, s in lengths["sources"].items() if s["log_ratio"]][:MAX_PANELS]
    if panels:
        empty = lengths["all"]["with_empty_response"]
        note = f" {empty:,} pairs with an empty response are left out." if empty else ""
        out += (
            "<h3>log(len chosen / len rejected)</h3><p>Right of the red line the chosen response is the longer one; "
            f"equal lengths fall in the middle bin.{html.escape(note)}</p>" + histogram_grid(panels, "length ratio histograms")
        )
    return Section("lengths", "Response lengths", out)
