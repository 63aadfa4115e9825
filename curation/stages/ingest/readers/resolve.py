"""From a source's ``path`` and ``format`` to one reader per file, in sorted order.

All file-level checks (missing file, empty glob, permissions, gzip signature, Parquet
footer, saved-dataset layout, HF loading) happen here, so a run stops on a bad source
before it reads a single row.
"""

from __future__ import annotations

import glob
from pathlib import Path
from typing import Any

from curation.errors import SourceError
from curation.sources import SourceConfig
from curation.stages.ingest.readers._common import FileReader, RowBudget, check_file
from curation.stages.ingest.readers.csvfile import CsvReader
from curation.stages.ingest.readers.hf import is_saved_dataset, open_disk, open_hub
from curation.stages.ingest.readers.jsondoc import JsonReader
from curation.stages.ingest.readers.jsonl import JsonlReader
from curation.stages.ingest.readers.parquet import ParquetReader

FILE_READERS = {"jsonl": JsonlReader, "json": JsonReader, "csv": CsvReader, "parquet": ParquetReader}
EXTENSIONS = {".jsonl": "jsonl", ".ndjson": "jsonl", ".json": "json", ".csv": "csv", ".parquet": "parquet"}
ACCEPTED = (
    ".jsonl/.ndjson, .json, .csv (each optionally .gz), .parquet, or a folder saved with "
    "Dataset.save_to_disk; or set `format:` to jsonl, json, csv, parquet, hf_disk or hf"
)


def detect_format(path: Path) -> str:
    """The format ``auto`` means for this path, by extension (or saved-dataset folder)."""
    if path.is_dir():
        if is_saved_dataset(path):
            return "hf_disk"
        raise SourceError(
            f"{path} is a directory but not a saved Hugging Face dataset (no dataset_info.json, state.json "
            f"or dataset_dict.json inside); point `path` at files (a glob such as {path}/*.jsonl) or at a saved dataset folder"
        )
    name = path.name.lower().removesuffix(".gz")
    ext = Path(name).suffix
    if ext in EXTENSIONS:
        return EXTENSIONS[ext]
    raise SourceError(f"cannot tell the format of {path} from its extension {ext or '(none)'!r}; accepted: {ACCEPTED}")


def expand_path(path: str) -> list[Path]:
    """The files (or dataset folders) ``path`` names: itself, or a glob's sorted matches."""
    if glob.has_magic(path):
        matches = sorted(glob.glob(path, recursive=True))
        if not matches:
            raise SourceError(f"no files match {path!r}")
        return [Path(m) for m in matches]
    p = Path(path)
    if not p.exists():
        hint = ""
        if p.suffix == "":  # perhaps a hub name such as org/name (the recipe made it a path)
            hint = " (to load a dataset from the Hugging Face hub by name, set format: hf)"
        raise SourceError(f"source file not found: {path}{hint}")
    return [p]


def open_source(src: SourceConfig, *, max_row_bytes: int, raw_limit_bytes: int) -> list[FileReader]:
    """One reader per file of ``src`` in sorted order; ``src.limit`` caps their total rows.

    The readers share the limit in order: iterate them once, first to last (as the ingest
    stage does); reader i yields at most the limit minus what readers before it yielded.
    """
    kw: dict[str, Any] = {"max_row_bytes": max_row_bytes, "raw_limit_bytes": raw_limit_bytes, "budget": RowBudget(src.limit)}
    if src.format == "hf":
        return [open_hub(src.path, src.hf_config, src.split, pos=0, **kw)]
    readers: list[FileReader] = []
    for pos, path in enumerate(expand_path(src.path)):
        fmt = detect_format(path) if src.format == "auto" else src.format
        if fmt == "hf_disk":
            readers.append(open_disk(path, src.split, pos=pos, **kw))
            continue
        if path.is_dir():
            raise SourceError(f"{path} is a directory, but format {fmt!r} reads files; use a glob such as {path}/*.{fmt}")
        check_file(path)
        readers.append(FILE_READERS[fmt](path, pos=pos, **kw))
    return readers
