"""A .json file: one JSON document holding the rows. The one format read whole.

A JSON document cannot be parsed row by row with the standard tools, so the file is read
into memory (keep such files to a few hundred MB; use JSONL for more). Accepted shapes:

- a top-level array; each element is a row (non-objects become ``not_an_object`` rows);
- a top-level object with exactly one list-valued key (``{"version": 2, "data": [...]}``);
  that list holds the rows. Anything else is a SourceError that says what was found;
- JSON Lines saved under a .json name (common on the HF hub): when the first non-blank
  line is a complete JSON object on its own and another non-blank line follows, the file
  is streamed as JSONL instead.

Rows of a document have no raw text of their own: ``raw`` is their compact JSON rendering.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

from curation.errors import SourceError
from curation.stages.ingest.readers._common import (
    GZIP_ERRORS,
    FileReaderBase,
    RawRow,
    describe_decode_error,
    open_stream,
    skip_bom,
)
from curation.stages.ingest.readers.jsonl import JsonlReader, truncated_row
from curation.stages.ingest.readers.render import render_rows


class JsonReader(FileReaderBase):
    """A .json (or .json.gz) file: an array of rows, or JSONL under a .json name."""

    def _rows(self, allowance: int) -> Iterator[RawRow]:
        if self._looks_like_jsonl():
            inner = JsonlReader(self.path, max_row_bytes=self.max_row_bytes, raw_limit_bytes=self.raw_limit_bytes)
            yield from inner._rows(allowance)
            self._digest = inner._digest
            return
        stream, hashed = open_stream(self.path)
        with hashed, stream:
            try:
                skip_bom(stream)
                data = stream.read()
            except GZIP_ERRORS as err:
                self._finished(hashed)
                yield truncated_row(self.label, 0, err)
                return
            except OSError as err:
                raise SourceError(f"error while reading {self.label}: {err.strerror or err}") from None
            self._finished(hashed)
        items = self._items(data)
        del data
        yield from render_rows(items, 0, self.max_row_bytes, self.raw_limit_bytes, "element")

    def _items(self, data: bytes) -> list[Any]:
        try:
            text = data.decode("utf-8")
        except UnicodeDecodeError as err:
            raise SourceError(f"{self.label} is not UTF-8 text: {describe_decode_error(data, err)}") from None
        try:
            doc = json.loads(text)
        except json.JSONDecodeError as err:
            raise SourceError(
                f"{self.label} is not valid JSON: {err.msg.removesuffix(' at')} at line {err.lineno}, column {err.colno}"
            ) from None
        except RecursionError:
            raise SourceError(f"{self.label} is not valid JSON: it is nested too deeply") from None
        except ValueError as err:  # valid syntax Python will not read, e.g. an integer of over 4,300 digits
            raise SourceError(f"{self.label} cannot be read: {err}") from None
        if isinstance(doc, list):
            return doc
        if isinstance(doc, dict):
            lists = [k for k, v in doc.items() if isinstance(v, list)]
            if len(lists) == 1:
                return doc[lists[0]]
            found = (
                f"list-valued keys {', '.join(map(repr, lists))}"
                if lists
                else f"no list-valued key (keys: {', '.join(map(repr, list(doc)[:10]))})"
            )
            raise SourceError(
                f"{self.label}: expected a JSON array of rows, or an object with exactly one list-valued key holding them; "
                f"found an object with {found} (a file with one object per line should be named .jsonl)"
            )
        raise SourceError(f"{self.label}: expected a JSON array of rows, found a single {type(doc).__name__} value")

    def _looks_like_jsonl(self) -> bool:
        """A cheap peek at the first two non-blank lines (bounded by max_row_bytes)."""
        stream, hashed = open_stream(self.path)
        limit = self.max_row_bytes + 2
        try:
            with hashed, stream:
                skip_bom(stream)
                first = _next_nonblank(stream, limit)
                if first is None or not first.lstrip().startswith(b"{") or not first.endswith(b"\n"):
                    return False
                try:
                    value = json.loads(first.decode("utf-8"))
                except (ValueError, RecursionError):
                    return False
                return isinstance(value, dict) and _next_nonblank(stream, limit) is not None
        except (OSError, *GZIP_ERRORS):
            return False  # the full read reports it


def _next_nonblank(stream: Any, limit: int) -> bytes | None:
    while True:
        line = stream.readline(limit)
        if not line:
            return None
        if line.strip(b" \t\r\n"):
            return line
