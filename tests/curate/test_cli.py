"""The CLI as a user runs it: a real subprocess, real files, real output."""

from __future__ import annotations

import json
import os
import re
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


@pytest.fixture(scope="module", params=["file", "postgres"])
def published(request, tmp_path_factory, hh_path):
    """Two versions of hh, published by `curate run`; every test below runs on a data root
    whose catalogs are DuckDB files and on one whose catalogs are in a real PostgreSQL server
    (bound by the first run's --catalog; later commands need no flag)."""
    tmp = tmp_path_factory.mktemp(f"cli-{request.param}")
    flags = []
    if request.param == "postgres":
        os.environ["CURATE_PG_DSN"] = request.getfixturevalue("pg_server").dsn  # the subprocesses' connection
        flags = ["--catalog", "postgres"]
    recipe = write_recipe(tmp, [{"name": "hh", "path": str(hh_path), "adapter": "hh_rlhf", "limit": 300}], dataset="hh", own_root=False)
    run = curate("run", str(recipe), "--local", *flags, cwd=tmp)
    recipe2 = write_recipe(tmp, [{"name": "hh", "path": str(hh_path), "adapter": "hh_rlhf", "limit": 400}], dataset="hh", own_root=False)
    curate("run", str(recipe2), "--local", cwd=tmp)
    assert (tmp / "data" / "catalog.json").exists() == (request.param == "postgres")
    yield tmp, run
    os.environ.pop("CURATE_PG_DSN", None)


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
    diff = json.loads(curate("datasets", "diff", "hh", "1", "2", "--json", cwd=tmp).stdout)
    assert diff["config"] == {"sources.0.limit": {"old": 300, "new": 400}}  # only the key that changed
    text = curate("datasets", "diff", "hh", "1", "2", cwd=tmp).stdout.splitlines()
    assert text[:3] == ["hh: v1 -> v2", "recipe: 1 key(s) changed", "  sources.0.limit: 300 -> 400"]
    added = diff["pairs"]["added"]
    assert added > 50 and f"pairs: {added:,} added, 0 removed (by pair id)" in text and len(text) <= 12


def test_verify_gc_and_report_on_every_catalog(published):
    tmp, _ = published
    verified = curate("datasets", "verify", "hh@1", cwd=tmp).stdout
    assert "hh@1: all" in verified and "as published" in verified
    gc = curate("gc", "--dry-run", cwd=tmp)
    assert gc.returncode == 0 and "Traceback" not in gc.stderr
    report = curate("report", "hh@1", "--no-open", "--rebuild", cwd=tmp)
    assert "report.html" in report.stdout + report.stderr


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


def test_a_source_that_keeps_nothing_stops_the_run_and_says_why(tmp_path):
    """A misspelt field quarantines every row of its source: the run exits non-zero, names the
    source, its reasons with an example row, and publishes nothing; check shows it first."""
    good = tmp_path / "good.jsonl"
    good.write_text("".join(json.dumps({"prompt": f"Q{i}?", "chosen": "yes", "rejected": "no"}) + "\n" for i in range(5)))
    bad = tmp_path / "bad.jsonl"
    bad.write_text("".join(json.dumps({"question": f"Q{i}?", "good": "yes", "bad": "no"}) + "\n" for i in range(4)))
    sources = [
        {"name": "good", "path": str(good), "adapter": "trl"},
        {"name": "typo", "path": str(bad), "adapter": "mapping", "options": {"prompt": "question", "chosen": "good", "rejected": "bda"}},
    ]
    recipe = write_recipe(tmp_path, sources, dataset="typo")
    check = curate("check", str(recipe), cwd=tmp_path, check=False)
    assert check.returncode == 1 and "typo" in check.stdout and "missing_field" in check.stdout and "'typo' kept no pair" in check.stderr
    for mode in (["--local"], []):
        run = curate("run", str(recipe), *mode, cwd=tmp_path, check=False)
        assert run.returncode == 2, run.stderr
        assert "source 'typo' yielded no kept pair" in run.stderr and "missing_field (4 rows, quarantined at adapt)" in run.stderr
        assert f"{bad} row 0, field bda: field 'bda' is missing" in run.stderr and "--allow-empty" in run.stderr
        assert "Traceback" not in run.stderr + run.stdout
        assert not (tmp_path / "root" / "datasets" / "typo" / "catalog.ducklake").exists()
    allowed = curate("run", str(recipe), "--local", "--allow-empty", cwd=tmp_path)
    assert "typo@1" in allowed.stdout
    kept = curate(
        "sql",
        "SELECT source_dataset, count(*) AS n FROM pairs GROUP BY 1",
        "-f",
        "json",
        "--data-root",
        str(tmp_path / "root"),
        cwd=tmp_path,
    )
    assert json.loads(kept.stdout) == [{"source_dataset": "good", "n": 5}]


