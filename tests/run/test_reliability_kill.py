"""Kill -9 at seeded random points during publish, generation and labeling; a rerun recovers exactly.

Each seed runs the library pipeline (``curation.run.runner.curate``, no Prefect) in a child
process forked from a warm helper (``tests.support.killable.Zygote``: the imports are paid
once, not per seed), kills it with SIGKILL at a seeded moment, checks what a reader sees
right after the kill, reruns the recipe to completion in this process and compares with an
uninterrupted reference run:

* publish: the kill lands at a random delay inside the measured publish window (staging,
  catalog transaction, commit, report; seed i in the i-th twentieth of it, so the kills
  cover the whole window); each kill's phase is recorded from the child's marks;
* generation and labeling: the child is killed when the OpenAI-compatible stub receives a
  seeded random request number, so kills land between and inside cached chunks.

After every kill: only complete versions are visible and every table of every version reads
back with the row counts its version records. After every rerun: exactly the reference's
version (every table row for row, so no pair is lost or duplicated), the funnel adds up
(rows in = quarantined + filtered + rows with pairs; pairs = quarantined + filtered + kept),
and the caches were reused: the rerun sends exactly the requests (generation) or labels
exactly the pairs (labeling) that were not finished before the kill.

Figures (seeds, kill points hit, time) are printed; run with ``-s`` to see them. Set
``CURATE_KILL_SEEDS`` to change the number of seeds (default 20).
"""

from __future__ import annotations

import json
import os
import random
import sqlite3
import threading
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq
import pytest
import yaml

from curation.config import load_config
from curation.run.runner import curate
from curation.stages.generate import stage as generation
from curation.stages.label.cache import cache_root
from curation.store.catalog import DatasetStore
from curation.store.duck import open_duckdb
from tests.store.test_catalog import META, pairs_table
from tests.support.killable import PHASES, Zygote, last_phase, read_marks
from tests.support.openai_stub import OpenAIStub

REPO = Path(__file__).resolve().parents[2]
SAMPLE = REPO / "data" / "samples" / "hh-rlhf-harmless-base" / "test-dev-1200.jsonl"
SEEDS = range(int(os.environ.get("CURATE_KILL_SEEDS", "20")))
DATASET = "killed"
JOB = "tests.support.killable:run_recipe"


# --------------------------------------------------------------------------- inputs


def write_input(folder: Path) -> Path:
    """32 real HH rows plus the sample's known bad rows (two malformed transcripts, one empty
    chosen reply) and a duplicate, so every branch of the funnel has rows in it."""
    lines = SAMPLE.read_text(encoding="utf-8").splitlines()
    chosen = lines[:32] + [lines[86], lines[667], lines[763], lines[0]]
    path = folder / "hh-small.jsonl"
    path.write_text("\n".join(chosen) + "\n", encoding="utf-8")
    return path


def write_recipe(folder: Path, **sections: Any) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    recipe = {"publish": {"dataset": DATASET}, "sources": [{"name": "hh", "path": str(write_input(folder)), "adapter": "hh_rlhf"}]}
    path = folder / "recipe.yaml"
    path.write_text(yaml.safe_dump({**recipe, **sections}, sort_keys=False))
    return path


def backend(stub: OpenAIStub) -> dict[str, Any]:
    return {"backend": "openai", "model": stub.model, "base_url": stub.base_url, "max_concurrency": 4, "max_retries": 0, "timeout_s": 30}


# --------------------------------------------------------------------------- checks


_DUCKDB: list[Any] = []


def snapshot(root: Path) -> dict[tuple[int, str], list[str]]:
    """Every table of every version as sorted canonical JSON rows. Reading each one must work
    and give the row count its version records; the funnel of each version must add up.
    (One private catalog copy attached for all of them, as ``curate sql`` does.)"""
    store = DatasetStore(root)
    if DATASET not in store.datasets():
        return {}
    if not _DUCKDB:
        _DUCKDB.append(open_duckdb())
    con = _DUCKDB[0]
    out: dict[tuple[int, str], list[str]] = {}
    versions = store.attach(con, DATASET, "snap")
    try:
        for v in versions:
            check_funnel(v.counts, v.tables)
            for table, rows in v.tables.items():
                got = con.execute(f"SELECT * FROM snap.{table} AT (VERSION => {v.snapshot_id})").to_arrow_table().to_pylist()
                assert len(got) == rows, f"{v.ref}.{table}: {len(got)} rows read, {rows} recorded"
                out[(v.version, table)] = sorted(json.dumps(r, sort_keys=True, default=str) for r in got)
    finally:
        con.execute("DETACH snap")
    return out


