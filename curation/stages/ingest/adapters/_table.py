"""Table-level adapters: for sources where a pair is built from several rows.

A message table (OpenAssistant: one row per message, trees through ``parent_id``) makes a
pair from two sibling rows plus their ancestors, so no single row can be adapted alone.
Such an adapter module sets ``SCOPE = "table"`` and its ``build(options)`` returns
``adapter(rows) -> TableResult``: it sees every readable row of the source at once (the
whole source is held in memory, which is fine for message tables, not for bulk files).

Row accounting stays per row: ``outcomes[i]`` says where row ``i`` ended (``None`` kept,
a ``NoPairs`` filtered with its reason, a ``RowError`` quarantined), and each pair is
anchored at one kept row (its ``source_row``), with ``source_pair_index`` counting the
pairs of that anchor.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from curation.errors import CurationError, NoPairs, RowError
from curation.records import PairDraft

Outcome = RowError | NoPairs | None


@dataclass
class TableResult:
    """Where every row of a source ended, by position, and the pairs by anchor row."""

    outcomes: list[Outcome]
    pairs: dict[int, list[PairDraft]] = field(default_factory=dict)

    def check(self, n_rows: int, adapter: str) -> None:
        """Fail the run when the adapter broke the contract: accounting must not depend on trust."""
        problems = []
        if len(self.outcomes) != n_rows:
            problems.append(f"{len(self.outcomes)} outcomes for {n_rows} rows")
        if any(o is not None and not isinstance(o, (RowError, NoPairs)) for o in self.outcomes):
            problems.append("an outcome is neither None, RowError nor NoPairs")
        for pos, drafts in self.pairs.items():
            if not 0 <= pos < len(self.outcomes) or self.outcomes[pos] is not None or not drafts:
                problems.append(f"pairs anchored at row position {pos}, which is not a kept row with pairs")
                break
        if not self.pairs and any(o is None for o in self.outcomes):
            problems.append("rows marked kept but no pairs")
        if problems:
            raise CurationError(f"adapter {adapter!r} broke the table-adapter contract: " + "; ".join(problems))


TableAdapter = Callable[[list[dict]], TableResult]
