"""Readers on bad input: row-level problems become quarantined RawRows and the run goes
on; file-level problems raise a SourceError that names the file, with no library traceback."""

from __future__ import annotations

import gzip
import json
import os
import tracemalloc
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from curation.errors import SourceError
from curation.sources import SourceConfig
from curation.stages.ingest.readers import RawRow, open_source
from curation.stages.ingest.readers._common import UTF_BOMS, translate_os_error

MAX = 1_000_000
RAW = 16_384


def readers(path: Path | str, *, max_row_bytes: int = MAX, raw_limit_bytes: int = RAW, **kw):
    return open_source(
        SourceConfig(name="t", path=str(path), adapter="hh_rlhf", **kw), max_row_bytes=max_row_bytes, raw_limit_bytes=raw_limit_bytes
    )


def read(path: Path | str, **kw) -> list[RawRow]:
    return [row for r in readers(path, **kw) for row in r.rows()]


def codes(rows: list[RawRow]) -> list[str | None]:
    return [r.error.code if r.error else None for r in rows]


def source_error(path: Path | str, **kw) -> SourceError:
    with pytest.raises(SourceError) as exc:
        readers(path, **kw)
    err = exc.value
    assert no_library_traceback(err)
    return err


def no_library_traceback(err: BaseException) -> bool:
    return err.__cause__ is None and (err.__context__ is None or err.__suppress_context__)


GOOD = b'{"chosen": "a", "rejected": "b"}\n'


# --- JSONL rows -----------------------------------------------------------------------


def test_truncated_last_line_is_quarantined_and_earlier_rows_read(tmp_path):
    p = tmp_path / "a.jsonl"
    p.write_bytes(GOOD * 3 + b'{"chosen": "a", "rejec')
    rows = read(p)
    assert codes(rows) == [None, None, None, "unparsable_json"]
    bad = rows[3]
    assert bad.index == 3 and bad.value is None and bad.raw == '{"chosen": "a", "rejec' and bad.raw_bytes == 22
    assert bad.error.message.startswith("line 4 is not valid JSON: ")
    assert "may be truncated" in bad.error.message


def test_invalid_json_line_message_names_line_and_column(tmp_path):
    p = tmp_path / "a.jsonl"
    p.write_bytes(GOOD + b'{"chosen": "a" "rejected": "b"}\n' + GOOD)
    rows = read(p)
    assert codes(rows) == [None, "unparsable_json", None]
    assert rows[1].error.message == "line 2 is not valid JSON: Expecting ',' delimiter at column 16"
    p.write_bytes(GOOD + b'{"chosen": "abc}\n')
    assert read(p)[1].error.message == "line 2 is not valid JSON: Unterminated string starting at column 12"  # not "at at"


@pytest.mark.parametrize(
    "line, kind",
    [(b"[1, 2]", "an array"), (b"42", "a number"), (b'"text"', "a string"), (b"null", "null"), (b"true", "a boolean")],
)
def test_json_values_that_are_no_objects(tmp_path, line, kind):
    p = tmp_path / "a.jsonl"
    p.write_bytes(GOOD + line + b"\n" + GOOD)
    rows = read(p)
    assert codes(rows) == [None, "not_an_object", None]
    assert rows[1].error.message == f"line 2 is {kind}, not a JSON object"
    assert rows[1].raw == line.decode()


def test_non_utf8_bytes_in_one_line(tmp_path):
    p = tmp_path / "a.jsonl"
    p.write_bytes(GOOD + b'{"chosen": "caf\xe9", "rejected": "b"}\n' + GOOD)
    rows = read(p)
    assert codes(rows) == [None, "undecodable_text", None]
    assert rows[1].error.message == "line 2 is not valid UTF-8: byte 0xe9 at byte 16 cannot be decoded (invalid continuation byte)"
    assert rows[1].raw == '{"chosen": "caf\\xe9", "rejected": "b"}'
    assert rows[0].value == rows[2].value == {"chosen": "a", "rejected": "b"}


def test_escaped_lone_surrogate_is_not_text(tmp_path):
    p = tmp_path / "a.jsonl"
    p.write_bytes(GOOD + b'{"chosen": "\\ud800x"}\n{"ok": "\\ud83d\\ude00"}\n')
    rows = read(p)
    assert codes(rows) == [None, "undecodable_text", None]
    assert rows[2].value == {"ok": "\U0001f600"}


