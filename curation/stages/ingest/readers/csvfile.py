"""CSV: the header row gives the keys, every value stays a string (no type guessing).

Lines are read as bytes and decoded one by one, strictly, so a row with bytes that are not
UTF-8 becomes an ``undecodable_text`` row while its neighbours read fine (the csv module
itself only sees text, with bad bytes kept as surrogate escapes). A line longer than
max_row_bytes is cut while reading, so it is never held whole. ``RawRow.index`` is the
physical line index of the record's first line (line number - 1, the header is line 0),
as for JSONL, so a user can find the row in an editor.

Note: the csv module's field size limit is process-wide; it is raised (never lowered) to
max_row_bytes + 1 so that a field is only refused when its row is too large anyway.
"""

from __future__ import annotations

import csv
from collections.abc import Iterator
from typing import Any

from curation.errors import SourceError
from curation.stages.ingest.readers._common import (
    GZIP_ERRORS,
    FileReaderBase,
    RawRow,
    describe_decode_error,
    error_row,
    open_stream,
    raw_text,
    skip_bom,
)
from curation.stages.ingest.readers.jsonl import truncated_row


class _Lines:
    """Feeds decoded lines to csv.reader and remembers what the current record was made of."""

    def __init__(self, stream: Any, max_row_bytes: int, raw_limit_bytes: int):
        self._readline = stream.readline
        self._chunk = max_row_bytes + 2
        self._raw_limit = raw_limit_bytes
        self.line = -1
        self.start_record()

    def start_record(self) -> None:
        self.first = self.line + 1
        self.size = 0
        self.head = b""
        self.tail = b""
        self.cut = False  # a line was too long and only its start was kept
        self.bad: str | None = None  # first decoding problem in the record

    def __iter__(self) -> _Lines:
        return self

    def __next__(self) -> str:
        line = self._readline(self._chunk)
        if not line:
            raise StopIteration
        self.line += 1
        size = len(line)
        tail = line[-2:]
        if size == self._chunk and line[-1] != 10:  # too long: drop the rest of it
            self.cut = True
            while part := self._readline(self._chunk):
                size += len(part)
                tail = (tail + part[-2:])[-2:]  # "\r" may end one chunk and "\n" start the next
                if part[-1] == 10:
                    break
        self.size += size
        self.tail = tail
        if len(self.head) < self._raw_limit:
            self.head += line[: self._raw_limit - len(self.head)]
        try:
            return line.decode("utf-8")
        except UnicodeDecodeError as err:
            if self.bad is None:
                self.bad = f"line {self.line + 1} is not valid UTF-8: {describe_decode_error(line, err)}"
            return line.decode("utf-8", "surrogateescape")

    def record_bytes(self) -> int:
        """The record's size without its final line break."""
        return self.size - (2 if self.tail == b"\r\n" else 1 if self.tail[-1:] in (b"\n", b"\r") else 0)


class CsvReader(FileReaderBase):
    """A .csv (or .csv.gz) file with a header row; Excel dialect (comma, double quotes),
    strict quoting, so a broken quote is a ``csv_error`` row rather than a silent merge."""

    def _rows(self, allowance: int) -> Iterator[RawRow]:
        if csv.field_size_limit() <= self.max_row_bytes:
            csv.field_size_limit(self.max_row_bytes + 1)
        stream, hashed = open_stream(self.path)
        with hashed, stream:
            lines = _Lines(stream, self.max_row_bytes, self.raw_limit_bytes)
            try:
                skip_bom(stream)
                reader = csv.reader(lines, strict=True)
                header: list[str] | None = None
                while True:
                    lines.start_record()
                    try:
                        fields = next(reader)
                    except StopIteration:
                        break
                    except csv.Error as err:
                        row = self._csv_error(lines, err)
                    else:
                        if not fields:  # a blank line
                            continue
                        if header is None:
                            header = self._header(fields, lines)
                            continue
                        row = self._row(fields, header, lines)
                    yield row
            except GZIP_ERRORS as err:
                yield truncated_row(self.label, lines.line + 1, err)
            except OSError as err:
                raise SourceError(f"error while reading {self.label}: {err.strerror or err}") from None
            self._finished(hashed)

    def _header(self, fields: list[str], lines: _Lines) -> list[str]:
        if lines.bad:
            raise SourceError(f"{self.label}: the header is not UTF-8 text ({lines.bad})")
        if lines.cut or lines.record_bytes() > self.max_row_bytes:
            raise SourceError(f"{self.label}: the header row is larger than max_row_bytes ({self.max_row_bytes:,})")
        dupes = sorted({f for f in fields if fields.count(f) > 1})
        if dupes:
            raise SourceError(f"{self.label}: the header repeats column names: {', '.join(map(repr, dupes))}")
        return fields

    def _row(self, fields: list[str], header: list[str], lines: _Lines) -> RawRow:
        where = f"line {lines.first + 1}"
        size = lines.record_bytes()
        if lines.cut or size > self.max_row_bytes:
            return self._error(
                lines,
                "row_too_large",
                f"{where} is {size:,} bytes, over the limit of {self.max_row_bytes:,} bytes (validate.max_row_bytes)",
            )
        if lines.bad:
            return self._error(lines, "undecodable_text", lines.bad)
        if len(fields) != len(header):
            return self._error(lines, "csv_error", f"{where} has {len(fields)} fields, but the header has {len(header)}")
        return RawRow(lines.first, dict(zip(header, fields)), self._raw(lines), size, None)

    def _csv_error(self, lines: _Lines, err: csv.Error) -> RawRow:
        where = f"line {lines.first + 1}"
        if lines.cut or "field larger than field limit" in str(err):
            msg = f"{where} starts a record larger than the limit of {self.max_row_bytes:,} bytes (validate.max_row_bytes)"
            return self._error(lines, "row_too_large", msg)
        return self._error(lines, "csv_error", f"{where} is not valid CSV: {err}")

    def _raw(self, lines: _Lines) -> str:
        head = lines.head
        if len(head) >= lines.size:  # the whole record is kept: drop its line break
            head = head[: lines.record_bytes()]
        return raw_text(head, self.raw_limit_bytes)

    def _error(self, lines: _Lines, code: str, message: str) -> RawRow:
        return error_row(lines.first, code, message, self._raw(lines), lines.record_bytes())
