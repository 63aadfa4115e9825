"""Readers on well-formed input: every format, gzip, globs, limits, fingerprints, HF datasets.

Bad input (quarantined rows, file-level errors) is in test_readers_bad_input.py.
"""

from __future__ import annotations

import dataclasses
import gzip
import hashlib
import json
import shutil
import time
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from curation.errors import SourceError
from curation.sources import SourceConfig
from curation.stages.ingest.readers import FileReader, RawRow, open_source

MAX = 1_000_000
RAW = 16_384


def src(path: Path | str, **kw) -> SourceConfig:
    return SourceConfig(name="t", path=str(path), adapter="hh_rlhf", **kw)


def readers(path: Path | str, *, max_row_bytes: int = MAX, raw_limit_bytes: int = RAW, **kw) -> list[FileReader]:
    return open_source(src(path, **kw), max_row_bytes=max_row_bytes, raw_limit_bytes=raw_limit_bytes)


def read(path: Path | str, **kw) -> list[RawRow]:
    return [row for r in readers(path, **kw) for row in r.rows()]


def values(rows: list[RawRow]) -> list[dict]:
    assert all(r.error is None for r in rows), [r.error.message for r in rows if r.error]
    return [r.value for r in rows]


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def write_jsonl(path: Path, objs: list[dict]) -> Path:
    path.write_text("".join(json.dumps(o) + "\n" for o in objs), encoding="utf-8")
    return path


OBJS = [{"chosen": f"c{i}", "rejected": f"r{i}", "n": i} for i in range(5)]


# --- the contract ---------------------------------------------------------------------


def test_rawrow_is_a_slotted_dataclass_with_the_contract_fields():
    assert [f.name for f in dataclasses.fields(RawRow)] == ["index", "value", "raw", "raw_bytes", "error"]
    row = RawRow(3, {"a": 1}, '{"a":1}', 7, None)
    assert not hasattr(row, "__dict__")
    assert row == RawRow(index=3, value={"a": 1}, raw='{"a":1}', raw_bytes=7, error=None)


def test_readers_satisfy_the_protocol(tmp_path):
    (r,) = readers(write_jsonl(tmp_path / "a.jsonl", OBJS))
    assert isinstance(r, FileReader)
    assert r.label == str(tmp_path / "a.jsonl")


# --- JSONL ----------------------------------------------------------------------------


def test_jsonl_rows_raw_and_physical_indices(tmp_path):
    p = tmp_path / "a.jsonl"
    p.write_bytes(b'\xef\xbb\xbf{"a": 1}\n\n   \n{"a": "\xc3\xa9"}\r\n{"a": 3}')  # BOM, blank lines, CRLF, no final newline
    rows = read(p)
    assert values(rows) == [{"a": 1}, {"a": "é"}, {"a": 3}]
    assert [r.index for r in rows] == [0, 3, 4]  # blank lines are skipped but keep their place
    assert [r.raw for r in rows] == ['{"a": 1}', '{"a": "é"}', '{"a": 3}']
    assert [r.raw_bytes for r in rows] == [8, 11, 8]


def test_jsonl_raw_is_cut_to_raw_limit_on_a_character_boundary(tmp_path):
    p = write_jsonl(tmp_path / "a.jsonl", [{"text": "é" * 100}])
    (row,) = read(p, raw_limit_bytes=20)
    assert row.error is None and row.value == {"text": "é" * 100}
    assert len(row.raw.encode()) <= 20 and '{"text": "'.startswith(row.raw[:10])
    assert row.raw_bytes == len(p.read_bytes()) - 1


def test_hh_shared_file_reads_1200_rows_with_stable_fingerprint(hh_path):
    rows = read(hh_path)
    assert len(rows) == 1200
    assert [r.index for r in rows] == list(range(1200))
    assert all(set(v) == {"chosen", "rejected"} for v in values(rows))
    assert json.loads(rows[0].raw) == rows[0].value
    first = readers(hh_path)[0]
    list(first.rows())
    second = readers(hh_path)[0]  # not iterated: read from the file
    expected = {"path": str(hh_path), "bytes": hh_path.stat().st_size, "sha256": sha256(hh_path)}
    assert first.fingerprint() == second.fingerprint() == expected


