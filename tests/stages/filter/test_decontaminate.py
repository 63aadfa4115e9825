"""The decontaminate filter step, in the pipeline, on real HH-RLHF pairs.

Benchmark files in three formats (JSONL, Parquet with chat messages, a .txt of one prompt per
line) hold real prompts of ../shared/data (OASST, PandaLM, FineGrainedRLHF questions) with a few
real HH prompts planted among them: copied (exact), shortened or extended (n-gram), and, for a
second step with 40-grams, lightly edited (MinHash). A recipe with the two steps runs through the
CLI; exactly the planted pairs are filtered, with the reason and the benchmark row they copy,
and the decisions answer ``curate sql``. A missing benchmark file stops ``curate check`` with
one line naming it.
"""

from __future__ import annotations

import json
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import polars as pl
import pytest
import yaml
from typer.testing import CliRunner

from curate.cli import app
from curation.errors import ConfigError, RowError
from curation.overlap import prompt_text
from curation.records import PairDraft, pair_id
from curation.stages.filter.base import FramePairs, StepContext
from curation.stages.filter.config import BenchmarkFile, DecontaminateStep
from curation.stages.filter.decontaminate import load_benchmark, run
from curation.stages.ingest.adapters import build_adapter
from tests.helpers import write_jsonl, write_recipe
from tests.test_overlap import def_tokens, shingle_jaccard

ROWS = 200  # HH rows the recipe reads


@dataclass
class Plant:
    stage: str
    reason: str
    matched: str  # benchmark:row
    prompt: str  # the HH prompt text it targets


def hh_rows(hh_path: Path, limit: int = ROWS) -> list[PairDraft]:
    adapt = build_adapter("hh_rlhf", {})
    drafts = []
    for i, line in enumerate(hh_path.open(encoding="utf-8")):
        if i == limit:
            break
        try:
            drafts += adapt(json.loads(line), f"hh:{i}")
        except RowError:
            continue
    return drafts


def words(text: str) -> int:
    return len(text.split())


def edited(text: str) -> str:
    """Its tokens (lower case, punctuation dropped), one in 38 changed: no 40-gram survives."""
    return " ".join("zebra" if i % 38 == 19 else t for i, t in enumerate(def_tokens(text)))


@pytest.fixture(scope="module")
def planted(tmp_path_factory: pytest.TempPathFactory, hh_path: Path, shared_data: Path) -> tuple[Path, list[Plant]]:
    """The benchmark files (beside a recipe folder) and what each planted prompt should do."""
    drafts = hh_rows(hh_path)
    by_text: dict[str, list[PairDraft]] = {}
    for d in drafts:
        by_text.setdefault(prompt_text(d.prompt), []).append(d)
    texts = list(by_text)
    multi = [t for t in texts if len(by_text[t][0].prompt) >= 3 and words(t) >= 30 and words(by_text[t][0].prompt[-1]["content"]) >= 10]
    single = [t for t in texts if len(by_text[t][0].prompt) == 1 and 12 <= words(t) <= 40 and "\n" not in t]
    long = [t for t in texts if 120 <= words(t) and t not in multi[:3]]
    rng = random.Random(11)
    oasst = [json.loads(line) for line in (shared_data / "oasst1-en-validation" / "en-validation.jsonl").open()]
    fill_a = [r["question"] for r in json.loads((shared_data / "finegrained-rlhf-qa-dev" / "dev_feedback.json").read_text())][:30]
    fill_b = [m["text"] for m in oasst if m["role"] == "prompter"][:30]
    fill_c = list(
        dict.fromkeys(
            r["instruction"].replace("\n", " ") for r in json.loads((shared_data / "pandalm-testset" / "testset-v1.json").read_text())
        )
    )[:30]

    folder = tmp_path_factory.mktemp("decon")
    bench = folder / "benchmarks"  # beside the recipes: their paths are relative to the recipe file
    plants = []
    # JSONL, auto field "question": two HH prompts copied, one of them shouted
    rows_a: list[dict[str, Any]] = [{"id": i, "question": q} for i, q in enumerate(fill_a)]
    rows_a[5]["question"] = multi[0].upper()
    rows_a[17]["question"] = single[0]
    write_jsonl(bench / "a.jsonl", rows_a)
    plants += [
        Plant("decontaminate", "exact_overlap", "bench-a:5", multi[0]),
        Plant("decontaminate", "exact_overlap", "bench-a:17", single[0]),
    ]
    # Parquet, messages: a whole HH conversation with a benchmark answer after it; a last user turn alone
    messages_b = [[{"role": "user", "content": t}] for t in fill_b]
    turns = by_text[multi[1]][0].prompt
    messages_b[3] = [{"role": m["role"], "content": m["content"]} for m in turns] + [{"role": "assistant", "content": "The answer."}]
    last_turn = by_text[multi[2]][0].prompt[-1]["content"]
    messages_b[9] = [{"role": "user", "content": last_turn}]
    pl.DataFrame({"messages": messages_b}).write_parquet(bench / "b.parquet")
    plants += [
        Plant("decontaminate", "exact_overlap", "bench-b:3", multi[1]),
        Plant("decontaminate", "ngram_overlap", "bench-b:9", multi[2]),
    ]
    # text, one prompt a line (a blank line keeps its number): an HH prompt with a sentence added
    lines_c = fill_c[:4] + [""] + fill_c[4:]
    lines_c[7] = single[1] + " Please answer in detail."
    (bench / "c.txt").write_text("\n".join(lines_c) + "\n", encoding="utf-8")
    plants.append(Plant("decontaminate", "ngram_overlap", "bench-c:7", single[1]))
    # the 40-gram step: a long prompt lightly edited all through
    rows_d = [{"prompt": t} for t in rng.sample(fill_b, 10)]
    rows_d.insert(2, {"prompt": edited(long[0])})
    assert shingle_jaccard(rows_d[2]["prompt"], long[0]) > 0.84
    write_jsonl(bench / "near.jsonl", rows_d)
    plants.append(Plant("decontaminate-long", "minhash_overlap", "near:2", long[0]))
    return folder, plants


