"""A data root whose DuckLake catalogs live in a real PostgreSQL server (tests/support/postgres_server.py).

What a user relies on: everything the file catalog does works the same (versions, time
travel, diff, verify, SQL, cleanup); many publisher processes at once each get their
version, consecutive and with the right parents, and none is turned away busy; a publisher
killed with SIGKILL at any moment leaves only complete versions; a server restart in the
middle of a publish is one clear, retryable error with nothing half-written; the password
never shows in a message, a file or an SQL result, and SQL cannot reach the server.
"""

from __future__ import annotations

import json
import random
import time
from collections import Counter
from pathlib import Path

import pyarrow as pa
import pytest

import curation.store.catalog as catalog_module
from curation.errors import ConfigError, CurationError
from curation.store.catalog import DatasetStore
from curation.store.postgres import CatalogUnavailable
from curation.store.query import sql
from tests.store.test_catalog import META, pairs_table
from tests.support.killable import Zygote, fork_env, read_marks, rows_for
from tests.support.postgres_server import PgServer


def pg_store(tmp_path: Path) -> DatasetStore:
    return DatasetStore(tmp_path / "root", catalog="postgres")


def test_a_postgres_root_does_what_a_file_root_does(pg_env: PgServer, tmp_path: Path) -> None:
    store = pg_store(tmp_path)
    for n in (100, 60, 80):
        store.publish("hh", {"pairs": pairs_table(range(n))}, **META, run_id=f"r{n}")
    store.publish("other-set", {"pairs": pairs_table(range(5))}, **META)
    again = DatasetStore(tmp_path / "root")  # no flag: the root remembers its catalog
    assert again.catalog_kind == "postgres" and again.datasets() == ["hh", "other-set"]
    vs = again.versions("hh")
    assert [(v.version, v.run_id, v.parents) for v in vs] == [(1, "r100", []), (2, "r60", ["hh@1"]), (3, "r80", ["hh@2"])]
    for v, n in zip(vs, (100, 60, 80), strict=True):
        assert again.read("hh", "pairs", version=v.version).equals(pairs_table(range(n)))  # time travel, exact schema
        assert again.verify("hh", v.version)["problems"] == []
    assert again.diff("hh", 1, 3)["pairs"]["removed"] == 20
    assert sql('SELECT (SELECT count(*) FROM "hh@1".pairs) AS a, (SELECT count(*) FROM pairs) AS b', tmp_path / "root", dataset="hh").row(
        0
    ) == (
        100,
        80,
    )
    assert again.cleanup_orphans("hh", older_than_s=0) == []
    # the catalogs are in PostgreSQL, not in files; the root records only the kind and a namespace
    root = tmp_path / "root"
    assert not list(root.rglob("*.ducklake")) and (root / "datasets/hh/files").is_dir()
    record = json.loads((root / "catalog.json").read_text())
    assert record["catalog"] == "postgres" and set(record) == {"catalog", "namespace"}
    schemas = pg_env.psql(f"SELECT count(*) FROM information_schema.schemata WHERE schema_name LIKE '{record['namespace']}_%'")
    assert int(schemas) == 2


def test_a_root_keeps_the_catalog_it_was_made_with(pg_env: PgServer, tmp_path: Path) -> None:
    files_root = tmp_path / "files-root"
    DatasetStore(files_root).publish("hh", {"pairs": pairs_table(range(3))}, **META)
    with pytest.raises(ConfigError, match="already keeps datasets in DuckDB catalog files"):
        DatasetStore(files_root, catalog="postgres").datasets()
    assert not (files_root / "catalog.json").exists() and DatasetStore(files_root).catalog_kind == "file"
    store = pg_store(tmp_path)
    store.publish("hh", {"pairs": pairs_table(range(3))}, **META)
    with pytest.raises(ConfigError, match="keeps its catalogs in PostgreSQL"):
        DatasetStore(tmp_path / "root", catalog="file").datasets()
    with pytest.raises(ConfigError, match="not one of file, postgres"):
        DatasetStore(tmp_path / "new", catalog="mysql").datasets()
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "catalog.json").write_text("{not json")
    with pytest.raises(CurationError, match=r"bad/catalog.json is not a catalog record"):
        DatasetStore(tmp_path / "bad").datasets()


