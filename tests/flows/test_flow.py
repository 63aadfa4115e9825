"""The Prefect flow runs with no server (ephemeral mode) and publishes the same data as
the plain pipeline."""

from __future__ import annotations

import errno
import json
import logging
import os
import time
import uuid
from collections import Counter
from pathlib import Path

import polars as pl
import pytest

from curation.errors import ConfigError
from curation.models.base import BackendError
from curation.models.openai_backend import ServerRejected
from curation.run import runner as pipeline
from curation.run.runner import curate
from curation.stages.base import StageOutput
from curation.store.catalog import DatasetBusy, DatasetStore
from curation.store.query import sql
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
    import curation.stages.label as label_registry
    from flows.curate import curate_flow

    monkeypatch.setitem(label_registry.LABELERS, "reward_model", "tests.stages.label.test_stage:LongerWins")
    sources = [{"name": "hh", "path": str(hh_path), "adapter": "hh_rlhf", "limit": 60}]
    labeler = {"name": "len", "kind": "reward_model", "backend": {"backend": "transformers", "model": "unused"}}
    recipe = write_recipe(tmp_path / "flow", sources, dataset="hh", label={"labelers": [labeler]})
    result = curate_flow(str(recipe))
    assert "label" in result["timings"]
    labels = sql("SELECT count(*) AS n FROM labels", str(tmp_path / "flow" / "root"))["n"][0]
    assert labels == result["funnel"]["kept"] == result["funnel"]["labels"]["labelers"]["len"]["pairs"]


def test_prefect_flow_runs_each_filter_step_as_a_task(tmp_path, hh_path, monkeypatch):
    from prefect.client.orchestration import get_client

    import curation.stages.label as label_registry
    from flows.curate import curate_flow

    monkeypatch.setitem(label_registry.LABELERS, "reward_model", "tests.stages.label.test_stage:LongerWins")
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


# --------------------------------------------------------------------------- run_recipe: cache, retries, limits, artifacts


def prefect_task_runs(flow_run_id: str) -> dict[str, object]:
    """The flow run's task runs as Prefect's API has them, by task name (``ingest-a1b`` -> ``ingest``)."""
    from uuid import UUID

    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId

    with get_client(sync_client=True) as client:
        runs = client.read_task_runs(flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[UUID(flow_run_id)])))
    return {r.name.rsplit("-", 1)[0]: r for r in runs}


def published_tables(root: Path, dataset: str, version: int) -> dict[str, pl.DataFrame]:
    """A version's contract tables, rows in a canonical order, to compare two runs' output."""
    store = DatasetStore(root)
    out = {}
    for table in ("pairs", "decisions", "quarantine"):
        df = pl.from_arrow(store.read(dataset, table, version=version))
        out[table] = df.sort([c for c, t in df.schema.items() if not t.is_nested()], nulls_last=True)
    return out


def untimed(d: object) -> object:
    """A funnel without its wall-clock figures (``seconds``), which differ from run to run."""
    if isinstance(d, dict):
        return {k: untimed(v) for k, v in d.items() if k != "seconds"}
    return [untimed(v) for v in d] if isinstance(d, list) else d


def near_dedup(threshold: float) -> dict:
    return {"steps": [{"kind": "near_dedup", "level": "prompt", "threshold": threshold}]}


