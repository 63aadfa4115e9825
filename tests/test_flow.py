"""The Prefect flow runs with no server (ephemeral mode) and publishes the same data as
the plain pipeline."""

from __future__ import annotations

from curation.pipeline import curate
from curation.query import sql
from tests.helpers import recipe_config, write_recipe


def test_prefect_flow_publishes_like_the_library(tmp_path, hh_path, monkeypatch):
    from flows.curate import curate_flow

    sources = [{"name": "hh", "path": str(hh_path), "adapter": "hh_rlhf", "limit": 200}]
    recipe = write_recipe(tmp_path / "flow", sources, dataset="hh")
    result = curate_flow(str(recipe))
    assert result["version"] == 1 and not result["unchanged"]
    assert result["funnel"]["rows_in"] == 200
    assert set(result["timings"]) == {"ingest", "validate", "dedup", "publish"}

    lib_cfg = recipe_config(tmp_path / "lib", sources, dataset="hh")
    curate(lib_cfg)
    via_flow = sql("SELECT pair_id FROM pairs ORDER BY pair_id", str(tmp_path / "flow" / "root"))
    via_lib = sql("SELECT pair_id FROM pairs ORDER BY pair_id", lib_cfg.data_root)
    assert via_flow.equals(via_lib) and via_flow.height == result["funnel"]["kept"]

    again = curate_flow(str(recipe))
    assert again["unchanged"] and again["version"] == 1


def test_prefect_flow_runs_the_label_task(tmp_path, hh_path, monkeypatch):
    import curation.label as label_registry
    from flows.curate import curate_flow

    monkeypatch.setitem(label_registry.LABELERS, "reward_model", "tests.test_label_stage:LongerWins")
    sources = [{"name": "hh", "path": str(hh_path), "adapter": "hh_rlhf", "limit": 60}]
    labeler = {"name": "len", "kind": "reward_model", "backend": {"backend": "transformers", "model": "unused"}}
    recipe = write_recipe(tmp_path / "flow", sources, dataset="hh", label={"labelers": [labeler]})
    result = curate_flow(str(recipe))
    assert "label" in result["timings"]
    labels = sql("SELECT count(*) AS n FROM labels", str(tmp_path / "flow" / "root"))["n"][0]
    assert labels == result["funnel"]["kept"] == result["funnel"]["labels"]["labelers"]["len"]["pairs"]


def test_prefect_flow_runs_each_filter_step_as_a_task(tmp_path, hh_path, monkeypatch):
    from prefect.client.orchestration import get_client

    import curation.label as label_registry
    from flows.curate import curate_flow

    monkeypatch.setitem(label_registry.LABELERS, "reward_model", "tests.test_label_stage:LongerWins")
    sources = [{"name": "hh", "path": str(hh_path), "adapter": "hh_rlhf", "limit": 60}]
    label = {"labelers": [{"name": "len", "kind": "reward_model", "backend": {"backend": "transformers", "model": "unused"}}]}
    steps = {"steps": [{"kind": "margin", "labelers": ["len"], "quantile": 0.2}, {"kind": "prompt_cap", "max_pairs": 1}]}
    recipe = write_recipe(tmp_path / "flow", sources, dataset="hh", label=label, filter=steps)
    result = curate_flow(str(recipe))
    with get_client(sync_client=True) as client:
        names = {t.name.rsplit("-", 1)[0] for t in client.read_task_runs()}
    assert {"filter-margin", "filter-prompt_cap"} <= names

    lib_cfg = recipe_config(tmp_path / "lib", sources, dataset="hh", label=label, filter=steps)
    curate(lib_cfg)
    via_flow = sql("SELECT pair_id FROM pairs ORDER BY pair_id", str(tmp_path / "flow" / "root"))
    via_lib = sql("SELECT pair_id FROM pairs ORDER BY pair_id", lib_cfg.data_root)
    assert via_flow.equals(via_lib) and via_flow.height == result["funnel"]["filter"]["pairs_out"] < result["funnel"]["kept"]
