"""SQL over published datasets: attached names, default views, "NAME@N" time travel, errors."""

from __future__ import annotations

from pathlib import Path

import polars
import pyarrow as pa
import pytest

from curation.errors import CurationError, DatasetNotFound
from curation.store import query
from curation.store.catalog import DatasetStore
from tests.store.test_catalog import META, decisions_table, pairs_table, publish_three


@pytest.fixture(scope="module")
def root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """hh: three versions; then hh-small (one version) is published last, so it is the default."""
    root = tmp_path_factory.mktemp("root")
    store = DatasetStore(root)
    publish_three(store)
    store.publish("hh-small", {"pairs": pairs_table(range(20)), "decisions": decisions_table(range(20))}, **META)
    return root


def test_default_dataset_is_most_recent_with_note(root: Path, capsys: pytest.CaptureFixture[str]) -> None:
    df = query.sql("SELECT count(*) AS n FROM pairs", root)
    assert isinstance(df, polars.DataFrame) and df["n"][0] == 20
    assert "'hh-small', the most recently published" in capsys.readouterr().err


def test_every_dataset_is_attached_by_name(root: Path) -> None:
    got = query.sql('SELECT (SELECT count(*) FROM hh.pairs) AS a, (SELECT count(*) FROM "hh-small".pairs) AS b', root)
    assert got.row(0) == (300, 20)
    ds = query.sql("SELECT dataset, latest_version, versions, rows FROM datasets ORDER BY dataset", root)
    assert ds["dataset"].to_list() == ["hh", "hh-small"] and ds["latest_version"].to_list() == [3, 1]
    assert ds["versions"].to_list() == [3, 1]
    arrow = query.sql_arrow("SELECT rows['pairs'] AS n FROM datasets ORDER BY dataset", root)
    assert isinstance(arrow, pa.Table) and arrow.column("n").to_pylist() == [300, 20]