def check_funnel(f: dict[str, Any], tables: dict[str, int]) -> None:
    assert f["rows_in"] == f["rows_quarantined"] + f["rows_filtered"] + f["rows_with_pairs"], f
    assert f["pairs_out"] == f["pairs_quarantined"] + f["pairs_filtered"] + f["kept"], f
    assert tables["quarantine"] == f["rows_quarantined"] + f["pairs_quarantined"]
    assert tables["pairs"] == f["kept"] + f.get("generated", {}).get("pairs_kept", 0)


def check_recovered(root: Path, reference: dict[tuple[int, str], list[str]]) -> None:
    """One version, identical to the reference table by table, row by row."""
    got = snapshot(root)
    assert sorted(got) == sorted(reference), f"versions/tables {sorted(got)} != {sorted(reference)}"
    for key, rows in reference.items():
        assert got[key] == rows, f"table {key} differs from the uninterrupted run"
    pairs = [json.loads(r)["pair_id"] for r in got[(1, "pairs")]]
    assert len(pairs) == len(set(pairs))


def report_exists(root: Path, version: int = 1) -> bool:
    return (root / "datasets" / DATASET / "reports" / f"v{version}" / "report.html").is_file()


# --------------------------------------------------------------------------- harness


@pytest.fixture(scope="module")
def zygote() -> Iterator[Zygote]:
    with Zygote() as z:
        print(f"\nzygote: pipeline imported once in {z.startup_s:.1f} s; {z.threads} threads when forking")
        yield z


@pytest.fixture(scope="module")
def stub() -> Iterator[OpenAIStub]:
    with OpenAIStub(latency_s=0.005) as s:
        yield s


def run_child(zygote: Zygote, recipe: Path, root: Path, tag: str) -> tuple[int, Path]:
    """Start the recipe in a fork; (pid, marks file)."""
    root.parent.mkdir(parents=True, exist_ok=True)
    marks = root.parent / f"{tag}.marks"
    pid = zygote.start(JOB, str(recipe), str(root), str(marks), log=root.parent / f"{tag}.log")
    return pid, marks


def expect_killed(zygote: Zygote, pid: int, log: Path) -> None:
    code = zygote.wait(pid)
    assert code == -9, f"child exited with {code}, not killed: {log.read_text()[-3000:] if log.exists() else ''}"


def kill_at_request(zygote: Zygote, stub: OpenAIStub, recipe: Path, root: Path, tag: str, k: int) -> None:
    """Run the recipe in a child and SIGKILL it when the stub receives its k-th POST."""
    stub.reset_stats()
    started = threading.Event()
    box: dict[str, int] = {}

    def on_post(n: int, path: str) -> None:
        if n == k:
            started.wait(30)
            zygote.kill(box["pid"])

    stub.on_post = on_post
    try:
        box["pid"], _ = run_child(zygote, recipe, root, tag)
        started.set()
        expect_killed(zygote, box["pid"], root.parent / f"{tag}.log")
    finally:
        stub.on_post = None


def posts(stub: OpenAIStub) -> int:
    return stub.stats_snapshot()["requests"]


@pytest.fixture
def light_reruns(monkeypatch: pytest.MonkeyPatch) -> None:
    """For the reruns in this process: the run report is written without its figures
    (``summary.json`` and a one-line ``report.html``), and the diversity figures (which load
    MiniLM and torch, ~16 s) are left out. Neither is what these tests check
    (``test_report_html`` and the generation tests do), and the plots cost seconds per
    rerun on a loaded machine; the reference run gets the same treatment, so comparisons stay
    like for like. Whether and when a report is written is still the pipeline's own logic.
    The killed children run the unpatched pipeline, real report included."""
    import curation.run.publish as publishing
    import curation.run.runner as pipeline

    def summary_only(summary: dict[str, Any], out: Path) -> Path:
        out.mkdir(parents=True, exist_ok=True)
        (out / "summary.json").write_text(json.dumps(summary, default=str))
        (out / "report.html").write_text(f"<!doctype html><title>{summary['dataset']} v{summary['version']}</title>")
        return out / "report.html"

    monkeypatch.setattr(pipeline, "write_report", summary_only)
    monkeypatch.setattr(publishing, "write_report", summary_only)
    monkeypatch.setattr(generation, "measure_diversity", lambda *args, **kwargs: {})