def test_50mb_row_is_quarantined_without_holding_it(tmp_path):
    p = tmp_path / "big.jsonl"
    with open(p, "wb") as f:
        f.write(GOOD)
        f.write(b'{"chosen": "' + b"x" * 50_000_000 + b'", "rejected": "b"}\n')
        f.write(GOOD)
    tracemalloc.start()
    try:
        rows = read(p, max_row_bytes=1_000_000, raw_limit_bytes=1_000)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert codes(rows) == [None, "row_too_large", None]
    big = rows[1]
    assert big.raw_bytes == 50_000_031 and big.value is None
    assert len(big.raw.encode()) <= 1_000 and big.raw.startswith('{"chosen": "xxx')
    assert "50,000,031 bytes, over the limit of 1,000,000 bytes" in big.error.message
    assert rows[0].index == 0 and rows[2].index == 2 and rows[2].value == {"chosen": "a", "rejected": "b"}
    assert peak < 10_000_000, f"peak {peak:,} bytes: the big line was held in memory"


@pytest.mark.parametrize("eol", [b"\n", b"\r\n"])
def test_row_size_limit_boundary(tmp_path, eol):
    fits = b'{"a": "' + b"x" * 93 + b'"}'  # 102 bytes
    p = tmp_path / "a.jsonl"
    p.write_bytes(fits + eol + fits[:-2] + b'x"}' + eol + fits)
    rows = read(p, max_row_bytes=102)
    assert codes(rows) == [None, "row_too_large", None]
    assert [r.raw_bytes for r in rows] == [102, 103, 102]


