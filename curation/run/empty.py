"""No silent empty datasets: a source that yields no kept pair stops the run before publish.

A misspelt field name quarantines every row of its source, and a run that publishes the
other sources' pairs (or nothing at all) and exits 0 hides that. So before the commit each
recipe source must have at least one pair in the version's pairs table; if one has none,
the run stops with the source's top reasons, one example row each, and publishes nothing.
``allow_empty: true`` in the recipe (``--allow-empty``) publishes anyway.
"""

from __future__ import annotations

from collections import Counter

import polars as pl

from curation.config import RunConfig
from curation.errors import CurationError

TOP_REASONS = 3


def empty_sources(cfg: RunConfig, tables: dict[str, list[str]]) -> list[str]:
    """The recipe sources with no pair in the version's pairs table, in recipe order."""
    kept: Counter[str] = Counter()
    for path in tables.get("pairs", []):
        kept.update(pl.read_parquet(path, columns=["source_dataset"])["source_dataset"].to_list())
    return [src.name for src in cfg.sources if not kept[src.name]]


def _why(source: str, tables: dict[str, list[str]]) -> list[str]:
    """The source's top reasons (quarantine errors, filter decisions), one example row each."""
    parts = []
    for path in tables.get("quarantine", []):
        q = pl.read_parquet(path, columns=["source_dataset", "source_file", "source_row", "stage", "field", "error_code", "error"])
        parts.append(
            q.filter(pl.col("source_dataset") == source).select(
                outcome=pl.lit("quarantined"),
                stage="stage",
                reason="error_code",
                file="source_file",
                row="source_row",
                detail=pl.when(pl.col("field").is_not_null()).then(pl.format("field {}: {}", "field", "error")).otherwise("error"),
            )
        )
    for path in tables.get("decisions", []):
        d = pl.read_parquet(path, columns=["source_dataset", "source_file", "source_row", "stage", "decision", "reason"])
        parts.append(
            d.filter((pl.col("source_dataset") == source) & (pl.col("decision") == "filtered")).select(
                outcome=pl.lit("filtered"),
                stage="stage",
                reason="reason",
                file="source_file",
                row="source_row",
                detail=pl.lit(None, pl.String),
            )
        )
    rows = pl.concat(parts) if parts else pl.DataFrame()
    if rows.is_empty():
        return ["no row was read from it (an empty file?)"]
    top = rows.group_by("outcome", "stage", "reason", maintain_order=True).agg(pl.len().alias("n"), pl.first("file", "row", "detail"))
    lines = []
    for r in top.sort("n", descending=True, maintain_order=True).head(TOP_REASONS).iter_rows(named=True):
        example = f"e.g. {r['file']} row {r['row']}" + (f", {r['detail']}" if r["detail"] else "")
        lines.append(
            f"{r['reason']} ({r['n']:,} {'rows' if r['outcome'] == 'quarantined' else 'pairs'}, {r['outcome']} at {r['stage']}): {example}"
        )
    return lines


def check_not_empty(cfg: RunConfig, tables: dict[str, list[str]]) -> None:
    """Raise CurationError naming every recipe source without a kept pair (unless ``allow_empty``)."""
    if cfg.allow_empty:
        return
    empty = empty_sources(cfg, tables)
    if not empty:
        return
    lines = []
    for name in empty:
        lines.append(f"source {name!r} yielded no kept pair: every row was quarantined or filtered. Its top reasons:")
        lines += [f"  - {why}" for why in _why(name, tables)]
    lines.append(
        "Nothing was published. Fix the recipe (a misspelt field name? the wrong adapter?), or publish anyway with "
        "allow_empty: true in the recipe or --allow-empty."
    )
    raise CurationError("\n".join(lines))
