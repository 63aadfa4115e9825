"""Fault injection on the model server: 20% of calls fail, and no label or candidate is lost.

The OpenAI-compatible stub fails a seeded 20% of POST requests with a mix of 429 (with
``Retry-After``), 500, timeouts (no reply within the client's timeout), truncated bodies (the
connection closes part-way through the body) and invalid JSON (a complete reply cut short).
The backend retries all of them (an invalid body like a 5xx); a request that still fails
after its retries makes the label stage isolate the pair(s) it hit (``label_chunk``): every
pair ends with a label or with an ``invalid`` row whose error says why, and a rerun scores
only those again. Generation stops on such a request and resumes from its request cache on
the next run.

Everything is compared with a fault-free run of the same recipe: a pair that got a label got
the same label, and the generated candidates are identical. The measured retry and failure
counts are printed (run with ``-s``).
"""

from __future__ import annotations

import json
import re
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from curation.config import load_config
from curation.errors import CurationError
from curation.models.openai_backend import OpenAIBackend
from curation.run.runner import curate
from curation.stages.generate import stage as generation
from curation.stages.label.cache import TRANSIENT
from curation.store.query import sql
from tests.support.openai_stub import FAULT_KINDS, FaultPlan, OpenAIStub

DATASET = "faults"
FAULT_SEED = 20261123


@pytest.fixture(autouse=True)
def quick(monkeypatch: pytest.MonkeyPatch) -> None:
    """Short retry waits (the 429s still ask for 20 ms), and no figures in the reruns' reports
    or diversity (they load torch and matplotlib; not what is tested here)."""
    import curation.run.runner as pipeline

    monkeypatch.setattr(OpenAIBackend, "backoff_base_s", 0.01)

    def summary_only(summary: dict[str, Any], out: Path) -> Path:
        out.mkdir(parents=True, exist_ok=True)
        (out / "summary.json").write_text(json.dumps(summary, default=str))
        return out / "summary.json"

    monkeypatch.setattr(pipeline, "write_report", summary_only)
    monkeypatch.setattr(generation, "measure_diversity", lambda *args, **kwargs: {})


@pytest.fixture
def stub() -> Iterator[OpenAIStub]:
    with OpenAIStub(latency_s=0.002) as s:
        yield s


def backend(stub: OpenAIStub, **overrides: Any) -> dict[str, Any]:
    cfg = {"backend": "openai", "model": stub.model, "base_url": stub.base_url, "max_concurrency": 4, "max_retries": 3, "timeout_s": 0.5}
    return {**cfg, **overrides}


def recipe(tmp: Path, hh_path: Path, rows: int, **sections: Any) -> Path:
    tmp.mkdir(parents=True, exist_ok=True)
    data = {"publish": {"dataset": DATASET}, "sources": [{"name": "hh", "path": str(hh_path), "adapter": "hh_rlhf", "limit": rows}]}
    path = tmp / "recipe.yaml"
    path.write_text(yaml.safe_dump({**data, **sections}, sort_keys=False))
    return path


def labels(root: Path, version: int | None = None) -> dict[str, dict[str, Any]]:
    table = f'"{DATASET}@{version}".labels' if version else "labels"
    rows = sql(f"SELECT pair_id, verdict, score_a, score_b, consistent, raw, error FROM {table}", str(root)).to_dicts()
    return {r["pair_id"]: r for r in rows}


def failure_reason(error: str) -> str:
    """A short class of a recorded scoring failure's reason, for the figures."""
    for pattern, name in [
        (r"not an OpenAI JSON reply", "invalid JSON reply"),
        (r"HTTP 429", "429 after retries"),
        (r"HTTP 5\d\d", "5xx after retries"),
        (r"no reply within", "timeout after retries"),
        (r"connection error", "connection after retries"),
    ]:
        if re.search(pattern, error):
            return name
    return error[:60]


def same_label(a: dict[str, Any], b: dict[str, Any]) -> bool:
    keep = ("verdict", "score_a", "score_b", "consistent", "raw")
    return all(a[k] == b[k] for k in keep)


