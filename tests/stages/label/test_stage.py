"""The label stage inside the pipeline: selection, limits, coverage check, publish, SQL.

The labeler here is a transparent heuristic (longer response wins) put in the registry's
``reward_model`` slot, so the stage's machinery is tested on real HH pairs without a model.
"""

from __future__ import annotations

from pathlib import Path

import pyarrow as pa
import pytest

import curation.stages.label as label_registry
from curation.errors import CurationError
from curation.run.runner import curate
from curation.stages.label.base import Labeler, pair_views
from curation.stages.label.cache import cache_root, content_key
from curation.store.catalog import DatasetStore
from curation.store.query import sql
from tests.helpers import recipe_config

LONGER = "tests.stages.label.test_stage:LongerWins"


class LongerWins(Labeler):
    kind = "reward_model"

    @classmethod
    def check(cls, cfg, data_root) -> None:  # noqa: ANN001 - base signature
        return None

    def models(self) -> list[str]:
        return ["length"]

    def label(self, pairs: pa.Table) -> pa.Table:
        return self.table([self.row(p.pair_id, float(len(p.response_a)), float(len(p.response_b))) for p in pair_views(pairs)])


class DropsOne(LongerWins):
    def label(self, pairs: pa.Table) -> pa.Table:
        return super().label(pairs.slice(1))


