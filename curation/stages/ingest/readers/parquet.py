"""Parquet: streamed batch by batch with pyarrow's ``iter_batches``.

The footer is read when the source is opened, so a file that is no Parquet (or is cut
short) fails before any row is read; pyarrow's errors are translated into SourceErrors
that name the file. Rows are rendered to JSON for ``raw`` (see render.py).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from curation.errors import SourceError
from curation.stages.ingest.readers._common import FileReaderBase, RawRow, translate_os_error
from curation.stages.ingest.readers.render import render_rows

BATCH_ROWS = 4096  # bounded memory for wide rows, few enough Python-level calls


def open_parquet(path: Path) -> pq.ParquetFile:
    try:
        return pq.ParquetFile(path)
    except (FileNotFoundError, PermissionError, IsADirectoryError) as err:
        raise translate_os_error(path, err) from None
    except (pa.ArrowException, OSError, ValueError) as err:
        raise SourceError(f"{path} is not a readable Parquet file: {_first_line(err)}") from None


def _first_line(err: BaseException) -> str:
    text = str(err).strip().splitlines()
    return text[0] if text else type(err).__name__


class ParquetReader(FileReaderBase):
    """A .parquet file; ``RawRow.index`` is the row's position in the file."""

    def __init__(self, path: Path, **kwargs: Any):
        super().__init__(path, **kwargs)
        meta = open_parquet(self.path).metadata  # fail at open time, not mid-run
        self.num_rows = meta.num_rows

    def _rows(self, allowance: int) -> Iterator[RawRow]:
        pf = open_parquet(self.path)
        batches = pf.iter_batches(batch_size=min(BATCH_ROWS, allowance))
        start = 0
        while True:
            try:
                batch = next(batches, None)
            except (pa.ArrowException, OSError, ValueError) as err:
                raise SourceError(f"cannot read {self.label} after row {start}: the Parquet data is corrupt ({_first_line(err)})") from None
            if batch is None:
                break
            yield from render_rows(batch.to_pylist(), start, self.max_row_bytes, self.raw_limit_bytes, "row")
            start += batch.num_rows