def test_sql_reads_but_cannot_reach_the_server_or_the_password(pg_env: PgServer, tmp_path: Path) -> None:
    store = pg_store(tmp_path)
    store.publish("hh", {"pairs": pairs_table(range(10))}, **META)
    root = tmp_path / "root"
    before = pg_env.psql("SELECT count(*) FROM pg_largeobject_metadata")
    for query in (
        "SELECT * FROM postgres_query('__ducklake_metadata_hh', 'SELECT lo_create(0) AS o')",
        "SELECT (SELECT count(*) FROM postgres_scan('', 'public', 'x'))",
        "SELECT * FROM query('SELECT 1')",
        "EXPLAIN SELECT * FROM postgres_query('hh', 'SELECT 1')",
    ):
        with pytest.raises(CurationError, match=r"calls (postgres_query|postgres_scan|query)\(\).*nothing was run"):
            sql(query, root)
    for query in ("DELETE FROM pairs", "ATTACH '' AS p (TYPE postgres)", "CALL postgres_execute('hh', 'DROP SCHEMA x')"):
        with pytest.raises(CurationError, match="only reads"):
            sql(query, root)
    assert pg_env.psql("SELECT count(*) FROM pg_largeobject_metadata") == before  # nothing ran on the server
    secrets = sql("SELECT secret_string FROM duckdb_secrets()", root)["secret_string"].to_list()
    paths = sql("SELECT coalesce(path, '') AS p FROM duckdb_databases()", root)["p"].to_list()
    assert secrets and all("password=redacted" in s for s in secrets)
    assert pg_env.password not in json.dumps([secrets, paths])
    with pytest.raises(CurationError, match="unredacted secrets is disabled"):
        sql("SELECT * FROM duckdb_secrets(redact=false)", root)
    assert store.read("hh", "pairs").num_rows == 10 and [v.version for v in store.versions("hh")] == [1]


