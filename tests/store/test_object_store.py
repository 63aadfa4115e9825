"""An object-store data root (s3://bucket/prefix) against a real S3 server on 127.0.0.1.

moto's server mode (``tests.support.s3_server``) is started once for the module and
stopped at its end; each test gets its own bucket. The store, ``curate sql``, the CLI and a
full pipeline run use it exactly as they would use AWS S3 or MinIO (endpoint and
credentials from the AWS_* environment). The credentials are planted values that must never
show up in anything written: objects, version metadata, run folders, CLI output, errors.
One test uses a local root: publishing while other threads read, which the object-store
work found broken for every root (writers now use a private DuckDB).
"""

from __future__ import annotations

import gzip
import json
import re
import subprocess
import threading
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pyarrow as pa
import pytest
from typer.testing import CliRunner

import curation.store.catalog as store_module
from curation.config import load_config
from curation.errors import ConfigError, CurationError, DatasetNotFound
from curation.run.runner import curate
from curation.store.catalog import DatasetBusy, DatasetStore
from curation.store.contract import schema_string
from curation.store.query import sql
from schemas import arrow_schema
from tests.helpers import write_recipe
from tests.store.test_catalog import META, decisions_table, pairs_table, quarantine_table, run_py, wait_for_line
from tests.support.s3_server import INSTALL_HINT, S3Server, available

PLANTED_KEY_ID = "AKIAPLANTEDKEY7Q2XZ"
PLANTED_SECRET = "planted-secret-9f8e7d6c5b4a-never-write-me"


@pytest.fixture(scope="module")
def s3():
    if not available():
        pytest.skip(INSTALL_HINT)
    with S3Server(key_id=PLANTED_KEY_ID, secret=PLANTED_SECRET) as server, server.environment():
        yield server


@pytest.fixture
def root(s3: S3Server) -> str:
    """A fresh bucket per test; the data root is a prefix inside it."""
    return f"s3://{s3.create_bucket(f'curate-{uuid.uuid4().hex[:12]}')}/team/curation"


def objects(s3: S3Server, root: str) -> dict[str, bytes]:
    """Every object under the root's bucket, catalogs decompressed."""
    bucket = root.removeprefix("s3://").split("/")[0]
    client = s3.client()
    out = {}
    for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket):
        for obj in page.get("Contents", []):
            body = client.get_object(Bucket=bucket, Key=obj["Key"])["Body"].read()
            out[obj["Key"]] = gzip.decompress(body) if obj["Key"].endswith(".gz") else body
    return out


def assert_no_credentials(*blobs: bytes | str, folders: tuple[Path, ...] = ()) -> None:
    found = []
    for folder in folders:
        blobs += tuple(p.read_bytes() for p in folder.rglob("*") if p.is_file())
    for blob in blobs:
        data = blob.encode() if isinstance(blob, str) else blob
        found += [s for s in (PLANTED_KEY_ID, PLANTED_SECRET) if s.encode() in data]
    assert not found, f"credentials written out: {found}"