def test_truncated_gz_yields_rows_then_one_error_row(tmp_path):
    data = b"".join(json.dumps({"chosen": f"c{i}", "rejected": "r" * (i % 50)}).encode() + b"\n" for i in range(2_000))
    full = gzip.compress(data)
    p = tmp_path / "a.jsonl.gz"
    p.write_bytes(full[: len(full) * 6 // 10])
    (r,) = readers(p)
    rows = list(r.rows())  # does not raise
    assert codes(rows)[:-1] == [None] * (len(rows) - 1) and rows[-1].error.code == "truncated_file"
    assert 100 < len(rows) < 2_000
    assert [row.index for row in rows] == list(range(len(rows)))
    assert [row.value["chosen"] for row in rows[:-1]] == [f"c{i}" for i in range(len(rows) - 1)]
    assert "ends early" in rows[-1].error.message and str(p) in rows[-1].error.message
    assert r.fingerprint()["bytes"] == p.stat().st_size


def test_corrupt_gz_body_becomes_an_error_row(tmp_path):
    full = bytearray(gzip.compress(GOOD * 5_000))
    for i in range(len(full) // 2, len(full) // 2 + 64):
        full[i] ^= 0x5A
    p = tmp_path / "a.jsonl.gz"
    p.write_bytes(bytes(full))
    rows = read(p)
    assert rows[-1].error is not None and rows[-1].error.code == "truncated_file"


def test_csv_bad_rows(tmp_path):
    p = tmp_path / "a.csv"
    p.write_bytes(b"a,b\n1,2\n1,2,3\ncaf\xe9,x\n4\n5,6\n")
    rows = read(p)
    assert codes(rows) == [None, "csv_error", "undecodable_text", "csv_error", None]
    assert rows[1].error.message == "line 3 has 3 fields, but the header has 2"
    assert rows[2].raw == "caf\\xe9,x" and rows[-1].value == {"a": "5", "b": "6"}


def test_csv_broken_quoting_is_a_csv_error_not_a_silent_merge(tmp_path):
    p = tmp_path / "a.csv"
    p.write_bytes(b'a,b\n1,"x"y\n2,3\n4,"never closed\n5,6\n')
    rows = read(p)
    assert codes(rows) == ["csv_error", None, "csv_error"]
    assert rows[0].error.message == "line 2 is not valid CSV: ',' expected after '\"'"
    assert rows[2].index == 3 and rows[2].raw == '4,"never closed\n5,6'


def test_csv_too_large_row(tmp_path):
    p = tmp_path / "a.csv"
    p.write_bytes(b"a,b\n1,2\n" + b"y" * 5_000 + b",z\n3,4\n")
    rows = read(p, max_row_bytes=1_000, raw_limit_bytes=100)
    assert codes(rows) == [None, "row_too_large", None]
    assert rows[1].raw_bytes == 5_002 and len(rows[1].raw) == 100


def test_truncated_csv_gz(tmp_path):
    full = gzip.compress(b"a,b\n" + b"".join(b"%d,x\n" % i for i in range(20_000)))
    p = tmp_path / "a.csv.gz"
    p.write_bytes(full[: len(full) // 2])
    rows = read(p)
    assert rows[-1].error.code == "truncated_file" and all(r.error is None for r in rows[:-1])


# --- file-level errors ----------------------------------------------------------------


def test_missing_file(tmp_path):
    err = source_error(tmp_path / "nope.jsonl")
    assert str(err) == f"source file not found: {tmp_path / 'nope.jsonl'}"


def test_glob_matching_nothing(tmp_path):
    assert "no files match" in str(source_error(tmp_path / "*.jsonl"))


def test_unknown_extension_names_the_file_and_the_formats(tmp_path):
    p = tmp_path / "data.xlsx"
    p.write_bytes(b"PK")
    msg = str(source_error(p))
    assert str(p) in msg and "'.xlsx'" in msg and ".jsonl" in msg and ".parquet" in msg and "format" in msg


def test_not_a_gzip_file(tmp_path):
    p = tmp_path / "a.jsonl.gz"
    p.write_bytes(GOOD)
    assert str(source_error(p)) == f"{p} is not a gzip file (it does not start with the gzip signature); decompress it or fix its name"


@pytest.mark.skipif(hasattr(os, "geteuid") and os.geteuid() == 0, reason="root can read any file")
def test_permission_denied(tmp_path):
    p = tmp_path / "a.jsonl"
    p.write_bytes(GOOD)
    p.chmod(0)
    assert str(source_error(p)) == f"cannot read {p}: permission denied"


def test_permission_error_message():
    assert str(translate_os_error("/x/a.jsonl", PermissionError(13, "Permission denied"))) == "cannot read /x/a.jsonl: permission denied"


def test_corrupt_parquet(tmp_path):
    garbage = tmp_path / "garbage.parquet"
    garbage.write_bytes(b"PAR1 this is not parquet at all")
    assert str(source_error(garbage)).startswith(f"{garbage} is not a readable Parquet file: ")
    good = tmp_path / "good.parquet"
    pq.write_table(pa.table({"a": list(range(1000))}), good)
    cut = tmp_path / "cut.parquet"
    cut.write_bytes(good.read_bytes()[:-100])
    assert str(cut) in str(source_error(cut))


def test_directory_that_is_no_dataset(tmp_path):
    d = tmp_path / "folder"
    d.mkdir()
    (d / "a.jsonl").write_bytes(GOOD)
    assert "not a saved Hugging Face dataset" in str(source_error(d))
    assert "not a saved Hugging Face dataset" in str(source_error(d, format="hf_disk"))
    assert "is a directory" in str(source_error(d, format="jsonl"))


def test_invalid_json_document(tmp_path):
    p = tmp_path / "a.json"
    p.write_text('[{"a": 1},\n {"a": 2\n]')
    (r,) = readers(p)
    with pytest.raises(SourceError) as exc:
        list(r.rows())
    assert str(exc.value) == f"{p} is not valid JSON: Expecting ',' delimiter at line 3, column 1"
    assert no_library_traceback(exc.value)


def test_json_object_with_several_lists_is_ambiguous(tmp_path):
    p = tmp_path / "a.json"
    p.write_text(json.dumps({"train": [{"a": 1}], "test": [{"a": 2}]}))
    with pytest.raises(SourceError, match="list-valued keys 'train', 'test'"):
        list(readers(p)[0].rows())


def test_csv_header_with_repeated_names(tmp_path):
    p = tmp_path / "a.csv"
    p.write_text("a,b,a\n1,2,3\n")
    with pytest.raises(SourceError, match="repeats column names: 'a'"):
        list(readers(p)[0].rows())


# --- property: arbitrary bytes never raise --------------------------------------------


def _expected_rows(data: bytes, max_row_bytes: int) -> int:
    if data.startswith(b"\xef\xbb\xbf"):
        data = data[3:]
    lines = data.split(b"\n")
    if lines and lines[-1] == b"":
        lines.pop()
    return sum(1 for line in lines if line.strip(b" \t\r") or len(line.rstrip(b"\r")) > max_row_bytes)


_PIECES = st.sampled_from(
    [
        b"{",
        b"}",
        b"[",
        b"]",
        b'"',
        b":",
        b",",
        b"\\",
        b"\\u",
        b"d800",
        b"\n",
        b"\r\n",
        b" ",
        b"\xef\xbb\xbf",
        b"\xff",
        b"\xc3",
        b"\xa9",
        b"1",
        b"null",
        b'{"a": 1}',
        b"\t",
    ]
)
_DATA = st.one_of(st.binary(max_size=400), st.lists(_PIECES, max_size=60).map(b"".join))


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=_DATA, max_row_bytes=st.sampled_from([8, 40, 1_000_000]))
def test_arbitrary_bytes_never_raise_and_each_nonblank_line_is_one_row(tmp_path, data, max_row_bytes):
    p = tmp_path / "fuzz.jsonl"
    p.write_bytes(data)
    head = data[:512]
    if any(data.startswith(bom) for bom, _ in UTF_BOMS):
        return  # UTF-16/32: decoded (tested below)
    if head.count(0) * 4 >= len(head) > 0:
        assert "is not UTF-8 text" in str(source_error(p))
        return
    rows = read(p, max_row_bytes=max_row_bytes, raw_limit_bytes=16)
    assert len(rows) == _expected_rows(data, max_row_bytes)
    for row in rows:
        assert (row.value is None) != (row.error is None)
        assert row.value is None or isinstance(row.value, dict)
        assert row.raw is None or len(row.raw.encode("utf-8")) <= 16
    assert len({r.index for r in rows}) == len(rows)


# --- encodings ------------------------------------------------------------------------

ROWS = [{"chosen": "\n\nHuman: Ça va? 日本\n\nAssistant: oui 😀", "rejected": "\n\nHuman: Ça va? 日本\n\nAssistant: non"}] * 3


@pytest.mark.parametrize("encoding", ["utf-16", "utf-16-le", "utf-16-be", "utf-32", "utf-32-le", "utf-32-be"])
@pytest.mark.parametrize("packed", [False, True])
def test_utf16_and_utf32_files_with_a_byte_order_mark_are_decoded(tmp_path, encoding, packed):
    """Windows tools write UTF-16 with a byte order mark: the rows are the UTF-8 file's rows."""
    text = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in ROWS)
    utf8 = tmp_path / "utf8.jsonl"
    utf8.write_text(text, encoding="utf-8")
    # Python's utf-16 and utf-32 codecs write their own byte order mark; the -le/-be ones do not
    bom = {"utf-16-le": b"\xff\xfe", "utf-16-be": b"\xfe\xff", "utf-32-le": b"\xff\xfe\x00\x00", "utf-32-be": b"\x00\x00\xfe\xff"}
    data = bom.get(encoding, b"") + text.encode(encoding)
    other = tmp_path / "other.jsonl"  # a gzip file keeps its name: found by its signature
    other.write_bytes(gzip.compress(data) if packed else data)
    assert [r.value for r in read(other)] == [r.value for r in read(utf8)] == ROWS
    csv_text = "chosen,rejected\n" + "".join(f'"{r["chosen"]}","{r["rejected"]}"\n' for r in ROWS)
    csv = tmp_path / "other.csv"
    csv_data = bom.get(encoding, b"") + csv_text.encode(encoding)
    csv.write_bytes(gzip.compress(csv_data) if packed else csv_data)
    assert [r.value for r in read(csv)] == ROWS


@pytest.mark.parametrize("encoding", ["utf-16-le", "utf-16-be", "utf-32-le"])
def test_utf16_without_a_byte_order_mark_is_one_clear_error(tmp_path, encoding):
    p = tmp_path / "no-bom.jsonl"
    p.write_bytes(json.dumps(ROWS[0]).encode(encoding) * 3)
    err = source_error(p)
    assert str(p) in str(err) and "not UTF-8 text" in str(err) and "byte order mark" in str(err) and "\n" not in str(err)


def test_a_gzip_file_without_the_gz_suffix_is_read_as_gzip(tmp_path):
    for name in ("rows.jsonl", "rows.csv"):
        plain = tmp_path / f"plain-{name}"
        body = GOOD * 3 if name.endswith("jsonl") else b"chosen,rejected\na,b\na,b\na,b\n"
        plain.write_bytes(body)
        packed = tmp_path / name
        packed.write_bytes(gzip.compress(body))
        assert [r.value for r in read(packed)] == [r.value for r in read(plain)] and len(read(packed)) == 3


def test_a_utf16_file_cut_in_a_character_is_one_clear_error(tmp_path):
    p = tmp_path / "cut.jsonl"
    p.write_bytes(b"\xff\xfe" + GOOD.decode().encode("utf-16-le") + b"x")
    with pytest.raises(SourceError, match="not valid utf-16-le text"):
        read(p)
