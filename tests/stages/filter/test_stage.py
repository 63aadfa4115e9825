"""The filter stage inside the pipeline, on real HH-RLHF pairs: step order, flips and their
orientation, accounting, publish, routing export and the human-label round trip via the CLI.

The labelers are transparent length heuristics (characters, words) in the registry's
``reward_model`` slot, so the stage's machinery is tested on real pairs without a model; the
filters' own behaviour with real model labels is in tests/test_filter_*.py and test_route.py.
"""

from __future__ import annotations

import json
from pathlib import Path

import polars as pl
import pyarrow as pa
import pytest
from typer.testing import CliRunner

import curation.stages.label as label_registry
from curate.cli import app
from curation.errors import ConfigError
from curation.records import content_ids
from curation.run.runner import curate
from curation.stages.label.base import pair_views
from curation.store.catalog import DatasetStore
from tests.helpers import recipe_config, write_recipe
from tests.stages.label.test_stage import LongerWins

LENGTH = "tests.stages.filter.test_stage:LengthReward"


class LengthReward(LongerWins):
    """Longer wins: by characters, or by words when the labeler's name ends in "words"."""

    def _size(self, text: str) -> float:
        return float(len(text.split()) if self.name.endswith("words") else len(text))

    def label(self, pairs: pa.Table) -> pa.Table:
        return self.table([self.row(p.pair_id, self._size(p.response_a), self._size(p.response_b)) for p in pair_views(pairs)])