def steps(missing: bool = False) -> list[dict[str, Any]]:
    return [
        {
            "kind": "decontaminate",
            "benchmarks": [
                {"name": "bench-a", "path": "benchmarks/a.jsonl"},
                {"name": "bench-b", "path": "benchmarks/b.parquet"},
                {"name": "bench-c", "path": "benchmarks/missing.txt" if missing else "benchmarks/c.txt"},
            ],
        },
        {
            "kind": "decontaminate",
            "name": "decontaminate-long",
            "ngram": 40,
            "benchmarks": [{"name": "near", "path": "benchmarks/near.jsonl"}],
        },
    ]


def test_planted_benchmark_prompts_are_filtered_and_nothing_else(planted: tuple[Path, list[Plant]], hh_path: Path) -> None:
    folder, plants = planted
    sources = [{"name": "hh", "path": str(hh_path), "adapter": "hh_rlhf", "limit": ROWS}]
    recipe = write_recipe(folder, sources, "decon", filter={"steps": steps()})
    runner = CliRunner()
    out = runner.invoke(app, ["run", str(recipe), "--local"])
    assert out.exit_code == 0, out.output

    want = {}
    for p in plants:
        for d in hh_rows(hh_path):
            if prompt_text(d.prompt) == p.prompt:
                want[pair_id(d.prompt, d.chosen, d.rejected)] = (p.stage, p.reason, p.matched)
    assert len(want) >= len(plants)
    query = (
        "SELECT pair_id, stage, reason, matched_pair_id, scores['overlap'] AS overlap FROM decisions "
        "WHERE stage LIKE 'decontaminate%' AND decision = 'filtered'"
    )
    shown = runner.invoke(app, ["sql", query, "--data-root", str(folder / "root"), "--format", "json"])
    assert shown.exit_code == 0, shown.output
    got = json.loads(shown.output)
    assert {r["pair_id"]: (r["stage"], r["reason"], r["matched_pair_id"]) for r in got} == want
    overlap = {r["matched_pair_id"]: r["overlap"] for r in got}
    assert overlap["bench-a:5"] == overlap["bench-b:3"] == 1.0 and 0.5 < overlap["bench-c:7"] < 1 and 0.8 <= overlap["near:2"] < 1

    counts = runner.invoke(
        app, ["sql", "SELECT stage, decision, count(*) AS n FROM decisions GROUP BY ALL", "--data-root", str(folder / "root"), "-f", "json"]
    )
    rows = {(r["stage"], r["decision"]): r["n"] for r in json.loads(counts.output)}
    assert rows[("decontaminate", "filtered")] + rows[("decontaminate-long", "filtered")] == len(want)
    assert rows[("decontaminate", "kept")] == rows[("decontaminate-long", "kept")] + rows[("decontaminate-long", "filtered")]


