"""Rows that arrive already parsed (JSON arrays, Parquet, HF datasets) as RawRows.

Such rows have no raw text of their own; quarantine still needs one, so ``raw`` is the
row's compact JSON rendering (non-JSON values such as bytes, dates or decimals as text),
and a row whose rendering exceeds max_row_bytes is quarantined as ``row_too_large``.
"""

from __future__ import annotations

import base64
import datetime as dt
import json
from collections.abc import Callable, Iterable, Iterator
from typing import Any

from curation.stages.ingest.readers._common import RawRow, cut_utf8, error_row
from curation.stages.ingest.readers.jsonl import not_an_object


def _default(value: Any) -> Any:
    if isinstance(value, (bytes, bytearray, memoryview)):
        data = bytes(value)
        try:
            return data.decode("utf-8")
        except UnicodeDecodeError:
            return "base64:" + base64.b64encode(data).decode("ascii")
    if isinstance(value, (dt.date, dt.time)):
        return value.isoformat()
    if isinstance(value, (set, frozenset, tuple)):
        return list(value)
    return str(value)


try:  # optional speed-up; never a dependency
    import orjson

    _OPTS = orjson.OPT_NON_STR_KEYS | orjson.OPT_SERIALIZE_NUMPY

    def dumps(value: Any) -> bytes:
        try:
            return orjson.dumps(value, default=_default, option=_OPTS)
        except (TypeError, ValueError):  # e.g. nesting beyond orjson's limit
            return _std_dumps(value)

except ImportError:  # pragma: no cover - depends on the environment

    def dumps(value: Any) -> bytes:
        return _std_dumps(value)


class _NotText(Exception):
    """The value holds a lone surrogate (from a ``\\ud800`` escape): not writable as UTF-8."""


def _std_dumps(value: Any) -> bytes:
    try:
        text = json.dumps(value, ensure_ascii=False, separators=(",", ":"), default=_default)
    except (TypeError, ValueError, RecursionError):
        text = repr(value)
    try:
        return text.encode("utf-8")
    except UnicodeEncodeError:
        raise _NotText(text.encode("utf-8", "backslashreplace")) from None


def render_rows(values: Iterable[Any], start: int, max_row_bytes: int, raw_limit_bytes: int, noun: str) -> Iterator[RawRow]:
    """One RawRow per value, indexed from ``start``; ``noun`` names a row in messages."""
    render: Callable[[Any], bytes] = dumps
    index = start - 1
    for value in values:
        index += 1
        try:
            data = render(value)
        except _NotText as err:
            data = err.args[0]
            msg = f"{noun} {index} contains an escaped lone surrogate (such as \\ud800), which is not valid Unicode text"
            yield error_row(index, "undecodable_text", msg, cut_utf8(data, raw_limit_bytes).decode("utf-8", "ignore"), len(data))
            continue
        size = len(data)
        raw = data.decode("utf-8") if size <= raw_limit_bytes else cut_utf8(data, raw_limit_bytes).decode("utf-8", "ignore")
        if size > max_row_bytes:
            msg = f"{noun} {index} is {size:,} bytes as JSON, over the limit of {max_row_bytes:,} bytes (validate.max_row_bytes)"
            yield error_row(index, "row_too_large", msg, raw, size)
        elif type(value) is dict:
            yield RawRow(index, value, raw, size, None)
        else:
            yield not_an_object(index, f"{noun} {index}", value, raw, size)
