"""The label stage inside the pipeline: selection, limits, coverage check, publish, SQL.

The labeler here is a transparent heuristic (longer response wins) put in the registry's
``reward_model`` slot, so the stage's machinery is tested on real HH pairs without a model.
"""

from __future__ import annotations

from pathlib import Path

import pyarrow as pa
import pytest

import curation.label as label_registry
from curation.errors import CurationError
from curation.label.base import Labeler, pair_views
from curation.pipeline import curate
from curation.query import sql
from curation.store import DatasetStore
from tests.helpers import recipe_config

LONGER = "tests.test_label_stage:LongerWins"


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
    monkeypatch.setitem(label_registry.LABELERS, "reward_model", "tests.test_label_stage:DropsOne")
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

    from curation.cli import app
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
