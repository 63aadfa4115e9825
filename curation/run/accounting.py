"""Row accounting: every input row ends in exactly one place, checked by code.

Two invariants, because one source row can expand into several pairs (rated rows):
  rows_in   = quarantined at read/adapt + filtered at adapt + rows that produced pairs
  pairs_out = quarantined at validate + filtered by dedup + kept
and each later stage accounts for the pairs it was given (generated pairs have their own
line: considered = kept + filtered; the filter stage: in = out + filtered). Every stage
declares its part of the funnel and checks its own counts against its staged files
(``Stage.funnel``, ``Stage.audit``); this module merges and runs them, in spine order,
before anything is published. A mismatch stops the run.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from curation import spine
from curation.errors import CurationError
from curation.stages.base import StageOutput


def funnel(outs: Mapping[str, StageOutput]) -> dict[str, Any]:
    """The run's funnel as plain numbers, grouped by stage and by reason: every stage's part."""
    merged: dict[str, Any] = {}
    for name, out in outs.items():
        for key, value in spine.stage(name).funnel(out).items():
            if isinstance(value, dict) and isinstance(merged.get(key), dict):
                merged[key] = {**merged[key], **value}
            else:
                merged[key] = value
    return merged


def check(f: dict[str, Any], outs: Mapping[str, StageOutput]) -> None:
    """Raise CurationError if any row is unaccounted for."""
    problems: list[str] = []
    names = list(outs)
    for i, name in enumerate(names):
        upstream = {n: outs[n] for n in names[:i] if n in spine.stage(name).upstream}
        problems += spine.stage(name).audit(outs[name], f, upstream)
    if problems:
        raise CurationError("row accounting failed, nothing was published:\n  - " + "\n  - ".join(problems))
