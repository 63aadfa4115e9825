"""Scale-out on Ray: the same recipe on Prefect's Ray task runner, and generation through Ray
Data, publish exactly what the local runs publish.

One local Ray instance (loopback only, 2 CPUs) is started for the module; Prefect's Ray task
runner and the ``ray_data`` backend both join it instead of starting their own. The model is
the OpenAI-compatible HTTP stub on 127.0.0.1 (deterministic replies), reachable from the
Ray workers, so labels and candidates can be compared value for value.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import yaml

from curation.store.query import sql
from tests.support.openai_stub import OpenAIStub

ray = pytest.importorskip("ray", reason="Ray is not installed: `pip install -e '.[ray]'` (install.sh does)")
pytest.importorskip("prefect_ray", reason="prefect-ray is not installed: `pip install -e '.[ray]'` (install.sh does)")

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def local_ray(pg_server):
    """Workers inherit the driver's environment when Ray starts: the PostgreSQL catalog's
    connection is set first (as a user's cluster gets it from where its nodes start)."""
    import os

    os.environ["CURATE_PG_DSN"] = pg_server.dsn
    if not ray.is_initialized():
        ray.init(num_cpus=2, _node_ip_address="127.0.0.1", include_dashboard=False, log_to_driver=False)
    yield ray
    ray.shutdown()
    os.environ.pop("CURATE_PG_DSN", None)


@pytest.fixture(scope="module")
def stub():
    with OpenAIStub(latency_s=0.01) as s:
        yield s


def generator(stub: OpenAIStub, **extra: Any) -> dict[str, Any]:
    return {"backend": "openai", "model": stub.model, "base_url": stub.base_url, "max_concurrency": 4, "max_retries": 2, **extra}


def recipe(
    folder: Path, hh_path: Path, stub: OpenAIStub, *, task_runner: str = "local", gen_backend: dict | None = None, catalog: str = "file"
) -> Path:
    """HH pairs + generated candidates, judged over HTTP, then two filter steps: every kind of
    task the flow has (ingest, validate, dedup, generate, label, filter steps, publish)."""
    body = {
        "publish": {"dataset": "hh-ray"},
        "data_root": str(folder / "root"),
        "sources": [{"name": "hh", "path": str(hh_path), "adapter": "hh_rlhf", "limit": 120}],
        "generate": {
            "generator": gen_backend or generator(stub),
            "prompts": {"from": "pairs", "limit": 6},
            "n": 2,
            "max_tokens": 16,
            "strategy": "iid",
            "chunk_size": 64,
        },
        "label": {"labelers": [{"name": "judge-stub", "kind": "judge_pairwise", "backend": generator(stub), "limit": 20}]},
        "filter": {"steps": [{"kind": "margin", "labelers": ["judge-stub"], "min_margin": 0.5, "missing": "keep"}, {"kind": "near_dedup"}]},
        "orchestration": {"task_runner": task_runner},
        "catalog": catalog,
    }
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "recipe.yaml"
    path.write_text(yaml.safe_dump(body, sort_keys=False))
    return path


TABLE_QUERIES = {
    "pairs": 'SELECT pair_id, chosen, rejected, label_source FROM "hh-ray".pairs ORDER BY pair_id',
    "decisions": 'SELECT pair_id, stage, decision, reason FROM "hh-ray".decisions ORDER BY ALL',
    "labels": 'SELECT pair_id, labeler, verdict, margin FROM "hh-ray".labels ORDER BY ALL',
    "candidates": 'SELECT candidate_id, prompt_id, candidate_index, response FROM "hh-ray".candidates ORDER BY candidate_id',
    "quarantine": 'SELECT source_row, field, error FROM "hh-ray".quarantine ORDER BY ALL',
}


def content(funnel: Any) -> Any:
    """The funnel without wall-clock figures and backend descriptions (which differ by design)."""
    if isinstance(funnel, dict):
        return {k: content(v) for k, v in funnel.items() if k != "seconds" and k != "backend"}
    return funnel


def tables(root: Path) -> dict[str, Any]:
    return {name: sql(q, root) for name, q in TABLE_QUERIES.items()}


def test_flow_on_ray_publishes_what_the_local_runner_publishes(tmp_path: Path, hh_path: Path, stub: OpenAIStub, local_ray) -> None:
    from flows.curate import run_recipe

    local = run_recipe(str(recipe(tmp_path / "local", hh_path, stub)))
    on_ray = run_recipe(str(recipe(tmp_path / "ray", hh_path, stub, task_runner="ray", catalog="postgres")))  # catalog in PostgreSQL
    assert local["version"] == on_ray["version"] == 1
    assert content(on_ray["funnel"]) == content(local["funnel"])
    assert on_ray["summary"]["config_hash"] == local["summary"]["config_hash"]  # the runner is not part of the content
    a, b = tables(tmp_path / "local" / "root"), tables(tmp_path / "ray" / "root")
    for name in TABLE_QUERIES:
        assert a[name].height > 0 or name == "quarantine", name
        assert a[name].equals(b[name]), f"{name} differs between the local and the Ray runner"
    # the tasks really ran on Ray workers: the driver's process is not the one that ran them
    assert on_ray["summary"].get("task_runner", "ray") == "ray"
    assert (tmp_path / "ray" / "root" / "catalog.json").exists() and not list((tmp_path / "ray" / "root").rglob("*.ducklake"))


def test_generation_through_ray_data_equals_direct_generation(tmp_path: Path, hh_path: Path, stub: OpenAIStub, local_ray) -> None:
    from curation.config import load_config
    from curation.run.runner import curate

    inner = generator(stub)
    ray_backend = {**inner, "backend": "ray_data", "ray_data": {"backend": "openai", "actors": 2, "batch_size": 4}}
    direct = curate(load_config(recipe(tmp_path / "direct", hh_path, stub)))
    fanned = curate(load_config(recipe(tmp_path / "fanned", hh_path, stub, gen_backend=ray_backend)))
    assert content(direct.funnel) == content(fanned.funnel)
    assert fanned.funnel["generated"]["backend"] | {"actors": 2} == {
        "backend": "ray_data",
        "inner_backend": "openai",
        "model": stub.model,
        "actors": 2,
    }
    a, b = tables(tmp_path / "direct" / "root"), tables(tmp_path / "fanned" / "root")
    assert a["candidates"].height == 6 * 2
    assert a["candidates"].equals(b["candidates"]) and a["pairs"].equals(b["pairs"])
    # provenance names the backend that served the candidates
    backends = sql('SELECT DISTINCT backend FROM "hh-ray".candidates', tmp_path / "fanned" / "root")
    assert backends["backend"].to_list() == ["ray_data"]


def test_ray_data_backend_config_errors_are_clear(tmp_path: Path) -> None:
    from curation.errors import ConfigError
    from curation.models import BackendConfig, check_backend

    with pytest.raises(ConfigError, match="needs a `ray_data:` section"):
        check_backend(BackendConfig(backend="ray_data", model="m"), tmp_path)
    with pytest.raises(ValueError, match="ray_data.backend must be"):
        BackendConfig(backend="ray_data", model="m", ray_data={"backend": "sentence_transformers"})
    json.dumps(BackendConfig(backend="ray_data", model="m", ray_data={"backend": "openai"}).model_dump())  # plain data, recordable
