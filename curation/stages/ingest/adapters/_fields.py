"""Small helpers every adapter uses to read row fields.

They exist so that every bad row fails the same way: a ``RowError`` with a stable code
and a message that names the field and says what was found, whatever the adapter.
"""

from __future__ import annotations

import hashlib
import math
import random
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from curation.errors import RowError
from curation.records import Message

MISSING: Any = object()
"""Returned by :func:`get_path` with ``required=False`` when the field is absent."""

# Score values that mean "not rated" rather than "broken" (UltraFeedback uses "N/A").
UNRATED_STRINGS = frozenset({"", "n/a", "na", "none", "null", "-"})

_TYPE_NAMES = {str: "string", int: "int", float: "float", bool: "bool", list: "list", dict: "object", type(None): "null"}


def type_name(value: Any) -> str:
    """JSON-ish name of a value's type, as users know it from their files."""
    return _TYPE_NAMES.get(type(value), type(value).__name__)


def wrong_type(field: str, value: Any, expected: str) -> RowError:
    return RowError("wrong_type", f"field {field!r} is {type_name(value)}, expected {expected}", field=field)


def get_path(row: Any, path: str, *, required: bool = True) -> Any:
    """Value at a dotted path (``annotations.helpfulness.Rating``; digits index lists).

    A missing key raises ``missing_field`` (or returns ``MISSING`` when not required); a
    step into something that is not an object/list raises ``wrong_type``, naming the
    prefix that was wrong, so the user sees exactly where the path broke.
    """
    if isinstance(row, dict) and path in row:  # a flat key that itself contains dots
        return row[path]
    current = row
    done: list[str] = []
    for part in path.split("."):
        where = ".".join(done) or "(row)"
        if isinstance(current, dict):
            if part not in current:
                if not required:
                    return MISSING
                found = f"; keys there: {', '.join(map(str, list(current)[:12]))}" if current else ""
                raise RowError("missing_field", f"field {path!r} is missing{found}", field=path)
            current = current[part]
        elif isinstance(current, list) and part.isdigit():
            if int(part) >= len(current):
                if not required:
                    return MISSING
                raise RowError("missing_field", f"field {path!r} is missing: {where} has {len(current)} items", field=path)
            current = current[int(part)]
        else:
            raise RowError("wrong_type", f"field {path!r}: {where} is {type_name(current)}, expected object", field=path)
        done.append(part)
    return current


def copy_fields(row: Any, paths: list[str]) -> dict[str, Any]:
    """The ``metadata_fields`` of a row: each path's value under the path as written (a missing
    one is ``missing_field``, naming it, as for any required field)."""
    return {path: get_path(row, path) for path in paths}


def check_metadata_names(paths: list[str], reserved: set[str]) -> list[str]:
    """``metadata_fields`` for an options validator: no repeats, none named like a key the
    adapter writes itself (it would overwrite it, or be overwritten)."""
    if len(set(paths)) != len(paths):
        raise ValueError("metadata_fields: a path is listed twice")
    clash = sorted(set(paths) & reserved)
    if clash:
        raise ValueError(f"metadata_fields: {', '.join(map(repr, clash))} is a metadata key the adapter writes itself")
    return paths


def get_str(row: Any, path: str) -> str:
    value = get_path(row, path)
    if not isinstance(value, str):
        raise wrong_type(path, value, "string")
    return value


def parse_score(value: Any, field: str, *, nan_is_missing: bool = False) -> float | None:
    """A rating as a finite float; ``None`` for "not rated" (null, "N/A", "-").

    Numbers given as strings ("4", " 7.5 ") are accepted because CSV and some JSON dumps
    store them so; any other string is an error, not a silent skip. A non-finite value (NaN,
    infinity, "inf", "nan", 1e999, JSON's bare ``Infinity``/``NaN``) is the error
    ``non_finite_score``: no margin, ratio or ranking means anything with it.
    ``nan_is_missing``: NaN means null (a table that went through pandas writes missing
    integers as NaN; OASST's ranks).
    """
    if value is None:
        return None
    if isinstance(value, bool):
        raise wrong_type(field, value, "number")
    if isinstance(value, (int, float)):
        try:
            number = float(value)
        except OverflowError:  # an integer beyond float range (JSON allows any size)
            raise RowError(
                "invalid_value", f"field {field!r} is an integer too large for a score ({value.bit_length()} bits)", field=field
            ) from None
    elif isinstance(value, str):
        if value.strip().lower() in UNRATED_STRINGS:
            return None
        try:
            number = float(value.strip())
        except ValueError:
            raise RowError("invalid_value", f"field {field!r} is {value[:80]!r}, expected a number or 'N/A'", field=field) from None
    else:
        raise wrong_type(field, value, "number")
    if math.isfinite(number):
        return number
    if nan_is_missing and math.isnan(number):
        return None
    raise RowError("non_finite_score", f"field {field!r} is {value!r}, not a finite number", field=field)


def finite(value: Any, field: str) -> Any:
    """``value`` unless it is a non-finite float (a vote or label of NaN or infinity): the
    error ``non_finite_score``, as for scores."""
    if isinstance(value, float) and not math.isfinite(value):
        raise RowError("non_finite_score", f"field {field!r} is {value!r}, not a finite number", field=field)
    return value


def to_messages(value: Any, field: str, default_role: str) -> list[Message]:
    """A string becomes one ``default_role`` message; a list must already be messages.

    Only presence and types are checked here (role and content strings); which roles are
    allowed is the validate stage's job, the same for every adapter.
    """
    if isinstance(value, str):
        return [{"role": default_role, "content": value}]
    if isinstance(value, list):
        return check_messages(value, field)
    raise wrong_type(field, value, "string or list of messages")


def check_messages(value: Any, field: str) -> list[Message]:
    """A list of ``{"role", "content"}`` dicts, copied to plain two-key messages."""
    if not isinstance(value, list):
        raise wrong_type(field, value, "list of messages")
    out: list[Message] = []
    for i, msg in enumerate(value):
        where = f"{field}[{i}]"
        if not isinstance(msg, dict):
            raise wrong_type(where, msg, "message object with 'role' and 'content'")
        for key in ("role", "content"):
            if key not in msg:
                raise RowError(
                    "missing_field", f"field '{where}.{key}' is missing (message keys: {', '.join(map(str, msg))})", field=f"{where}.{key}"
                )
            if not isinstance(msg[key], str):
                raise wrong_type(f"{where}.{key}", msg[key], "string")
        out.append({"role": msg["role"], "content": msg["content"]})
    return out


def rng_for(row_key: str, seed: int) -> random.Random:
    """A generator seeded by row and recipe seed only: same picks on every machine and run.

    Python's ``hash()`` is salted per process, so it is never used here.
    """
    digest = hashlib.sha256(f"{seed}\x1f{row_key}".encode()).digest()
    return random.Random(int.from_bytes(digest[:8], "big"))


@contextmanager
def inside(where: str) -> Iterator[None]:
    """Name fields read inside a nested object from the row: ``response`` -> ``completions[2].response``."""
    try:
        yield
    except RowError as err:
        if err.field is None or err.field.startswith(where):
            raise
        full = f"{where}.{err.field}"
        raise RowError(err.code, err.message.replace(repr(err.field), repr(full), 1), field=full) from None