def test_publish_time_travel_schemas_and_diff(s3: S3Server, root: str) -> None:
    store = DatasetStore(root)
    assert store.datasets() == []
    with pytest.raises(DatasetNotFound, match="nothing is published yet under s3://"):
        store.versions("hh")
    v1 = store.publish(
        "hh",
        {"pairs": pairs_table(range(300)), "decisions": decisions_table(range(300)), "quarantine": quarantine_table(12)},
        **META,
        run_id="r1",
    )
    v2 = store.publish("hh", {"pairs": pairs_table(range(50, 350)), "quarantine": quarantine_table(0)}, **META, run_id="r2")
    assert (v1.version, v2.version, v2.parents) == (1, 2, ["hh@1"])

    again = DatasetStore(root)  # what another machine sees: everything comes from the bucket
    assert again.datasets() == ["hh"]
    vs = again.versions("hh")
    assert [(v.version, v.run_id, v.tables) for v in vs] == [
        (1, "r1", {"pairs": 300, "decisions": 300, "quarantine": 12}),
        (2, "r2", {"pairs": 300, "quarantine": 0}),
    ]
    assert vs[1] == v2
    # time travel, with the exact contract schemas (nested lists, structs, maps, nulls)
    assert again.read("hh", "pairs", version=1).equals(pairs_table(range(300)))
    assert again.read("hh", "pairs").equals(pairs_table(range(50, 350)))
    assert again.read("hh", "decisions", version=1).equals(decisions_table(range(300)))
    assert again.read("hh", "quarantine", version=1).equals(quarantine_table(12))
    assert again.read("hh", "quarantine").schema == arrow_schema("quarantine") and again.read("hh", "quarantine").num_rows == 0
    assert vs[0].schemas["pairs"] == schema_string(arrow_schema("pairs"))
    with pytest.raises(DatasetNotFound, match="hh@2 has no table 'decisions'"):
        again.read("hh", "decisions")
    batches = list(again.scan("hh", "pairs", version=1, columns=["pair_id"], batch_size=64))
    assert sum(b.num_rows for b in batches) == 300 and len(batches) > 1
    d = again.diff("hh", 1, 2)
    assert (d["pairs"]["added"], d["pairs"]["removed"]) == (50, 50)

    keys = objects(s3, root)
    assert "team/curation/datasets/hh/catalog.ducklake.gz" in keys
    data = [k for k in keys if k.startswith("team/curation/datasets/hh/files/main/") and k.endswith(".parquet")]
    assert len(data) == 4  # pairs x2, decisions, quarantine v1 (an empty table needs no file)
    assert_no_credentials(*keys.values(), json.dumps([v.__dict__ for v in vs]))


def test_sql_reads_the_bucket_from_python_and_the_cli(s3: S3Server, root: str) -> None:
    from curate.cli import app

    store = DatasetStore(root)
    store.publish("hh", {"pairs": pairs_table(range(300)), "decisions": decisions_table(range(300))}, **META, run_id="r1")
    store.publish("hh", {"pairs": pairs_table(range(50, 420))}, **META, run_id="r2")
    store.publish("shp", {"pairs": pairs_table(range(7))}, **META)

    n = sql("SELECT count(*) AS n, min(source_row) AS lo FROM pairs", root, dataset="hh")
    assert n.row(0) == (370, 50)
    old = sql('SELECT count(*) AS n FROM "hh@1".pairs JOIN "hh@1".decisions USING (pair_id)', root, dataset="hh")
    assert old["n"][0] == 300
    listed = sql("SELECT dataset, latest_version FROM datasets ORDER BY 1", root, dataset="hh")
    assert listed.rows() == [("hh", 2), ("shp", 1)]

    cli = CliRunner()
    out = cli.invoke(app, ["sql", 'SELECT count(*) AS n FROM "hh@1".pairs', "--data-root", root, "--dataset", "hh", "--format", "json"])
    assert out.exit_code == 0, out.output
    assert json.loads(out.stdout) == [{"n": 300}]
    listing = cli.invoke(app, ["datasets", "list", "--data-root", root])
    assert listing.exit_code == 0 and "hh" in listing.stdout and "shp" in listing.stdout and "v2" in listing.stdout
    shown = cli.invoke(app, ["datasets", "show", "hh@1", "--data-root", root])
    assert shown.exit_code == 0 and "hh@1" in shown.stdout and "pairs 300 rows" in shown.stdout
    missing = cli.invoke(app, ["sql", "SELECT 1 FROM pairs", "--data-root", root, "--dataset", "nope"])
    assert missing.exit_code == 2 and "no published dataset named 'nope'" in missing.output
    assert_no_credentials(out.output, listing.output, shown.output, missing.output)