def test_fingerprint_changes_when_one_byte_changes(hh_path, tmp_path):
    p = tmp_path / "hh.jsonl"
    shutil.copy(hh_path, p)
    (r,) = readers(p)
    list(r.rows())
    before = r.fingerprint()
    data = bytearray(p.read_bytes())
    i = data.index(b"Human:")
    data[i] = ord("h")
    p.write_bytes(bytes(data))
    (r2,) = readers(p)
    assert r2.fingerprint()["sha256"] != before["sha256"]  # without iterating
    list(r2.rows())
    assert r2.fingerprint()["sha256"] == sha256(p) != before["sha256"]  # computed while streaming
    assert r2.fingerprint()["bytes"] == before["bytes"]


def test_jsonl_gz_reads_the_same_rows_and_hashes_the_compressed_bytes(tmp_path):
    plain = write_jsonl(tmp_path / "a.jsonl", OBJS)
    gz = tmp_path / "a.jsonl.gz"
    gz.write_bytes(gzip.compress(plain.read_bytes()))
    (r,) = readers(gz)
    rows = list(r.rows())
    assert values(rows) == OBJS
    assert r.fingerprint() == {"path": str(gz), "bytes": gz.stat().st_size, "sha256": sha256(gz)}


def test_empty_and_multi_member_gzip(tmp_path):
    (tmp_path / "e.jsonl").write_bytes(b"")
    (tmp_path / "e.jsonl.gz").write_bytes(gzip.compress(b""))
    (tmp_path / "m.jsonl.gz").write_bytes(gzip.compress(b'{"a": 1}\n') + gzip.compress(b'{"a": 2}\n'))
    assert read(tmp_path / "e.jsonl") == [] and read(tmp_path / "e.jsonl.gz") == []
    assert values(read(tmp_path / "m.jsonl.gz")) == [{"a": 1}, {"a": 2}]


def test_ndjson_extension_and_explicit_format(tmp_path):
    write_jsonl(tmp_path / "a.ndjson", OBJS[:2])
    write_jsonl(tmp_path / "b.txt", OBJS[:3])
    assert values(read(tmp_path / "a.ndjson")) == OBJS[:2]
    assert values(read(tmp_path / "b.txt", format="jsonl")) == OBJS[:3]


# --- globs and limit ------------------------------------------------------------------


def test_glob_gives_one_reader_per_file_in_sorted_order(tmp_path):
    for name, objs in [("c.jsonl", OBJS[4:]), ("a.jsonl", OBJS[:2]), ("b.jsonl", OBJS[2:4])]:
        write_jsonl(tmp_path / name, objs)
    (tmp_path / "notes.md").write_text("not matched")
    rs = readers(tmp_path / "*.jsonl")
    assert [Path(r.label).name for r in rs] == ["a.jsonl", "b.jsonl", "c.jsonl"]
    assert values([row for r in rs for row in r.rows()]) == OBJS


def test_glob_with_auto_format_picks_each_files_format(tmp_path):
    write_jsonl(tmp_path / "a.jsonl", OBJS[:1])
    (tmp_path / "b.csv").write_text("chosen,rejected\nx,y\n")
    rows = read(tmp_path / "*")
    assert values(rows) == [OBJS[0], {"chosen": "x", "rejected": "y"}]


def test_limit_caps_total_rows_across_files_in_order(tmp_path):
    for name in ("a", "b", "c"):
        write_jsonl(tmp_path / f"{name}.jsonl", OBJS[:3])
    rs = readers(tmp_path / "*.jsonl", limit=5)
    counts = [len(list(r.rows())) for r in rs]
    assert counts == [3, 2, 0]
    assert len(list(rs[1].rows())) == 2  # a second pass of one reader gives the same rows
    # a pass cut short by the limit does not leave a partial sha256 behind
    assert rs[1].fingerprint()["sha256"] == sha256(tmp_path / "b.jsonl")


def test_limit_within_one_file(tmp_path):
    rows = read(write_jsonl(tmp_path / "a.jsonl", OBJS), limit=2)
    assert values(rows) == OBJS[:2]


# --- JSON documents -------------------------------------------------------------------