# --------------------------------------------------------------------------- publish


def test_kill_during_publish_at_random_moments(tmp_path: Path, zygote: Zygote, light_reruns: None) -> None:
    t0 = time.monotonic()
    recipe = write_recipe(tmp_path / "recipe")
    reference_root = tmp_path / "reference"
    curate(load_config(recipe, data_root=str(reference_root)))
    reference = snapshot(reference_root)

    # the publish window as children measure it: the store's publish (staging, catalog
    # transaction, commit), plus a fifth for the report after it (the slower of two runs)
    spans = []
    for i in range(2):
        pid, marks = run_child(zygote, recipe, tmp_path / f"measure{i}" / "data", "measure")
        assert zygote.wait(pid) == 0, (tmp_path / f"measure{i}" / "measure.log").read_text()[-3000:]
        seen = read_marks(marks)
        spans.append(seen["committed"] - seen["stages_done"])
    window = 1.2 * max(spans)

    phases: Counter[str] = Counter()
    unchanged = reports_missing = orphans = 0
    for seed in SEEDS:
        rng = random.Random(seed)
        root = tmp_path / f"seed{seed}" / "data"
        pid, marks = run_child(zygote, recipe, root, "run")
        deadline = time.monotonic() + 120
        while "stages_done" not in (got := read_marks(marks)) and not zygote.done(pid):
            assert time.monotonic() < deadline, "the child never reached publish"
            time.sleep(0.002)
        if "stages_done" in got:  # seeds spread over the window, each at a random point of its slice
            delay = window * (seed + rng.random()) / len(SEEDS)
            time.sleep(max(0.0, got["stages_done"] + delay - time.monotonic()))
        zygote.kill(pid)
        code = zygote.wait(pid)
        assert code in (-9, 0), (root.parent / "run.log").read_text()[-3000:]
        phase = last_phase(marks)
        phases[phase if code == -9 else "after finish"] += 1

        after_kill = snapshot(root)  # only complete versions, every table readable
        assert set(after_kill) <= set(reference)
        for key in after_kill:
            assert after_kill[key] == reference[key], f"seed {seed}: a visible version differs from the reference ({key})"
        if PHASES.index(phase) < PHASES.index("committed") and code == -9:
            assert not after_kill or phase == "locked", f"seed {seed}: killed at {phase!r} yet a version is visible"
        reports_missing += bool(after_kill) and not report_exists(root)

        left = [d for d in (root / "runs").iterdir() if not (d / "summary.json").exists()]
        staged = sorted((root / "datasets" / DATASET / "files").rglob("*.parquet")) if (root / "datasets").exists() else []
        result = curate(load_config(recipe, data_root=str(root)))
        unchanged += result.unchanged
        assert report_exists(root), f"seed {seed}: v1 has no report after the rerun"
        # the rerun removed what the kill left: the dead run's folder, an uncommitted publish's files
        assert not any(d.exists() for d in left) and all((d / "summary.json").exists() for d in (root / "runs").iterdir())
        store = DatasetStore(root)
        recorded = {f["path"] for v in store.versions(DATASET) for fs in v.files.values() for f in fs}
        on_disk = {
            str(f.relative_to(root / "datasets" / DATASET / "files")) for f in (root / "datasets" / DATASET / "files").rglob("*.parquet")
        }
        assert on_disk == recorded, f"seed {seed}: files no version records: {sorted(on_disk - recorded)}"
        orphans += len([f for f in staged if not f.exists()])
        assert store.cleanup_orphans(DATASET, older_than_s=0) == []
        assert [store.verify(DATASET, v.version)["problems"] for v in store.versions(DATASET)] == [[]] * len(store.versions(DATASET))
        check_recovered(root, reference)
    seconds = time.monotonic() - t0
    print(
        f"\npublish kills: {len(SEEDS)} seeds in {seconds:.1f} s, window {window:.2f} s; kill points {dict(phases)}; "
        f"reruns that found the killed run's version complete: {unchanged}; killed publishes' files the rerun removed: {orphans}; "
        f"kills that left a version without its report (written by the rerun): {reports_missing}"
    )
    assert len(phases) >= 3, f"kills should land in several phases of publishing, got {dict(phases)}"