def test_pipeline_run_on_s3_equals_the_local_run(s3: S3Server, root: str, tmp_path: Path, hh_path: Path) -> None:
    from curate.cli import app

    sources = [{"name": "hh", "path": str(hh_path), "adapter": "hh_rlhf"}]
    local_cfg = load_config(write_recipe(tmp_path / "local", sources, dataset="hh"))
    local = curate(local_cfg)
    work = tmp_path / "work"
    recipe = write_recipe(tmp_path / "remote", sources, dataset="hh", own_root=False, data_root=root, work_dir=str(work))
    cli = CliRunner()
    run = cli.invoke(app, ["run", str(recipe), "--local"])
    assert run.exit_code == 0, run.output
    assert "Row accounting" in run.output and "OK" in run.output

    remote, mine = DatasetStore(root), DatasetStore(local_cfg.data_root)
    v, ref = remote.version("hh"), mine.version("hh")
    assert v.counts == ref.counts == local.funnel and v.counts["rows_in"] == 1200
    assert v.tables == ref.tables and v.config_hash == ref.config_hash and v.inputs == ref.inputs
    for table in ("pairs", "decisions", "quarantine"):
        assert remote.read("hh", table).equals(mine.read("hh", table)), table
    assert sql("SELECT count(DISTINCT pair_id) AS n FROM pairs", root)["n"][0] == v.tables["pairs"]

    # staging, run folder and report copy are local (work_dir); the report also sits beside the version
    assert len(list((work / "runs").iterdir())) == 1 and not list(Path.cwd().glob("s3:*"))
    fetched = remote.get_files("hh", "reports/v1", tmp_path / "fetched")
    assert fetched is not None and (fetched / "report.html").stat().st_size > 1000
    assert json.loads((fetched / "summary.json").read_text())["data_root"] == root

    again = cli.invoke(app, ["run", str(recipe), "--local"])
    assert again.exit_code == 0 and "nothing to do" in again.output
    exported = cli.invoke(app, ["export", "hh", "--data-root", root, "--out", str(tmp_path / "export"), "--files", "parquet"])
    assert exported.exit_code == 0, exported.output
    split = re.search(r"Exported hh@1 \(conversational\): train ([\d,]+), test ([\d,]+)", exported.output)
    assert split and sum(int(n.replace(",", "")) for n in split.groups()) == v.tables["pairs"]
    assert_no_credentials(
        *objects(s3, root).values(), run.output, exported.output, json.dumps(v.__dict__), folders=(work, tmp_path / "export")
    )


def test_two_publishers_racing_for_one_catalog(root: str) -> None:
    """Both commit on top of v1 at the same moment (a barrier inside the transaction): the
    catalog upload of one is refused, and it commits again on top of the other's version."""
    DatasetStore(root).publish("hh", {"pairs": pairs_table(range(10))}, **META, run_id="base")
    barrier = threading.Barrier(2, timeout=60)
    calls: list[int] = []

    def hook(phase: str) -> None:
        if phase == "locked":
            calls.append(threading.get_ident())
            if calls.count(threading.get_ident()) == 1:
                barrier.wait()

    def publish(k: int) -> store_module.VersionInfo:
        return DatasetStore(root).publish("hh", {"pairs": pairs_table(range(100 * k, 100 * k + 20 + k))}, **META, run_id=f"t{k}")

    store_module._TEST_HOOK = hook
    try:
        with ThreadPoolExecutor(2) as pool:
            infos = list(pool.map(publish, (1, 2)))
    finally:
        store_module._TEST_HOOK = None
    assert len(calls) == 3  # two first attempts, one retry
    assert sorted(i.version for i in infos) == [2, 3]
    vs = DatasetStore(root).versions("hh")
    assert [v.version for v in vs] == [1, 2, 3] and vs[2].parents == ["hh@2"] and vs[1].parents == ["hh@1"]
    for v in vs[1:]:
        k = int(v.run_id[1:])
        assert DatasetStore(root).read("hh", "pairs", version=v.version).equals(pairs_table(range(100 * k, 100 * k + 20 + k)))


