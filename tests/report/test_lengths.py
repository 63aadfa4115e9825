"""The report's response-length figures: per source, how often the chosen response is the
longer one, and the histogram of log(len_chosen / len_rejected), on real HH-RLHF pairs.

Expected values are recomputed here in plain Python from the pairs' texts.
"""

from __future__ import annotations

import json
import math
import re
from pathlib import Path
from typing import Any

import pyarrow as pa
import pytest

from curation.report.html import funnel_png, render_html
from curation.report.lengths import length_figures, length_rows, lengths_section
from curation.run.runner import curate
from curation.store.catalog import DatasetStore
from schemas import arrow_schema
from tests.helpers import hh_drafts, recipe_config

COLUMNS = pa.schema([arrow_schema("pairs").field(c) for c in ("source_dataset", "chosen", "rejected")])


def chars(messages: list[dict[str, str]]) -> int:
    return sum(len(m["content"]) for m in messages)


def expected(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """The figures of ``rows`` by plain Python: counts, share, the symmetric 21-bin histogram."""
    c = [chars(r["chosen"]) for r in rows]
    r_ = [chars(r["rejected"]) for r in rows]
    longer = sum(a > b for a, b in zip(c, r_))
    shorter = sum(a < b for a, b in zip(c, r_))
    logs = [math.log(a / b) for a, b in zip(c, r_) if a and b]
    top = max(abs(x) for x in logs)
    width = 2 * top / 21
    counts = [0] * 21
    for x in logs:
        counts[min(int((x + top) / width), 20)] += 1
    return {
        "pairs": len(rows),
        "chosen_longer": longer,
        "chosen_shorter": shorter,
        "equal_length": len(rows) - longer - shorter,
        "share": longer / (longer + shorter),
        "with_empty_response": len(rows) - len(logs),
        "counts": counts,
        "top": top,
    }


def check(got: dict[str, Any], want: dict[str, Any]) -> None:
    assert {k: got[k] for k in ("pairs", "chosen_longer", "chosen_shorter", "equal_length", "with_empty_response")} == {
        k: want[k] for k in ("pairs", "chosen_longer", "chosen_shorter", "equal_length", "with_empty_response")
    }
    assert got["share_chosen_longer"] == pytest.approx(want["share"])
    h = got["log_ratio"]
    assert h["n"] == sum(want["counts"]) and h["cut"] == 0.0
    assert h["edges"][0] == pytest.approx(-want["top"]) and h["edges"][-1] == pytest.approx(want["top"]) and len(h["edges"]) == 22
    assert sum(abs(a - b) for a, b in zip(h["counts"], want["counts"])) <= 2  # a value on a bin edge may round either way
    assert all(type(n) is int for n in h["counts"])  # plain ints: JSON-able
    json.dumps(got)


@pytest.fixture(scope="module")
def hh_rows(hh_path: Path) -> list[dict[str, Any]]:
    """The first 400 real pairs, in two sources (a: rows 0-249, b: 250-399); the sample's first
    empty chosen response is among them."""
    rows = []
    for i, d in enumerate(hh_drafts(hh_path)):
        if i == 400:
            break
        rows.append({"source_dataset": "a" if i < 250 else "b", "chosen": d.chosen, "rejected": d.rejected})
    assert any(chars(r["chosen"]) == 0 for r in rows)
    return rows


def test_figures_per_source_and_overall_match_plain_python(hh_rows: list[dict[str, Any]]) -> None:
    table = pa.Table.from_pylist(hh_rows, schema=COLUMNS)
    figures = length_figures(table.to_batches(max_chunksize=64))  # streamed: sources span several batches
    assert figures is not None and list(figures["sources"]) == ["a", "b"] and figures["unit"] == "characters"
    check(figures["sources"]["a"], expected(hh_rows[:250]))
    check(figures["sources"]["b"], expected(hh_rows[250:]))
    check(figures["all"], expected(hh_rows))
    assert figures["all"]["with_empty_response"] >= 1
    # the same figures whatever the batching
    assert length_figures([table]) == figures
    rows = length_rows(figures)
    a = expected(hh_rows[:250])
    assert rows[0] == [
        "a",
        "250",
        f"{a['chosen_longer']:,}",
        f"{a['chosen_shorter']:,}",
        f"{a['equal_length']:,}",
        f"{100 * a['share']:.1f}%",
    ]
    assert [r[0] for r in rows] == ["a", "b", "all sources"]
    assert length_figures([]) is None


def test_section_shows_the_share_and_the_histogram_and_is_absent_without_figures(hh_rows: list[dict[str, Any]]) -> None:
    figures = length_figures([pa.Table.from_pylist(hh_rows, schema=COLUMNS)])
    section = lengths_section({"lengths": figures})
    assert section is not None and section.anchor == "lengths"
    page = section.html()
    a = figures["sources"]["a"]
    assert f"<td>a</td><td>250</td><td>{a['chosen_longer']}</td>" in page and f"{100 * a['share_chosen_longer']:.1f}%" in page
    assert re.findall(r'<img alt="([^"]+)"', page) == ["length ratio histograms"]
    assert lengths_section({}) is None and lengths_section({"lengths": None}) is None
    evil = "<script>alert(1)</script>"
    hostile = {**figures, "sources": {evil: figures["sources"]["a"]}}
    page = lengths_section({"lengths": hostile}).html()
    assert "<script" not in page and "&lt;script&gt;" in page


def test_run_summary_and_report_carry_the_published_pairs_figures(tmp_path: Path, hh_path: Path) -> None:
    """Through ``curate run`` with a length_balance step: the summary's figures are those of the
    pairs as published (after the filter), read back here from the store."""
    source = [{"name": "hh", "path": str(hh_path), "adapter": "hh_rlhf", "limit": 200}]
    cfg = recipe_config(tmp_path, source, dataset="lengths", filter={"steps": [{"kind": "length_balance"}]})
    result = curate(cfg)
    summary = json.loads((Path(result.report_dir) / "summary.json").read_text())
    published = DatasetStore(cfg.data_root).read("lengths", "pairs", columns=["source_dataset", "chosen", "rejected"]).to_pylist()
    got = summary["lengths"]["sources"]["hh"]
    check(got, expected(published))
    assert 0.48 <= got["share_chosen_longer"] <= 0.52  # balanced by the step
    before = summary["funnel"]["filter"]["steps"]["length_balance"]["summary"]["sources"]["hh"]
    assert got["pairs"] == before["pairs"] - before["filtered"] and got["share_chosen_longer"] == pytest.approx(before["share_after"])
    page = (Path(result.report_dir) / "report.html").read_text()
    assert '<section id="lengths">' in page and f"{100 * got['share_chosen_longer']:.1f}%" in page
    # a summary written before this section existed renders without it
    old = {k: v for k, v in summary.items() if k != "lengths"}
    assert '<section id="lengths">' not in render_html(old, funnel_png(old["funnel"]))