# --------------------------------------------------------------------------- generation


def cached_requests(cfg_path: Path, root: Path) -> int:
    db = generation.cache_path(load_config(cfg_path, data_root=str(root)))
    if not db.exists():
        return 0
    con = sqlite3.connect(db, timeout=30)
    try:
        return con.execute("SELECT count(*) FROM requests").fetchone()[0]
    finally:
        con.close()


def test_kill_during_generation_resumes_from_the_request_cache(
    tmp_path: Path, zygote: Zygote, stub: OpenAIStub, light_reruns: None
) -> None:
    t0 = time.monotonic()
    gen = {
        "generator": backend(stub),
        "prompts": {"from": "pairs", "limit": 4},
        "n": 2,
        "max_tokens": 12,
        "strategy": "persona",
        "compare": ["iid"],
        "chunk_size": 2,
    }
    recipe = write_recipe(tmp_path / "recipe", generate=gen)
    reference_root = tmp_path / "reference"
    stub.reset_stats()
    curate(load_config(recipe, data_root=str(reference_root)))
    total = posts(stub)
    reference = snapshot(reference_root)
    assert total == 4 * 2 + 4 and len(reference[(1, "candidates")]) == 2 * 4 * 2  # persona: a request per candidate; iid: per prompt

    cached_at_kill: list[int] = []
    for seed in SEEDS:
        k = random.Random(seed).randint(1, total)
        root = tmp_path / f"seed{seed}" / "data"
        kill_at_request(zygote, stub, recipe, root, "run", k)
        assert snapshot(root) == {}, f"seed {seed}: a version is visible after a kill during generation"
        cached = cached_requests(recipe, root)
        assert cached < k  # the k-th request never got its answer
        cached_at_kill.append(cached)

        stub.reset_stats()
        result = curate(load_config(recipe, data_root=str(root)))
        strategies = result.funnel["generated"]["strategies"]
        assert sum(s["requests_reused"] for s in strategies.values()) == cached
        assert sum(s["requests_sent"] for s in strategies.values()) == total - cached
        assert posts(stub) == total - cached, f"seed {seed}: the rerun sent {posts(stub)} requests, {total - cached} were missing"
        check_recovered(root, reference)
    seconds = time.monotonic() - t0
    lost = sum(1 for seed, c in zip(SEEDS, cached_at_kill) if c < random.Random(seed).randint(1, total) - 1)
    print(
        f"\ngeneration kills: {len(SEEDS)} seeds in {seconds:.1f} s; {total} requests per run; kill at request "
        f"{sorted(random.Random(s).randint(1, total) for s in SEEDS)}; requests cached at the kill {sorted(cached_at_kill)} "
        f"(in {lost} kills a finished request was lost with its unfinished chunk and sent again)"
    )
    assert len(set(cached_at_kill)) >= 4, "kills should land at many points of the run"


# --------------------------------------------------------------------------- labeling


def cached_labels(root: Path) -> int:
    files = sorted(cache_root(root).glob("*/*.parquet"))
    return len({pid for f in files for pid in pq.read_table(f, columns=["pair_id"]).column("pair_id").to_pylist()})