def test_lost_race_past_the_deadline_is_busy_and_leaves_nothing(s3: S3Server, root: str) -> None:
    DatasetStore(root).publish("hh", {"pairs": pairs_table(range(10))}, **META, run_id="base")
    barrier = threading.Barrier(2, timeout=60)
    store_module._TEST_HOOK = lambda phase: barrier.wait() if phase == "locked" else None
    try:
        with ThreadPoolExecutor(2) as pool:
            futures = [
                pool.submit(
                    DatasetStore(root, lock_timeout_s=0).publish, "hh", {"pairs": pairs_table(range(k, k + 5))}, **META, run_id=f"t{k}"
                )
                for k in (100, 200)
            ]
            outcomes = [f.exception(timeout=120) or f.result() for f in futures]
    finally:
        store_module._TEST_HOOK = None
    busy = [o for o in outcomes if isinstance(o, DatasetBusy)]
    won = [o for o in outcomes if isinstance(o, store_module.VersionInfo)]
    assert len(busy) == len(won) == 1, outcomes
    assert "retry" in str(busy[0]) and "catalog.ducklake.gz" in str(busy[0])
    assert [v.run_id for v in DatasetStore(root).versions("hh")] == ["base", won[0].run_id]
    pair_files = [k for k in objects(s3, root) if "/files/main/pairs/" in k]
    assert len(pair_files) == 2  # the loser removed what it had staged
    assert DatasetStore(root).publish("hh", {"pairs": pairs_table(range(3))}, **META).version == 3


def test_publishing_while_other_threads_read(tmp_path: Path) -> None:
    """A local root, for contrast: DuckLake writes failed ~1 in 3 ('Catalog
    "__ducklake_metadata_..." does not exist') while another thread of the process attached
    and detached catalogs in the same DuckDB, so writers now take a private database."""
    store = DatasetStore(tmp_path)
    for name in ("a", "b"):
        store.publish(name, {"pairs": pairs_table(range(10))}, **META)
    errors: list[BaseException] = []
    writing = threading.Event()

    def read_until_done() -> None:
        while not writing.is_set():
            try:
                store.versions("b")
                store.read("b", "pairs")
            except BaseException as err:  # noqa: BLE001 - collected for the assertion
                errors.append(err)

    readers = [threading.Thread(target=read_until_done)]
    for t in readers:
        t.start()
    try:
        for i in range(10):
            store.publish("a", {"pairs": pairs_table(range(i + 1))}, **META, run_id=f"w{i}")
    finally:
        writing.set()
        for t in readers:
            t.join(timeout=60)
    assert not errors, errors[:3]
    assert [v.tables["pairs"] for v in store.versions("a")] == [10, *range(1, 11)]


PUBLISHER = """
    import sys
    from curation.store.catalog import DatasetStore
    from tests.store.test_catalog import META, pairs_table
    root, who, base = sys.argv[1], sys.argv[2], int(sys.argv[3])
    store = DatasetStore(root, lock_timeout_s=120)
    print("ready", flush=True)
    sys.stdin.readline()
    for i in range(2):
        v = store.publish("race", {"pairs": pairs_table(range(base + 100 * i, base + 100 * i + 10 + i))}, **META, run_id=f"{who}-{i}")
        print(v.version, flush=True)
"""


def test_concurrent_publisher_processes_keep_every_version(root: str) -> None:
    procs = [run_py(PUBLISHER, root, who, base, stdin=subprocess.PIPE) for who, base in (("a", "1000"), ("b", "5000"))]
    for p in procs:
        wait_for_line(p, "ready", timeout=120)
    for p in procs:
        p.stdin.write("go\n")
        p.stdin.flush()
    for p in procs:
        out, err = p.communicate(timeout=240)
        assert p.returncode == 0, err
    store = DatasetStore(root)
    vs = store.versions("race")
    assert [v.version for v in vs] == [1, 2, 3, 4]
    assert all(v.parents == [f"race@{v.version - 1}"] for v in vs[1:])
    for who in ("a", "b"):
        mine = [v for v in vs if v.run_id.startswith(who)]
        assert [v.run_id for v in mine] == [f"{who}-{i}" for i in range(2)]  # each publisher's in its own order
    for v in vs:
        base, i = {"a": 1000, "b": 5000}[v.run_id[0]], int(v.run_id[-1])
        assert store.read("race", "pairs", version=v.version).equals(pairs_table(range(base + 100 * i, base + 100 * i + 10 + i)))


