"""The columnar ingest path (JSONL blocks parsed by pyarrow, HH transcripts split in Polars,
content ids hashed in place) writes exactly what the row path writes: the same pairs with the
same ids in the same order, the same quarantine and decision rows, the same counts. Checked
on the real HH sample, on a file made of every kind of bad line, gzipped and truncated, and
on fuzzed files; and the vectorised pieces against their row-by-row definitions."""

from __future__ import annotations

import gzip
import json
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from hypothesis import given
from hypothesis import strategies as st

from curation.config import parse_config
from curation.records import content_id_columns, content_ids
from curation.stages.ingest.readers import jsonl, jsonl_columns
from curation.stages.ingest.stage import ingest
from curation.tables import from_numpy, iter_batches
from curation.text import PY_WHITESPACE
from schemas import arrow_schema
from tests.stages.ingest.test_fuzz_ingest import SLOW, hh_rows

REPO = Path(__file__).resolve().parents[3]
SAMPLE = REPO / "data" / "samples" / "hh-rlhf-harmless-base" / "test-dev-1200.jsonl"


def run_ingest(
    path: Path, work: Path, *, columnar: bool, options: dict[str, Any] | None = None, threads: int = 2, max_row_bytes: int = 1_000_000
) -> dict[str, Any]:
    source = {"name": "hh", "path": str(path), "adapter": "hh_rlhf", "options": options or {}}
    cfg = parse_config(
        {
            "publish": {"dataset": "t"},
            "sources": [source],
            "data_root": str(work / "root"),
            "batch_size": 50,
            "threads": threads,
            "ingest": {"columnar": columnar},
            "validate": {"max_row_bytes": max_row_bytes, "raw_limit_bytes": 100},
        }
    )
    work.mkdir(parents=True, exist_ok=True)
    out = ingest(cfg, work)
    return {
        "pairs": [r for b in iter_batches(out.files["pairs"], batch_size=1000) for r in b.to_pylist()],
        "quarantine": pq.read_table(out.files["quarantine"]).to_pylist(),
        "decisions": pq.read_table(out.files["decisions"]).to_pylist(),
        "counts": out.counts,
        "inputs": out.inputs,
    }


def assert_same_ingest(path: Path, tmp: Path, options: dict[str, Any] | None = None, max_row_bytes: int = 1_000_000) -> dict[str, Any]:
    rows = run_ingest(path, tmp / "rows", columnar=False, options=options, max_row_bytes=max_row_bytes)
    blocks = run_ingest(path, tmp / "blocks", columnar=True, options=options, max_row_bytes=max_row_bytes)
    for key in rows:
        assert blocks[key] == rows[key], key
    return rows


@pytest.fixture
def small_blocks(monkeypatch: pytest.MonkeyPatch) -> None:
    """Blocks of a few lines and bisection down to single lines, so every path is taken."""
    monkeypatch.setattr(jsonl, "BLOCK_BYTES", 2_000)
    monkeypatch.setattr(jsonl_columns, "MIN_SPLIT", 2)


def test_py_whitespace_is_what_str_strip_strips() -> None:
    assert PY_WHITESPACE == "".join(c for c in map(chr, range(0x110000)) if c.isspace())


def test_real_hh_sample_same_on_both_paths(tmp_path: Path) -> None:
    out = assert_same_ingest(SAMPLE, tmp_path)
    assert out["counts"]["pairs_out"] == 1198 and len(out["quarantine"]) == 2  # the two malformed transcripts


def test_real_hh_sample_in_small_blocks(tmp_path: Path, small_blocks: None) -> None:
    assert_same_ingest(SAMPLE, tmp_path)


def good(prompt: str, chosen: str, rejected: str) -> dict[str, str]:
    return {"chosen": f"\n\nHuman: {prompt}\n\nAssistant: {chosen}", "rejected": f"\n\nHuman: {prompt}\n\nAssistant: {rejected}"}


