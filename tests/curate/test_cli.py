"""The CLI as a user runs it: a real subprocess, real files, real output."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.helpers import write_recipe

CURATE = [sys.executable, "-m", "curate.cli"]


def curate(*args: str, cwd: Path, check: bool = True) -> subprocess.CompletedProcess:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PREFECT_SERVER_ANALYTICS_ENABLED": "false", "COLUMNS": "200"}
    proc = subprocess.run([*CURATE, *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=300)
    if check and proc.returncode != 0:
        raise AssertionError(f"curate {' '.join(args)} failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}")
    return proc


@pytest.fixture(scope="module")
def published(tmp_path_factory, hh_path):
    tmp = tmp_path_factory.mktemp("cli")
    recipe = write_recipe(tmp, [{"name": "hh", "path": str(hh_path), "adapter": "hh_rlhf", "limit": 300}], dataset="hh", own_root=False)
    run = curate("run", str(recipe), "--local", cwd=tmp)
    recipe2 = write_recipe(tmp, [{"name": "hh", "path": str(hh_path), "adapter": "hh_rlhf", "limit": 400}], dataset="hh", own_root=False)
    curate("run", str(recipe2), "--local", cwd=tmp)
    return tmp, run


def test_run_prints_funnel_dataset_and_report(published):
    tmp, run = published
    out = run.stdout
    assert "rows in" in out and "kept" in out and "Row accounting" in out and "OK" in out
    assert "hh@1" in out and "report.html" in out
    report = next(line.split("Report:", 1)[1].strip() for line in out.splitlines() if line.startswith("Report:"))
    assert Path(report).exists()


def test_sql_latest_and_by_version(published):
    tmp, _ = published
    latest = curate("sql", "SELECT count(*) AS n FROM pairs", "--format", "json", cwd=tmp)
    v1 = curate("sql", 'SELECT count(*) AS n FROM "hh@1".pairs', "--format", "json", cwd=tmp)
    pinned = curate("sql", "SELECT count(*) AS n FROM pairs", "--dataset", "hh@1", "--format", "json", cwd=tmp)
    n_latest, n_v1 = json.loads(latest.stdout)[0]["n"], json.loads(v1.stdout)[0]["n"]
    assert n_latest > n_v1 > 0 and json.loads(pinned.stdout)[0]["n"] == n_v1


def test_why_was_this_row_dropped_is_one_query(published):
    tmp, _ = published
    out = curate("sql", "SELECT source_row, stage, error_code, field FROM quarantine", "--format", "jsonl", cwd=tmp).stdout
    rows = [json.loads(line) for line in out.splitlines()]
    assert rows and all(r["error_code"] and r["stage"] for r in rows)


def test_datasets_list_show_diff(published):
    tmp, _ = published
    listed = curate("datasets", "list", cwd=tmp).stdout
    assert "hh" in listed and "v2" in listed
    shown = curate("datasets", "show", "hh@1", cwd=tmp).stdout
    assert "hh@1" in shown and "config hash" in shown and "sha256" in shown
    diff = json.loads(curate("datasets", "diff", "hh", "1", "2", cwd=tmp).stdout)
    assert json.dumps(diff).count("limit") >= 1  # the recipe change is named


def test_export_trl(published):
    tmp, _ = published
    out = tmp / "export"
    curate("export", "hh", "--format", "trl", "--out", str(out), "--files", "parquet,jsonl", cwd=tmp)
    first = json.loads((out / "train.jsonl").read_text().splitlines()[0])
    assert first["prompt"][-1]["role"] == "user" and first["chosen"][0]["role"] == "assistant"


def test_errors_are_one_clear_line(published, tmp_path):
    tmp, _ = published
    bad = curate("sql", "SELEC nonsense", cwd=tmp, check=False)
    assert bad.returncode == 2 and "Traceback" not in bad.stderr and "error" in bad.stderr
    missing = curate("datasets", "show", "nope", cwd=tmp, check=False)
    assert missing.returncode == 2 and "nope" in missing.stderr and "Traceback" not in missing.stderr
    recipe = write_recipe(tmp_path, [{"name": "s", "path": str(tmp_path / "absent.jsonl"), "adapter": "hh_rlhf"}], own_root=False)
    absent = curate("run", str(recipe), "--local", cwd=tmp_path, check=False)
    assert absent.returncode == 2 and "absent.jsonl" in absent.stderr and "Traceback" not in absent.stderr


@pytest.mark.parametrize("args", [[], ["run"], ["sql"], ["datasets"], ["datasets", "list"], ["export"], ["check"], ["report"]])
def test_help_everywhere(args, tmp_path):
    out = curate(*args, "--help", cwd=tmp_path)
    assert "Usage" in out.stdout and len(out.stdout) > 100