def test_kill_during_labeling_resumes_from_the_label_cache(tmp_path: Path, zygote: Zygote, stub: OpenAIStub, light_reruns: None) -> None:
    t0 = time.monotonic()
    judge = {"name": "judge", "kind": "judge_pairwise", "backend": backend(stub), "max_retries": 0}
    recipe = write_recipe(tmp_path / "recipe", label={"labelers": [judge], "chunk_size": 4, "limit": 16})
    reference_root = tmp_path / "reference"
    stub.reset_stats()
    ref = curate(load_config(recipe, data_root=str(reference_root)))
    pairs = ref.funnel["labels"]["labelers"]["judge"]["pairs"]
    total = posts(stub)
    reference = snapshot(reference_root)
    assert pairs == 16 and total == 2 * pairs and len(reference[(1, "labels")]) == pairs  # both orders of every pair

    cached_at_kill: list[int] = []
    for seed in SEEDS:
        k = random.Random(seed).randint(1, total)
        root = tmp_path / f"seed{seed}" / "data"
        kill_at_request(zygote, stub, recipe, root, "run", k)
        assert snapshot(root) == {}, f"seed {seed}: a version is visible after a kill during labeling"
        cached = cached_labels(root)
        assert 2 * cached < k
        cached_at_kill.append(cached)

        stub.reset_stats()
        result = curate(load_config(recipe, data_root=str(root)))
        counts = result.funnel["labels"]["labelers"]["judge"]
        assert (counts["labels_reused"], counts["labels_scored"], counts["labels_failed"]) == (cached, pairs - cached, 0)
        assert posts(stub) == 2 * (pairs - cached), f"seed {seed}: {posts(stub)} judge requests for {pairs - cached} missing pairs"
        check_recovered(root, reference)
    seconds = time.monotonic() - t0
    print(
        f"\nlabeling kills: {len(SEEDS)} seeds in {seconds:.1f} s; {pairs} pairs ({total} judge requests) per run; "
        f"kill at request {sorted(random.Random(s).randint(1, total) for s in SEEDS)}; pairs cached at the kill {sorted(cached_at_kill)}"
    )
    assert len(set(cached_at_kill)) >= 4, "kills should land at many points of the run"


# --------------------------------------------------------------------------- concurrent publishers


def test_concurrent_publishers_keep_every_version_or_get_busy(tmp_path: Path, zygote: Zygote) -> None:
    """Rounds of three processes publishing to one dataset at the same moment (one with a
    short lock timeout): every publisher gets a version or ``DatasetBusy``; versions are
    consecutive, each holds exactly what its publisher wrote, and every one reads back."""
    t0 = time.monotonic()
    root = tmp_path / "root"
    sizes = {"a": 40, "b": 70, "c": 110}
    files: dict[str, str] = {}
    for name, n in sizes.items():
        files[name] = str(tmp_path / f"{name}.parquet")
        pq.write_table(pairs_table(range(n)), files[name])
    DatasetStore(root).publish("shared", {"pairs": pairs_table(range(5))}, **META, run_id="seed")
    outcomes: Counter[str] = Counter()
    expected = {"seed": 5}
    for rnd in range(3):
        go, pids, results = tmp_path / f"go{rnd}", {}, {}
        for name in sizes:
            run_id = f"r{rnd}-{name}"
            results[run_id] = tmp_path / f"{run_id}.json"
            timeout = 0.05 if name == "c" else 60.0
            args = (str(root), "shared", {"pairs": files[name]}, run_id, timeout, str(go), str(results[run_id]))
            pids[run_id] = zygote.start("tests.support.killable:publish_files", *args, log=tmp_path / f"{run_id}.log")
        time.sleep(0.3)  # all three are waiting on the go file
        go.touch()
        for run_id, pid in pids.items():
            assert zygote.wait(pid) == 0, (tmp_path / f"{run_id}.log").read_text()[-3000:]
            outcome = json.loads(results[run_id].read_text())
            if "busy" in outcome:
                assert "is being written by another process" in outcome["busy"] and "retry" in outcome["busy"]
                outcomes["busy"] += 1
            else:
                outcomes["published"] += 1
                expected[run_id] = sizes[run_id.split("-")[1]]
    store = DatasetStore(root)
    versions = store.versions("shared")
    assert [v.version for v in versions] == list(range(1, len(versions) + 1))
    assert {v.run_id: v.tables["pairs"] for v in versions} == expected  # every publish that succeeded, once
    for prev, v in zip(versions, versions[1:]):
        assert v.parents == [prev.ref] and v.snapshot_id > prev.snapshot_id and v.created_at >= prev.created_at
    for v in versions:
        table = store.read("shared", "pairs", version=v.version)
        assert table.equals(pairs_table(range(v.tables["pairs"])).cast(table.schema))
    assert store.cleanup_orphans("shared", older_than_s=0) == []  # a busy publisher removed what it staged
    print(f"\nconcurrent publishers: 3 rounds x 3 processes in {time.monotonic() - t0:.1f} s: {dict(outcomes)}")
    assert outcomes["published"] >= 6


