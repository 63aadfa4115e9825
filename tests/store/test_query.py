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