KILLED_BEFORE_UPLOAD = """
    import os, signal, sys
    import curation.store.catalog as store
    from tests.store.test_catalog import META, pairs_table
    def hook(phase):
        if phase == "locked":  # the new catalog is committed locally, not uploaded yet
            os.kill(os.getpid(), signal.SIGKILL)
    store._TEST_HOOK = hook
    store.DatasetStore(sys.argv[1]).publish("hh", {"pairs": pairs_table(range(500, 700))}, **META, run_id="killed")
"""


def test_killed_publisher_leaves_no_partial_version(s3: S3Server, root: str) -> None:
    store = DatasetStore(root)
    store.publish("hh", {"pairs": pairs_table(range(100))}, **META, run_id="first")
    proc = run_py(KILLED_BEFORE_UPLOAD, root)
    proc.communicate(timeout=120)
    assert proc.returncode == -9
    assert [v.run_id for v in store.versions("hh")] == ["first"]
    assert store.read("hh", "pairs").equals(pairs_table(range(100)))
    assert len([k for k in objects(s3, root) if "/files/main/pairs/" in k]) == 2  # v1's and the orphan
    removed = store.cleanup_orphans("hh", older_than_s=0)
    assert len(removed) == 1 and "/files/main/pairs/staged-" in removed[0]
    v = store.publish("hh", {"pairs": pairs_table(range(10))}, **META, run_id="after")
    assert (v.version, v.parents) == (2, ["hh@1"])
    assert store.read("hh", "pairs", version=1).num_rows == 100 and store.read("hh", "pairs").num_rows == 10


def test_bad_urls_and_unreachable_buckets_say_what_is_wrong(s3: S3Server) -> None:
    for url, why in [
        ("gs://bucket/x", "use a local folder or s3://"),
        ("s3://Bad_Bucket/x", "not an S3 bucket name"),
        ("s3://bucket/a/../b", "'..' are not allowed"),
    ]:
        with pytest.raises(ConfigError, match=why):
            DatasetStore(url)
    nowhere = DatasetStore("s3://no-such-bucket-here/x")
    with pytest.raises(CurationError, match="NoSuchBucket") as listing:
        nowhere.datasets()
    with pytest.raises(CurationError, match="NoSuchBucket") as publishing:
        nowhere.publish("hh", {"things": pa.table({"x": [1]})}, **META)
    assert_no_credentials(str(listing.value), str(publishing.value))


def test_sql_on_a_bucket_reads_only_the_datasets_and_writes_nothing(s3: S3Server, root: str) -> None:
    """The same confinement as on a local root: statements that write are refused, and reads
    reach only the datasets' files under the root (not the rest of the bucket)."""
    store = DatasetStore(root)
    store.publish("hh", {"pairs": pairs_table(range(30))}, **META)
    bucket = root.removeprefix("s3://").split("/")[0]
    s3.client().put_object(Bucket=bucket, Key="elsewhere/secret.csv", Body=b"a,b\n1,2\n")
    before = {k: v for k, v in objects(s3, root).items() if not k.endswith(".gz")}
    assert sql("SELECT count(*) AS n FROM pairs", root)["n"][0] == 30
    for attack in (f"COPY pairs TO '{root}/datasets/hh/files/x.parquet'", f"COPY pairs TO 's3://{bucket}/elsewhere/out.csv'"):
        with pytest.raises(CurationError, match="statement 1 is COPY"):
            sql(attack, root)
    with pytest.raises(CurationError, match="disabled by configuration"):
        sql(f"SELECT * FROM read_csv('s3://{bucket}/elsewhere/secret.csv')", root)
    assert {k: v for k, v in objects(s3, root).items() if not k.endswith(".gz")} == before
    assert store.verify("hh")["problems"] == [] and store.verify("hh")["recorded"]