def test_pandalm_shared_json_array_reads_999_rows(shared_data):
    p = shared_data / "pandalm-testset" / "testset-v1.json"
    (r,) = readers(p)
    rows = list(r.rows())
    assert len(rows) == 999
    vals = values(rows)
    assert [v["idx"] for v in vals] == list(range(999))
    assert {"instruction", "response1", "response2", "annotator1"} <= set(vals[0])
    assert json.loads(rows[5].raw) == vals[5]
    assert r.fingerprint() == readers(p)[0].fingerprint() == {"path": str(p), "bytes": p.stat().st_size, "sha256": sha256(p)}


def test_json_object_with_one_list_key_holds_the_rows(tmp_path):
    p = tmp_path / "a.json"
    p.write_text(json.dumps({"version": 2, "data": OBJS}, indent=2))
    rows = read(p)
    assert values(rows) == OBJS and [r.index for r in rows] == list(range(5))


def test_json_named_file_holding_json_lines_is_streamed(tmp_path):
    p = write_jsonl(tmp_path / "a.json", OBJS)
    rows = read(p)
    assert values(rows) == OBJS


def test_json_gz_and_limit(tmp_path):
    p = tmp_path / "a.json.gz"
    p.write_bytes(gzip.compress(json.dumps(OBJS).encode()))
    assert values(read(p, limit=3)) == OBJS[:3]


def test_json_array_element_that_is_no_object_is_quarantined(tmp_path):
    p = tmp_path / "a.json"
    p.write_text(json.dumps([OBJS[0], [1, 2], OBJS[1]]))
    rows = read(p)
    assert [r.error.code if r.error else None for r in rows] == [None, "not_an_object", None]
    assert rows[1].raw == "[1,2]" and "element 1 is an array" in rows[1].error.message


# --- CSV ------------------------------------------------------------------------------


def test_csv_header_gives_keys_and_values_stay_strings(tmp_path):
    p = tmp_path / "a.csv"
    p.write_bytes(b'\xef\xbb\xbfprompt,chosen,score\r\nhi,"a, b",1\r\n\r\nq,"two\nlines",2.5\r\nlast,x,\r\n')
    rows = read(p)
    assert values(rows) == [
        {"prompt": "hi", "chosen": "a, b", "score": "1"},
        {"prompt": "q", "chosen": "two\nlines", "score": "2.5"},
        {"prompt": "last", "chosen": "x", "score": ""},
    ]
    assert [r.index for r in rows] == [1, 3, 5]  # physical line of each record's start
    assert rows[1].raw == 'q,"two\nlines",2.5' and rows[1].raw_bytes == len(rows[1].raw)


def test_csv_with_only_a_header_or_nothing_yields_nothing(tmp_path):
    (tmp_path / "h.csv").write_text("a,b\n")
    (tmp_path / "e.csv").write_text("")
    assert read(tmp_path / "h.csv") == [] and read(tmp_path / "e.csv") == []


def test_csv_gz_and_fingerprint(tmp_path):
    p = tmp_path / "a.csv.gz"
    p.write_bytes(gzip.compress(b"a,b\n1,2\n3,4\n"))
    (r,) = readers(p)
    assert values(list(r.rows())) == [{"a": "1", "b": "2"}, {"a": "3", "b": "4"}]
    assert r.fingerprint()["sha256"] == sha256(p)


# --- Parquet --------------------------------------------------------------------------


def test_parquet_rows_in_batches_with_json_raw(tmp_path):
    p = tmp_path / "a.parquet"
    data = [{"chosen": f"c{i}", "rejected": "r", "score": i / 2, "tags": ["x", str(i)]} for i in range(10_000)]
    pq.write_table(pa.Table.from_pylist(data), p, row_group_size=3_000)
    (r,) = readers(p)
    rows = list(r.rows())
    assert values(rows) == data
    assert [row.index for row in rows] == list(range(10_000))
    assert json.loads(rows[7].raw) == data[7] and rows[7].raw_bytes == len(rows[7].raw.encode())
    assert r.fingerprint() == {"path": str(p), "bytes": p.stat().st_size, "sha256": sha256(p)}