def test_judge_under_20_percent_faults_loses_no_label(tmp_path: Path, hh_path: Path, stub: OpenAIStub) -> None:
    t0 = time.monotonic()
    judge = {"name": "judge", "kind": "judge_pairwise", "backend": backend(stub), "max_retries": 0}
    path = recipe(tmp_path, hh_path, 60, label={"labelers": [judge], "chunk_size": 8})
    reference_root, root = tmp_path / "reference", tmp_path / "faulty"
    curate(load_config(path, data_root=str(reference_root)))
    reference = labels(reference_root)
    assert all(r["error"] is None and r["verdict"] != "invalid" for r in reference.values())

    stub.reset_stats()
    stub.fault_plan = FaultPlan(rate=0.2, seed=FAULT_SEED, hang_s=1.0)
    result = curate(load_config(path, data_root=str(root)))
    stats = stub.stats_snapshot()
    counts = result.funnel["labels"]["labelers"]["judge"]
    got = labels(root)

    # 0 lost: every kept pair has exactly one row, a label or a failure that says why
    assert set(got) == set(reference) and counts["rows"] == counts["pairs"] == len(reference) == result.funnel["kept"]
    failed = {pid for pid, r in got.items() if r["error"] and r["error"].startswith(TRANSIENT)}
    assert counts["labels_failed"] == len(failed) and counts["labels_scored"] == len(reference)
    for pid, row in got.items():
        if pid in failed:
            assert row["verdict"] == "invalid" and row["score_a"] is None and "BackendError" in row["error"]
        else:
            assert same_label(row, reference[pid]), f"pair {pid}: its label differs from the fault-free run's"
    injected = stats["faults_applied"]
    assert set(injected) <= set(FAULT_KINDS) and sum(injected.values()) > 0.1 * stats["requests"]
    assert len(injected) == len(FAULT_KINDS), f"every kind of fault should occur at this scale: {injected}"

    # a rerun (forced: same config and inputs) takes the labelled pairs from the cache and
    # asks only for the failed ones, until none is left
    reruns = []
    while failed and len(reruns) < 5:
        stub.reset_stats()
        res = curate(load_config(path, data_root=str(root)), force=True)
        c = res.funnel["labels"]["labelers"]["judge"]
        assert (c["labels_reused"], c["labels_scored"]) == (len(reference) - len(failed), len(failed))
        got = labels(root)
        failed = {pid for pid, r in got.items() if r["error"] and r["error"].startswith(TRANSIENT)}
        reruns.append(c["labels_failed"])
    assert not failed and all(same_label(got[pid], reference[pid]) for pid in reference)
    reasons = Counter(failure_reason(r["error"]) for r in labels(root, 1).values() if r["error"] and r["error"].startswith(TRANSIENT))
    print(
        f"\njudge under faults: {len(reference)} real HH pairs, {stats['requests']} requests, faults injected {dict(injected)}; "
        f"pairs recorded as failed: {counts['labels_failed']} {dict(reasons)}; failures left after each rerun: {reruns}; "
        f"{time.monotonic() - t0:.1f} s"
    )


def test_a_pair_the_server_always_fails_is_recorded_with_its_reason(tmp_path: Path, hh_path: Path, stub: OpenAIStub) -> None:
    """One pair's requests always get HTTP 500 (its text is matched); the others in its chunk
    are labelled, it gets an invalid row naming the error, and a rerun asks only for it."""
    judge = {"name": "judge", "kind": "judge_pairwise", "backend": backend(stub, max_retries=1), "max_retries": 0}
    path = recipe(tmp_path, hh_path, 8, label={"labelers": [judge], "chunk_size": 8})
    root = tmp_path / "root"
    rows = [json.loads(line) for line in hh_path.read_text().splitlines()[:8]]
    replies = [r["rejected"].rsplit("\n\nAssistant:", 1)[1] for r in rows]
    victim = re.search(r"[A-Za-z][A-Za-z ,.]{24}", replies[3]).group(0)  # plain ASCII: the same in the JSON body
    assert sum(victim in r["chosen"] + r["rejected"] for r in rows) == 1
    stub.add_faults(*[{"status": 500, "match": victim}] * 50)
    result = curate(load_config(path, data_root=str(root)))
    got = labels(root)
    counts = result.funnel["labels"]["labelers"]["judge"]
    bad = [r for r in got.values() if r["error"]]
    assert len(got) == 8 and counts["labels_failed"] == 1 and len(bad) == 1
    assert bad[0]["verdict"] == "invalid"
    assert re.search(
        r"^scoring failed: BackendError: structured chat at 127\.0\.0\.1:\d+ failed after 2 attempts \(max_retries=1\); "
        r"last error: HTTP 500: injected error 500$",
        bad[0]["error"],
    ), bad[0]["error"]
    assert all(r["verdict"] != "invalid" for r in got.values() if not r["error"])

    stub.clear_faults()
    stub.reset_stats()
    again = curate(load_config(path, data_root=str(root)), force=True).funnel["labels"]["labelers"]["judge"]
    assert (again["labels_reused"], again["labels_scored"], again["labels_failed"]) == (7, 1, 0)
    assert stub.stats_snapshot()["requests"] == 2  # both orders of the one pair
    assert all(r["error"] is None for r in labels(root).values())


