"""Export curated pairs as TRL preference datasets (Parquet, JSONL, a saved ``DatasetDict``).

TRL's ``DPOTrainer`` reads two styles of preference data:

* ``conversational``: ``prompt`` is a list of ``{"role", "content"}`` messages and
  ``chosen``/``rejected`` are lists of assistant messages. TRL applies the model's chat
  template itself at training time, so this is the default: it defers the template to the
  trainer's tokenizer.
* ``standard``: all three are strings. With ``chat_template_tokenizer`` they are rendered by
  ``trl.data_utils.maybe_apply_chat_template`` (prompt with the generation prompt, chosen and
  rejected as the continuation text), i.e. exactly what TRL would make. Without a
  tokenizer only single-turn pairs can be rendered: ``prompt`` is the one user message's
  content and ``chosen``/``rejected`` the one assistant message's content, verbatim. TRL
  concatenates prompt and completion with no separator, so prefer a tokenizer.

The rows are streamed: each record batch is rendered, split and appended to the output
files, so the table is never held in memory. The split is decided per row, from the row's
``pair_id`` alone (see :func:`split_key`), so it does not depend on batch boundaries or
row order, and a duplicated pair can never sit on both sides.

Every other column in ``keep_columns`` (default ``pair_id``) is carried along; TRL's DPO
preparation keeps extra columns through its ``map`` and the trainer drops them before
collation (``remove_unused_columns``), so they do no harm and let a trained-on row be
traced back to the curated table.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import os
import shutil
import tempfile
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from curation.errors import CurationError
from schemas import arrow_schema

STYLES = ("standard", "conversational")
FORMATS = ("parquet", "jsonl", "hf")
SPLITS = ("train", "test")
MESSAGE_COLUMNS = ("prompt", "chosen", "rejected")
BATCH_ROWS = 4096  # slice size when a whole Table is passed in
ROW_GROUP_ROWS = 16_384  # buffer this many rows per split before writing a Parquet row group
SPLIT_RULE = "test iff int.from_bytes(blake2b(f'{seed}:{pair_id}', digest_size=8).digest(), 'big') / 2**64 < test_size"


class ExportError(CurationError, ValueError):
    """The pairs cannot be exported as asked; the message says what to change."""


@dataclass
class ExportResult:
    out_dir: Path
    style: str  # "standard" | "conversational"
    counts: dict[str, int]  # {"train": n, "test": m}
    files: list[Path] = field(default_factory=list)  # every file written
    skipped_unlabeled: int = 0  # generated pairs nobody has labeled yet: not training data


def split_key(seed: int, pair_id: str) -> float:
    """A number in [0, 1) fixed by (seed, pair_id); rows below ``test_size`` go to test.

    A content hash, not a random draw, so the split is the same on every machine and run
    and for any batching or order of the input.
    """
    digest = hashlib.blake2b(f"{seed}:{pair_id}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") / 2**64


def export_trl(
    pairs: pa.RecordBatchReader | pa.Table | Iterable[pa.RecordBatch],
    out_dir: str | Path,
    *,
    style: str = "conversational",
    formats: Sequence[str] = FORMATS,
    test_size: float = 0.1,
    seed: int = 0,
    chat_template_tokenizer: Any = None,
    keep_columns: Sequence[str] = ("pair_id",),
    overwrite: bool = False,
    info: dict[str, Any] | None = None,
) -> ExportResult:
    """Write ``pairs`` (rows of the ``pairs`` table) as a TRL DPO dataset under ``out_dir``.

    Writes ``{train,test}.parquet``, ``{train,test}.jsonl`` and ``hf/`` (a ``DatasetDict``
    saved with ``save_to_disk``) as ``formats`` asks, plus ``export_info.json``. Files are
    built in a hidden sibling folder and moved into place at the end, so a failed export
    leaves nothing half-written. A non-empty ``out_dir`` is replaced only with
    ``overwrite=True``. ``info`` (e.g. the source dataset and version) is stored verbatim
    in ``export_info.json``.
    """
    formats = _check_args(style, formats, test_size, keep_columns)
    out = Path(out_dir)
    _check_out_dir(out, overwrite)
    schema, batches = _open(pairs)
    _check_columns(schema, keep_columns)
    out_schema = _output_schema(schema, style, keep_columns)

    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".partial", dir=out.parent))
    except OSError as err:
        raise ExportError(f"cannot create {out}: {err.strerror or err}; choose another --out") from None
    try:
        need_parquet = "parquet" in formats or "hf" in formats
        writers = {s: _SplitWriter(staging, s, out_schema, need_parquet, "jsonl" in formats) for s in SPLITS}
        skipped = 0
        try:
            for batch in batches:
                if "label_source" in batch.schema.names:  # an unlabeled pair's order is arbitrary
                    labeled = pc.not_equal(batch.column("label_source"), "unlabeled")
                    skipped += batch.num_rows - (pc.sum(labeled).as_py() or 0)
                    batch = batch.filter(labeled)
                rendered = _render(batch, style, chat_template_tokenizer, out_schema)
                mask = pa.array([split_key(seed, p) < test_size for p in batch.column("pair_id").to_pylist()])
                writers["test"].write(rendered.filter(mask))
                writers["train"].write(rendered.filter(pc.invert(mask)))
        finally:
            for w in writers.values():
                w.close()
        counts = {s: writers[s].rows for s in SPLITS}
        if "hf" in formats:
            _write_hf(staging)
        if need_parquet and "parquet" not in formats:  # written only as the source of hf/
            for s in SPLITS:
                (staging / f"{s}.parquet").unlink()
        (staging / "export_info.json").write_text(
            json.dumps(
                _export_info(style, formats, counts, seed, test_size, out_schema, chat_template_tokenizer, info)
                | {"skipped_unlabeled": skipped},
                indent=2,
                default=str,
            )
            + "\n"
        )
        staging.chmod(0o777 & ~_umask())  # mkdtemp makes 0700; the export is the user's, as any folder they make
        if out.exists():
            shutil.rmtree(out) if overwrite else out.rmdir()
        staging.rename(out)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    files = sorted(p for p in out.rglob("*") if p.is_file())
    return ExportResult(out_dir=out, style=style, counts=counts, files=files, skipped_unlabeled=skipped)


def _check_args(style: str, formats: Sequence[str], test_size: float, keep_columns: Sequence[str]) -> list[str]:
    if style not in STYLES:
        raise ExportError(f"style must be one of {', '.join(STYLES)}; got {style!r}")
    if isinstance(formats, str):
        formats = [formats]
    unknown = [f for f in formats if f not in FORMATS]
    if unknown or not formats:
        raise ExportError(f"formats must be a non-empty subset of {', '.join(FORMATS)}; got {list(formats)!r}")
    if not 0.0 <= test_size < 1.0:
        raise ExportError(f"test_size must be in [0, 1); got {test_size!r}")
    clash = [c for c in keep_columns if c in MESSAGE_COLUMNS]
    if clash:
        raise ExportError(f"keep_columns cannot name {clash}: those are the exported prompt/chosen/rejected")
    return list(dict.fromkeys(formats))


def _check_out_dir(out: Path, overwrite: bool) -> None:
    """The export folder can be made here: no file where a folder must be, a writable parent,
    and an existing folder only if empty (or ``overwrite``). One line each, naming the path."""
    if out.exists() and not out.is_dir():
        raise ExportError(f"export target {out} is a file, not a folder; choose another --out")
    if out.is_dir() and any(out.iterdir()) and not overwrite:
        raise ExportError(f"export folder {out} is not empty; choose a new --out, or pass --overwrite to replace it")
    parent = out.parent
    while not parent.exists():
        parent = parent.parent
    if not parent.is_dir():
        raise ExportError(f"cannot create {out}: {parent} is a file, not a folder; choose another --out")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise ExportError(f"cannot create {out}: {parent} is not writable by you; choose another --out")
    if out.is_dir() and not os.access(out, os.W_OK | os.X_OK):
        raise ExportError(f"cannot replace {out}: it is not writable by you; choose another --out")


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _open(pairs: Any) -> tuple[pa.Schema, Iterator[pa.RecordBatch]]:
    """The input's schema and its record batches, read lazily (a Table is only sliced)."""
    if isinstance(pairs, pa.Table):
        return pairs.schema, iter(pairs.to_batches(max_chunksize=BATCH_ROWS))
    if isinstance(pairs, pa.RecordBatch):
        return pairs.schema, iter([pairs])
    if isinstance(pairs, pa.RecordBatchReader):
        return pairs.schema, iter(pairs)
    it = iter(pairs)
    first = next(it, None)
    if first is None:
        return arrow_schema("pairs"), iter(())
    return first.schema, itertools.chain([first], it)


