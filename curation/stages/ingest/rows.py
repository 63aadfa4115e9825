"""One source row through its adapter: the row path of ingest, and the rows it writes.

Every ingest path ends here for the rows it cannot vouch for, so the outcome of a row (pairs,
quarantined with an error, or filtered with a reason) is decided in one place.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from curation.errors import NoPairs, RowError
from curation.records import PairDraft, check_structure, content_ids, quarantine_row
from curation.sources import SourceConfig
from curation.stages.ingest.readers import RawRow


def filtered_row(source: str, file: str, row: int, reason: str) -> dict[str, Any]:
    return {"source_dataset": source, "source_file": file, "source_row": row, "stage": "adapt", "decision": "filtered", "reason": reason}


def pair_row(draft: PairDraft, src: SourceConfig, file: str, row: int, index: int) -> dict[str, Any]:
    pair = {"prompt": draft.prompt, "chosen": draft.chosen, "rejected": draft.rejected}
    check_structure(pair)
    for name in ("chosen_score", "rejected_score"):
        value = getattr(draft, name)
        if value is not None and not isinstance(value, (int, float)):
            raise RowError("wrong_type", f"{name} must be a number, got {type(value).__name__}", name)
    ids = content_ids(draft.prompt, draft.chosen, draft.rejected)
    pair.update(
        pair_id=ids[1],
        prompt_id=ids[0],
        chosen_score=draft.chosen_score,
        rejected_score=draft.rejected_score,
        label_source=src.label_source,
        label_model=src.label_model or draft.label_model,
        source_dataset=src.name,
        source_file=file,
        source_row=row,
        source_pair_index=index,
        metadata=json.dumps(draft.metadata, ensure_ascii=False, default=str) if draft.metadata else None,
    )
    return pair


@dataclass
class RowOutcomes:
    """What some rows came to, in row order, for the ingest stage to count and write."""

    rows_in: int = 0
    pairs: list[dict[str, Any]] = field(default_factory=list)
    rows_with_pairs: int = 0
    quarantined: list[dict[str, Any]] = field(default_factory=list)
    filtered: list[dict[str, Any]] = field(default_factory=list)

    def add(self, raw: RawRow, adapter: Any, src: SourceConfig, file: str) -> None:
        """One row read from ``file``: through the adapter, into exactly one of the three lists."""
        self.rows_in += 1
        if raw.error is not None:
            self.quarantined.append(quarantine_row(src.name, file, raw.index, "read", raw.error, raw.raw, raw.raw_bytes))
            return
        try:
            drafts = adapter(raw.value, f"{src.name}:{raw.index}")
            if not drafts:
                raise NoPairs("no_pairs")
            rows = [pair_row(d, src, file, raw.index, i) for i, d in enumerate(drafts)]
        except RowError as err:
            self.quarantined.append(quarantine_row(src.name, file, raw.index, "adapt", err, raw.raw, raw.raw_bytes))
            return
        except NoPairs as np_:
            self.filtered.append(filtered_row(src.name, file, raw.index, np_.reason))
            return
        self.rows_with_pairs += 1
        self.pairs += rows
