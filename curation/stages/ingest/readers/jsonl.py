"""JSON Lines: one object per line, streamed in binary with bounded memory.

The hot loop reads lines with ``readline(max_row_bytes + 2)`` from a 1 MiB buffer, so a
line too large is seen by its length alone and then skipped in bounded chunks (never
decoded or parsed, never held whole). Each line is parsed from bytes by orjson when it
is installed; any line it rejects goes to a slow path that decodes strictly and re-parses
with the standard library, which both names the problem in plain words and accepts what
stdlib ``json`` accepts (NaN, for instance), so results do not depend on orjson being
there. Known difference: orjson reads integers beyond 64 bits as floats.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np

from curation.errors import SourceError
from curation.stages.ingest.readers._common import (
    GZIP_ERRORS,
    FileReaderBase,
    RawRow,
    cut_utf8,
    describe_decode_error,
    error_row,
    open_stream,
    raw_text,
    skip_bom,
    sniff,
)

try:  # optional speed-up; never a dependency
    import orjson

    _loads = orjson.loads
except ImportError:  # pragma: no cover - depends on the environment
    _json_loads = json.loads

    def _loads(line: bytes) -> Any:
        if b"\\u" in line and (b"\\ud" in line or b"\\uD" in line):
            raise ValueError("possible surrogate escape: take the checked path")
        return _json_loads(line.decode("utf-8"))


BLOCK_BYTES = 8 << 20
"""Lines per block for columnar parsing: big enough that pyarrow's parse dominates the
per-block overhead, small enough that a block and its columns stay a few tens of MB."""

_JSON_KIND = {list: "an array", str: "a string", int: "a number", float: "a number", bool: "a boolean", type(None): "null"}


def not_an_object(index: int, where: str, value: Any, raw: str, raw_bytes: int) -> RawRow:
    kind = _JSON_KIND.get(type(value), type(value).__name__)
    return error_row(index, "not_an_object", f"{where} is {kind}, not a JSON object", raw, raw_bytes)


def truncated_row(label: str, index: int, err: BaseException) -> RawRow:
    """The one error row for a gzip stream that ends early (or breaks) after ``index`` lines."""
    what = "ends early (the file is truncated)" if isinstance(err, EOFError) else f"is corrupt ({err})"
    msg = f"{label}: the gzip stream {what} after line {index}; nothing after that point can be read"
    return error_row(index, "truncated_file", msg, None, 0)


class JsonlReader(FileReaderBase):
    """A .jsonl / .ndjson file, optionally gzipped. Blank lines are skipped but counted,
    so ``RawRow.index`` is always line number - 1.

    Two ways through a file, with the same rows: ``rows()`` parses line by line, and
    ``blocks()`` hands out lines in blocks for columnar parsing (``jsonl_columns``), whose
    lines can still become rows one by one through ``LineBlock.row``.
    """

    def _rows(self, allowance: int) -> Iterator[RawRow]:
        parse = self._parse_line
        for item in self._items():
            if type(item) is tuple:
                row = parse(*item)
                if row is None:  # blank line
                    continue
                yield row
            else:
                yield item

    def blocks(self, block_bytes: int | None = None) -> Iterator[LineBlock | RawRow]:
        """The file's lines in blocks of about ``block_bytes`` (default ``BLOCK_BYTES``), with the
        error rows of lines that never make it into a block (too large, a broken gzip stream)
        between them, in file order. The source's row limit does not apply: callers with a
        limit use ``rows()``. A plain UTF-8 file is read in chunks whose line breaks numpy
        finds; a gzipped or UTF-16/32 one line by line, so a stream that breaks off loses no
        complete line."""
        block_bytes = block_bytes or BLOCK_BYTES
        if not sniff(self.path).plain:
            yield from self._line_blocks(block_bytes)
        else:
            yield from self._plain_blocks(block_bytes)

    def _line_blocks(self, block_bytes: int) -> Iterator[LineBlock | RawRow]:
        first = 0  # index of lines[0]; an error row ends the block, so its lines are consecutive
        lines: list[bytes] = []
        size = 0
        for item in self._items():
            if type(item) is tuple:
                if not lines:
                    first = item[0]
                lines.append(item[1])
                size += len(item[1])
                if size >= block_bytes:
                    yield LineBlock.of_lines(self, first, lines)
                    lines, size = [], 0
                continue
            if lines:
                yield LineBlock.of_lines(self, first, lines)
                lines, size = [], 0
            yield item
        if lines:
            yield LineBlock.of_lines(self, first, lines)

    def _plain_blocks(self, block_bytes: int) -> Iterator[LineBlock | RawRow]:
        """Each chunk is read straight into the buffer its blocks keep, behind the partial line
        the last one left (``carry``): one allocation and no copy of the chunk, where slicing
        bytes made three (at a million rows, gigabytes of fresh pages)."""
        stream, hashed = open_stream(self.path)
        with hashed, stream:
            try:
                skip_bom(stream)
                index = 0  # of the next line
                carry = b""
                while True:
                    data = bytearray(len(carry) + block_bytes)
                    data[: len(carry)] = carry
                    got = _read_into(stream, memoryview(data)[len(carry) :])
                    filled = len(carry) + got
                    if not got:  # the end; what is left is a last line without a line break
                        if filled:
                            yield from self._cut(data, index, filled)
                        break
                    end = data.rfind(b"\n", 0, filled) + 1
                    if end == 0:
                        if filled > self.max_row_bytes + 1:  # one line, already over the limit, goes on
                            yield self._oversized(index, bytes(data[:filled]), stream.readline, filled)
                            index += 1
                            carry = b""
                        else:
                            carry = bytes(data[:filled])
                        continue
                    carry = bytes(data[end:filled])
                    for item in self._cut(data, index, end):
                        yield item
                        index += len(item) if isinstance(item, LineBlock) else 1
            except OSError as err:
                raise SourceError(f"error while reading {self.label}: {err.strerror or err}") from None
            self._finished(hashed)

    def _cut(self, data: bytearray | bytes, first: int, size: int) -> Iterator[LineBlock | RawRow]:
        """The complete lines in ``data[:size]`` (the last may lack its break) as blocks, split
        around lines over the limit."""
        buf = np.frombuffer(data, np.uint8, count=size)
        ends = np.flatnonzero(buf == 10) + 1
        if not len(ends) or ends[-1] != size:
            ends = np.append(ends, size)
        starts = np.concatenate(([0], ends[:-1]))
        breaks = (buf[ends - 1] == 10).astype(np.int64)
        crlf = np.zeros(len(ends), np.bool_)
        two = (ends - starts >= 2) & (breaks == 1)
        crlf[two] = buf[ends[two] - 2] == 13
        sizes = ends - starts - breaks - crlf
        lo = 0
        for big in np.flatnonzero(sizes > self.max_row_bytes).tolist():
            if big > lo:
                yield LineBlock(self, data, starts[lo:big], ends[lo:big], first + lo)
            head = bytes(data[starts[big] : min(starts[big] + self.raw_limit_bytes, size)])
            yield self._too_large(first + big, head, int(sizes[big]))
            lo = big + 1
        if lo < len(ends):
            yield LineBlock(self, data, starts[lo:], ends[lo:], first + lo)

    def _items(self) -> Iterator[tuple[int, bytes] | RawRow]:
        """Each line within the size limit as ``(index, line)``; error rows for a line over the
        limit and for a gzip stream that breaks off."""
        stream, hashed = open_stream(self.path)
        with hashed, stream:
            index = -1
            try:
                skip_bom(stream)
                readline = stream.readline
                max_bytes = self.max_row_bytes
                chunk = max_bytes + 2  # room for "\r\n" after a row of exactly max_bytes
                while True:
                    line = readline(chunk)
                    if not line:
                        break
                    index += 1
                    if len(line) > max_bytes:
                        row = self._oversized(index, line, readline, chunk)
                        if row is not None:
                            yield row
                            continue
                    yield index, line
            except GZIP_ERRORS as err:
                yield truncated_row(self.label, index + 1, err)
            except OSError as err:
                raise SourceError(f"error while reading {self.label}: {err.strerror or err}") from None
            self._finished(hashed)

    def _parse_line(self, index: int, line: bytes) -> RawRow | None:
        """The row one line within the size limit holds; None for a blank line."""
        try:
            value = _loads(line)
        except (ValueError, RecursionError):
            return self._checked(index, line)
        body = line.rstrip(b"\r\n")
        size = len(body)
        limit = self.raw_limit_bytes
        # the parser checked the UTF-8; "replace" only guards, at no cost
        raw = (body if size <= limit else cut_utf8(body, limit)).decode("utf-8", "replace")
        if type(value) is dict:
            return RawRow(index, value, raw, size, None)
        return not_an_object(index, f"line {index + 1}", value, raw, size)

    def _oversized(self, index: int, line: bytes, readline: Any, chunk: int) -> RawRow | None:
        """A line longer than max_row_bytes, judged by size alone; None if it fits after all
        (its length included the line break). The rest of it is read and dropped chunk by
        chunk, keeping only the first raw_limit_bytes."""
        head = line[: self.raw_limit_bytes]
        total = len(line)
        tail = line[-2:]
        if line[-1] != 10 and len(line) == chunk:  # the line goes on
            while True:
                part = readline(chunk)
                if not part:
                    break
                total += len(part)
                tail = (tail + part[-2:])[-2:]  # "\r" may end one chunk and "\n" start the next
                if part[-1] == 10:
                    break
        size = total - (2 if tail == b"\r\n" else 1 if tail[-1:] == b"\n" else 0)
        if size <= self.max_row_bytes:
            return None
        return self._too_large(index, head, size)

    def _too_large(self, index: int, head: bytes, size: int) -> RawRow:
        msg = f"line {index + 1} is {size:,} bytes, over the limit of {self.max_row_bytes:,} bytes (validate.max_row_bytes); it was not parsed"
        return error_row(index, "row_too_large", msg, raw_text(head, self.raw_limit_bytes), size)

    def _checked(self, index: int, line: bytes) -> RawRow | None:
        """The slow path for a line the fast parser rejected: None for a blank line, else
        the row (stdlib json accepted it) or an error row that says what is wrong."""
        body = line.rstrip(b"\r\n")
        if not body.strip(b" \t\r"):
            return None
        where = f"line {index + 1}"
        size = len(body)
        try:
            text = body.decode("utf-8")
        except UnicodeDecodeError as err:
            msg = f"{where} is not valid UTF-8: {describe_decode_error(body, err)}"
            return error_row(index, "undecodable_text", msg, raw_text(body, self.raw_limit_bytes), size)
        raw = cut_utf8(body, self.raw_limit_bytes).decode()
        try:
            value = json.loads(text)
        except json.JSONDecodeError as err:
            msg = f"{where} is not valid JSON: {err.msg.removesuffix(' at')} at column {err.colno}"
            if not line.endswith(b"\n"):
                msg += " (it is the last line and has no line break: the file may be truncated)"
            return error_row(index, "unparsable_json", msg, raw, size)
        except RecursionError:
            return error_row(index, "unparsable_json", f"{where} is not valid JSON: it is nested too deeply", raw, size)
        except ValueError as err:  # valid syntax Python will not read, e.g. an integer of over 4,300 digits
            return error_row(index, "unparsable_json", f"{where} cannot be read: {err}", raw, size)
        if type(value) is not dict:
            return not_an_object(index, where, value, raw, size)
        try:  # "\ud800" is valid JSON syntax but no valid text: it cannot be written out later
            json.dumps(value, ensure_ascii=False).encode("utf-8")
        except UnicodeEncodeError:
            msg = f"{where} contains an escaped lone surrogate (such as \\ud800), which is not valid Unicode text"
            return error_row(index, "undecodable_text", msg, raw, size)
        except (ValueError, RecursionError):
            pass
        return RawRow(index, value, raw, size, None)


def _read_into(stream: Any, view: memoryview) -> int:
    """Fill ``view`` from ``stream`` as far as the stream goes; the bytes read."""
    got = 0
    while got < len(view):
        n = stream.readinto(view[got:])
        if not n:
            break
        got += n
    return got


@dataclass
class LineBlock:
    """Consecutive lines of a JSONL file, none over the size limit (blank lines included):
    line ``i`` is ``data[starts[i]:ends[i]]``, line ``first + i`` of the file.

    ``row(i)`` is what ``rows()`` yields for line ``i`` of the block (None for a blank
    line), so any line the columnar parse cannot vouch for takes the row path unchanged.
    """

    reader: JsonlReader
    data: bytes | bytearray  # a plain file's blocks share the chunk they were read into
    starts: np.ndarray
    ends: np.ndarray
    first: int

    @classmethod
    def of_lines(cls, reader: JsonlReader, first: int, lines: list[bytes]) -> LineBlock:
        lengths = np.fromiter(map(len, lines), np.int64, len(lines))
        ends = np.cumsum(lengths)
        return cls(reader, b"".join(lines), ends - lengths, ends, first)

    def line(self, i: int) -> bytes:
        return bytes(memoryview(self.data)[self.starts[i] : self.ends[i]])

    def row(self, i: int) -> RawRow | None:
        return self.reader._parse_line(self.first + i, self.line(i))

    @property
    def indexes(self) -> np.ndarray:
        return self.first + np.arange(len(self.starts))

    def __len__(self) -> int:
        return len(self.starts)
