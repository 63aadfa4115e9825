"""``curate eval`` as a user runs it (real subprocesses, real HH-RLHF rows): the main job's
hold-out and evaluate stage, comparing versions, resuming a killed evaluation, and ``--ablate``."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from tests.curate.test_cli import curate

HOLDOUT = 0.25


def recipe(tmp: Path, hh_path: Path, name: str, steps: list[dict], limit: int = 260) -> Path:
    benchmark = tmp / "benchmark.jsonl"
    if not benchmark.exists():  # a "benchmark" holding one training prompt, for the decontaminate step
        first = json.loads(hh_path.open().readline())["chosen"].split("\n\nAssistant:")[0].split("Human:", 1)[1].strip()
        benchmark.write_text(json.dumps({"prompt": first}) + "\n")
    cfg = {
        "data_root": str(tmp / "data"),
        "publish": {"dataset": "hh"},
        "sources": [{"name": "hh", "path": str(hh_path), "adapter": "hh_rlhf", "limit": limit}],
        "evaluate": {"holdout_fraction": HOLDOUT, "bootstrap": 200},
    }
    if steps:
        cfg["filter"] = {"steps": steps}
    path = tmp / f"{name}.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


STEPS = [{"kind": "near_dedup", "threshold": 0.7}, {"kind": "decontaminate", "benchmarks": [{"name": "bench", "path": "benchmark.jsonl"}]}]


@pytest.fixture(scope="module")
def versions(tmp_path_factory, hh_path):
    tmp = tmp_path_factory.mktemp("eval")
    first = curate("run", str(recipe(tmp, hh_path, "raw", [])), "--local", cwd=tmp)
    # more rows than the first: new texts to embed, so its evaluation's second variant takes seconds
    curate("run", str(recipe(tmp, hh_path, "curated", STEPS, limit=400)), "--local", cwd=tmp)
    return tmp, first


def sql(tmp: Path, query: str) -> list[dict]:
    return json.loads(curate("sql", query, "--data-root", str(tmp / "data"), "--format", "json", cwd=tmp).stdout)


def test_the_run_holds_out_prompts_and_evaluates_its_version(versions) -> None:
    tmp, run = versions
    assert "Evaluation:" in run.stdout and "bt_embed" in run.stdout and "baseline:longer_wins" in run.stdout
    held = sql(tmp, "SELECT count(*) AS n FROM \"hh@1\".decisions WHERE decision = 'held_out_for_eval'")[0]["n"]
    ev = sql(tmp, 'SELECT count(*) AS n, count(DISTINCT prompt_id) AS p FROM "hh@1".evaluation_pairs')[0]
    train = sql(tmp, 'SELECT count(*) AS n FROM "hh@1".pairs')[0]["n"]
    assert held == ev["n"] > 0 and 0.1 < ev["n"] / (ev["n"] + train) < 0.4
    overlap = sql(tmp, 'SELECT count(*) AS n FROM "hh@1".pairs p JOIN "hh@1".evaluation_pairs e USING (prompt_id)')[0]["n"]
    assert overlap == 0  # a held-out prompt never reaches the training pairs
    rows = sql(tmp, 'SELECT trainer, eval_pairs, accuracy, ci_low, ci_high FROM "hh@1".evaluations ORDER BY trainer')
    assert [r["trainer"] for r in rows] == ["baseline:longer_wins", "baseline:random", "baseline:shorter_wins", "bt_embed"]
    assert all(r["ci_low"] <= r["accuracy"] <= r["ci_high"] and r["eval_pairs"] <= ev["n"] for r in rows)


def test_a_killed_eval_resumes_from_its_last_finished_variant(versions) -> None:
    tmp, _ = versions
    args = [sys.executable, "-m", "curate.cli", "eval", "hh@1", "hh@2", "--data-root", str(tmp / "data")]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "COLUMNS": "200"}
    proc = subprocess.Popen(args, cwd=tmp, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    evals = tmp / "data" / "evals"  # the work root: the data root when it is a local folder
    deadline = time.monotonic() + 240
    while not list(evals.glob("*/hh@1-*.json")) and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    assert proc.poll() is None, f"the eval ended before it could be killed:\n{proc.stdout.read()}"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    finished = list(evals.glob("*/*.json"))
    assert [p.name.startswith("hh@1-") for p in finished] == [True]  # killed after the first variant, before the second
    saved = json.loads(finished[0].read_text())
    again = curate("eval", "hh@1", "hh@2", "--data-root", str(tmp / "data"), cwd=tmp)
    assert "hh@1: taken from the earlier run" in again.stderr and "hh@2: training" in again.stderr
    log = sql(
        tmp, "SELECT variant, trainer, accuracy, reference, difference_low, difference_high FROM evaluation_log ORDER BY variant, trainer"
    )
    first = {r["trainer"]: r["accuracy"] for r in log if r["variant"] == "hh@1"}
    assert first == {r["trainer"]: r["accuracy"] for r in saved["rows"]}  # the resumed figures are the killed run's
    second = [r for r in log if r["variant"] == "hh@2" and r["trainer"] == "bt_embed"]
    assert len(second) == 1 and second[0]["reference"] == "hh@1" and second[0]["difference_low"] <= second[0]["difference_high"]


def test_each_measured_versions_report_shows_the_evaluation(versions) -> None:
    tmp, _ = versions
    out = curate("eval", "hh@1", "hh@2", "--data-root", str(tmp / "data"), cwd=tmp)  # resumed when the test above ran first
    eid = out.stdout.split("Evaluation ", 1)[1].split(" ", 1)[0]
    reports = tmp / "data" / "datasets" / "hh" / "reports"
    for version in (1, 2):
        assert f"report of hh@{version} updated" in out.stderr
        page = (reports / f"v{version}" / "report.html").read_text()
        assert "Later evaluations" in page and eid in page and "hh@1 vs hh@2" in page
    saved = json.loads((reports / "v2" / "summary.json").read_text())
    assert [rows[0]["evaluation_id"] for rows in saved.pop("later_evaluations")] == [eid]
    (reports / "v2" / "summary.json").write_text(json.dumps(saved))  # as a report written before the eval
    (reports / "v2" / "report.html").unlink()
    rebuilt = curate("report", "hh@2", "--no-open", "--rebuild", "--data-root", str(tmp / "data"), cwd=tmp)
    page = Path(rebuilt.stdout.strip()).read_text()
    assert "Later evaluations" in page and eid in page  # rebuilt from the evaluation log, not only the saved summary
    assert saved["funnel"] == json.loads((reports / "v2" / "summary.json").read_text())["funnel"]


def test_ablate_measures_every_step_left_out_on_the_same_pairs(versions, hh_path) -> None:
    tmp, _ = versions
    out = curate("eval", str(tmp / "curated.yaml"), "--ablate", "--local", cwd=tmp)
    for variant in ("no filter steps", "all steps", "without near_dedup", "without decontaminate"):
        assert f"{variant}: training" in out.stderr
    assert "near_dedup (bt_embed):" in out.stdout and "decontaminate (bt_embed):" in out.stdout
    rows = sql(tmp, "SELECT variant, eval_pairs, train_pairs FROM evaluation_log WHERE trainer = 'bt_embed' AND version IS NULL")
    by = {r["variant"]: r for r in rows}
    assert len({r["eval_pairs"] for r in rows}) == 1  # every variant on the same pairs
    assert by["no filter steps"]["train_pairs"] >= by["without near_dedup"]["train_pairs"] >= by["all steps"]["train_pairs"]
    assert (
        by["without decontaminate"]["train_pairs"] > by["all steps"]["train_pairs"]
    )  # the benchmark prompt and the evaluation's near copies


def test_eval_errors_are_one_line(versions) -> None:
    tmp, _ = versions
    bad = curate("eval", "hh@1", "--set", str(tmp / "raw.yaml"), "--data-root", str(tmp / "data"), cwd=tmp, check=False)
    assert bad.returncode != 0 and "has no evaluate.sources" in bad.stderr and "Traceback" not in bad.stderr
    bad = curate("eval", "hh@1", "--ablate", cwd=tmp, check=False)
    assert bad.returncode != 0 and "--ablate takes one recipe" in bad.stderr