def _check_columns(schema: pa.Schema, keep_columns: Sequence[str]) -> None:
    missing = [c for c in ("pair_id", *MESSAGE_COLUMNS, *keep_columns) if c not in schema.names]
    if missing:
        raise ExportError(f"the pairs have no column(s) {sorted(set(missing))}; they have: {', '.join(schema.names)}")


def _output_schema(schema: pa.Schema, style: str, keep_columns: Sequence[str]) -> pa.Schema:
    """Plain fields (no contract doc metadata): the files are TRL's, not the curation table."""
    if style == "standard":
        fields = [pa.field(c, pa.string(), nullable=False) for c in MESSAGE_COLUMNS]
    else:
        fields = [pa.field(c, schema.field(c).type, nullable=False) for c in MESSAGE_COLUMNS]
    keep = list(dict.fromkeys(keep_columns))
    fields += [pa.field(c, schema.field(c).type, nullable=schema.field(c).nullable) for c in keep]
    return pa.schema(fields)


def _render(batch: pa.RecordBatch, style: str, tokenizer: Any, out_schema: pa.Schema) -> pa.RecordBatch:
    if batch.column("pair_id").null_count:
        raise ExportError("some pairs have no pair_id; the split is keyed on it (build rows with curation.records.pair_id)")
    for name in MESSAGE_COLUMNS:
        col = batch.column(name)
        if col.null_count or (len(col) and pc.min(pc.list_value_length(col)).as_py() == 0):
            lengths = pc.fill_null(pc.list_value_length(col), 0)
            bad = batch.column("pair_id")[pc.index(lengths, 0).as_py()].as_py()
            raise ExportError(f"pair {bad} has an empty {name!r}; TRL needs at least one message there")
    keep = [batch.column(f.name) for f in list(out_schema)[len(MESSAGE_COLUMNS) :]]
    if style == "conversational":
        columns = [batch.column(c) for c in MESSAGE_COLUMNS]
    else:
        rows = zip(*(batch.column(c).to_pylist() for c in (*MESSAGE_COLUMNS, "pair_id")), strict=True)
        texts = [_render_standard(p, c, r, tokenizer, pid) for p, c, r, pid in rows]
        columns = [pa.array([t[i] for t in texts], pa.string()) for i in range(3)]
    return pa.RecordBatch.from_arrays(columns + keep, schema=out_schema)