def test_a_dead_server_stops_the_run_instead_of_labelling_everything_invalid(tmp_path: Path, hh_path: Path, stub: OpenAIStub) -> None:
    judge = {"name": "judge", "kind": "judge_pairwise", "backend": backend(stub, max_retries=1), "max_retries": 0}
    path = recipe(tmp_path, hh_path, 40, label={"labelers": [judge], "chunk_size": 32})
    stub.fault_plan = FaultPlan(rate=1.0, seed=1, mix={"500": 1.0})
    cfg = load_config(path, data_root=str(tmp_path / "root"))
    with pytest.raises(CurationError, match=r"labeler 'judge' \(judge_pairwise\): 8 pairs failed one by one and none succeeded.*HTTP 500"):
        curate(cfg)
    assert not (tmp_path / "root" / "datasets").exists()
    # the chunk call, then halves down to single pairs until 8 failed alone: a bounded number
    # of requests (each tried twice), not every pair of the chunk one by one
    assert stub.stats_snapshot()["requests"] <= 2 * 2 * (32 + 16 + 8 + 4 + 2 + 1 + 1 + 2 + 1 + 1 + 4 + 2 + 1 + 1 + 2 + 1 + 1)


def test_generation_under_20_percent_faults_loses_and_duplicates_no_candidate(tmp_path: Path, hh_path: Path, stub: OpenAIStub) -> None:
    t0 = time.monotonic()
    gen = {
        "generator": backend(stub),
        "prompts": {"from": "pairs", "limit": 12},
        "n": 2,
        "max_tokens": 12,
        "strategy": "persona",
        "compare": ["iid"],
        "chunk_size": 4,
    }
    path = recipe(tmp_path, hh_path, 30, generate=gen)
    reference_root, root = tmp_path / "reference", tmp_path / "faulty"
    stub.reset_stats()
    curate(load_config(path, data_root=str(reference_root)))
    total = stub.stats_snapshot()["requests"]
    query = "SELECT candidate_id, prompt_id, strategy, candidate_index, response FROM candidates ORDER BY candidate_id"
    reference = sql(query, str(reference_root))

    stub.reset_stats()
    stub.fault_plan = FaultPlan(rate=0.2, seed=FAULT_SEED, hang_s=1.0)
    failures: list[str] = []
    for _ in range(30):
        try:
            result = curate(load_config(path, data_root=str(root)))
            break
        except CurationError as err:  # a request failed after its retries: the run stops, the cache keeps the rest
            assert "not an OpenAI JSON reply" in str(err) or "failed after" in str(err), err
            failures.append(failure_reason(str(err)))
    else:
        pytest.fail(f"generation never completed under faults: {failures}")
    stats = stub.stats_snapshot()
    got = sql(query, str(root))
    assert got.equals(reference), "the candidates differ from the fault-free run"
    assert got["candidate_id"].n_unique() == got.height == 2 * 12 * 2
    strategies = result.funnel["generated"]["strategies"]
    assert sum(s["requests_sent"] + s["requests_reused"] for s in strategies.values()) == total
    print(
        f"\ngeneration under faults: {total} requests needed, {stats['requests']} sent, faults injected "
        f"{dict(stats['faults_applied'])}; runs stopped by a failed request before completing: {len(failures)} {dict(Counter(failures))}; "
        f"{time.monotonic() - t0:.1f} s"
    )