def test_a_filter_only_change_reuses_the_cached_stages_with_identical_results(tmp_path, hh_path, pg_env):
    """The warm root keeps its catalogs in PostgreSQL, the cold one in files: the stage cache
    and the published tables do not depend on the catalog."""
    from flows.curate import run_recipe

    sources = [{"name": "hh", "path": str(hh_path), "adapter": "hh_rlhf", "limit": 300}]
    warm = tmp_path / "warm"
    a = run_recipe(str(write_recipe(warm, sources, dataset="hh", filter=near_dedup(0.9), catalog="postgres")))
    b = run_recipe(str(write_recipe(warm, sources, dataset="hh", filter=near_dedup(0.5))))
    assert a["cached"] == [] and (a["version"], b["version"]) == (1, 2)
    runs = prefect_task_runs(b["flow_run_id"])
    assert {s: runs[s].state.name for s in ("ingest", "validate", "dedup")} == dict.fromkeys(("ingest", "validate", "dedup"), "Cached")
    assert runs["filter-near_dedup"].state.name == runs["publish"].state.name == "Completed"
    assert b["cached"] == ["ingest", "validate", "dedup"] and b["timings"]["ingest"] == 0.0

    cold = run_recipe(str(write_recipe(tmp_path / "cold", sources, dataset="hh", filter=near_dedup(0.5))))
    assert cold["cached"] == []
    warm_b, cold_b = published_tables(warm / "root", "hh", 2), published_tables(tmp_path / "cold" / "root", "hh", 1)
    for table in warm_b:
        assert warm_b[table].equals(cold_b[table]), table
    assert untimed(b["funnel"]) == untimed(cold["funnel"]) and b["funnel"]["filter"]["pairs_out"] < a["funnel"]["filter"]["pairs_out"]

    # A cache entry whose files are gone is not trusted: dedup reruns, the stages before it are reused.
    staged = json.loads((Path(b["run_dir"]) / "stages.json").read_text())
    Path(staged["dedup"]["files"]["pairs"]).unlink()
    c = run_recipe(str(write_recipe(warm, sources, dataset="hh", filter=near_dedup(0.9))))  # A's recipe again
    runs = prefect_task_runs(c["flow_run_id"])
    assert [runs[s].state.name for s in ("ingest", "validate", "dedup")] == ["Cached", "Cached", "Completed"]
    assert Path(staged["dedup"]["files"]["pairs"]).exists()
    warm_a, warm_c = published_tables(warm / "root", "hh", 1), published_tables(warm / "root", "hh", 3)
    assert all(warm_a[t].equals(warm_c[t]) for t in warm_a)
    assert DatasetStore(warm / "root").catalog_kind == "postgres" and DatasetStore(tmp_path / "cold" / "root").catalog_kind == "file"


def test_transient_errors_are_retried_and_deterministic_ones_are_not(tmp_path, hh_path, monkeypatch):
    from curation.errors import SourceError
    from curation.stages.ingest import stage as ingest_stage
    from flows.curate import run_recipe

    real_ingest, real_publish = ingest_stage.ingest, pipeline.publish
    calls: Counter[str] = Counter()

    def flaky_ingest(cfg, folder, progress=None):
        calls["ingest"] += 1
        if calls["ingest"] == 1:  # a half-written file, then the failure: the retry must start clean
            (Path(folder) / "ingested.parquet").write_bytes(b"PAR1 partial")
            raise OSError(errno.EIO, "Input/output error on the staging disk")
        return real_ingest(cfg, folder, progress)

    def publish_then_fail(*args, **kwargs):
        calls["publish"] += 1
        real_publish(*args, **kwargs)
        raise TimeoutError("connection lost after the commit")  # the version is in; the caller does not know

    monkeypatch.setattr(ingest_stage, "ingest", flaky_ingest)
    monkeypatch.setattr(pipeline, "publish", publish_then_fail)
    sources = [{"name": "hh", "path": str(hh_path), "adapter": "hh_rlhf", "limit": 120}]
    result = run_recipe(str(write_recipe(tmp_path / "flow", sources, dataset="hh")))
    runs = prefect_task_runs(result["flow_run_id"])
    assert (runs["ingest"].run_count, runs["ingest"].state.name) == (2, "Completed")
    assert (runs["publish"].run_count, runs["publish"].state.name) == (2, "Completed")
    assert calls == {"ingest": 2, "publish": 1}  # the retried publish found its version instead of publishing again
    root = tmp_path / "flow" / "root"
    assert [v.version for v in DatasetStore(root).versions("hh")] == [1] and result["version"] == 1
    monkeypatch.undo()
    lib_cfg = recipe_config(tmp_path / "lib", sources, dataset="hh")
    curate(lib_cfg)
    assert published_tables(root, "hh", 1)["pairs"].equals(published_tables(Path(lib_cfg.data_root), "hh", 1)["pairs"])
    assert not list((root / "cache").rglob("*.tmp-*"))

    def bad_input(cfg, folder, progress=None):
        calls["bad"] += 1
        raise SourceError("hh.jsonl line 3: not valid JSON")

    monkeypatch.setattr(ingest_stage, "ingest", bad_input)
    with pytest.raises(SourceError, match="line 3"):
        run_recipe(str(write_recipe(tmp_path / "bad", sources, dataset="hh")))
    assert calls["bad"] == 1
    assert not list((tmp_path / "bad" / "root" / "cache").rglob("*.tmp-*"))