def test_export_to_a_bad_place_is_one_line_and_leaves_nothing(published, tmp_path):
    tmp, _ = published
    afile = tmp_path / "a-file"
    afile.write_text("x")
    full = tmp_path / "full"
    (full / "old").mkdir(parents=True)
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o500)
    cases = {
        str(afile / "out"): "is a file, not a folder",
        str(afile): "is a file, not a folder",
        str(full): "is not empty",
        **({} if os.geteuid() == 0 else {str(locked / "out"): "not writable"}),  # root writes anywhere
    }
    for out, why in cases.items():
        proc = curate("export", "hh", "--out", out, cwd=tmp, check=False)
        assert proc.returncode == 2 and why in proc.stderr and out in proc.stderr, proc.stderr
        assert "Traceback" not in proc.stderr and len(proc.stderr.strip().splitlines()) == 1
    assert afile.read_text() == "x" and sorted(p.name for p in full.iterdir()) == ["old"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a-file", "full", "locked"]  # no half-made folder


def test_export_folders_follow_the_umask(published, tmp_path):
    tmp, _ = published
    out = tmp_path / "exports" / "hh"
    env_umask = "umask 022 && "
    proc = subprocess.run(
        ["bash", "-c", env_umask + " ".join([*CURATE, "export", "hh", "--out", str(out), "--files", "jsonl"])],
        cwd=tmp,
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "HF_HUB_OFFLINE": "1"},
    )
    assert proc.returncode == 0, proc.stderr
    assert oct(out.stat().st_mode & 0o777) == oct(0o755) and oct(out.parent.stat().st_mode & 0o777) == oct(0o755)
    assert all(oct(p.stat().st_mode & 0o777) == oct(0o644) for p in out.iterdir())


