"""Adapters: one source row (a dict) in, a list of ``PairDraft`` out.

Each adapter module has an ``Options`` pydantic model (extra keys forbidden) and
``build(options) -> adapter``, where ``adapter(row, row_key) -> list[PairDraft]``. Bad rows
raise ``RowError`` (quarantined); valid rows without a pair raise ``NoPairs`` (filtered).
Options are checked when the recipe loads, so a typo fails before any data is read.

A module with ``SCOPE = "table"`` is a table-level adapter instead: ``adapter(rows) ->
TableResult`` sees all rows of a source, for sources where a pair spans rows (message
tables such as OpenAssistant's); see ``_table.py``.
"""

from __future__ import annotations

from collections.abc import Callable
from types import ModuleType
from typing import Any

from pydantic import BaseModel, ValidationError

from curation.errors import ConfigError
from curation.records import PairDraft
from curation.stages.ingest.adapters import hh_rlhf, mapping, oasst, rated, shp, trl
from curation.stages.ingest.adapters._table import TableAdapter, TableResult

Adapter = Callable[[dict, str], list[PairDraft]]

ADAPTERS: dict[str, ModuleType] = {"hh_rlhf": hh_rlhf, "trl": trl, "rated": rated, "shp": shp, "mapping": mapping, "oasst": oasst}


def _describe(err: ValidationError) -> str:
    lines = []
    for e in err.errors():
        loc = ".".join(str(p) for p in e["loc"]) or "(options)"
        msg = e["msg"].removeprefix("Value error, ")
        if e["type"] == "extra_forbidden":
            msg = "unknown option"
        lines.append(f"  - {loc}: {msg}")
    return "\n".join(lines)


def check_options(name: str, options: dict[str, Any] | None) -> BaseModel:
    """Validated options for adapter ``name``; a ``ConfigError`` a user can act on otherwise."""
    module = ADAPTERS.get(name)
    if module is None:
        raise ConfigError(f"unknown adapter {name!r} (known: {', '.join(sorted(ADAPTERS))})")
    if options is None:
        options = {}
    if not isinstance(options, dict):
        raise ConfigError(f"options of adapter {name!r} must be a mapping, got {type(options).__name__}")
    try:
        return module.Options.model_validate(options)
    except ValidationError as err:
        known = ", ".join(module.Options.model_fields)
        raise ConfigError(f"invalid options for adapter {name!r}:\n{_describe(err)}\n  (options: {known})") from None


def build_adapter(name: str, options: dict[str, Any] | None) -> Adapter | TableAdapter:
    """The row -> drafts callable for a recipe source (rows -> TableResult for a table adapter)."""
    return ADAPTERS[name].build(check_options(name, options))


def is_table_adapter(name: str) -> bool:
    return getattr(ADAPTERS[name], "SCOPE", "row") == "table"


__all__ = ["ADAPTERS", "Adapter", "TableAdapter", "TableResult", "build_adapter", "check_options", "is_table_adapter"]