def test_a_missing_benchmark_file_fails_curate_check_in_one_line(planted: tuple[Path, list[Plant]], hh_path: Path) -> None:
    folder, _ = planted
    sources = [{"name": "hh", "path": str(hh_path), "adapter": "hh_rlhf", "limit": 5}]
    recipe = folder / "bad.yaml"
    recipe.write_text(yaml.safe_dump({"publish": {"dataset": "bad"}, "sources": sources, "filter": {"steps": steps(missing=True)}}))
    out = CliRunner().invoke(app, ["check", str(recipe), "--data-root", str(folder / "bad-root")])
    assert out.exit_code == 2
    errors = [line for line in out.output.splitlines() if line.strip()]
    assert len(errors) == 1, out.output
    assert (
        "benchmark 'bench-c'" in errors[0]
        and str((folder / "benchmarks" / "missing.txt").resolve()) in errors[0]
        and "not found" in errors[0]
    )


def test_evaluation_prompts_are_a_reference_unless_turned_off(hh_path: Path) -> None:
    drafts = hh_rows(hh_path, 40)
    frame = pl.DataFrame(
        [
            {"pair_id": pair_id(d.prompt, d.chosen, d.rejected), "prompt_id": str(i), "source_dataset": "hh", "prompt": d.prompt}
            for i, d in enumerate(drafts)
        ]
    )
    held_out = [prompt_text(drafts[7].prompt), "an evaluation prompt no training pair has"]
    ctx = StepContext(evaluation_prompts=held_out)
    result = run(DecontaminateStep(), FramePairs(frame), pl.DataFrame(), ctx)
    result.check("decontaminate")
    filtered = result.decisions.filter(pl.col("decision") == "filtered")
    assert filtered["pair_id"].to_list() == [frame["pair_id"][7]] and filtered["matched_pair_id"].to_list() == ["evaluation:0"]
    assert result.summary["matches"] == {"evaluation": {"exact": 1}} and result.summary["references"] == {"evaluation": 2}
    off = run(DecontaminateStep(use_evaluation=False), FramePairs(frame), pl.DataFrame(), ctx)
    assert set(off.decisions["decision"]) == {"kept"} and off.decisions.height == frame.height
    only_other = run(DecontaminateStep(sources=["other"]), FramePairs(frame), pl.DataFrame(), ctx)
    assert only_other.decisions.height == 0


def test_benchmark_files_fields_and_their_errors(tmp_path: Path) -> None:
    write_jsonl(tmp_path / "q.jsonl", [{"instruction": "Do A.", "text": "ignored"}, {"instruction": None}, {"other": 1}])
    assert load_benchmark(BenchmarkFile(name="q", path=str(tmp_path / "q.jsonl"))) == ["Do A.", "", ""]
    assert load_benchmark(BenchmarkFile(name="q", path=str(tmp_path / "q.jsonl"), field="text")) == ["ignored", "", ""]
    chat = [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello"}, {"role": "user", "content": "Why?"}]
    (tmp_path / "m.json").write_text(json.dumps([{"messages": [*chat, {"role": "assistant", "content": "Because."}]}]))
    assert load_benchmark(BenchmarkFile(name="m", path=str(tmp_path / "m.json"))) == ["Hi\nHello\nWhy?"]
    for bench, message in [
        (BenchmarkFile(name="q", path=str(tmp_path / "q.jsonl"), field="prompt"), "no field 'prompt'; it has: instruction, text, other"),
        (BenchmarkFile(name="x", path=str(tmp_path / "nope.parquet")), "file not found"),
        (BenchmarkFile(name="x", path=str(tmp_path / "m.json"), field="messages"), None),
    ]:
        if message is None:
            assert load_benchmark(bench) == ["Hi\nHello\nWhy?"]
            continue
        with pytest.raises(ConfigError, match=message):
            load_benchmark(bench)
    write_jsonl(tmp_path / "n.jsonl", [{"answer": "x"}])
    with pytest.raises(ConfigError, match="none of the fields prompt, question, instruction, text, messages"):
        load_benchmark(BenchmarkFile(name="n", path=str(tmp_path / "n.jsonl")))
    with pytest.raises(ValueError, match="repeated: evaluation"):
        DecontaminateStep(benchmarks=[BenchmarkFile(name="evaluation", path="x.txt")])
