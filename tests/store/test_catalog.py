"""DatasetStore: versions, time travel, exact schemas, diff, locking and crash safety.

The subprocess tests use real second processes: one holds a publish inside its catalog
transaction (through the store's test hook) while this process tries to read and publish;
others are killed with SIGKILL in the middle of a publish.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from datetime import datetime
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from curation.errors import ConfigError, CurationError, DatasetNotFound
from curation.store.catalog import DatasetBusy, DatasetStore
from schemas import arrow_schema

REPO = Path(__file__).resolve().parents[2]
META = {
    "config": {"sources": [{"name": "hh"}], "dedup": {"exact": True}},
    "config_hash": "cfg1",
    "code_version": "abc123",
    "inputs": [{"path": "hh.jsonl", "sha256": "00"}],
    "counts": {"read": 10, "kept": 8},
}


def pairs_table(ids: range | list[int]) -> pa.Table:
    """Contract-shaped pairs: multi-message conversations, some null scores."""
    rows = []
    for i in ids:
        prompt = [{"role": "system", "content": "be kind"}] * (i % 2) + [{"role": "user", "content": f"question {i}"}]
        rows.append(
            {
                "pair_id": f"p{i:05d}",
                "prompt_id": f"q{i % 37:05d}",
                "prompt": prompt,
                "chosen": [{"role": "assistant", "content": f"good answer {i}"}],
                "rejected": [{"role": "assistant", "content": f"bad answer {i}"}, {"role": "user", "content": "?"}][: 1 + i % 2],
                "chosen_score": float(i % 7) if i % 3 else None,
                "rejected_score": None if i % 3 else 0.5,
                "label_source": "human",
                "label_model": None,
                "source_dataset": "hh",
                "source_file": "hh.jsonl",
                "source_row": i,
                "source_pair_index": 0,
                "metadata": json.dumps({"i": i}),
            }
        )
    return pa.Table.from_pylist(rows, schema=arrow_schema("pairs"))


def decisions_table(ids: range | list[int]) -> pa.Table:
    rows = [
        {
            "pair_id": f"p{i:05d}",
            "source_dataset": "hh",
            "source_file": "hh.jsonl",
            "source_row": i,
            "source_pair_index": 0,
            "stage": "dedup_exact",
            "decision": "kept" if i % 4 else "filtered",
            "reason": None if i % 4 else "duplicate",
            "matched_pair_id": None,
            "scores": {"margin": i / 10, "len": float(i)} if i % 5 else None,
        }
        for i in ids
    ]
    return pa.Table.from_pylist(rows, schema=arrow_schema("decisions"))


def quarantine_table(n: int) -> pa.Table:
    rows = [
        {
            "source_dataset": "hh",
            "source_file": "hh.jsonl",
            "source_row": 1000 + i,
            "source_pair_index": None,
            "stage": "validate",
            "field": "chosen",
            "error_code": "empty_response",
            "error": "chosen is empty",
            "raw": '{"chosen": ""}',
            "raw_bytes": 14,
        }
        for i in range(n)
    ]
    return pa.Table.from_pylist(rows, schema=arrow_schema("quarantine"))


def publish_three(store: DatasetStore, name: str = "hh") -> None:
    """v1: pairs 0-299 + decisions + quarantine; v2: pairs 50-349; v3: pairs 50-349 + decisions, no quarantine."""
    store.publish(
        name,
        {"pairs": pairs_table(range(300)), "decisions": decisions_table(range(300)), "quarantine": quarantine_table(12)},
        **META,
        run_id="r1",
    )
    store.publish(
        name,
        {"pairs": pairs_table(range(50, 350)), "decisions": decisions_table(range(50, 350)), "quarantine": quarantine_table(3)},
        **{**META, "config": {"sources": [{"name": "hh"}], "dedup": {"exact": False}}, "config_hash": "cfg2"},
        run_id="r2",
        parents=["shp@4"],
        extra={"note": "second"},
    )
    store.publish(
        name,
        {"pairs": pairs_table(range(50, 350)), "decisions": decisions_table(range(50, 350))},
        **{**META, "inputs": [{"path": "hh.jsonl", "sha256": "11"}]},
        run_id="r3",
    )


@pytest.fixture(scope="module")
def published(tmp_path_factory: pytest.TempPathFactory) -> DatasetStore:
    store = DatasetStore(tmp_path_factory.mktemp("root"))
    publish_three(store)
    return store


def run_py(code: str, *args: str, **popen: object) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": f"{REPO}{os.pathsep}{REPO / 'tests'}"}
    return subprocess.Popen(
        [sys.executable, "-c", textwrap.dedent(code), *args],
        cwd=REPO,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        **popen,
    )


def wait_for_line(proc: subprocess.Popen, want: str, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        if line.strip() == want:
            return
        if not line and proc.poll() is not None:
            break
    proc.kill()
    raise AssertionError(f"subprocess never printed {want!r}: {proc.stderr.read()}")


def test_versions_metadata_and_time_travel(published: DatasetStore) -> None:
    vs = published.versions("hh")
    assert [v.version for v in vs] == [1, 2, 3]
    assert [v.snapshot_id for v in vs] == sorted({v.snapshot_id for v in vs})
    assert [v.parents for v in vs] == [[], ["hh@1", "shp@4"], ["hh@2"]]
    assert [v.run_id for v in vs] == ["r1", "r2", "r3"]
    assert vs[0].tables == {"pairs": 300, "decisions": 300, "quarantine": 12}
    assert vs[2].tables == {"pairs": 300, "decisions": 300}  # quarantine not passed: dropped in v3
    assert vs[1].config_hash == "cfg2" and vs[1].extra == {"note": "second"}
    assert vs[0].counts == META["counts"] and vs[0].inputs == META["inputs"] and vs[0].code_version == "abc123"
    assert datetime.fromisoformat(vs[0].created_at.replace("Z", "+00:00")).utcoffset().total_seconds() == 0
    assert "prompt: list<item: struct<role: string not null" in vs[0].schemas["pairs"]
    assert published.version("hh") == vs[2] and published.version("hh", 1) == vs[0]
    assert published.read("hh", "pairs", version=1).column("pair_id")[0].as_py() == "p00000"
    assert published.read("hh", "pairs").column("pair_id")[0].as_py() == "p00050"
    assert published.read("hh", "quarantine", version=2).num_rows == 3
    with pytest.raises(DatasetNotFound, match="hh@3 has no table 'quarantine'; tables: decisions, pairs"):
        published.read("hh", "quarantine")
    with pytest.raises(DatasetNotFound, match=r"no version 9; versions: 1, 2, 3 \(latest 3\)"):
        published.version("hh", 9)
    with pytest.raises(DatasetNotFound, match="no dataset named 'nope'.*published: hh"):
        published.versions("nope")


def test_exact_schema_round_trip(published: DatasetStore) -> None:
    for name, table in [
        ("pairs", pairs_table(range(300))),
        ("decisions", decisions_table(range(300))),
        ("quarantine", quarantine_table(12)),
    ]:
        back = published.read("hh", name, version=1)
        assert back.schema.equals(arrow_schema(name), check_metadata=True), name
        assert back.equals(table), name
    scores = published.read("hh", "decisions", version=1, columns=["scores"]).column("scores")
    assert scores.type == pa.map_(pa.string(), pa.float64())
    assert scores[1].as_py() == [("margin", 0.1), ("len", 1.0)] and scores[0].as_py() is None


def test_scan_streams_batches(published: DatasetStore) -> None:
    reader = published.scan("hh", "pairs", version=2, columns=["pair_id", "chosen"], batch_size=64)
    assert isinstance(reader, pa.RecordBatchReader)
    assert reader.schema.names == ["pair_id", "chosen"]
    assert reader.schema.field("chosen").type == arrow_schema("pairs").field("chosen").type
    sizes = [b.num_rows for b in reader]
    assert sum(sizes) == 300 and len(sizes) >= 5 and max(sizes) <= 64
    with pytest.raises(CurationError, match="no column"):
        published.scan("hh", "pairs", columns=["nope"])


def test_diff(published: DatasetStore) -> None:
    d = published.diff("hh", 1, 2)
    assert d["tables"]["pairs"] == {"a": 300, "b": 300} and d["tables"]["quarantine"] == {"a": 12, "b": 3}
    assert d["pairs"]["added"] == 50 and d["pairs"]["removed"] == 50
    assert d["pairs"]["added_examples"] == [f"p{i:05d}" for i in range(300, 310)]
    assert d["pairs"]["removed_examples"] == [f"p{i:05d}" for i in range(10)]
    assert d["config"] == {"dedup.exact": {"old": True, "new": False}}
    assert d["config_hash_changed"] and not d["inputs_changed"]
    d = published.diff("hh", 2, 3)
    assert d["pairs"]["added"] == d["pairs"]["removed"] == 0 and d["tables"]["quarantine"] == {"a": 3, "b": None}
    assert d["config"] == {"dedup.exact": {"old": False, "new": True}} and d["inputs_changed"]


def test_publish_from_parquet_files_and_other_tables(tmp_path: Path) -> None:
    a, b = tmp_path / "a.parquet", tmp_path / "b.parquet"
    pq.write_table(pairs_table(range(100)), a)
    pq.write_table(pairs_table(range(100, 250)), b)
    funnel = pa.table({"stage": ["read", "kept"], "rows": [250, 200]})
    store = DatasetStore(tmp_path / "root")
    v = store.publish("from-files", {"pairs": [a, b], "funnel": funnel}, **META)
    assert v.tables == {"pairs": 250, "funnel": 2}
    assert store.read("from-files", "pairs").equals(pairs_table(range(250)))
    assert store.read("from-files", "funnel").equals(funnel)
    v2 = store.publish("from-files", {"pairs": str(tmp_path / "*.parquet"), "empty": funnel.slice(0, 0)}, **META)
    assert v2.tables == {"pairs": 250, "empty": 0} and store.read("from-files", "empty").num_rows == 0
    with pytest.raises(CurationError, match="Parquet file not found"):
        store.publish("from-files", {"pairs": tmp_path / "missing.parquet"}, **META)


def test_contract_violations_are_rejected(tmp_path: Path) -> None:
    store = DatasetStore(tmp_path)
    store.publish("hh", {"pairs": pairs_table(range(5))}, **META)
    wrong = pairs_table(range(5)).cast(arrow_schema("pairs").set(11, pa.field("source_row", pa.int32())))
    with pytest.raises(CurationError, match="pairs.source_row: stored as int32, the contract says int64"):
        store.publish("hh", {"pairs": wrong}, **META)
    loose = pa.schema([f.with_nullable(True) for f in arrow_schema("pairs")])
    rows = pairs_table(range(5)).to_pylist()
    rows[2]["chosen"] = [{"role": None, "content": "x"}]
    rows[3]["label_source"] = None
    bad = pa.Table.from_pylist(
        rows,
        schema=pa.schema(
            [
                f if f.name != "chosen" else pa.field("chosen", pa.list_(pa.struct([("role", pa.string()), ("content", pa.string())])))
                for f in loose
            ]
        ),
    )
    with pytest.raises(CurationError, match=r"nulls where the contract forbids them: chosen \(1 rows\), label_source \(1 rows\)"):
        store.publish("hh", {"pairs": bad}, **META)
    assert [v.version for v in store.versions("hh")] == [1]
    assert len(list((tmp_path / "datasets/hh/files/main/pairs").glob("staged-*"))) == 1  # only v1's data


@pytest.mark.parametrize("name", ["../../etc", "a/b", "", "UPPER", "x" * 100, "main", "/abs", "a b"])
def test_dataset_names_are_validated(tmp_path: Path, name: str) -> None:
    store = DatasetStore(tmp_path / "root")
    with pytest.raises(ConfigError, match="invalid dataset name"):
        store.publish(name, {"pairs": pairs_table(range(2))}, **META)
    with pytest.raises(ConfigError):
        store.versions(name)
    assert not (tmp_path / "root").exists() and sorted(p.name for p in tmp_path.iterdir()) == []


def test_table_names_and_empty_root(tmp_path: Path) -> None:
    store = DatasetStore(tmp_path)
    assert store.datasets() == []
    with pytest.raises(DatasetNotFound, match="nothing is published yet.*curate run RECIPE"):
        store.version("hh")
    for bad in ["versions", "Bad", "a-b"]:
        with pytest.raises(ConfigError, match="invalid table name"):
            store.publish("hh", {bad: pairs_table(range(2))}, **META)


def test_relocated_root_and_new_process(published: DatasetStore, tmp_path: Path) -> None:
    import shutil

    moved = tmp_path / "moved"
    shutil.copytree(published.root, moved)
    assert DatasetStore(moved).read("hh", "pairs", version=1).num_rows == 300  # data path is not baked in
    proc = run_py(
        """
        import json, sys
        from curation.store.catalog import DatasetStore
        s = DatasetStore(sys.argv[1])
        print(json.dumps([[v.version, v.config_hash, v.tables] for v in s.versions("hh")]))
        print(s.read("hh", "pairs", version=2).num_rows)
    """,
        str(moved),
    )
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err
    lines = out.splitlines()
    assert json.loads(lines[0]) == [[v.version, v.config_hash, v.tables] for v in published.versions("hh")]
    assert lines[1] == "300"


HOLD_PUBLISH = """
    import sys, time
    import curation.store.catalog as store
    from tests.store.test_catalog import META, pairs_table
    hold = float(sys.argv[2])
    def hook(phase):
        print(phase, flush=True)
        if phase == "locked":
            time.sleep(hold)
    store._TEST_HOOK = hook
    v = store.DatasetStore(sys.argv[1]).publish("hh", {"pairs": pairs_table(range(100, 400))}, **META, run_id="sub")
    print("published", v.version, flush=True)