def test_the_funnel_shows_before_the_model_stages_and_progress_goes_to_the_log(tmp_path, hh_path):
    """In a pipe: progress lines on stderr and in WORK_ROOT/logs/DATASET.log; the curation
    funnel printed as soon as dedup finished, before the (slow) model stages run."""
    sources = [{"name": "hh", "path": str(hh_path), "adapter": "hh_rlhf", "limit": 60}]
    label = {"labelers": [{"name": "bt", "kind": "bt_ensemble", "members": 2}]}
    recipe = write_recipe(tmp_path, sources, dataset="early", label=label)
    for mode in (["--local"], ["--force"]):
        run = curate("run", str(recipe), *mode, cwd=tmp_path)
        curated, final = run.stdout.find("Curated: early (before label)"), run.stdout.find("Funnel: early")
        assert 0 <= curated < final, run.stdout
        assert "Running label next" in run.stdout
        assert "dedup: done, 60 in" in run.stderr and "ingest hh: started" in run.stderr
    log = (tmp_path / "root" / "logs" / "early.log").read_text().splitlines()
    assert sum("dedup: done, 60 in" in line for line in log) == 2
    assert all(re.match(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\S* \S", line) for line in log)


def test_datasets_show_counts_what_the_filter_steps_removed(tmp_path, hh_path):
    sources = [{"name": "hh", "path": str(hh_path), "adapter": "hh_rlhf", "limit": 200}]
    steps = [{"kind": "near_dedup", "level": "prompt", "threshold": 0.5}]
    recipe = write_recipe(tmp_path, sources, dataset="filtered", filter={"steps": steps})
    curate("run", str(recipe), "--local", cwd=tmp_path)
    root = ["--data-root", str(tmp_path / "root")]
    count = "SELECT count(*) AS n FROM decisions WHERE decision = 'filtered'"
    filtered = json.loads(curate("sql", count, "-f", "json", *root, cwd=tmp_path).stdout)[0]["n"]
    published = json.loads(curate("sql", "SELECT count(*) AS n FROM pairs", "-f", "json", *root, cwd=tmp_path).stdout)[0]["n"]
    quarantined = json.loads(curate("sql", "SELECT count(*) AS n FROM quarantine", "-f", "json", *root, cwd=tmp_path).stdout)[0]["n"]
    assert filtered > 0
    shown = curate("datasets", "show", "filtered", *root, cwd=tmp_path).stdout
    assert f"-> {published:,} published ({quarantined:,} quarantined, {filtered:,} filtered)" in shown


def test_sql_json_never_prints_bare_infinity_or_nan(published):
    tmp, _ = published
    query = (
        "SELECT 'inf'::DOUBLE AS a, '-inf'::DOUBLE AS b, 'nan'::DOUBLE AS c, [1.5, 'inf'::DOUBLE] AS d, 2.0::DOUBLE AS e FROM pairs LIMIT 1"
    )
    for fmt in ("json", "jsonl"):
        out = curate("sql", query, "-f", fmt, cwd=tmp).stdout
        assert "Infinity," not in out.replace('"Infinity",', "") and "NaN" not in out.replace('"NaN"', "")
        rows = json.loads(out) if fmt == "json" else [json.loads(line) for line in out.splitlines()]
        assert rows == [{"a": "Infinity", "b": "-Infinity", "c": "NaN", "d": [1.5, "Infinity"], "e": 2.0}]


def test_gc_finds_and_removes_what_killed_runs_left(tmp_path, hh_path):
    """Debris of processes that died: a run folder, a publish's staged files, a half-built
    cache entry. gc --dry-run lists them with sizes and removes nothing; gc removes them,
    and never a published version's files."""
    recipe = write_recipe(tmp_path, [{"name": "hh", "path": str(hh_path), "adapter": "hh_rlhf", "limit": 50}], dataset="gc")
    curate("run", str(recipe), "--local", cwd=tmp_path)
    root = tmp_path / "root"
    debris = {
        "dead run folder": root / "runs" / "20260101T000000Z-gc-dead01",
        "killed publish's file": root / "datasets" / "gc" / "files" / "main" / "pairs" / "staged-dead",
        "half-built cache entry": root / "cache" / "stages" / "gc" / "ingest" / "abc.tmp-dead0001",
    }
    for folder in debris.values():
        folder.mkdir(parents=True)
        (folder / "data_0.parquet").write_bytes(b"x" * 200_000)
        subprocess.run(
            [sys.executable, "-c", f"from pathlib import Path; from curation import owners; owners.claim(Path({str(folder)!r}))"],
            check=True,
        )
    live = tmp_path / "root" / "runs" / "20260101T000001Z-gc-alive1"
    live.mkdir()
    (live / ".owner.json").write_text(json.dumps({"pid": os.getpid(), "start": None}))  # this process: alive
    args = ["--data-root", str(root)]
    dry = curate("gc", "--dry-run", *args, cwd=tmp_path).stdout
    assert all(what in dry and folder.exists() for what, folder in debris.items()) and "Would free" in dry and "0.2 MB" in dry
    done = curate("gc", *args, cwd=tmp_path).stdout
    assert "Freed" in done and not any(folder.exists() for folder in debris.values()) and live.exists()
    assert curate("gc", *args, cwd=tmp_path).stdout.strip() == "Nothing to clean up."
    assert curate("datasets", "verify", "gc", *args, cwd=tmp_path).returncode == 0