@pytest.mark.parametrize(
    "exc, transient",
    [
        (DatasetBusy("hh is being written by another process"), True),
        (ConnectionResetError(104, "reset by peer"), True),
        (TimeoutError("read timed out"), True),
        (BackendError("chat completion failed after 4 attempts"), True),
        (ServerRejected("HTTP 400", status=400, server_message="prompt too long"), False),
        (ConfigError("unknown adapter"), False),
        (FileNotFoundError(2, "No such file", "in.jsonl"), False),
        (ValueError("a bug"), False),
    ],
)
def test_which_errors_are_worth_a_retry(exc, transient):
    from flows.retries import is_transient

    assert is_transient(exc) is transient


@pytest.fixture
def run_logs_at_info():
    """Flow and task run INFO logs reach the API (conftest quiets Prefect to WARNING).
    ``setLevel``, not assigning ``level``: it also clears the loggers' isEnabledFor cache."""
    names = ("prefect.flow_runs", "prefect.task_runs")
    before = {name: logging.getLogger(name).level for name in names}
    for name in names:
        logging.getLogger(name).setLevel(logging.INFO)
    yield
    for name, level in before.items():
        logging.getLogger(name).setLevel(level)


def test_model_calls_wait_for_the_model_server_limit_and_artifacts_hold_no_secret(tmp_path, hh_path, monkeypatch, run_logs_at_info):
    """`prefect concurrency-limit create model-server 1` throttles the label task; the run's
    artifacts and logs never contain the API key the recipe names."""
    import threading

    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterFlowRunId, LogFilter, LogFilterFlowRunId
    from prefect.concurrency.sync import concurrency
    from prefect.exceptions import ObjectNotFound
    from prefect.logging.handlers import APILogWorker

    from flows.curate import MODEL_SERVER_TAG, run_recipe
    from tests.support.openai_stub import OpenAIStub

    planted = f"sk-planted-{uuid.uuid4().hex}"
    monkeypatch.setenv("CURATION_TEST_PLANTED_KEY", planted)
    with get_client(sync_client=True) as client:
        try:
            client.read_concurrency_limit_by_tag(MODEL_SERVER_TAG)
            pytest.skip(f"this Prefect profile already has a {MODEL_SERVER_TAG!r} concurrency limit; run with a fresh PREFECT_HOME")
        except ObjectNotFound:
            pass
        client.create_concurrency_limit(tag=MODEL_SERVER_TAG, concurrency_limit=1)
    held, released = threading.Event(), []

    def hold_the_only_slot() -> None:
        with concurrency(f"tag:{MODEL_SERVER_TAG}", occupy=1, strict=True):
            held.set()
            time.sleep(4)
            released.append(time.time())

    try:
        with OpenAIStub(api_key=planted) as stub:
            backend = {"backend": "openai", "model": stub.model, "base_url": stub.base_url, "api_key_env": "CURATION_TEST_PLANTED_KEY"}
            label = {"labelers": [{"name": "judge", "kind": "judge_pairwise", "backend": backend, "limit": 3}]}
            sources = [{"name": "hh", "path": str(hh_path), "adapter": "hh_rlhf", "limit": 40}]
            recipe = write_recipe(tmp_path / "flow", sources, dataset="hh_judged", label=label)
            holder = threading.Thread(target=hold_the_only_slot)
            holder.start()
            assert held.wait(60)
            result = run_recipe(str(recipe))
            holder.join()
            assert any(path == "/v1/chat/completions" for path, _ in stub.bodies)  # the key was accepted
    finally:
        with get_client(sync_client=True) as client:
            client.delete_concurrency_limit_by_tag(MODEL_SERVER_TAG)
    runs = prefect_task_runs(result["flow_run_id"])
    assert MODEL_SERVER_TAG in runs["label"].tags and MODEL_SERVER_TAG not in runs["ingest"].tags
    assert runs["label"].start_time.timestamp() >= released[0] - 0.5  # it waited for the held slot
    assert result["funnel"]["labels"]["labelers"]["judge"]["pairs"] == 3

    run_filter = [uuid.UUID(result["flow_run_id"])]
    with get_client(sync_client=True) as client:
        arts = client.read_artifacts(artifact_filter=ArtifactFilter(flow_run_id=ArtifactFilterFlowRunId(any_=run_filter)))
        logs: list = []
        deadline = time.monotonic() + 30  # logs reach the API in batches, from a background worker
        while not any("label" in log.message for log in logs) and time.monotonic() < deadline:
            APILogWorker.drain_all(timeout=5)
            logs = client.read_logs(LogFilter(flow_run_id=LogFilterFlowRunId(any_=run_filter)))
            time.sleep(0.5)
    by_key = {a.key: a for a in arts}
    assert set(by_key) == {"funnel-hh-judged", "funnel-table-hh-judged", "timings-hh-judged", "report-hh-judged"}
    funnel = {row["step"]: row["count"] for row in json.loads(by_key["funnel-table-hh-judged"].data)}
    assert funnel["kept"] == result["funnel"]["kept"] and funnel["rows in"] == 40
    assert [r["stage"] for r in json.loads(by_key["timings-hh-judged"].data)] == ["ingest", "validate", "dedup", "label", "publish"]
    report = Path(result["report_dir"]) / "report.html"
    assert by_key["report-hh-judged"].data.endswith(f"({report.resolve().as_uri()})") and report.exists()
    assert "curate sql" in by_key["funnel-hh-judged"].data and report.as_uri() in by_key["funnel-hh-judged"].data
    assert any("label" in log.message for log in logs), [log.message[:80] for log in logs][:20]
    for text in [a.data for a in arts] + [a.description or "" for a in arts] + [log.message for log in logs]:
        assert planted not in str(text)


