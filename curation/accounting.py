"""Row accounting: every input row ends in exactly one place, checked by code.

Two invariants, because one source row can expand into several pairs (rated rows):
  rows_in   = quarantined at read/adapt + filtered at adapt + rows that produced pairs
  pairs_out = quarantined at validate + filtered by dedup + kept
Both are checked on the stage counts *and* on the staged files' real row counts before
anything is published; a mismatch stops the run.
"""

from __future__ import annotations

from typing import Any

from curation.errors import CurationError
from curation.tables import count_rows


def funnel(ingested, validated, deduped, generated=None, labelled=None, filtered=None) -> dict[str, Any]:
    """The run's funnel as plain numbers, grouped by stage and by reason."""
    ic = ingested.counts
    quarantined_read: dict[str, int] = {}
    filtered_adapt: dict[str, int] = {}
    for c in ic["sources"].values():
        for code, n in c["quarantined"].items():
            quarantined_read[code] = quarantined_read.get(code, 0) + n
        for reason, n in c["filtered"].items():
            filtered_adapt[reason] = filtered_adapt.get(reason, 0) + n
    rows_with_pairs = sum(c["rows_with_pairs"] for c in ic["sources"].values())
    return {
        "rows_in": ic["rows_in"],
        "rows_quarantined": sum(quarantined_read.values()),
        "rows_filtered": sum(filtered_adapt.values()),
        "rows_with_pairs": rows_with_pairs,
        "pairs_out": ic["pairs_out"],
        "pairs_quarantined": sum(validated.counts["quarantined"].values()),
        "pairs_filtered": sum(deduped.counts["filtered"].values()),
        "kept": deduped.counts["kept"],
        "quarantined_by_error": {"read/adapt": quarantined_read, "validate": dict(validated.counts["quarantined"])},
        "filtered_by_reason": {"adapt": filtered_adapt, "dedup_exact": dict(deduped.counts["filtered"])},
        "sources": ic["sources"],
        **({"generated": generated_funnel(generated)} if generated is not None else {}),
        **({"labels": dict(labelled.counts)} if labelled is not None else {}),
        **({"filter": dict(filtered.counts)} if filtered is not None else {}),
    }


def generated_funnel(generated) -> dict[str, Any]:
    """Generated pairs are not input rows, so they get their own line of accounting:
    pairs_considered = pairs_kept + filtered."""
    return dict(generated.counts)


def check(f: dict[str, Any], ingested, validated, deduped, generated=None, filtered=None) -> None:
    """Raise CurationError if any row is unaccounted for."""
    problems = []
    for name, c in f["sources"].items():
        ended = sum(c["quarantined"].values()) + sum(c["filtered"].values()) + c["rows_with_pairs"]
        if c["rows_in"] != ended:
            problems.append(f"source {name}: {c['rows_in']} rows in but {ended} accounted for")
    if f["rows_in"] != f["rows_quarantined"] + f["rows_filtered"] + f["rows_with_pairs"]:
        problems.append("rows in != quarantined + filtered + rows with pairs")
    if f["pairs_out"] != f["pairs_quarantined"] + f["pairs_filtered"] + f["kept"]:
        problems.append(
            f"{f['pairs_out']} pairs produced != {f['pairs_quarantined']} quarantined + {f['pairs_filtered']} filtered + {f['kept']} kept"
        )
    on_disk = {
        "ingested pairs": (count_rows(ingested.files["pairs"]), f["pairs_out"]),
        "read/adapt quarantine": (count_rows(ingested.files["quarantine"]), f["rows_quarantined"]),
        "adapt decisions": (count_rows(ingested.files["decisions"]), f["rows_filtered"]),
        "validate quarantine": (count_rows(validated.files["quarantine"]), f["pairs_quarantined"]),
        "dedup decisions": (count_rows(deduped.files["decisions"]), f["pairs_out"] - f["pairs_quarantined"]),
        "kept pairs": (count_rows(deduped.files["pairs"]), f["kept"]),
    }
    if generated is not None:
        g = f["generated"]
        if g["pairs_considered"] != g["pairs_kept"] + sum(g["filtered"].values()):
            problems.append(f"generated: {g['pairs_considered']} pairs considered != {g['pairs_kept']} kept + {g['filtered']} filtered")
        on_disk |= {
            "candidates": (count_rows(generated.files["candidates"]), g["candidates"]),
            "generated pairs": (count_rows(generated.files["pairs"]), g["pairs_kept"]),
            "generate decisions": (count_rows(generated.files["decisions"]), g["pairs_considered"]),
        }
    if filtered is not None:
        fc = f["filter"]
        entering = f["kept"] + (f["generated"]["pairs_kept"] if generated is not None else 0)
        if fc["pairs_in"] != entering:
            problems.append(f"filter: {fc['pairs_in']} pairs in, but {entering} were kept and generated")
        if fc["pairs_in"] != fc["pairs_out"] + fc["filtered"]:
            problems.append(f"filter: {fc['pairs_in']} pairs in != {fc['pairs_out']} out + {fc['filtered']} filtered")
        on_disk["filtered pairs"] = (count_rows(filtered.files["pairs"]), fc["pairs_out"])
    for what, (found, expected) in on_disk.items():
        if found != expected:
            problems.append(f"{what}: {found} rows staged, {expected} counted")
    if problems:
        raise CurationError("row accounting failed, nothing was published:\n  - " + "\n  - ".join(problems))
