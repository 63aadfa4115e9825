"""Which dataset and table names the store accepts.

Kept apart from ``catalog.py`` because the transports check names too (a dataset name
becomes a folder or a key prefix, so none may leave the root) and ``catalog.py`` imports them.
"""

from __future__ import annotations

import re

from curation.errors import ConfigError
from curation.sources import check_dataset_name

# DuckDB reserves these catalog names, and query.py attaches each dataset under its own name.
RESERVED_DATASETS = frozenset({"main", "temp", "system", "memory"})
# query.py creates these views beside the dataset's tables.
RESERVED_TABLES = frozenset({"versions", "datasets"})
TABLE_NAME = re.compile(r"^[a-z_][a-z0-9_]{0,63}$")


def check_name(dataset: str) -> str:
    """A valid dataset name (it becomes a folder or key prefix, so none can leave the root)."""
    check_dataset_name(dataset)
    if dataset in RESERVED_DATASETS:
        raise ConfigError(f"invalid dataset name {dataset!r}: {sorted(RESERVED_DATASETS)} are reserved by DuckDB")
    return dataset


def check_table_name(name: object) -> None:
    """A table name DuckDB and query.py can use as is (lowercase, not a view query.py makes)."""
    if not isinstance(name, str) or not TABLE_NAME.match(name) or name in RESERVED_TABLES:
        raise ConfigError(f"invalid table name {name!r}: use lowercase letters, digits and '_' (not {', '.join(sorted(RESERVED_TABLES))})")
