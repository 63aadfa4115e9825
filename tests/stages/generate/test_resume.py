"""A generation run killed mid-way resumes on rerun: finished requests come from the cache,
only the missing ones are sent, and no candidate is lost or duplicated.

The model is an OpenAI-compatible HTTP stub on 127.0.0.1 (deterministic replies, fixed
latency), so the test can count exactly what reaches the server.
"""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import polars as pl
import pytest
import yaml

from curation.config import load_config
from curation.run.runner import curate
from curation.store.query import sql
from tests.support.openai_stub import OpenAIStub

REPO = Path(__file__).resolve().parents[3]
HH = REPO / "data" / "samples" / "hh-rlhf-harmless-base" / "test-dev-1200.jsonl"
N_PROMPTS, N = 8, 3
# persona: one request per candidate; iid: one request (n=3) per prompt
TOTAL_REQUESTS = N_PROMPTS * N + N_PROMPTS


def first_human_turns(k: int) -> list[str]:
    out = []
    for line in HH.open():
        text = json.loads(line)["chosen"].split("\n\nAssistant:")[0].split("Human:", 1)[1].strip()
        if text not in out:
            out.append(text)
        if len(out) == k:
            return out
    raise AssertionError("sample too small")


def write_recipe(folder: Path, base_url: str, temperature: float = 0.8) -> Path:
    prompts = folder / "prompts.jsonl"
    prompts.write_text("".join(json.dumps({"prompt": p}) + "\n" for p in first_human_turns(N_PROMPTS)))
    recipe = {
        "publish": {"dataset": "gen-resume"},
        "generate": {
            "generator": {"backend": "openai", "model": "stub-model", "base_url": base_url, "max_concurrency": 2, "max_retries": 0},
            "prompts": {"from": "file", "path": str(prompts), "limit": N_PROMPTS},
            "n": N,
            "max_tokens": 16,
            "temperature": temperature,
            "strategy": "persona",
            "compare": ["iid"],
            "chunk_size": 2,
        },
    }
    path = folder / f"recipe-{temperature}.yaml"
    path.write_text(yaml.safe_dump(recipe))
    return path


def cached_requests(root: Path) -> int:
    db = root / "cache" / "requests.sqlite"
    if not db.exists():
        return 0
    try:
        con = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=5)
        try:
            return con.execute("SELECT count(*) FROM requests").fetchone()[0]
        finally:
            con.close()
    except sqlite3.OperationalError:
        return 0


def candidates(root: Path):
    return sql(
        'SELECT candidate_id, prompt_id, strategy, candidate_index, response FROM "gen-resume".candidates ORDER BY strategy, prompt_id, candidate_index',
        root,
    )


@pytest.mark.slow
@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGINT], ids=["kill-9", "ctrl-c"])
def test_interrupted_generation_resumes_without_loss_or_duplicates(tmp_path: Path, sig: signal.Signals) -> None:
    root = tmp_path / "data"
    with OpenAIStub(latency_s=0.25) as stub:
        recipe = write_recipe(tmp_path, stub.base_url)
        env = {**os.environ, "PYTHONPATH": str(REPO), "HF_HUB_OFFLINE": "1"}
        cmd = [sys.executable, "-c", "from curate.cli import main; main()", "run", str(recipe), "--local", "--data-root", str(root)]
        proc = subprocess.Popen(cmd, cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 120
        while cached_requests(root) < 6:
            assert proc.poll() is None, proc.stdout.read().decode()[-2000:]
            assert time.monotonic() < deadline, "generation did not start"
            time.sleep(0.05)
        proc.send_signal(sig)
        proc.wait(timeout=60)
        assert proc.returncode != 0
        at_kill = cached_requests(root)
        assert 6 <= at_kill < TOTAL_REQUESTS
        assert not (root / "datasets" / "gen-resume").exists() or not list((root / "datasets" / "gen-resume").glob("reports/v*"))

        stub.reset_stats()
        result = curate(load_config(recipe, data_root=str(root)))
        sent = stub.stats_snapshot()["by_path"].get("/v1/chat/completions", 0)
        assert sent == TOTAL_REQUESTS - at_kill  # only the missing requests were sent
        g = result.funnel["generated"]
        assert g["strategies"]["persona"]["requests_reused"] + g["strategies"]["iid"]["requests_reused"] == at_kill

        resumed = candidates(root)
        assert resumed.height == 2 * N_PROMPTS * N
        assert resumed["candidate_id"].n_unique() == resumed.height
        per_set = resumed.group_by(["strategy", "prompt_id"]).agg(idx=pl.col("candidate_index").sort())
        assert per_set.height == 2 * N_PROMPTS and all(list(i) == list(range(N)) for i in per_set["idx"])

        # Same run from scratch (fresh cache): identical candidates, so nothing was corrupted.
        clean_root = tmp_path / "clean"
        curate(load_config(recipe, data_root=str(clean_root)))
        assert candidates(clean_root).to_dicts() == resumed.to_dicts()

        # A changed parameter misses the cache: every request is sent again.
        stub.reset_stats()
        curate(load_config(write_recipe(tmp_path, stub.base_url, temperature=0.5), data_root=str(root)))
        assert stub.stats_snapshot()["by_path"].get("/v1/chat/completions", 0) == TOTAL_REQUESTS