@pytest.fixture
def length_labels(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(label_registry.LABELERS, "reward_model", LENGTH)


LABEL = {
    "labelers": [
        {"name": "len-chars", "kind": "reward_model", "backend": {"backend": "transformers", "model": "unused"}},
        {"name": "len-words", "kind": "reward_model", "backend": {"backend": "transformers", "model": "unused"}},
    ]
}
STEPS = [
    {"kind": "voting", "labelers": ["len-chars", "len-words"], "rule": "threshold", "flip_below": -1.0, "ambiguous_within": 0.05},
    {"kind": "margin", "labelers": ["len-chars"], "min_margin": -20.0},
    {"kind": "prompt_cap", "max_pairs": 1},
    {"kind": "route", "budget": 8, "include_human": True},
]


def _source(hh_path: Path, limit: int = 150) -> list[dict]:
    return [{"name": "hh", "path": str(hh_path), "adapter": "hh_rlhf", "limit": limit}]


def test_steps_run_in_order_with_flips_oriented_and_every_pair_accounted(tmp_path: Path, hh_path: Path, length_labels: None) -> None:
    cfg = recipe_config(tmp_path, _source(hh_path), dataset="filt", label=LABEL, filter={"steps": STEPS})
    result = curate(cfg)
    fc = result.funnel["filter"]
    assert fc["pairs_in"] == result.funnel["kept"] == fc["pairs_out"] + fc["filtered"]
    store = DatasetStore(cfg.data_root)
    pairs = pl.from_arrow(store.read("filt", "pairs"))
    assert pairs.height == fc["pairs_out"] and pairs["pair_id"].n_unique() == pairs.height
    decisions = pl.from_arrow(store.read("filt", "decisions")).filter(pl.col("stage").is_in(["voting", "margin", "prompt_cap", "route"]))
    labels = pl.from_arrow(store.read("filt", "labels"))
    chars = dict(labels.filter(pl.col("labeler") == "len-chars").select("pair_id", "margin").iter_rows())

    # voting flipped pairs whose chosen is clearly shorter; they are published swapped under new ids
    flips = decisions.filter((pl.col("stage") == "voting") & (pl.col("decision") == "flipped"))
    assert flips.height > 0 and fc["flipped"] == flips.height
    assert all(chars[pid] < 0 for pid in flips["pair_id"])
    published = {r["pair_id"]: r for r in pairs.iter_rows(named=True)}
    # the margin step saw a flipped pair the way it is now: its margin negated
    margin_scores = {
        r["pair_id"]: r["scores"] if isinstance(r["scores"], dict) else {e["key"]: e["value"] for e in r["scores"]}
        for r in decisions.filter(pl.col("stage") == "margin").iter_rows(named=True)
    }
    for r in flips.iter_rows(named=True):
        assert margin_scores[r["pair_id"]]["margin"] == pytest.approx(-chars[r["pair_id"]])
        new = published.get(r["matched_pair_id"])
        if new is None:  # dropped by a later step: its decision says so, under its original id
            assert decisions.filter((pl.col("pair_id") == r["pair_id"]) & (pl.col("decision") == "filtered")).height == 1
            continue
        assert content_ids(new["prompt"], new["chosen"], new["rejected"])[1] == new["pair_id"] != r["pair_id"]
        assert new["label_source"] == "ai" and new["label_model"] == "voting"
        assert new["preference_strength"] > 0  # oriented as published: the ensemble now agrees
        assert json.loads(new["metadata"])["flipped"]["original_pair_id"] == r["pair_id"]
    # the margin step dropped exactly the pairs below its threshold, as they stood after voting
    dropped = decisions.filter((pl.col("stage") == "margin") & (pl.col("decision") == "filtered"))
    assert set(dropped["reason"]) <= {"margin_below_threshold"}
    assert all(margin_scores[pid]["margin"] < -20 for pid in dropped["pair_id"])
    # at most one pair per prompt, the route step routed its budget, the routing table is published
    assert pairs["prompt_id"].n_unique() == pairs.height
    routing = pl.from_arrow(store.read("filt", "routing"))
    assert int(routing["routed"].sum()) == 8 == fc["routed"]
    assert set(routing["pair_id"]) == set(pairs["pair_id"])  # published ids, flipped ones included
    # soft labels for every voted pair still published
    assert pairs["preference_strength"].null_count() == 0
    summary = json.loads((Path(result.report_dir) / "summary.json").read_text())
    assert "voting" in summary["funnel"]["filter"]["steps"]
    html = (Path(result.report_dir) / "report.html").read_text()
    assert "Filters" in html and "route" in html


def test_unknown_labeler_in_a_step_fails_before_any_work(tmp_path: Path, hh_path: Path, length_labels: None) -> None:
    steps = [{"kind": "margin", "labelers": ["nope"], "min_margin": 0}]
    cfg = recipe_config(tmp_path, _source(hh_path, 20), dataset="bad", label=LABEL, filter={"steps": steps})
    with pytest.raises(ConfigError, match="unknown labeler 'nope'.*len-chars"):
        curate(cfg)
    assert not (Path(cfg.data_root) / "runs").exists()


def _answer_label_studio(tasks: list[dict], prefer: dict[str, str]) -> list[dict]:
    """Fill Label Studio tasks as people would: choose the slot that shows the wanted response."""
    out = []
    for t in tasks:
        want = prefer[t["data"]["pair_id"]]  # "chosen" | "rejected" | "tie"
        choice = "Tie" if want == "tie" else ("A" if t["data"]["a_is"] == want else "B")
        result = [{"from_name": "preference", "to_name": "prompt", "type": "choices", "value": {"choices": [choice]}}]
        out.append({**t, "annotations": [{"id": 1, "completed_by": 7, "result": result, "created_at": "2026-11-23T10:00:00Z"}]})
    return out


@pytest.mark.parametrize("catalog", ["file", "postgres"])
def test_routed_pairs_round_trip_through_label_studio_and_back(
    tmp_path: Path, hh_path: Path, length_labels: None, catalog: str, request: pytest.FixtureRequest
) -> None:
    if catalog == "postgres":
        request.getfixturevalue("pg_env")
    recipe = write_recipe(tmp_path, _source(hh_path, 60), dataset="loop", label=LABEL, filter={"steps": STEPS[-1:]})
    runner = CliRunner()
    first = runner.invoke(app, ["run", str(recipe), "--local", "--catalog", catalog])
    assert first.exit_code == 0, first.output
    root = str(tmp_path / "root")
    out = tmp_path / "queue"
    exported = runner.invoke(app, ["route", "export", "loop", "--out", str(out), "--data-root", root])
    assert exported.exit_code == 0, exported.output
    tasks = json.loads((out / "label_studio_tasks.json").read_text())
    assert len(tasks) == 8
    ids = [t["data"]["pair_id"] for t in tasks]
    prefer = {pid: ("rejected" if i < 3 else "tie" if i == 3 else "chosen") for i, pid in enumerate(ids)}
    done = tmp_path / "done.json"
    done.write_text(json.dumps(_answer_label_studio(tasks, prefer)))

    imported = runner.invoke(app, ["route", "import", "loop", str(done), "--data-root", root])
    assert imported.exit_code == 0, imported.output
    assert "3 flipped" in imported.output and "1 dropped" in imported.output
    store = DatasetStore(root)
    v1, v2 = store.version("loop", 1), store.version("loop", 2)
    assert v2.parents == [v1.ref]
    before = {r["pair_id"]: r for r in pl.from_arrow(store.read("loop", "pairs", version=1)).iter_rows(named=True)}
    after = {r["pair_id"]: r for r in pl.from_arrow(store.read("loop", "pairs", version=2)).iter_rows(named=True)}
    assert len(after) == len(before) - 1
    for pid, want in prefer.items():
        old = before[pid]
        if want == "tie":
            assert pid not in after
            continue
        if want == "chosen":
            assert after[pid]["label_source"] == "human" and after[pid]["chosen"] == old["chosen"]
            continue
        new_id = content_ids(old["prompt"], old["rejected"], old["chosen"])[1]
        assert pid not in after and after[new_id]["chosen"] == old["rejected"] and after[new_id]["label_source"] == "human"
    untouched = set(before) - set(prefer)
    assert all(after[pid] == before[pid] for pid in untouched)
    human = pl.from_arrow(store.read("loop", "human_labels"))
    assert human.height == 8 and set(human["annotator"]) == {"7"}

    again = runner.invoke(app, ["route", "import", "loop", str(done), "--data-root", root])
    assert again.exit_code == 0 and "nothing to do" in again.output
    assert [v.version for v in store.versions("loop")] == [1, 2]
    # the inbox is an input: rerunning the recipe finds v2 up to date instead of losing the labels
    rerun = runner.invoke(app, ["run", str(recipe), "--local"])
    assert rerun.exit_code == 0 and "nothing to do" in rerun.output, rerun.output
    # a forced rerun merges the inbox again at the end of the filter stage: same pairs as v2
    forced = runner.invoke(app, ["run", str(recipe), "--local", "--force"])
    assert forced.exit_code == 0, forced.output
    v3 = {r["pair_id"]: r["chosen"] for r in pl.from_arrow(store.read("loop", "pairs", version=3)).iter_rows(named=True)}
    assert v3 == {pid: r["chosen"] for pid, r in after.items()}
    assert store.catalog_kind == catalog
