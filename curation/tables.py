"""Streaming writers and readers for contract tables.

Stages hand each other Parquet files, never whole tables in memory: a writer buffers one
batch of rows as columns and flushes it to a ParquetWriter with the contract's schema.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from schemas import arrow_schema


class TableWriter:
    """Append rows (dicts) to a Parquet file of one contract table, one batch at a time."""

    def __init__(self, path: str | Path, table: str, *, batch_size: int = 5_000):
        self.path = Path(path)
        self.schema = arrow_schema(table)
        self.names = self.schema.names
        self.batch_size = batch_size
        self.rows_written = 0
        self._columns: dict[str, list[Any]] = {n: [] for n in self.names}
        self._pending = 0
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._writer = pq.ParquetWriter(self.path, self.schema, compression="zstd")

    def append(self, row: dict[str, Any]) -> None:
        cols = self._columns
        for name in self.names:
            cols[name].append(row.get(name))
        self._pending += 1
        if self._pending >= self.batch_size:
            self.flush()

    def flush(self) -> None:
        if not self._pending:
            return
        batch = pa.RecordBatch.from_pydict(self._columns, schema=self.schema)
        self._writer.write_batch(batch)
        self.rows_written += self._pending
        self._columns = {n: [] for n in self.names}
        self._pending = 0

    def close(self) -> Path:
        self.flush()
        self._writer.close()
        return self.path

    def __enter__(self) -> TableWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def iter_rows(path: str | Path, *, batch_size: int = 5_000) -> Iterator[list[dict[str, Any]]]:
    """Rows of a staged Parquet file, one list of dicts per batch."""
    pf = pq.ParquetFile(path)
    for batch in pf.iter_batches(batch_size=batch_size):
        yield batch.to_pylist()


def count_rows(path: str | Path) -> int:
    return pq.ParquetFile(path).metadata.num_rows
