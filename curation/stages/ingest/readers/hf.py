"""Hugging Face datasets: saved-to-disk folders (hf_disk) and ``load_dataset`` (hf).

``datasets`` is imported only here and only when such a source is opened (it is slow to
import). Rows are iterated in Arrow batches, so indices mappings are honoured and memory
stays bounded. A hub name while offline fails at once with what to do instead: the
HF_HUB_OFFLINE / HF_DATASETS_OFFLINE switches are honoured, and without them a short
connection probe avoids the library's long retry loop when the hub cannot be reached.
"""

from __future__ import annotations

import os
import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from curation.errors import SourceError
from curation.stages.ingest.readers._common import RawRow, RowBudget, limited
from curation.stages.ingest.readers.render import render_rows

BATCH_ROWS = 4096
DISK_MARKERS = ("dataset_info.json", "state.json", "dataset_dict.json")
OFFLINE_MESSAGE = (
    "cannot load HF dataset '{name}': the hub is unreachable (offline); download it on a machine with "
    "network access and save it with Dataset.save_to_disk, then point `path` at that folder with format: hf_disk"
)
_OFFLINE_ERRORS = {
    "ConnectionError",
    "OfflineModeIsEnabled",
    "LocalEntryNotFoundError",
    "ConnectError",
    "ConnectTimeout",
    "ReadTimeout",
    "Timeout",
}
_PROXY_VARS = ("HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy", "HTTP_PROXY", "http_proxy")


def is_saved_dataset(path: Path) -> bool:
    return path.is_dir() and any((path / m).is_file() for m in DISK_MARKERS)


class HFReader:
    """One split of a loaded ``datasets.Dataset``; ``RawRow.index`` is the row position."""

    def __init__(self, ds: Any, label: str, *, max_row_bytes: int, raw_limit_bytes: int, budget: RowBudget | None = None, pos: int = 0):
        self.ds = ds
        self.label = label
        self.max_row_bytes = max_row_bytes
        self.raw_limit_bytes = raw_limit_bytes
        self._budget = budget or RowBudget()
        self._pos = pos

    def rows(self) -> Iterator[RawRow]:
        return limited(self._budget, self._pos, self._rows)

    def _rows(self, allowance: int) -> Iterator[RawRow]:
        start = 0
        for table in self.ds.with_format("arrow").iter(batch_size=min(BATCH_ROWS, allowance)):
            yield from render_rows(table.to_pylist(), start, self.max_row_bytes, self.raw_limit_bytes, "row")
            start += table.num_rows

    def fingerprint(self) -> dict[str, Any]:
        return {"id": self.label, "fingerprint": self.ds._fingerprint}

    def __repr__(self) -> str:
        return f"HFReader({self.label!r})"


def pick_split(splits: list[str], wanted: str | None, what: str) -> str:
    """The split asked for; else the only one; else 'train' (the config's documented default)."""
    if wanted is not None:
        if wanted in splits:
            return wanted
        raise SourceError(f"{what} has no split {wanted!r}; its splits are: {', '.join(splits)}")
    if len(splits) == 1:
        return splits[0]
    if "train" in splits:
        return "train"
    raise SourceError(f"{what} has several splits ({', '.join(splits)}) and none is 'train'; set `split:` to one of them")


def open_disk(path: Path, split: str | None, **kw: Any) -> HFReader:
    """A folder written by Dataset.save_to_disk or DatasetDict.save_to_disk."""
    if not is_saved_dataset(path):
        raise SourceError(
            f"{path} is not a saved Hugging Face dataset (none of {', '.join(DISK_MARKERS)} inside); "
            "point `path` at a folder written by Dataset.save_to_disk, or at files (a glob such as folder/*.jsonl)"
        )
    import datasets

    try:
        obj = datasets.load_from_disk(str(path))
    except Exception as err:  # noqa: BLE001 - any library failure becomes one clear message
        raise SourceError(f"cannot load the saved dataset at {path}: {type(err).__name__}: {err}") from None
    if isinstance(obj, datasets.DatasetDict):
        name = pick_split(list(obj), split, f"the saved dataset at {path}")
        return HFReader(obj[name], str(path / name), **kw)
    return HFReader(obj, str(path), **kw)


def open_hub(name: str, config: str | None, split: str | None, **kw: Any) -> HFReader:
    """``datasets.load_dataset``: a hub name (online, or cached) or a local folder/file."""
    local = Path(name).exists()
    if not local and not _env_offline() and not _hub_reachable():
        raise SourceError(OFFLINE_MESSAGE.format(name=name))
    import datasets

    what = f"HF dataset {name!r}" + (f" (config {config!r})" if config else "")
    try:
        obj = datasets.load_dataset(name, config, split=split)
    except Exception as err:  # noqa: BLE001 - any library failure becomes one clear message
        if not local and _is_offline_error(err):
            raise SourceError(OFFLINE_MESSAGE.format(name=name)) from None
        raise SourceError(f"cannot load {what}: {type(err).__name__}: {err}") from None
    if isinstance(obj, datasets.DatasetDict):
        split = pick_split(list(obj), split, what)
        obj = obj[split]
    if not isinstance(obj, datasets.Dataset):
        raise SourceError(f"cannot load {what}: got a {type(obj).__name__}, expected a Dataset")
    label = f"hf:{name}" + (f":{config}" if config else "") + f"/{split or obj.split or 'train'}"
    return HFReader(obj, label, **kw)


def _env_offline() -> bool:
    return any(os.environ.get(v, "").strip().lower() in ("1", "true", "yes", "on") for v in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE"))


def _is_offline_error(err: BaseException) -> bool:
    names = {cls.__name__ for cls in type(err).__mro__}
    return bool(names & _OFFLINE_ERRORS) or "Couldn't reach" in str(err)


def _hub_reachable(timeout: float = 3.0) -> bool:
    """A TCP connect to the hub; skipped (assumed reachable) behind a proxy."""
    if any(os.environ.get(v) for v in _PROXY_VARS):
        return True
    url = urlparse(os.environ.get("HF_ENDPOINT", "https://huggingface.co"))
    host = url.hostname or "huggingface.co"
    port = url.port or (443 if url.scheme == "https" else 80)
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False
