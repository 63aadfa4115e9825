"""Exact dedup in one streaming pass equals its definition over the whole table: a pair is kept
iff no earlier pair (in file order, validated rows only) has its normalised text, and a
duplicate names the first pair with that text. Checked on real HH pairs with repeats inside
a batch, across batches and differing only in case and whitespace."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from curation.records import content_ids
from curation.stages.dedup import exact as dedup
from curation.tables import TableWriter, selected_batches
from tests.stages.ingest.test_columnar import SAMPLE, run_ingest


def _variant(pair: dict, how: int) -> dict:
    """The same pair as dedup sees it (case, spacing), with a new id."""
    out = {**pair}
    for part in ("prompt", "chosen", "rejected"):
        out[part] = [{**m, "content": m["content"].upper() if how % 2 else "  " + m["content"].replace(" ", " \n ")} for m in pair[part]]
    out["prompt_id"], out["pair_id"] = content_ids(out["prompt"], out["chosen"], out["rejected"])
    return out


@pytest.fixture(scope="module")
def staged(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[dict], np.ndarray]:
    """An IPC file of 1,200+ real pairs with planted repeats, and validate-excluded positions."""
    tmp = tmp_path_factory.mktemp("dedup")
    pairs = run_ingest(SAMPLE, tmp / "ingest", columnar=True)["pairs"][:600]
    rng = np.random.default_rng(7)
    rows = list(pairs)
    for i in rng.choice(len(pairs), 150, replace=False).tolist():
        at = int(rng.integers(0, len(rows) + 1))
        rows.insert(at, pairs[i] if i % 3 == 0 else _variant(pairs[i], i))
    for i in range(0, 40, 4):  # repeats right after their original: inside one batch
        rows.insert(i + 1, rows[i])
    path = tmp / "pairs.arrow"
    with TableWriter(path, "pairs", batch_size=97) as w:
        for r in rows:
            w.append(r)
    excluded = np.sort(rng.choice(len(rows), 25, replace=False)).astype(np.int64)
    return path, rows, excluded


def _definition(rows: list[dict], excluded: np.ndarray) -> tuple[list[bool], list[str | None]]:
    valid = [r for i, r in enumerate(rows) if i not in set(excluded.tolist())]
    keys = dedup.dedup_keys(pa.Table.from_pylist([{k: r[k] for k in ("prompt", "chosen", "rejected")} for r in valid]))
    frame = pl.DataFrame({"key": keys, "pair_id": [r["pair_id"] for r in valid]}).with_columns(
        keep=pl.col("key").is_first_distinct(), first=pl.col("pair_id").first().over("key")
    )
    matched = [None if k else f for k, f in zip(frame["keep"].to_list(), frame["first"].to_list())]
    return frame["keep"].to_list(), matched


@pytest.mark.parametrize(("batch_size", "threads"), [(13, 1), (50, 3), (10_000, 2)])
def test_one_pass_dedup_equals_its_definition(staged, tmp_path: Path, batch_size: int, threads: int) -> None:
    path, rows, excluded = staged
    keep, matched = _definition(rows, excluded)
    assert 100 < keep.count(False) < 200  # the planted repeats, some of them excluded
    kept, duplicates = dedup.deduplicate(
        selected_batches(path, excluded, batch_size=batch_size), tmp_path / "kept.parquet", tmp_path / "dec.parquet", threads=threads
    )
    decisions = pq.read_table(tmp_path / "dec.parquet").to_pylist()
    valid = [r for i, r in enumerate(rows) if i not in set(excluded.tolist())]
    assert [d["pair_id"] for d in decisions] == [r["pair_id"] for r in valid]
    assert [d["decision"] == "kept" for d in decisions] == keep
    assert [d["matched_pair_id"] for d in decisions] == matched
    assert {d["reason"] for d in decisions if d["decision"] == "filtered"} == {"exact_duplicate"}
    assert (kept, duplicates) == (keep.count(True), keep.count(False))
    kept_rows = pq.read_table(tmp_path / "kept.parquet").to_pylist()
    assert [r["pair_id"] for r in kept_rows] == [r["pair_id"] for r, k in zip(valid, keep) if k]
    assert kept_rows[5] == valid[[i for i, k in enumerate(keep) if k][5]]


def test_a_batch_of_duplicates_only_keeps_nothing_and_names_every_match(tmp_path: Path) -> None:
    """A file read twice over (a source listed twice, a re-run appended): whole batches with no
    pair to keep."""
    pairs = run_ingest(SAMPLE, tmp_path / "ingest", columnar=True)["pairs"][:40]
    path = tmp_path / "pairs.arrow"
    with TableWriter(path, "pairs", batch_size=40) as w:
        for r in pairs + pairs:
            w.append(r)
    kept, duplicates = dedup.deduplicate(
        selected_batches(path, np.zeros(0, np.int64), batch_size=20), tmp_path / "kept.parquet", tmp_path / "dec.parquet", threads=2
    )
    assert (kept, duplicates) == (40, 40)
    assert [r["pair_id"] for r in pq.read_table(tmp_path / "kept.parquet").to_pylist()] == [r["pair_id"] for r in pairs]
    decisions = pq.read_table(tmp_path / "dec.parquet").to_pylist()
    assert [d["matched_pair_id"] for d in decisions[40:]] == [r["pair_id"] for r in pairs]


def test_disabled_dedup_keeps_every_valid_pair(staged, tmp_path: Path) -> None:
    path, rows, excluded = staged
    kept, duplicates = dedup.deduplicate(
        selected_batches(path, excluded, batch_size=64), tmp_path / "kept.parquet", tmp_path / "dec.parquet", enabled=False, threads=2
    )
    assert (kept, duplicates) == (len(rows) - len(excluded), 0)
    assert pq.read_metadata(tmp_path / "kept.parquet").num_rows == kept


def test_seen_keys_find_the_first_position_of_every_key_across_many_batches() -> None:
    rng = np.random.default_rng(3)
    keys = rng.integers(0, 3_000, 20_000).astype(np.uint64)  # many repeats, inside and across batches
    seen, got, offset = dedup._SeenKeys(), [], 0
    for size in rng.integers(1, 400, 200).tolist():
        batch = keys[offset : offset + size]
        got.append(seen.first_of(batch, offset))
        offset += len(batch)
    firsts: dict[int, int] = {}
    expected = [-1 if firsts.setdefault(int(k), i) == i else firsts[int(k)] for i, k in enumerate(keys[:offset].tolist())]
    assert np.concatenate(got).tolist() == expected
    assert len(seen.runs) <= 16 and sum(len(k) for k, _ in seen.runs) == len(firsts)
