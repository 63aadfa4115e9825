"""Streaming writer and reader for contract tables.

Stages hand each other files, never whole tables in memory: a writer buffers one batch of
rows and flushes it with the contract's schema. Published tables are Parquet (zstd). The
pairs a stage hands only to the next stage can be Arrow IPC files instead (``.arrow``): they
cost a fraction of a Parquet round trip, which at a million pairs is seconds per stage.
Uncompressed by default: at a million HH pairs LZ4 or zstd cost ingest about 3.5 core-seconds,
the 0.6 GB more that it writes without them about 1 (in the kernel, on a local disk); a
recipe short of disk can choose either (``ingest.staging_compression``).
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.ipc as ipc
import pyarrow.parquet as pq

from curation.parallel import ordered_map
from schemas import arrow_schema

ARROW_SUFFIX = ".arrow"
READ_AHEAD = 2
ROW_BUFFER_BYTES = 16 << 20


def _text_size(value: Any) -> int:
    """Characters of text in a row, messages and other nested values included."""
    if isinstance(value, str):
        return len(value)
    if isinstance(value, dict):
        return sum(_text_size(v) for v in value.values())
    if isinstance(value, list):
        return sum(_text_size(v) for v in value)
    return 0


class TableWriter:
    """Append rows (dicts) or Arrow tables to a file of one contract table: Parquet (zstd), or
    Arrow IPC when the path ends in ``.arrow`` (``compression``: none, lz4 or zstd)."""

    def __init__(self, path: str | Path, table: str, *, batch_size: int = 5_000, compression: str | None = None):
        self.path = Path(path)
        self.schema = arrow_schema(table)
        self.names = self.schema.names
        self.batch_size = batch_size
        self.rows_written = 0
        self._rows: list[dict[str, Any]] = []
        self._text_bytes = 0
        self.path.parent.mkdir(parents=True, exist_ok=True)
        if self.path.suffix == ARROW_SUFFIX:
            options = ipc.IpcWriteOptions(compression=None if compression in (None, "none") else compression)
            self._writer: Any = ipc.new_file(str(self.path), self.schema, options=options)
        else:
            self._writer = pq.ParquetWriter(self.path, self.schema, compression="zstd")

    def append(self, row: dict[str, Any]) -> None:
        """Missing keys are written as nulls. The buffer is flushed at ``batch_size`` rows or
        at about ``ROW_BUFFER_BYTES`` of text, whichever comes first (quarantined rows carry
        up to ``raw_limit_bytes`` of raw text each, pairs from the row path their messages)."""
        self._rows.append(row)
        self._text_bytes += _text_size(row)
        if len(self._rows) >= self.batch_size or self._text_bytes >= ROW_BUFFER_BYTES:
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
        self._text_bytes = 0

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
        with pa.OSFile(str(path)) as source:
            return ipc.open_file(source).count_rows()  # from the batches' headers: nothing decompressed
    return pq.ParquetFile(path).metadata.num_rows


def iter_batches(path: str | Path, *, batch_size: int, columns: list[str] | None = None) -> Iterator[pa.RecordBatch]:
    """The file's rows in order, in batches of at most ``batch_size``: Parquet or Arrow IPC."""
    if Path(path).suffix != ARROW_SUFFIX:
        yield from pq.ParquetFile(path).iter_batches(batch_size=batch_size, columns=columns)
        return
    # read, not memory-mapped: mapped pages stay resident (and count as the process's memory)
    # until the kernel needs them, which at a million pairs is a gigabyte
    with pa.OSFile(str(path)) as source:
        options = None
        if columns is not None:  # only those columns are read and decompressed
            names = ipc.open_file(source).schema.names
            options = ipc.IpcReadOptions(included_fields=sorted(names.index(c) for c in columns))
        reader = ipc.open_file(source, options=options)
        # the next batches are read and decompressed on other threads while this one is used
        for batch in ordered_map(reader.get_batch, range(reader.num_record_batches), READ_AHEAD, window=READ_AHEAD):
            if columns is not None:
                batch = batch.select(columns)
            for start in range(0, batch.num_rows, batch_size):
                yield batch.slice(start, batch_size)


def link_or_copy(source: str | Path, target: str | Path) -> Path:
    """``target`` as a hard link to ``source`` (a copy across file systems): a later stage's
    own name for an unchanged file, which outlives the earlier stage's folder."""
    target = Path(target)
    target.unlink(missing_ok=True)
    try:
        os.link(source, target)
    except OSError:
        shutil.copyfile(source, target)
    return target


def write_positions(positions: list[int], path: str | Path) -> Path:
    """Row positions (ascending) as a one-column Parquet file."""
    pq.write_table(pa.table({"row": pa.array(positions, pa.int64())}), path)
    return Path(path)


def read_positions(path: str | Path | None) -> np.ndarray:
    if path is None:
        return np.zeros(0, np.int64)
    return pq.read_table(path, columns=["row"]).column("row").to_numpy()


def selected_batches(
    path: str | Path, excluded: np.ndarray, *, batch_size: int, columns: list[str] | None = None
) -> Iterator[tuple[pa.RecordBatch, np.ndarray | None]]:
    """The file's batches, each with the mask of its rows not at an ``excluded`` position
    (None: all of them), for a stage that hands on a file with the rows it dropped."""
    offset = 0
    for batch in iter_batches(path, batch_size=batch_size, columns=columns):
        lo, hi = np.searchsorted(excluded, [offset, offset + batch.num_rows])
        mask = None
        if hi > lo:
            mask = np.ones(batch.num_rows, np.bool_)
            mask[excluded[lo:hi] - offset] = False
        offset += batch.num_rows
        yield batch, mask


def rows_where(data: pa.Table | pa.RecordBatch, mask: np.ndarray) -> pa.Table | pa.RecordBatch:
    """The rows where ``mask`` is true, by ``take``: on message lists ``filter`` is about ten
    times slower (pyarrow 21-22), and the spine drops a few rows from nearly every batch."""
    return data.take(from_numpy(np.flatnonzero(mask)))


def from_numpy(values: np.ndarray) -> pa.Array:
    """A 1-d numeric or boolean numpy array as Arrow, without ``pa.array``'s check for pandas
    (whose first call imports pandas: 0.4 s, inside whatever stage calls it first)."""
    values = np.ascontiguousarray(values)
    if values.dtype == np.bool_:
        bits = np.packbits(values, bitorder="little")
        return pa.Array.from_buffers(pa.bool_(), len(values), [None, pa.py_buffer(bits)])
    return pa.Array.from_buffers(pa.from_numpy_dtype(values.dtype), len(values), [None, pa.py_buffer(values)])