"""


def test_concurrent_publisher_waits_or_gets_busy(tmp_path: Path) -> None:
    store = DatasetStore(tmp_path)
    store.publish("hh", {"pairs": pairs_table(range(100))}, **META, run_id="first")
    other = run_py(HOLD_PUBLISH, str(tmp_path), "3.5")
    wait_for_line(other, "locked")  # the subprocess now holds the catalog inside its transaction
    impatient = DatasetStore(tmp_path, lock_timeout_s=0.3)
    with pytest.raises(DatasetBusy, match="'hh' is being written by another process.*retry"):
        impatient.versions("hh")
    with pytest.raises(DatasetBusy):
        impatient.publish("hh", {"pairs": pairs_table(range(5))}, **META, run_id="impatient")
    assert impatient.publish("other", {"pairs": pairs_table(range(5))}, **META).version == 1  # not blocked
    # v1's file and the other process's; the busy publish removed what it had staged
    assert len(list((tmp_path / "datasets/hh/files/main/pairs").glob("staged-*/*.parquet"))) == 2
    t0 = time.monotonic()
    mine = DatasetStore(tmp_path, lock_timeout_s=20).publish("hh", {"pairs": pairs_table(range(7))}, **META, run_id="waited")
    assert time.monotonic() - t0 > 0.5  # it had to wait for the other process
    out, err = other.communicate(timeout=30)
    assert other.returncode == 0, err
    assert "published 2" in out and mine.version == 3
    vs = store.versions("hh")
    assert [(v.version, v.run_id, v.tables["pairs"]) for v in vs] == [(1, "first", 100), (2, "sub", 300), (3, "waited", 7)]
    assert vs[2].parents == ["hh@2"]
    assert store.read("hh", "pairs", version=2).num_rows == 300


KILL_STAGING = """
    import sys
    import duckdb
    from curation.store.catalog import DatasetStore
    from tests.store.test_catalog import META
    con = duckdb.connect()
    msg = "{'role': 'user', 'content': 'question ' || i}"
    reader = con.execute(f'''
        SELECT 'p' || i AS pair_id, 'q' || (i % 1000) AS prompt_id, [{msg}] AS prompt,
               [{{'role': 'assistant', 'content': repeat('good ', 20) || i}}] AS chosen,
               [{{'role': 'assistant', 'content': repeat('bad ', 20) || i}}] AS rejected,
               i::DOUBLE AS chosen_score, NULL::DOUBLE AS rejected_score, 'human' AS label_source,
               NULL::VARCHAR AS label_model, 'gen' AS source_dataset, 'gen' AS source_file, i::BIGINT AS source_row,
               0::INTEGER AS source_pair_index, NULL::VARCHAR AS metadata
        FROM range(2000000) t(i)''').to_arrow_reader(20000)
    print("start", flush=True)
    DatasetStore(sys.argv[1]).publish("hh", {"pairs": reader}, **META, run_id="killed")
    print("finished", flush=True)
