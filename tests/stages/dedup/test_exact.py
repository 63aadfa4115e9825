"""Exact dedup in one streaming pass equals its definition over the whole table: a pair is kept
iff no earlier pair (in file order, validated rows only) has its normalised text, and a
duplicate names the first pair with that text. Checked on real HH pairs with repeats inside
a batch, across batches and differing only in case and whitespace."""

from __future__ import annotations

import json
import unicodedata
from pathlib import Path

import numpy as np
import polars as pl
import pyarrow.parquet as pq
import pytest

from curation.records import content_ids
from curation.stages.dedup import exact as dedup
from curation.stages.dedup.exact import PARTS
from curation.tables import TableWriter, selected_batches
from tests.stages.ingest.test_columnar import SAMPLE, run_ingest


def seen_as_dedup(texts: pl.Series) -> pl.Series:
    """The definition of dedup's normalised text, written apart from the code: the characters
    of Unicode categories Cc and Cf that are not whitespace removed, NFKC, whitespace runs to
    one space, stripped, lower-cased."""
    invisible = {chr(c) for c in range(0x110000) if unicodedata.category(chr(c)) in ("Cc", "Cf") and not chr(c).isspace()}
    shown = pl.Series(["".join(ch for ch in t if ch not in invisible) for t in texts.to_list()], dtype=pl.String)
    return shown.str.normalize("NFKC").str.replace_all(r"\s+", " ").str.strip_chars().str.to_lowercase()


def definition_keys(rows: list[dict]) -> list[tuple]:
    """Per pair, what exact dedup compares: every message's role and normalised text, per part."""
    texts = [m["content"] for r in rows for part in PARTS for m in r[part]]
    seen = iter(seen_as_dedup(pl.Series(texts, dtype=pl.String)).to_list())
    return [tuple(tuple((m["role"], next(seen)) for m in r[part]) for part in PARTS) for r in rows]


def _variant(pair: dict, how: int) -> dict:
    """The pair as dedup sees it (case, spacing, invisible characters), or one message's role
    changed (a different pair that a key without roles would call the same), with a new id."""
    out = {**pair}
    kind = how % 4
    for part in ("prompt", "chosen", "rejected"):
        if kind == 0:
            out[part] = [{**m, "content": m["content"].upper()} for m in pair[part]]
        elif kind == 1:
            out[part] = [{**m, "content": "  " + m["content"].replace(" ", " \n ")} for m in pair[part]]
        elif kind == 2:
            out[part] = [{**m, "content": "\ufeff" + m["content"].replace(" ", "\u200b ", 1) + "\x00"} for m in pair[part]]
    if kind == 3:
        out["prompt"] = [{**m, "role": "system" if m["role"] == "user" else m["role"]} for m in pair["prompt"]]
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
    first: dict[tuple, str] = {}
    keep: list[bool] = []
    matched: list[str | None] = []
    for key, r in zip(definition_keys(valid), valid):
        keep.append(key not in first)
        matched.append(None if keep[-1] else first[key])
        first.setdefault(key, r["pair_id"])
    return keep, matched


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


def test_dedup_normalise_equals_its_definition() -> None:
    """Invisible characters out, NFKC everything, whitespace runs to one space, strip, lower:
    the shortcuts change nothing."""
    texts = [json.loads(line)[k] for line in SAMPLE.read_text().splitlines() for k in ("chosen", "rejected")]
    texts += ["Ａｂｃ  X\n\ty", "ﬁne", "e\u0301", "\u00a0a\u3000", "ＡＢＣ", "\u1100\u1161", "x\u0300\u0301", "𝐀𝐁", "Ⅻ", "a\x85b", ""]
    texts += ["".join(chr(c) for c in range(start, start + 64)) for start in range(0, 0x3100, 64)]
    texts += ["ΑΣ  x", "ΑΣ\n", " ΑΣ ", "ΟΔΟΣ\u3000Α", "İ  I\u0307", "ÅΣ\u3000", "A\u030a  B\u0301"]  # lowering before the rest
    texts += [f"{c}{chr(m)} {c}{chr(m)}Σ" for c in "AIKSZaiks" for m in range(0x300, 0x370)]  # ASCII letters + marks
    texts += ["It’s  “FINE”—\tOK…", "’ΑΣ’", "“ǅ”", "Ａ’B", "A’\u0301", "Ä–", "’\u00a0X"]  # typographic + the rest
    texts += [f"Q’{chr(c)} Z" for c in range(0x80, 0x3000, 7)]  # each shortcut-breaking character beside the safe ones
    texts += ["a\x00b", "\x07X\x7f", "A\u200bB", "\ufeffSame", "ÄΣ\u2060x", "’\xad’", "\U000e0020\U000e007fT", "x\x9fy", "\u200b \u200b"]
    texts += [f"Ab{chr(c)}Σ’ {chr(c)}" for c in range(0x80, 0x110000, 997) if unicodedata.category(chr(c)) != "Cs"]  # every plane
    series = pl.Series(texts)
    assert dedup.normalise(series).to_list() == seen_as_dedup(series).to_list()


def test_nfkc_safe_characters_are_their_own_nfkc_next_to_any_safe_character() -> None:
    """What lets normalise skip NFKC: a text of safe characters only is its own NFKC."""
    candidates = pl.Series([chr(c) for c in range(0x3100)])
    safe = candidates.filter(~candidates.str.contains(dedup._nfkc_unsafe())).to_list()
    assert len(safe) > 5000 and "a" in safe and "\u00a0" not in safe and "\u0301" not in safe
    rng = np.random.default_rng(0)
    for _ in range(300):
        text = "".join(rng.choice(safe, size=8))
        assert unicodedata.normalize("NFKC", text) == text