def nasty_lines() -> list[bytes]:
    """Good rows among every kind of line the fast path must hand to the row path."""
    lines: list[bytes] = []

    def add(value: Any) -> None:
        lines.append(value if isinstance(value, bytes) else json.dumps(value, ensure_ascii=False).encode())

    add(good("Hi?", "Hello.", "Go away."))
    add(b"")  # blank
    add(b"   \t")  # whitespace only
    add(b"  " + json.dumps(good("Indented?", "Yes.", "No.")).encode())  # leading whitespace
    add(good("Tab\tand\u3000ideographic space\u3000", "Trailing nbsp\u00a0", "Trailing U+2028\u2028"))
    add(good("Unit separator\x1f inside", "a", "b"))  # a character Python strips but Polars would not
    add(good("Record separator \x1e (the split's own marker)", "a", "b"))
    add(b'{"chosen": "\\n\\nHuman: surrogate \\ud800\\n\\nAssistant: a", "rejected": "\\n\\nHuman: x\\n\\nAssistant: b"}')
    add({**good("Huge number beside", "a", "b"), "n": int("9" * 50)})
    add(b'{"chosen": "\\n\\nHuman: q\\n\\nAssistant: a", "rejected": "\\n\\nHuman: q\\n\\nAssistant: b", "n": ' + b"9" * 5000 + b"}")
    add(
        b'{"chosen": "\\n\\nHuman: q\\n\\nAssistant: a", "rejected": "\\n\\nHuman: q\\n\\nAssistant: b", "x": '
        + b"[" * 1500
        + b"]" * 1500
        + b"}"
    )
    add(b'{"chosen": "\\n\\nHuman: q\\n\\nAssistant: a", "rejected": "\\n\\nHuman: q\\n\\nAssistant: b", "x": NaN}')
    add(b'{"chosen": "\\n\\nHuman: bad \xff byte\\n\\nAssistant: a", "rejected": "\\n\\nHuman: q\\n\\nAssistant: b"}')
    add(
        b'{"chosen": "\\n\\nHuman: q\\n\\nAssistant: a", "chosen": "\\n\\nHuman: q\\n\\nAssistant: c", "rejected": "\\n\\nHuman: q\\n\\nAssistant: b"}'
    )
    add(json.dumps(good("one", "a", "b")).encode() + json.dumps(good("two", "a", "b")).encode())  # two objects, one line
    add(json.dumps(good("trailing", "a", "b")).encode() + b" garbage")
    add({"chosen": 5, "rejected": "\n\nHuman: q\n\nAssistant: b"})
    add({"chosen": None, "rejected": "\n\nHuman: q\n\nAssistant: b"})
    add({"chosen": "\n\nHuman: q\n\nAssistant: a"})
    add({"chosen": {"nested": 1}, "rejected": "x"})
    add([1, 2])
    add(b"null")
    add({"chosen": "text before\n\nHuman: q\n\nAssistant: a", "rejected": "\n\nHuman: q\n\nAssistant: b"})
    add({"chosen": "same head\n\nHuman: q\n\nAssistant: a", "rejected": "same head\n\nHuman: q\n\nAssistant: b"})
    add({"chosen": " \t\n\nHuman: blank head\n\nAssistant: a", "rejected": " \t\n\nHuman: blank head\n\nAssistant: b"})
    add(good("Separator in the replies", "looks like \x1eUmore\x1eAturns", "looks like \x1eUmore\x1eAother"))
    add(good("Ends with what Python strips\x1c", "reply\x1f", "other\x1d"))
    add({"chosen": "\n\nHuman: q\n\nHuman: again\n\nAssistant: a", "rejected": "\n\nHuman: q\n\nHuman: again\n\nAssistant: b"})
    add({"chosen": "\n\nHuman: q\n\nAssistant: a\n\nHuman: more?", "rejected": "\n\nHuman: q\n\nAssistant: b"})
    add({"chosen": "\n\nHuman: q\n\nAssistant: a\n\nHuman: next\n\nAssistant: c", "rejected": "\n\nHuman: q\n\nAssistant: b"})
    add({"chosen": "\n\nHuman: q\n\nAssistant: a", "rejected": "\n\nHuman: other q\n\nAssistant: b"})
    add({"chosen": "\n\nHuman: q\n\nAssistant: a", "rejected": "\n\nHuman: q\n\nAssistant: b\n\nHuman: more\n\nAssistant: c"})
    add({"chosen": "\n\nHuman: q \n\nAssistant: a", "rejected": "\n\nHuman: q\n\nAssistant: b"})  # equal only after strip
    add(good("Same answer", "Same.", "Same."))
    add(good("Inline Human: mention", "Assistant: is not a marker here", "Human:"))
    add({"chosen": "\n\n\n\nHuman: q\n\n\n\nAssistant: a", "rejected": "\n\n\n\nHuman: q\n\n\n\nAssistant: b"})
    add({"chosen": "\n\nHuman:q\n\nAssistant:a", "rejected": "\n\nHuman:q\n\nAssistant:  b  "})
    add({"chosen": "\n\nHuman: empty reply\n\nAssistant:", "rejected": "\n\nHuman: empty reply\n\nAssistant: b"})
    add(good("e\u0301 combining, ﬁ ligature, Ｆｕｌｌ width", "ok", "no"))
    add({"chosen": "x" * 3000, "rejected": "y"})  # over the test's max_row_bytes
    add(good("Multi\nline\n\nprompt", "Multi\n\nline", "reply"))
    add(good("Hi?", "Hello.", "Go away."))  # an exact repeat of the first row
    return lines