def test_zygote_children_are_real_processes(tmp_path: Path, zygote: Zygote) -> None:
    """The harness itself: a child is killed by SIGKILL and its marks survive it."""
    root = tmp_path / "data"
    root.parent.mkdir(exist_ok=True)
    pid, marks = run_child(zygote, tmp_path / "missing.yaml", root, "bad")
    assert zygote.wait(pid) == 1 and "recipe not found" in (tmp_path / "bad.log").read_text()
    assert last_phase(marks) == "started"
    pid, marks = run_child(zygote, write_recipe(tmp_path / "recipe"), root, "killed")
    zygote.kill(pid)
    assert zygote.wait(pid) == -9


# --------------------------------------------------------------------------- what the kills found, pinned down


def test_rerun_after_a_first_publish_died_before_its_commit(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A first publish that dies inside its catalog transaction leaves a catalog with no
    version; the rerun must treat the dataset as new (it used to fail looking for the latest
    version)."""
    import curation.store.catalog as store_module

    recipe = write_recipe(tmp_path / "recipe")
    root = tmp_path / "data"

    def die(phase: str) -> None:
        if phase == "locked":
            raise SystemExit("killed")

    monkeypatch.setattr(store_module, "_TEST_HOOK", die)
    with pytest.raises(SystemExit):
        curate(load_config(recipe, data_root=str(root)))
    monkeypatch.setattr(store_module, "_TEST_HOOK", None)
    store = DatasetStore(root)
    assert store.datasets() == [DATASET] and store.versions(DATASET) == []
    result = curate(load_config(recipe, data_root=str(root)))
    assert (result.version, result.unchanged) == (1, False) and report_exists(root)


def test_a_version_whose_report_was_never_written_gets_it_on_the_rerun(tmp_path: Path) -> None:
    """Killed between the commit and the report: the rerun finds the version unchanged and
    writes the missing report (it used to leave the version without one for good)."""
    import shutil

    recipe = write_recipe(tmp_path / "recipe")
    root = tmp_path / "data"
    first = curate(load_config(recipe, data_root=str(root)))
    shutil.rmtree(first.report_dir)
    again = curate(load_config(recipe, data_root=str(root)))
    assert again.unchanged and again.version == 1 and report_exists(root)
    summary = json.loads((Path(again.report_dir) / "summary.json").read_text())
    assert summary["funnel"] == first.funnel and summary["version"] == 1


def test_a_killed_flow_run_leaves_no_server_and_its_folder_goes_with_the_next_run(tmp_path: Path, hh_path: Path) -> None:
    """``curate run`` (a Prefect flow, Prefect's temporary API server as a child process) is
    killed with SIGKILL after a stage finished: the server exits with it, and the next run
    removes the dead run's folder before it starts its own."""
    import signal
    import subprocess
    import sys

    from tests.helpers import write_recipe

    sources = [{"name": "hh", "path": str(hh_path), "adapter": "hh_rlhf", "limit": 300}]
    label = {"labelers": [{"name": "bt", "kind": "bt_ensemble", "members": 2}]}  # a few seconds to kill it in
    recipe = write_recipe(tmp_path, sources, dataset="killed-flow", label=label)
    env = {**os.environ, "PREFECT_SERVER_ANALYTICS_ENABLED": "false", "HF_HUB_OFFLINE": "1"}
    log = (tmp_path / "run.log").open("w")
    run = subprocess.Popen(
        [sys.executable, "-m", "curate.cli", "run", str(recipe)], cwd=tmp_path, env=env, stdout=log, stderr=subprocess.STDOUT
    )

    def servers() -> list[str]:
        out = subprocess.run(["pgrep", "-af", f"flows.ephemeral --parent {run.pid}"], capture_output=True, text=True).stdout
        return [line for line in out.splitlines() if "pgrep" not in line]

    deadline = time.monotonic() + 120
    while "dedup: done" not in (tmp_path / "run.log").read_text() and time.monotonic() < deadline:
        time.sleep(0.2)
    assert "dedup: done" in (tmp_path / "run.log").read_text(), (tmp_path / "run.log").read_text()
    assert len(servers()) == 1  # the run's own temporary server, started through flows.ephemeral
    run.send_signal(signal.SIGKILL)
    run.wait()
    deadline = time.monotonic() + 15
    while servers() and time.monotonic() < deadline:
        time.sleep(0.2)
    assert servers() == []
    runs = tmp_path / "root" / "runs"
    dead = [d for d in runs.iterdir() if not (d / "summary.json").exists()]
    assert len(dead) == 1 and any(dead[0].iterdir())  # what the kill left: the run's staged files
    rerun = subprocess.run(
        [sys.executable, "-m", "curate.cli", "run", str(recipe), "--local"], cwd=tmp_path, env=env, capture_output=True, text=True
    )
    assert rerun.returncode == 0, rerun.stderr
    assert not dead[0].exists() and all((d / "summary.json").exists() for d in runs.iterdir())


@pytest.mark.parametrize("mode", [["--local"], []], ids=["local", "flow"])
def test_two_identical_runs_started_together_publish_one_version(tmp_path: Path, hh_path: Path, mode: list[str]) -> None:
    """The unchanged check is made again inside the commit, under the dataset's lock: the run
    that commits second finds the first one's version and publishes nothing."""
    import subprocess
    import sys

    from tests.helpers import write_recipe

    recipe = write_recipe(tmp_path, [{"name": "hh", "path": str(hh_path), "adapter": "hh_rlhf", "limit": 600}], dataset="twice")
    env = {**os.environ, "PREFECT_SERVER_ANALYTICS_ENABLED": "false", "HF_HUB_OFFLINE": "1"}
    args = [sys.executable, "-m", "curate.cli", "run", str(recipe), *mode]
    runs = [subprocess.Popen(args, cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for _ in range(2)]
    outs = [r.communicate(timeout=600) for r in runs]
    assert [r.returncode for r in runs] == [0, 0], outs
    assert [v.version for v in DatasetStore(tmp_path / "root").versions("twice")] == [1]
    said = sorted("nothing to do" in out for out, _ in outs)
    assert said == [False, True], [out[-500:] for out, _ in outs]
    runs_left = list((tmp_path / "root" / "runs").iterdir())
    assert len(runs_left) == 1 and (runs_left[0] / "summary.json").exists()  # the loser's run folder is gone
    files = tmp_path / "root" / "datasets" / "twice" / "files"
    recorded = {f["path"] for fs in DatasetStore(tmp_path / "root").version("twice").files.values() for f in fs}
    assert {str(f.relative_to(files)) for f in files.rglob("*.parquet")} == recorded  # the loser's staged files are gone


def test_the_unchanged_check_inside_the_commit_stops_the_second_of_two_racing_runs(
    tmp_path: Path, hh_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Both runs get past the check before any work (nothing is published yet) and reach the
    commit together (a barrier holds each just before it): the one that commits second finds
    the first one's version under the lock and publishes nothing."""
    import curation.run.publish as publishing
    from tests.helpers import recipe_config

    cfg = recipe_config(tmp_path, [{"name": "hh", "path": str(hh_path), "adapter": "hh_rlhf", "limit": 200}], dataset="race")
    barrier = threading.Barrier(2, timeout=120)
    real = publishing.commit_version

    def together(*args: Any, **kwargs: Any) -> Any:
        barrier.wait()
        return real(*args, **kwargs)

    monkeypatch.setattr(publishing, "commit_version", together)
    results: list[Any] = []
    threads = [threading.Thread(target=lambda: results.append(curate(cfg.model_copy(deep=True)))) for _ in range(2)]
    for th in threads:
        th.start()
    for th in threads:
        th.join(timeout=300)
    assert sorted((r.unchanged, r.summary.get("raced", False)) for r in results) == [(False, False), (True, True)]
    assert [v.version for v in DatasetStore(cfg.data_root).versions("race")] == [1]
