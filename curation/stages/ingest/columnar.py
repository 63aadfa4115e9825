"""The fast path of ingest: JSONL blocks parsed by pyarrow and adapted in columns.

For a source whose reader hands out line blocks (JSONL) and whose adapter has a columnar
form (``build_columns``), a block's lines are parsed together (``jsonl_columns``), adapted
in Polars, and given their content ids in one vectorised pass. The lines either step
cannot vouch for (bad JSON, malformed or diverging transcripts, odd whitespace) go through
the row path (``rows.RowOutcomes``), and the two are merged back in row order, so the
stage writes the same rows, in the same order, as it would row by row; tests compare the
two on real and broken inputs. Blocks are independent, so the stage runs them on a few
threads: Polars, pyarrow and numpy release the GIL for the heavy parts.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow as pa

from curation.records import content_id_columns
from curation.sources import SourceConfig
from curation.stages.ingest.adapters import ADAPTERS, check_options
from curation.stages.ingest.adapters._columns import ColumnForm
from curation.stages.ingest.readers.jsonl import JsonlReader, LineBlock
from curation.stages.ingest.readers.jsonl_columns import read_columns
from curation.stages.ingest.rows import RowOutcomes
from curation.tables import from_numpy, rows_where
from schemas import arrow_schema


def column_form(src: SourceConfig, reader: Any) -> ColumnForm | None:
    """The adapter's columnar form when ``reader`` can feed it (and the source has no row limit)."""
    build_columns = getattr(ADAPTERS[src.adapter], "build_columns", None)
    if build_columns is None or src.limit is not None or not isinstance(reader, JsonlReader):
        return None
    return build_columns(check_options(src.adapter, src.options))


@dataclass
class BlockResult:
    """A block's pairs as one Arrow table in row order (None: all in ``outcomes``), and its
    other rows' outcomes."""

    lines: int
    pairs: pa.Table | None
    outcomes: RowOutcomes


def ingest_block(block: LineBlock, form: ColumnForm, adapter: Any, src: SourceConfig, file: str) -> BlockResult:
    columns = read_columns(block, form.fields)
    drafts = form.adapt(columns.table)
    vouched = drafts.vouched
    indexes = block.indexes
    fast = _pairs_table(drafts, vouched, indexes[columns.positions[vouched]], src, file)
    outcomes = RowOutcomes(rows_in=fast.num_rows, rows_with_pairs=fast.num_rows)
    for pos in np.union1d(columns.slow, columns.positions[~vouched]).tolist():
        raw = block.row(pos)
        if raw is not None:  # None: a blank line, which is no row
            outcomes.add(raw, adapter, src, file)
    pairs = fast
    if outcomes.pairs:
        slow = pa.Table.from_pylist(outcomes.pairs, schema=fast.schema)
        pairs = pa.concat_tables([fast, slow]).sort_by([("source_row", "ascending"), ("source_pair_index", "ascending")])
        outcomes.pairs = []  # now in ``pairs``, which the stage writes
    return BlockResult(len(block), pairs, outcomes)


def _pairs_table(drafts: Any, keep: np.ndarray, rows: np.ndarray, src: SourceConfig, file: str) -> pa.Table:
    """Rows of the pairs table for the vouched drafts: ids, provenance, no scores or metadata."""
    schema = arrow_schema("pairs")
    prompt, chosen, rejected = drafts.prompt, drafts.chosen, drafts.rejected
    if not keep.all():  # a copy of every message: skipped in the common case
        prompt, chosen, rejected = (rows_where(messages, keep) for messages in (prompt, chosen, rejected))
    prompt_ids, pair_ids = content_id_columns(prompt, chosen, rejected)
    n = len(rows)

    def constant(value: Any, name: str) -> pa.Array:
        return pa.array([value] * n, schema.field(name).type)

    columns = {
        "pair_id": pa.array(pair_ids, pa.string()),
        "prompt_id": pa.array(prompt_ids, pa.string()),
        "prompt": prompt,
        "chosen": chosen,
        "rejected": rejected,
        "label_source": constant(src.label_source, "label_source"),
        "label_model": constant(src.label_model, "label_model"),
        "source_dataset": constant(src.name, "source_dataset"),
        "source_file": constant(file, "source_file"),
        "source_row": from_numpy(rows.astype(np.int64)),
        "source_pair_index": from_numpy(np.zeros(n, np.int32)),
    }
    return pa.table([columns.get(f.name, pa.nulls(n, f.type)) for f in schema], schema=schema)