@pytest.fixture
def longer(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(label_registry.LABELERS, "reward_model", LONGER)


def _labeler(name: str, **extra) -> dict:
    return {"name": name, "kind": "reward_model", "backend": {"backend": "transformers", "model": "unused"}, **extra}


def _cfg(tmp: Path, hh_path: Path, label: dict, limit: int = 120):
    return recipe_config(tmp, [{"name": "hh", "path": str(hh_path), "adapter": "hh_rlhf", "limit": limit}], dataset="lab", label=label)


def test_labels_and_agreement_are_published_and_queryable(tmp_path: Path, hh_path: Path, longer: None) -> None:
    cfg = _cfg(tmp_path, hh_path, {"labelers": [_labeler("len-all"), _labeler("len-few", limit=7)], "chunk_size": 16})
    result = curate(cfg)
    kept = result.funnel["kept"]
    counts = sql("SELECT labeler, count(*) AS n, count(DISTINCT pair_id) AS d FROM labels GROUP BY 1 ORDER BY 1", cfg.data_root)
    assert counts.to_dicts() == [{"labeler": "len-all", "n": kept, "d": kept}, {"labeler": "len-few", "n": 7, "d": 7}]
    # The pairs keep their human label; AI labels sit beside them.
    assert sql("SELECT DISTINCT label_source FROM pairs", cfg.data_root)["label_source"].to_list() == ["human"]
    # "Which pairs does the labeler disagree with the human on?" is one join.
    disagree = sql(
        "SELECT count(*) AS n FROM labels l JOIN pairs p USING (pair_id) WHERE l.labeler = 'len-all' AND l.verdict = 'B'", cfg.data_root
    )
    agree = sql("SELECT * FROM agreement WHERE labeler = 'len-all' AND bin = -1", cfg.data_root).to_dicts()[0]
    assert agree["n_disagree"] == disagree["n"][0]
    assert agree["n"] == kept
    assert result.funnel["labels"]["labelers"]["len-few"]["pairs"] == 7
    html = (Path(result.report_dir) / "report.html").read_text()
    assert "Agreement with human labels" in html and "len-all" in html and "calibration" in html


def test_a_labeler_that_skips_pairs_stops_the_run(tmp_path: Path, hh_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(label_registry.LABELERS, "reward_model", "tests.stages.label.test_stage:DropsOne")
    cfg = _cfg(tmp_path, hh_path, {"labelers": [_labeler("drops")], "chunk_size": 50}, limit=60)
    with pytest.raises(CurationError, match="labeler 'drops'.*missing"):
        curate(cfg)
    assert "lab" not in DatasetStore(cfg.data_root).datasets()


def test_selection_by_label_source(tmp_path: Path, hh_path: Path, longer: None) -> None:
    cfg = _cfg(tmp_path, hh_path, {"labelers": [_labeler("len")], "pairs": "unlabeled"}, limit=30)
    result = curate(cfg)
    assert result.funnel["labels"]["labelers"]["len"]["pairs"] == 0  # HH pairs are all human-labelled
    assert sql("SELECT count(*) AS n FROM labels", cfg.data_root)["n"][0] == 0


def test_label_section_is_part_of_the_config_hash(tmp_path: Path, hh_path: Path) -> None:
    base = _cfg(tmp_path / "a", hh_path, {"labelers": [_labeler("len")], "chunk_size": 4})
    same = _cfg(tmp_path / "b", hh_path, {"labelers": [_labeler("len")], "chunk_size": 64})
    other = _cfg(tmp_path / "c", hh_path, {"labelers": [_labeler("len", limit=3)]})
    assert base.config_hash() == same.config_hash()  # chunking does not change labels
    assert base.config_hash() != other.config_hash()


@pytest.mark.parametrize(
    ("labeler", "message"),
    [
        (
            {
                "name": "cdr",
                "kind": "density_ratio",
                "strong": {"backend": "transformers", "model": "smollm2"},
                "weak": {"backend": "transformers", "model": "smollm2"},
            },
            "same model",
        ),
        (
            {
                "name": "flr",
                "kind": "follow_up",
                "backend": {"backend": "transformers", "model": "smollm2"},
                "follow_ups": {"x": {"positive": ["Thanks!"], "negative": []}},
            },
            "negative",
        ),
        (
            {
                "name": "judge",
                "kind": "judge_pairwise",
                "backend": {"backend": "transformers", "model": "smollm2"},
                "template": "no-placeholders.txt",
            },
            "response_a",
        ),
    ],
)
def test_bad_labeler_config_fails_before_any_work(tmp_path: Path, hh_path: Path, labeler: dict, message: str) -> None:
    from typer.testing import CliRunner

    from curate.cli import app
    from curation.errors import ConfigError
    from tests.helpers import write_recipe

    (tmp_path / "no-placeholders.txt").write_text("Which is better?\n{prompt}\n")
    sources = [{"name": "hh", "path": str(hh_path), "adapter": "hh_rlhf", "limit": 10}]
    try:
        cfg = recipe_config(tmp_path, sources, dataset="bad", label={"labelers": [labeler]})
    except ConfigError as err:  # caught when the recipe loads
        assert message in str(err).lower() or message in str(err)
        return
    with pytest.raises(ConfigError, match=message):
        curate(cfg)
    assert not (Path(cfg.data_root) / "runs").exists()  # nothing started
    out = CliRunner().invoke(app, ["check", str(write_recipe(tmp_path, sources, "bad", label={"labelers": [labeler]}))])
    assert out.exit_code != 0 and message in out.output


# --------------------------------------------------------------------------- the label cache


class Counting(LongerWins):
    """LongerWins that counts the pairs it was asked for, and fails on pairs listed in ``broken``."""

    asked: list[str] = []
    broken: set[str] = set()

    def label(self, pairs: pa.Table) -> pa.Table:
        ids = pairs["pair_id"].to_pylist()
        if self.broken & set(ids):
            from curation.models.base import BackendError

            raise BackendError("the server dropped the connection")
        type(self).asked += ids
        return super().label(pairs)


def counting(monkeypatch: pytest.MonkeyPatch) -> type[Counting]:
    """The Counting class the registry imports (pytest may import this file under another name)."""
    import importlib

    monkeypatch.setitem(label_registry.LABELERS, "reward_model", "tests.stages.label.test_stage:Counting")
    cls = importlib.import_module("tests.stages.label.test_stage").Counting
    monkeypatch.setattr(cls, "asked", [])
    monkeypatch.setattr(cls, "broken", set())
    return cls


def test_label_cache_reuses_labels_and_misses_on_a_changed_parameter(
    tmp_path: Path, hh_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    Counting = counting(monkeypatch)  # noqa: N806 - the class

    def run(labeler: dict, **label: object) -> dict:
        Counting.asked = []
        cfg = _cfg(tmp_path, hh_path, {"labelers": [labeler], "chunk_size": 16, **label}, limit=60)
        return curate(cfg, force=True).funnel["labels"]["labelers"][labeler["name"]]

    first = run(_labeler("len"))
    kept = first["pairs"]
    assert (first["labels_reused"], first["labels_scored"], first["labels_failed"]) == (0, kept, 0) and len(Counting.asked) == kept
    cached = sorted((cache_root(tmp_path / "root")).glob("*/*.parquet"))
    assert len(cached) == -(-kept // 16)  # one file per finished chunk, nothing else (no temp files left)

    again = run(_labeler("len"))
    assert (again["labels_reused"], again["labels_scored"]) == (kept, 0) and Counting.asked == []
    table = 'SELECT * EXCLUDE (config) FROM "lab@{}".labels ORDER BY pair_id'
    assert sql(table.format(1), tmp_path / "root").equals(sql(table.format(2), tmp_path / "root"))  # identical to the uncached run

    renamed = run({**_labeler("length"), "backend": {"backend": "transformers", "model": "unused", "batch_size": 2}})
    assert renamed["labels_reused"] == kept and Counting.asked == []  # name and batch size choose nothing about a label
    assert sql("SELECT DISTINCT labeler, labeler_group FROM labels", tmp_path / "root").rows() == [("length", "length")]

    assert run(_labeler("len"), limit=7)["labels_reused"] == 7  # a smaller selection: a subset of the cache

    changed = run({**_labeler("len"), "backend": {"backend": "transformers", "model": "other-model"}})
    assert (changed["labels_reused"], changed["labels_scored"]) == (0, kept) and len(Counting.asked) == kept


def test_a_failed_pair_is_recorded_not_cached_and_retried(tmp_path: Path, hh_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    Counting = counting(monkeypatch)  # noqa: N806 - the class
    cfg = _cfg(tmp_path, hh_path, {"labelers": [_labeler("len")], "chunk_size": 8}, limit=20)
    curate(cfg)
    first_ids = sql("SELECT pair_id FROM pairs", cfg.data_root)["pair_id"].to_list()
    victim = first_ids[5]
    Counting.broken = {victim}
    counts = curate(cfg, force=True).funnel["labels"]["labelers"]["len"]
    assert counts["labels_scored"] == 0 and counts["labels_reused"] == len(first_ids)  # all cached from the first run

    other = tmp_path / "fresh"  # the same recipe into a fresh root: nothing cached, one pair fails
    Counting.asked = []
    cfg = _cfg(other, hh_path, {"labelers": [_labeler("len")], "chunk_size": 8}, limit=20)
    counts = curate(cfg).funnel["labels"]["labelers"]["len"]
    assert (counts["labels_scored"], counts["labels_failed"]) == (len(first_ids), 1)
    row = sql(f"SELECT verdict, error FROM labels WHERE pair_id = '{victim}'", cfg.data_root).to_dicts()
    assert row == [{"verdict": "invalid", "error": "scoring failed: BackendError: the server dropped the connection"}]
    assert len(set(Counting.asked)) == len(first_ids) - 1  # its chunk was split; every other pair was labelled

    Counting.broken, Counting.asked = set(), []
    counts = curate(cfg, force=True).funnel["labels"]["labelers"]["len"]
    assert (counts["labels_reused"], counts["labels_scored"], counts["labels_failed"]) == (len(first_ids) - 1, 1, 0)
    assert Counting.asked == [victim]


def test_label_cache_key_follows_what_changes_labels(tmp_path: Path) -> None:
    from curation.models.config import BackendConfig
    from curation.stages.label import build_labeler
    from curation.stages.label.base import BackendPool
    from curation.stages.label.config import JudgePairwiseConfig

    template = tmp_path / "judge.txt"
    template.write_text("{prompt}\nA: {response_a}\nB: {response_b}\nWhich is better?")

    def key(**cfg: object) -> str | None:
        backend = {"backend": "openai", "model": "judge-model", "base_url": "http://127.0.0.1:1/v1", **cfg.pop("backend", {})}
        config = JudgePairwiseConfig(name=cfg.pop("name", "j"), backend=BackendConfig(**backend), template=str(template), **cfg)
        return content_key(build_labeler(config, BackendPool(tmp_path, build=lambda c, r: pytest.fail("no backend is built"))))

    base = key()
    assert base is not None and len(base) == 32
    same = [key(name="renamed"), key(limit=3), key(backend={"base_url": "http://other:8000/v1", "max_concurrency": 64, "timeout_s": 5})]
    assert same == [base] * 3
    differ = [key(temperature=0.5), key(seed=1), key(max_retries=0), key(verdict_by="logprobs"), key(backend={"model": "other"})]
    assert len({base, *differ}) == 1 + len(differ)
    template.write_text(template.read_text() + " Be brief.")  # same path, new content
    assert key() != base


def test_a_failure_named_by_its_side_is_retried_like_any_scoring_failure() -> None:
    """CDR names the model that failed ("strong model: scoring failed: ..."): still a failure
    to score, not a final label, so the cache leaves it for the next run."""
    from curation.stages.label.cache import failed_to_score

    assert failed_to_score("scoring failed: BackendError: timeout")
    assert failed_to_score("strong model: scoring failed: BackendError: HTTP 500")
    assert not failed_to_score("chosen response is empty") and not failed_to_score(None) and not failed_to_score("")