def _render_standard(prompt: list, chosen: list, rejected: list, tokenizer: Any, pid: str) -> tuple[str, str, str]:
    """One pair as TRL's standard (string) preference example."""
    if tokenizer is not None:
        from trl.data_utils import maybe_apply_chat_template

        out = maybe_apply_chat_template({"prompt": prompt, "chosen": chosen, "rejected": rejected}, tokenizer)
        return out["prompt"], out["chosen"], out["rejected"]
    single = len(prompt) == 1 and prompt[0]["role"] == "user"
    single = single and all(len(x) == 1 and x[0]["role"] == "assistant" for x in (chosen, rejected))
    if not single:
        roles = [m["role"] for m in prompt]
        raise ExportError(
            f"pair {pid} has a multi-turn prompt (roles {roles}) or multi-message responses, which the plain "
            "standard rendering cannot express; pass chat_template_tokenizer=<the model's tokenizer> or "
            "use style='conversational'"
        )
    return prompt[0]["content"], chosen[0]["content"], rejected[0]["content"]


class _SplitWriter:
    """Appends one split's rows to its Parquet and JSONL files, in row groups of ROW_GROUP_ROWS."""

    def __init__(self, folder: Path, split: str, schema: pa.Schema, parquet: bool, jsonl: bool):
        self.rows = 0
        self._buffer: list[pa.RecordBatch] = []
        self._buffered = 0
        self._schema = schema
        self._parquet = pq.ParquetWriter(folder / f"{split}.parquet", schema) if parquet else None
        self._jsonl: IO[str] | None = open(folder / f"{split}.jsonl", "w", encoding="utf-8") if jsonl else None  # noqa: SIM115 - closed in close()

    def write(self, batch: pa.RecordBatch) -> None:
        if not batch.num_rows:
            return
        self.rows += batch.num_rows
        if self._jsonl is not None:
            self._jsonl.writelines(json.dumps(r, ensure_ascii=False, default=str) + "\n" for r in batch.to_pylist())
        if self._parquet is not None:
            self._buffer.append(batch)
            self._buffered += batch.num_rows
            if self._buffered >= ROW_GROUP_ROWS:
                self._flush()

    def _flush(self) -> None:
        if self._buffer and self._parquet is not None:
            self._parquet.write_table(pa.Table.from_batches(self._buffer, self._schema), row_group_size=ROW_GROUP_ROWS)
        self._buffer, self._buffered = [], 0

    def close(self) -> None:
        self._flush()
        if self._parquet is not None:
            self._parquet.close()
        if self._jsonl is not None:
            self._jsonl.close()