"""


def _after_kill(store: DatasetStore) -> None:
    assert [v.run_id for v in store.versions("hh")] == ["first"]
    assert store.read("hh", "pairs").equals(pairs_table(range(100)))
    v = store.publish("hh", {"pairs": pairs_table(range(10))}, **META, run_id="after")
    assert v.version == 2 and v.parents == ["hh@1"]
    assert [v.run_id for v in store.versions("hh")] == ["first", "after"]
    assert store.read("hh", "pairs").num_rows == 10 and store.read("hh", "pairs", version=1).num_rows == 100


def test_kill_during_staging_of_large_table(tmp_path: Path) -> None:
    store = DatasetStore(tmp_path)
    store.publish("hh", {"pairs": pairs_table(range(100))}, **META, run_id="first")
    proc = run_py(KILL_STAGING, str(tmp_path))
    wait_for_line(proc, "start")
    pairs_dir = tmp_path / "datasets/hh/files/main/pairs"
    deadline = time.monotonic() + 20
    while len(list(pairs_dir.glob("staged-*/*.parquet"))) < 2 and time.monotonic() < deadline:
        time.sleep(0.05)  # v1's file, plus the big one being written
    time.sleep(0.3)
    assert proc.poll() is None, f"publish finished before the kill: {proc.communicate()}"
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=10)
    killed = set(pairs_dir.glob("staged-*/*.parquet")) - {
        tmp_path / "datasets/hh/files" / f["path"] for f in store.version("hh").files["pairs"]
    }
    assert killed  # the partial file is an orphan
    _after_kill(store)  # the next publish removed it: its folder names a process that is gone
    assert not any(f.exists() for f in killed) and store.cleanup_orphans("hh", older_than_s=0) == []
    assert store.read("hh", "pairs", version=1).num_rows == 100 and store.verify("hh", 1)["problems"] == []


def test_kill_inside_catalog_transaction(tmp_path: Path) -> None:
    store = DatasetStore(tmp_path)
    store.publish("hh", {"pairs": pairs_table(range(100))}, **META, run_id="first")
    proc = run_py(HOLD_PUBLISH, str(tmp_path), "60")
    wait_for_line(proc, "locked")  # tables replaced and commit message set, not committed
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=10)
    _after_kill(store)


def test_a_first_publish_dying_while_the_catalog_is_created_leaves_no_catalog(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """DuckLake writes its metadata tables when it first attaches a new catalog. A publish killed
    then used to leave a catalog without them, which every reader (and so every rerun) rejected
    with a raw DuckDB error; the catalog is now made under a temporary name and linked into place."""
    import curation.store.catalog as store_module

    def dies(phase: str) -> None:
        if phase == "catalog_created":
            raise SystemExit("killed")

    monkeypatch.setattr(store_module, "_TEST_HOOK", dies)
    store = DatasetStore(tmp_path)
    with pytest.raises(SystemExit):
        store.publish("hh", {"pairs": pairs_table(range(10))}, **META)
    monkeypatch.setattr(store_module, "_TEST_HOOK", None)
    assert store.datasets() == [] and not (tmp_path / "datasets/hh/catalog.ducklake").exists()
    assert [p.name for p in (tmp_path / "datasets/hh").iterdir()] == ["files"]  # no temporary catalog left either
    assert store.publish("hh", {"pairs": pairs_table(range(10))}, **META).version == 1
    assert store.read("hh", "pairs").num_rows == 10


def test_footers_rule_out_nulls_only_when_no_guarded_column_counts_one(tmp_path: Path) -> None:
    """The publish check skips its scan only on proof from the footers: a null or an empty
    list under a non-nullable field (or missing statistics) sends it to the scan."""
    from curation.store.contract import _footers_rule_out_nulls, _null_predicates
    from curation.store.duck import ident

    contract = arrow_schema("pairs")
    guarded = {f.name for f in contract if _null_predicates(ident(f.name), f)}
    assert {"pair_id", "prompt", "label_source"} <= guarded and "chosen_score" not in guarded
    clean = tmp_path / "clean.parquet"
    pq.write_table(pairs_table(range(50)), clean, row_group_size=10)
    assert _footers_rule_out_nulls([clean], guarded)
    rows = pairs_table(range(50)).to_pylist()
    rows[33]["prompt"] = []  # allowed, but the footers cannot tell it from a null
    pq.write_table(pa.Table.from_pylist(rows, schema=contract), tmp_path / "empty.parquet", row_group_size=10)
    assert not _footers_rule_out_nulls([clean, tmp_path / "empty.parquet"], guarded)
    rows = pairs_table(range(5)).to_pylist()
    rows[4]["label_source"] = None
    loose = pa.schema([f.with_nullable(True) for f in contract])
    pq.write_table(pa.Table.from_pylist(rows, schema=loose), tmp_path / "null.parquet")
    assert not _footers_rule_out_nulls([tmp_path / "null.parquet"], guarded)
    pq.write_table(pairs_table(range(5)), tmp_path / "nostats.parquet", write_statistics=False)
    assert not _footers_rule_out_nulls([tmp_path / "nostats.parquet"], guarded)
    scores_only = pairs_table(range(5)).to_pylist()
    scores_only[1]["chosen_score"] = None  # a nullable field's nulls do not matter
    pq.write_table(pa.Table.from_pylist(scores_only, schema=contract), tmp_path / "scores.parquet")
    assert _footers_rule_out_nulls([tmp_path / "scores.parquet"], guarded)


# --------------------------------------------------------------------------- a version never changes


def test_verify_names_every_changed_or_missing_file_and_files_are_read_only(tmp_path: Path) -> None:
    import stat
    import subprocess
    import sys

    store = DatasetStore(tmp_path)
    store.publish("hh", {"pairs": pairs_table(range(50)), "decisions": decisions_table(range(50))}, **META)
    store.publish("hh", {"pairs": pairs_table(range(60)), "decisions": decisions_table(range(60))}, **META)
    info = store.version("hh", 1)
    assert set(info.files) == {"pairs", "decisions"} and all(
        f["bytes"] > 0 and len(f["sha256"]) == 64 for fs in info.files.values() for f in fs
    )
    files = [tmp_path / "datasets" / "hh" / "files" / f["path"] for fs in info.files.values() for f in fs]
    assert all(stat.S_IMODE(p.stat().st_mode) == 0o444 for p in files)
    assert store.verify("hh", 1) == {
        "ref": "hh@1",
        "recorded": True,
        "files": len(files),
        "bytes": sum(p.stat().st_size for p in files),
        "problems": [],
    }

    def cli(ref: str) -> subprocess.CompletedProcess:
        args = [sys.executable, "-m", "curate.cli", "datasets", "verify", ref, "--data-root", str(tmp_path)]
        return subprocess.run(args, capture_output=True, text=True, timeout=120)

    assert cli("hh@1").returncode == 0 and "are as published" in cli("hh@1").stdout
    changed, missing = files
    changed.chmod(0o644)
    data = bytearray(changed.read_bytes())
    data[len(data) // 2] ^= 0xFF  # one flipped byte, same size
    changed.write_bytes(bytes(data))
    missing.unlink()
    problems = store.verify("hh", 1)["problems"]
    assert len(problems) == 2
    assert problems[0].startswith(f"changed: {changed.relative_to(tmp_path / 'datasets' / 'hh' / 'files')} (table pairs)")
    assert problems[1] == f"missing: {missing.relative_to(tmp_path / 'datasets' / 'hh' / 'files')} (table decisions)"
    proc = cli("hh@1")
    assert proc.returncode == 1 and "changed:" in proc.stderr and "missing:" in proc.stderr and "2 of 2 data files differ" in proc.stderr
    assert store.verify("hh", 2)["problems"] == [] and cli("hh").returncode == 0  # the other version is untouched