def test_every_kind_of_bad_line_same_on_both_paths(tmp_path: Path, small_blocks: None, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "nasty.jsonl"
    lines = nasty_lines()
    path.write_bytes(b"\xef\xbb\xbf" + b"\n".join(lines[:10]) + b"\r\n" + b"\r\n".join(lines[10:]))  # BOM, mixed line ends, no final break
    out = assert_same_ingest(path, tmp_path, {"diverging": "shared_prefix"})
    codes = {q["error_code"] for q in out["quarantine"]}
    assert {"unparsable_json", "undecodable_text", "wrong_type", "missing_field", "not_an_object", "malformed_transcript"} <= codes
    assert any(p["metadata"] for p in out["pairs"])  # a diverging transcript kept its shared prefix
    assert_same_ingest(path, tmp_path / "quarantine", {"diverging": "quarantine"})


def test_oversized_lines_gzip_and_truncated_gzip_same_on_both_paths(tmp_path: Path, small_blocks: None) -> None:
    data = b"\n".join(nasty_lines()) + b"\n"
    gz = tmp_path / "nasty.jsonl.gz"
    gz.write_bytes(gzip.compress(data))
    assert_same_ingest(gz, tmp_path / "gz")
    cut = tmp_path / "cut.jsonl.gz"
    cut.write_bytes(gzip.compress(data)[: len(gzip.compress(data)) * 2 // 3])
    out = assert_same_ingest(cut, tmp_path / "cut")
    assert out["quarantine"][-1]["error_code"] == "truncated_file"


@pytest.mark.parametrize("suffix", [".jsonl", ".jsonl.gz"])
def test_lines_over_the_size_limit_same_on_both_paths(tmp_path: Path, small_blocks: None, suffix: str) -> None:
    """Around the limit (600 bytes here): just under, at, just over, with and without "\\r\\n",
    longer than a whole block (2,000 bytes), and a last line over the limit with no break."""

    def row(size: int) -> bytes:
        base = json.dumps(good("q", "a", "")).encode()
        return base[:-2] + b"x" * (size - len(base)) + base[-2:]

    lines = [row(599), row(600), row(601), row(600) + b"\r", row(601) + b"\r", row(5_000), b"", row(100), row(50_000), row(700)]
    data = b"\n".join(lines)  # row(600) + b"\r" then "\n": a CRLF line of 600 bytes
    path = tmp_path / f"big{suffix}"
    path.write_bytes(gzip.compress(data) if suffix.endswith(".gz") else data)
    out = assert_same_ingest(path, tmp_path, max_row_bytes=600)
    too_large = [q["source_row"] for q in out["quarantine"] if q["error_code"] == "row_too_large"]
    assert too_large == [2, 4, 5, 8, 9]


@SLOW
@given(
    st.lists(
        st.one_of(hh_rows().map(lambda r: json.dumps(r).encode("utf-8", "surrogatepass")), st.sampled_from(nasty_lines())), max_size=12
    )
)
def test_fuzzed_hh_files_same_on_both_paths(lines: list[bytes]) -> None:
    old = (jsonl.BLOCK_BYTES, jsonl_columns.MIN_SPLIT)
    jsonl.BLOCK_BYTES, jsonl_columns.MIN_SPLIT = 300, 2
    try:
        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / "fuzz.jsonl"
            path.write_bytes(b"\n".join(lines))
            assert_same_ingest(path, Path(tmp))
    finally:
        jsonl.BLOCK_BYTES, jsonl_columns.MIN_SPLIT = old


def test_content_id_columns_equal_content_ids_row_by_row(tmp_path: Path) -> None:
    pairs = run_ingest(SAMPLE, tmp_path, columnar=False)["pairs"]
    messages = arrow_schema("pairs").field("prompt").type
    extra = [
        {"prompt": [], "chosen": [{"role": "assistant", "content": ""}], "rejected": [{"role": "assistant", "content": "ﬁ Ｆ é"}]},
        {"prompt": [{"role": "system", "content": "日本語"}, {"role": "user", "content": "x"}], "chosen": [], "rejected": []},
    ]
    rows = pairs + extra
    columns = {k: pa.array([r[k] for r in rows], messages) for k in ("prompt", "chosen", "rejected")}
    prompt_ids, pair_ids = content_id_columns(columns["prompt"], columns["chosen"], columns["rejected"])
    assert list(zip(prompt_ids, pair_ids)) == [content_ids(r["prompt"], r["chosen"], r["rejected"]) for r in rows]
    sliced = content_id_columns(*(columns[k].slice(5, 7) for k in ("prompt", "chosen", "rejected")))
    assert sliced == (prompt_ids[5:12], pair_ids[5:12])
    no_prompts = pa.array([[], []], messages)  # not one message in the whole column
    assert content_id_columns(no_prompts, columns["chosen"].slice(0, 2), columns["rejected"].slice(0, 2)) == tuple(
        map(list, zip(*[content_ids([], r["chosen"], r["rejected"]) for r in rows[:2]]))
    )


def test_from_numpy_matches_pa_array() -> None:
    for values in (np.array([True, False, True] * 5), np.arange(10, dtype=np.int32), np.arange(3, dtype=np.int64)[::-1]):
        assert from_numpy(values).equals(pa.array(values))