def _write_hf(folder: Path) -> None:
    """``DatasetDict`` from the Parquet files (memory-mapped, not in Python), saved to ``hf/``.

    The Arrow cache ``from_parquet`` builds goes to a scratch folder, not the user's HF cache.
    """
    from datasets import Dataset, DatasetDict
    from datasets.table import InMemoryTable

    def load(path: Path, cache: str) -> Dataset:
        if pq.ParquetFile(path).metadata.num_rows == 0:  # from_parquet refuses a file with no rows
            return Dataset(InMemoryTable(pq.read_table(path)))
        return Dataset.from_parquet(str(path), cache_dir=cache)

    with tempfile.TemporaryDirectory(dir=folder, prefix=".hf-cache.") as cache:
        splits = {s: load(folder / f"{s}.parquet", cache) for s in SPLITS}
        # datasets 5.2 saves an empty split as zero shards, which load_from_disk cannot read back
        shards = {s: (1 if d.num_rows == 0 else None) for s, d in splits.items()}
        DatasetDict(splits).save_to_disk(str(folder / "hf"), num_shards=shards)
        del splits


def _export_info(
    style: str,
    formats: list[str],
    counts: dict[str, int],
    seed: int,
    test_size: float,
    schema: pa.Schema,
    tokenizer: Any,
    info: dict[str, Any] | None,
) -> dict[str, Any]:
    return {
        "kind": "trl-preference",
        "style": style,
        "formats": formats,
        "counts": counts,
        "seed": seed,
        "test_size": test_size,
        "split_rule": SPLIT_RULE,
        "columns": schema.names,
        "chat_template_tokenizer": getattr(tokenizer, "name_or_path", None) if tokenizer is not None else None,
        "info": info or {},
    }
