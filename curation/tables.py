"""Streaming writer and reader for contract tables.

Stages hand each other files, never whole tables in memory: a writer buffers one batch of
rows and flushes it with the contract's schema. Published tables are Parquet (zstd). The
pairs a stage hands only to the next stage can be Arrow IPC files instead (``.arrow``,
uncompressed): written and read at about memory speed, they cost a fraction of a Parquet
round trip, which at a million pairs is seconds per stage, for about 1 KB of disk
per HH pair while the run lasts.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.ipc as ipc
import pyarrow.parquet as pq

from schemas import arrow_schema

ARROW_SUFFIX = ".arrow"


class TableWriter:
    """Append rows (dicts) or Arrow tables to a file of one contract table: Parquet, or Arrow
    IPC when the path ends in ``.arrow``."""

    def __init__(self, path: str | Path, table: str, *, batch_size: int = 5_000):
        self.path = Path(path)
        self.schema = arrow_schema(table)
        self.names = self.schema.names
        self.batch_size = batch_size
        self.rows_written = 0
        self._rows: list[dict[str, Any]] = []
        self.path.parent.mkdir(parents=True, exist_ok=True)
        if self.path.suffix == ARROW_SUFFIX:
            self._writer: Any = ipc.new_file(str(self.path), self.schema)
        else:
            self._writer = pq.ParquetWriter(self.path, self.schema, compression="zstd")

    def append(self, row: dict[str, Any]) -> None:
        """Missing keys are written as nulls."""
        self._rows.append(row)
        if len(self._rows) >= self.batch_size:
            self.flush()

    def write_table(self, table: pa.Table) -> None:
        """Rows already in Arrow (cast to the contract), after any appended rows."""
        self.flush()
        if table.num_rows:
            self._writer.write_table(table.select(self.names).cast(self.schema))
            self.rows_written += table.num_rows

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
    if Path(path).suffix == ARROW_SUFFIX:
        with pa.memory_map(str(path)) as source:
            reader = ipc.open_file(source)
            return sum(reader.get_batch(i).num_rows for i in range(reader.num_record_batches))
    return pq.ParquetFile(path).metadata.num_rows


def iter_batches(path: str | Path, *, batch_size: int, columns: list[str] | None = None) -> Iterator[pa.RecordBatch]:
    """The file's rows in order, in batches of at most ``batch_size``: Parquet or Arrow IPC."""
    if Path(path).suffix != ARROW_SUFFIX:
        yield from pq.ParquetFile(path).iter_batches(batch_size=batch_size, columns=columns)
        return
    # read, not memory-mapped: mapped pages stay resident (and count as the process's memory)
    # until the kernel needs them, which at a million pairs is a gigabyte
    with pa.OSFile(str(path)) as source:
        reader = ipc.open_file(source)
        for i in range(reader.num_record_batches):
            batch = reader.get_batch(i)
            if columns is not None:
                batch = batch.select(columns)
            for start in range(0, batch.num_rows, batch_size):
                yield batch.slice(start, batch_size)


def from_numpy(values: np.ndarray) -> pa.Array:
    """A 1-d numeric or boolean numpy array as Arrow, without ``pa.array``'s check for pandas
    (whose first call imports pandas: 0.4 s, inside whatever stage calls it first)."""
    values = np.ascontiguousarray(values)
    if values.dtype == np.bool_:
        bits = np.packbits(values, bitorder="little")
        return pa.Array.from_buffers(pa.bool_(), len(values), [None, pa.py_buffer(bits)])
    return pa.Array.from_buffers(pa.from_numpy_dtype(values.dtype), len(values), [None, pa.py_buffer(values)])
