"""Which kind of catalog a data root uses, recorded once in the root itself.

A root keeps its catalogs as DuckDB files (the default: nothing is recorded) or in
PostgreSQL. The choice is made by the first ``curate run`` with ``catalog: postgres`` and
written to ``ROOT/catalog.json`` (kind and a namespace for the PostgreSQL schemas, never a
credential), so every later command on that root (``datasets``, ``sql``, ``report``, a
Prefect task, a Ray worker) reads the same catalogs with no flag to forget. Switching an
existing root is refused with a clear line: its versions would silently disappear from view.
"""

from __future__ import annotations

import json
import uuid
from dataclasses import dataclass
from typing import Literal

from curation.errors import ConfigError, CurationError
from curation.store.transport import CatalogTransport

BINDING_FILE = "catalog.json"
CatalogKind = Literal["file", "postgres"]
KINDS: tuple[str, ...] = ("file", "postgres")


@dataclass(frozen=True)
class Binding:
    kind: str
    namespace: str | None = None  # PostgreSQL: the prefix of the root's schemas


def read_binding(files: CatalogTransport) -> Binding:
    """What the root records; a root with no record keeps file catalogs."""
    data = files.read_root_file(BINDING_FILE)
    if data is None:
        return Binding("file")
    where = f"{str(files.root).rstrip('/')}/{BINDING_FILE}"
    try:
        doc = json.loads(data)
        kind, namespace = doc["catalog"], doc.get("namespace")
    except (ValueError, TypeError, KeyError) as err:
        raise CurationError(f"{where} is not a catalog record ({err}); it says which catalog the data root uses") from None
    if kind not in KINDS or (kind == "postgres" and not (isinstance(namespace, str) and namespace.isidentifier())):
        raise CurationError(f"{where}: unknown catalog {kind!r} or bad namespace {namespace!r} (catalog: file or postgres)")
    return Binding(kind, namespace)


def bind(files: CatalogTransport, kind: str) -> Binding:
    """The root's binding, recording ``kind`` if the root has none yet; a conflicting choice
    is a ConfigError (nothing is changed)."""
    if kind not in KINDS:
        raise ConfigError(f"catalog: {kind!r} is not one of {', '.join(KINDS)}")
    current = read_binding(files)
    if current.kind == kind:
        return current
    root = files.root
    if current.kind == "postgres":
        raise ConfigError(
            f"data root {root} keeps its catalogs in PostgreSQL ({BINDING_FILE}); drop `catalog: {kind}` "
            "(or --catalog) to use it, or choose another data root"
        )
    if files.datasets():
        raise ConfigError(
            f"data root {root} already keeps datasets in DuckDB catalog files ({', '.join(files.datasets())}); "
            "a PostgreSQL catalog needs a new data root (moving versions between catalogs is not supported)"
        )
    record = {"catalog": kind, "namespace": f"curate_{uuid.uuid4().hex[:8]}"}
    if not files.create_root_file(BINDING_FILE, (json.dumps(record, indent=2) + "\n").encode()):
        return bind(files, kind)  # another process bound it first: check against what it wrote
    return read_binding(files)