def test_an_unreachable_or_refusing_server_is_one_line_without_the_password(
    pg_env: PgServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = pg_store(tmp_path)
    store.publish("hh", {"pairs": pairs_table(range(3))}, **META)
    wrong_password = pg_env.dsn.replace(pg_env.password, "not-the-" + pg_env.password[-12:])
    closed_port = pg_env.dsn.replace(f":{pg_env.port}/", ":9/")
    for dsn, why in ((wrong_password, "password authentication failed"), (closed_port, "Connection refused|connection to server")):
        monkeypatch.setenv("CURATE_PG_DSN", dsn)
        for call in (
            lambda: DatasetStore(tmp_path / "root").versions("hh"),
            lambda: sql("SELECT 1", tmp_path / "root"),
            lambda: DatasetStore(tmp_path / "root").bind_catalog(),  # what a run does before its first stage
        ):
            with pytest.raises(CatalogUnavailable, match=why) as err:
                call()
            message = str(err.value)
            assert "\n" not in message and "retry" in message
            assert pg_env.password not in message and pg_env.password[-12:] not in message


def test_eight_publishers_five_times_each_keep_every_version(pg_env: PgServer, tmp_path: Path) -> None:
    root = tmp_path / "root"
    pg_store(tmp_path).bind_catalog()
    go = tmp_path / "go"
    with Zygote(preload=("curation.store.catalog", "pyarrow"), env=fork_env({**__import__("os").environ})) as z:
        jobs = []
        for p in range(8):
            result, marks = tmp_path / f"result{p}.jsonl", tmp_path / f"marks{p}"
            pid = z.start(
                "tests.support.killable:publish_repeatedly",
                str(root),
                "hh",
                5,
                f"p{p}",
                str(go),
                str(result),
                str(marks),
                log=tmp_path / f"p{p}.log",
            )
            jobs.append((pid, result))
        t0 = time.monotonic()
        go.touch()
        codes = [z.wait(pid, timeout=300) for pid, _ in jobs]
        took = time.monotonic() - t0
    assert codes == [0] * 8, [(tmp_path / f"p{p}.log").read_text()[-2000:] for p in range(8)]
    outcomes = [json.loads(line) for _, result in jobs for line in result.read_text().splitlines()]
    assert not [o for o in outcomes if "busy" in o], "a publisher was turned away busy"
    assert sorted(o["version"] for o in outcomes) == list(range(1, 41))
    store = DatasetStore(root)
    vs = store.versions("hh")
    assert [v.version for v in vs] == list(range(1, 41))
    assert all(v.parents == ([f"hh@{v.version - 1}"] if v.version > 1 else []) for v in vs)
    assert {o["run_id"]: o["version"] for o in outcomes} == {v.run_id: v.version for v in vs}
    for v in random.Random(0).sample(vs, 8):
        assert store.read("hh", "things", version=v.version).equals(rows_for(v.run_id))
    print(f"\n8 publishers x 5 publishes on PostgreSQL: {took:.1f} s, {40 / took:.1f} publishes/s")


def test_kill_9_during_publish_leaves_only_complete_versions(pg_env: PgServer, tmp_path: Path) -> None:
    """Ten publishers killed with SIGKILL at random moments of their publishes; after each, every
    visible version is whole and consecutive, and the next publish sweeps what the dead left."""
    root = tmp_path / "root"
    store = pg_store(tmp_path)
    store.publish("hh", {"things": rows_for("first")}, **META, run_id="first")
    go = tmp_path / "go"
    go.touch()
    rng = random.Random(7)
    hit: Counter[str] = Counter()
    with Zygote(preload=("curation.store.catalog", "pyarrow"), env=fork_env({**__import__("os").environ})) as z:
        for k in range(10):
            marks = tmp_path / f"marks{k}"
            pid = z.start(
                "tests.support.killable:publish_repeatedly",
                str(root),
                "hh",
                1000,
                f"k{k}",
                str(go),
                str(tmp_path / f"result{k}.jsonl"),
                str(marks),
                log=tmp_path / f"k{k}.log",
            )
            deadline = time.monotonic() + 60
            while "staged" not in read_marks(marks):  # its first publish got going (imports done)
                assert time.monotonic() < deadline and not z.done(pid), (tmp_path / f"k{k}.log").read_text()[-2000:]
                time.sleep(0.005)
            time.sleep(rng.uniform(0.0, 1.2))
            z.kill(pid)
            assert z.wait(pid) == -9
            lines = [ln.split()[0] for ln in marks.read_text().splitlines()]
            hit[lines[-1]] += 1
            vs = DatasetStore(root).versions("hh")
            assert [v.version for v in vs] == list(range(1, len(vs) + 1))
            for v in vs[-3:]:
                assert DatasetStore(root).verify("hh", v.version)["problems"] == []
                assert DatasetStore(root).read("hh", "things", version=v.version).equals(rows_for(v.run_id))
    after = store.publish("hh", {"things": rows_for("after")}, **META, run_id="after")
    vs = store.versions("hh")
    assert after.version == len(vs) and after.parents == [f"hh@{after.version - 1}"]
    files = root / "datasets/hh/files"
    recorded = {f["path"] for v in vs for fs in v.files.values() for f in fs}
    on_disk = {str(f.relative_to(files)) for f in files.rglob("*.parquet")}
    assert on_disk == recorded, f"files no version records: {sorted(on_disk - recorded)}"
    print(f"\nkills landed after: {dict(hit)}; {len(vs)} versions")


def test_a_server_restart_mid_publish_is_a_clear_retryable_error(pg_env: PgServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    store = pg_store(tmp_path)
    store.publish("hh", {"pairs": pairs_table(range(30))}, **META, run_id="first")

    def restart(phase: str) -> None:
        if phase == "locked":  # inside the catalog transaction, before COMMIT
            pg_env.restart()

    monkeypatch.setattr(catalog_module, "_TEST_HOOK", restart)
    with pytest.raises(CatalogUnavailable, match="unavailable.*nothing was published.*retry") as err:
        store.publish("hh", {"pairs": pairs_table(range(40))}, **META, run_id="during-restart")
    assert "\n" not in str(err.value) and pg_env.password not in str(err.value)
    monkeypatch.setattr(catalog_module, "_TEST_HOOK", None)
    assert [v.run_id for v in store.versions("hh")] == ["first"]
    retried = store.publish("hh", {"pairs": pairs_table(range(40))}, **META, run_id="retried")
    assert (retried.version, retried.parents) == (2, ["hh@1"])
    assert store.read("hh", "pairs").equals(pairs_table(range(40)))
    # the interrupted publish's files were kept (its COMMIT's outcome was unknown); nothing references them
    assert len(store.cleanup_orphans("hh", older_than_s=0)) == 1
    assert [store.verify("hh", v)["problems"] for v in (1, 2)] == [[], []]
    files = tmp_path / "root/datasets/hh/files"
    assert len(list(files.rglob("*.parquet"))) == 2


def test_a_table_of_every_arrow_type_round_trips(pg_env: PgServer, tmp_path: Path) -> None:
    table = pa.table(
        {
            "s": ["a", None],
            "i": pa.array([1, None], pa.int64()),
            "f": [0.5, None],
            "l": [[1, 2], []],
            "m": pa.array([[("k", 1)], None], pa.map_(pa.string(), pa.int64())),
        }
    )
    store = pg_store(tmp_path)
    store.publish("types", {"things": table}, **META)
    assert DatasetStore(tmp_path / "root").read("types", "things").equals(table)


def test_data_files_in_s3_with_the_catalog_in_postgres(pg_env: PgServer, monkeypatch: pytest.MonkeyPatch) -> None:
    """The catalog in PostgreSQL, the Parquet files (and the root's catalog.json) in a bucket."""
    from tests.support.s3_server import S3Server

    with S3Server() as s3:
        for key, value in s3.env.items():
            monkeypatch.setenv(key, value)
        root = f"s3://{s3.create_bucket('pg-data')}/team"
        store = DatasetStore(root, catalog="postgres")
        for n in (20, 30):
            store.publish("hh", {"pairs": pairs_table(range(n))}, **META)
        again = DatasetStore(root)
        assert again.catalog_kind == "postgres" and [v.parents for v in again.versions("hh")] == [[], ["hh@1"]]
        assert again.read("hh", "pairs", version=1).equals(pairs_table(range(20)))
        assert again.verify("hh")["problems"] == []
        assert sql("SELECT count(*) AS n FROM pairs", root)["n"].to_list() == [30]
        keys = [o["Key"] for o in s3.client().list_objects_v2(Bucket="pg-data")["Contents"]]
        assert "team/catalog.json" in keys and sum(k.endswith(".parquet") for k in keys) == 2
        assert not any("catalog.ducklake" in k for k in keys)
