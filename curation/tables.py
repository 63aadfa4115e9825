"""Streaming writer for contract tables.

Stages hand each other Parquet files, never whole tables in memory: a writer buffers one
batch of rows and flushes it to a ParquetWriter with the contract's schema.
"""

from __future__ import annotations

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
        self._rows: list[dict[str, Any]] = []
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._writer = pq.ParquetWriter(self.path, self.schema, compression="zstd")

    def append(self, row: dict[str, Any]) -> None:
        """Missing keys are written as nulls."""
        self._rows.append(row)
        if len(self._rows) >= self.batch_size:
            self.flush()

    def flush(self) -> None:
        if not self._rows:
            return
        self._writer.write_batch(pa.RecordBatch.from_pylist(self._rows, schema=self.schema))
        self.rows_written += len(self._rows)
        self._rows = []

    def close(self) -> Path:
        self.flush()
        self._writer.close()
        return self.path

    def __enter__(self) -> TableWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def count_rows(path: str | Path) -> int:
    return pq.ParquetFile(path).metadata.num_rows