def test_dataset_and_version_pin_bare_views(root: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert query.sql("SELECT count(*) AS n FROM quarantine", root, dataset="hh", version=1)["n"][0] == 12
    assert query.sql("SELECT min(pair_id) AS m FROM pairs", root, dataset="hh")["m"][0] == "p00050"
    assert query.sql("SELECT min(pair_id) AS m FROM pairs", root, dataset="hh", version=1)["m"][0] == "p00000"
    v = query.sql("SELECT version, config_hash, counts, parents FROM versions ORDER BY version", root, dataset="hh")
    assert v["version"].to_list() == [1, 2, 3] and v["config_hash"].to_list() == ["cfg1", "cfg2", "cfg1"]
    assert v["parents"].to_list() == [[], ["hh@1", "shp@4"], ["hh@2"]]
    assert query.sql("SELECT counts->>'kept' AS k FROM versions LIMIT 1", root, dataset="hh")["k"][0] == "8"
    assert capsys.readouterr().err == ""  # no note when the dataset is named
    with pytest.raises(CurationError, match="Table with name quarantine does not exist"):
        query.sql("SELECT * FROM quarantine", root, dataset="hh")  # dropped in v3


def test_versioned_names_in_sql(root: Path) -> None:
    got = query.sql(
        'SELECT (SELECT count(*) FROM "hh@1".pairs) AS v1, (SELECT count(*) FROM "hh@1".quarantine) AS q1, '
        '(SELECT count(*) FROM "hh-small@1".decisions) AS s, '
        '(SELECT count(*) FROM "hh@2".pairs p JOIN "hh@1".pairs USING (pair_id)) AS common',
        root,
    )
    assert got.row(0) == (300, 12, 20, 250)
    con = query.connect(root, dataset="hh", query='SELECT * FROM "hh@2".decisions')
    try:
        assert con.execute('SELECT count(*) FROM "hh@2".decisions').fetchone()[0] == 300
        assert con.execute("SELECT count(*) FROM hh.decisions").fetchone()[0] == 300
    finally:
        con.close()


def test_errors_are_curation_errors(root: Path, tmp_path: Path) -> None:
    with pytest.raises(CurationError, match="Parser Error") as err:
        query.sql("SELEC 1", root)
    assert err.value.__cause__ is None and err.value.__suppress_context__
    with pytest.raises(DatasetNotFound, match="no version 7; versions: 1, 2, 3"):
        query.sql('SELECT * FROM "hh@7".pairs', root)
    with pytest.raises(DatasetNotFound, match="no published dataset named 'nope'.*published: hh, hh-small"):
        query.sql("SELECT 1", root, dataset="nope")
    with pytest.raises(DatasetNotFound, match="no version 9"):
        query.sql("SELECT 1", root, dataset="hh", version=9)
    with pytest.raises(DatasetNotFound, match="nothing is published yet.*curate run RECIPE"):
        query.sql("SELECT 1", tmp_path / "empty")


def test_open_connection_does_not_block_publish(tmp_path: Path) -> None:
    store = DatasetStore(tmp_path, lock_timeout_s=2)
    store.publish("solo", {"pairs": pairs_table(range(10))}, **META)
    con = query.connect(tmp_path)  # the only dataset: no note, it is the default
    try:
        store.publish("solo", {"pairs": pairs_table(range(30))}, **META)
        assert con.execute("SELECT count(*) FROM pairs").fetchone()[0] == 10  # its snapshot of the catalog
        assert con.execute("SELECT max(version) FROM versions").fetchone()[0] == 1
    finally:
        con.close()
    assert query.sql("SELECT count(*) AS n FROM pairs", tmp_path)["n"][0] == 30


# --------------------------------------------------------------------------- read-only and confined


def _fingerprint(root: Path) -> dict[str, tuple[int, int, int]]:
    """Every file under the data root: (size, mtime_ns, inode); catalogs included."""
    return {str(p.relative_to(root)): (p.stat().st_size, p.stat().st_mtime_ns, p.stat().st_ino) for p in root.rglob("*") if p.is_file()}


ATTACKS = {
    "update through an attached catalog": "ATTACH '{catalog}' AS c; UPDATE c.pairs SET pair_id = 'x'",
    "the catalog attached read-write": "ATTACH '{catalog}' AS c",
    "DuckLake attach that adds a snapshot": "ATTACH 'ducklake:{catalog}' AS l; CREATE TABLE l.t AS SELECT 1",
    "copy over a version's data file": "COPY (SELECT 1 AS a) TO '{datafile}' (FORMAT parquet)",
    "copy to a file of one's own": "COPY pairs TO '{tmp}/out.csv'",
    "a read then a drop": "SELECT 1; DROP VIEW pairs",
    "a create": "CREATE TABLE mine AS SELECT * FROM pairs",
    "an insert": "INSERT INTO versions SELECT * FROM versions",
    "undo the confinement": "SET enable_external_access = true",
    "a pragma that sets": "PRAGMA threads=1",
    "install an extension": "INSTALL httpfs",
    "load an extension": "LOAD httpfs",
    "export everything": "EXPORT DATABASE '{tmp}/dump'",
    "import a dump": "IMPORT DATABASE '{tmp}/dump'",
    "a call": "CALL ducklake_snapshots('hh')",
    "explain analyze of a write": "EXPLAIN ANALYZE CREATE TABLE t AS SELECT 1",
    "a transaction": "BEGIN",
    "a checkpoint": "CHECKPOINT",
    "a macro": "CREATE MACRO m(a) AS a",
    "a secret": "CREATE SECRET s (TYPE s3, KEY_ID 'k', SECRET 's')",
}
READS_OUTSIDE = {
    "a system file": "SELECT * FROM read_text('/etc/passwd')",
    "a file of one's own": "SELECT * FROM read_csv('{tmp}/mine.csv')",
    "a glob outside": "SELECT * FROM glob('/tmp/*')",
    "the catalog file": "SELECT * FROM read_blob('{catalog}')",
}


@pytest.mark.parametrize("what", [*ATTACKS, *READS_OUTSIDE])
def test_sql_cannot_change_a_version_or_read_outside_the_datasets(root: Path, tmp_path: Path, what: str) -> None:
    (tmp_path / "mine.csv").write_text("a,b\n1,2\n")
    store = DatasetStore(root)
    datafile = next((root / "datasets" / "hh" / "files").rglob("*.parquet"))
    sql = {**ATTACKS, **READS_OUTSIDE}[what].format(catalog=root / "datasets" / "hh" / "catalog.ducklake", datafile=datafile, tmp=tmp_path)
    before, checks = _fingerprint(root), [store.verify("hh", v)["problems"] for v in (1, 2, 3)]
    pairs = query.sql("SELECT count(*) AS n FROM hh.pairs", root)["n"][0]
    with pytest.raises(CurationError) as err:
        query.sql(sql, root)
    message = str(err.value)
    assert "\n" not in message
    if what in ATTACKS:
        assert message.startswith("curate sql") and "nothing was run" in message
    else:
        assert "disabled by configuration" in message and "--allow-external-reads" in message
    assert _fingerprint(root) == before and [store.verify("hh", v)["problems"] for v in (1, 2, 3)] == checks == [[], [], []]
    assert query.sql("SELECT count(*) AS n FROM hh.pairs", root)["n"][0] == pairs
    assert sorted(p.name for p in tmp_path.iterdir()) == ["mine.csv"]  # nothing written outside either


def test_reads_of_every_kind_still_work(root: Path) -> None:
    for sql in (
        "WITH x AS (SELECT * FROM hh.pairs) SELECT count(*) FROM x",
        "FROM hh.pairs SELECT count(*)",
        "DESCRIBE hh.pairs",
        "SUMMARIZE SELECT source_row FROM hh.pairs",
        "SHOW TABLES",
        "PRAGMA table_info('pairs')",
        "VALUES (1), (2)",
        "EXPLAIN SELECT count(*) FROM pairs",
        "EXPLAIN ANALYZE SELECT count(*) FROM pairs",
        "SELECT 1 AS a; SELECT 2 AS b",
    ):
        assert query.sql(sql, root, dataset="hh").height >= 1, sql
    assert query.sql("SELECT 1 AS a; SELECT 2 AS b", root)["b"].to_list() == [2]  # the last statement's result


def test_external_reads_can_be_allowed_but_writes_never(root: Path, tmp_path: Path) -> None:
    (tmp_path / "mine.csv").write_text("pair_id,note\nx,hello\n")
    got = query.sql(f"SELECT note FROM read_csv('{tmp_path}/mine.csv')", root, allow_external_reads=True)
    assert got["note"].to_list() == ["hello"]
    with pytest.raises(CurationError, match="statement 1 is COPY"):
        query.sql(f"COPY (SELECT 1) TO '{tmp_path}/out.csv'", root, allow_external_reads=True)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["mine.csv"]


def test_the_bare_names_note_only_when_a_bare_name_is_read(root: Path, capsys: pytest.CaptureFixture[str]) -> None:
    query.sql("SELECT count(*) FROM hh.pairs", root)
    assert "bare table names" not in capsys.readouterr().err
    query.sql("WITH x AS (SELECT 1) SELECT (SELECT count(*) FROM decisions) FROM x", root)
    assert "bare table names refer to 'hh-small'" in capsys.readouterr().err