def test_prune_keeps_the_recently_used_entries_and_their_records(tmp_path):
    from flows import caching

    cfg = recipe_config(tmp_path, [{"name": "s", "path": str(tmp_path / "x.jsonl"), "adapter": "hh_rlhf"}], dataset="ds")
    root = str(caching.cache_root(cfg))
    made = []
    for i in range(5):
        slot = caching.StageSlot("dedup", f"key{i}", root, "ds")

        def write(folder: Path, i: int = i) -> StageOutput:
            (folder / "kept.parquet").write_bytes(b"x" * (i + 1))
            return StageOutput("dedup", {"pairs": str(folder / "kept.parquet")}, {}, 0.0)

        out = caching.build(slot, write)
        assert out.files["pairs"] == str(slot.dir / "kept.parquet") and slot.complete()
        slot.record_path.parent.mkdir(parents=True, exist_ok=True)
        slot.record_path.write_text("record")
        os.utime(slot.dir / caching.MARKER, (time.time() - 100 + i, time.time() - 100 + i))
        made.append(slot)
    made[0].touch()  # used just now: kept although it is the oldest entry
    removed = caching.prune(cfg, keep=3)
    assert sorted(p.name for p in removed) == ["key1", "key2"]
    assert [s.complete() for s in made] == [True, False, False, True, True]
    assert [s.record_path.exists() for s in made] == [True, False, False, True, True]