def test_parquet_limit_and_non_json_types(tmp_path):
    import datetime as dt

    p = tmp_path / "a.parquet"
    pq.write_table(pa.table({"when": [dt.date(2024, 1, 2)] * 3, "blob": [b"\x00\xff", b"ok", None]}), p)
    rows = read(p, limit=2)
    assert len(rows) == 2 and rows[0].value["when"] == dt.date(2024, 1, 2)
    assert json.loads(rows[0].raw) == {"when": "2024-01-02", "blob": "base64:AP8="}


# --- Hugging Face datasets ------------------------------------------------------------


def test_hf_disk_dataset(tmp_path):
    import datasets

    folder = tmp_path / "saved"
    datasets.Dataset.from_list(OBJS).save_to_disk(str(folder))
    (r,) = readers(folder)  # auto: a saved dataset folder
    rows = list(r.rows())
    assert values(rows) == OBJS and [row.index for row in rows] == list(range(5))
    assert r.label == str(folder)
    fp = r.fingerprint()
    assert set(fp) == {"id", "fingerprint"} and fp["id"] == str(folder) and fp["fingerprint"]
    assert readers(folder, format="hf_disk")[0].fingerprint() == fp  # stable across loads
    assert values(read(folder, limit=2)) == OBJS[:2]


def test_hf_disk_dataset_dict_split_selection(tmp_path):
    import datasets

    folder = tmp_path / "dd"
    dd = datasets.DatasetDict({"test": datasets.Dataset.from_list(OBJS[:2]), "validation": datasets.Dataset.from_list(OBJS[2:])})
    dd.save_to_disk(str(folder))
    (r,) = readers(folder, split="validation")
    assert values(list(r.rows())) == OBJS[2:]
    assert r.label == str(folder / "validation")
    with pytest.raises(SourceError) as exc:
        readers(folder)  # two splits, none asked for, no 'train'
    assert "several splits (test, validation)" in str(exc.value) and "split" in str(exc.value)
    with pytest.raises(SourceError, match=r"no split 'train'; its splits are: test, validation"):
        readers(folder, split="train")


def test_hf_disk_dataset_dict_defaults_to_train_or_the_only_split(tmp_path):
    import datasets

    both = tmp_path / "both"
    datasets.DatasetDict({"train": datasets.Dataset.from_list(OBJS[:1]), "test": datasets.Dataset.from_list(OBJS[1:])}).save_to_disk(
        str(both)
    )
    assert values(read(both)) == OBJS[:1]
    only = tmp_path / "only"
    datasets.DatasetDict({"test": datasets.Dataset.from_list(OBJS[1:])}).save_to_disk(str(only))
    assert values(read(only)) == OBJS[1:]


def test_hf_load_dataset_from_a_local_folder_works_offline(tmp_path, monkeypatch):
    import datasets

    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", tmp_path / "cache")
    folder = tmp_path / "local"
    folder.mkdir()
    write_jsonl(folder / "train.jsonl", OBJS)
    (r,) = readers(folder, format="hf")
    assert r.label == f"hf:{folder}/train"
    assert values(list(r.rows())) == OBJS
    assert r.fingerprint()["id"] == r.label and r.fingerprint()["fingerprint"]


OFFLINE = (
    "cannot load HF dataset 'some-org/some-preference-set': the hub is unreachable (offline); download it on a "
    "machine with network access and save it with Dataset.save_to_disk, then point `path` at that folder with format: hf_disk"
)


def test_hf_hub_name_offline_fails_fast_with_what_to_do(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    started = time.monotonic()
    with pytest.raises(SourceError) as exc:
        readers("some-org/some-preference-set", format="hf", split="train")
    assert time.monotonic() - started < 10
    assert str(exc.value) == OFFLINE
    assert exc.value.__cause__ is None and exc.value.__suppress_context__


def test_hf_hub_unreachable_without_offline_switch_fails_fast(monkeypatch):
    for var in (
        "HF_HUB_OFFLINE",
        "HF_DATASETS_OFFLINE",
        "HTTPS_PROXY",
        "https_proxy",
        "ALL_PROXY",
        "all_proxy",
        "HTTP_PROXY",
        "http_proxy",
    ):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("HF_ENDPOINT", "http://127.0.0.1:9")  # nothing listens there
    started = time.monotonic()
    with pytest.raises(SourceError) as exc:
        readers("some-org/some-preference-set", format="hf")
    assert time.monotonic() - started < 10
    assert str(exc.value) == OFFLINE
