"""Secrets and paths: names cannot leave the data root, and an API key is never written anywhere.

* Dataset names are folder names: every form of escape ('..', '/', absolute paths, a NUL, a
  name that is a symlink to elsewhere) is refused with a ``ConfigError`` by the store, the
  SQL layer and the CLI, and nothing is created or written outside the root.
* A key planted in the environment variable a recipe's ``api_key_env`` names (generator and
  judge on the ``openai`` backend, against the stub, which rejects any other key, so the run
  only succeeds if the key is really sent) never appears in any file the run leaves: the data
  root and work folder (versions, Parquet, manifests, summary.json, reports, request and
  label caches, Prefect's stage records), Prefect's home (its SQLite database, logs and
  artifacts), temp files, nor in the output of ``curate run``. The grep is shown able to
  fail first: it finds the key planted in a text file and in a SQLite database.
"""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import sys
import uuid
from pathlib import Path

import pytest
import yaml

from curation.errors import ConfigError, CurationError
from curation.sources import check_dataset_name
from curation.store.catalog import DatasetStore
from curation.store.query import sql
from tests.store.test_catalog import META, pairs_table
from tests.support.openai_stub import OpenAIStub

REPO = Path(__file__).resolve().parents[2]
SAMPLE = REPO / "data" / "samples" / "hh-rlhf-harmless-base" / "test-dev-1200.jsonl"
KEY_ENV = "CURATE_TEST_PLANTED_KEY"
ESCAPES = ["../x", "..", ".", "/abs", "/tmp/x", "a/b", "x/../y", "..\\x", "x\\y", "ab\x00c", " x", "x ", "-x", "Ab", "x" * 65, "~", "main"]


# --------------------------------------------------------------------------- names and paths


@pytest.mark.parametrize("name", ESCAPES)
def test_no_dataset_name_leaves_the_root(tmp_path: Path, name: str) -> None:
    root = tmp_path / "root"
    store = DatasetStore(root)
    with pytest.raises(ConfigError, match="invalid dataset name"):
        check_dataset_name(name) if name != "main" else store.check_name(name)
    for call in (
        lambda: store.publish(name, {"pairs": pairs_table(range(2))}, **META),
        lambda: store.versions(name),
        lambda: store.read(name, "pairs"),
        lambda: store.cleanup_orphans(name),
        lambda: store.diff(name, 1, 2),
    ):
        with pytest.raises(ConfigError, match="invalid dataset name"):
            call()
    assert sorted(p.relative_to(tmp_path).as_posix() for p in tmp_path.rglob("*")) == []  # nothing created, inside or out


def test_cli_and_sql_refuse_escaping_names(tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from curate.cli import app

    root = tmp_path / "root"
    DatasetStore(root).publish("good", {"pairs": pairs_table(range(3))}, **META)
    runner = CliRunner()
    for args in (
        ["datasets", "show", "../good"],
        ["report", "../good", "--no-open"],
        ["export", "/etc/passwd", "--out", str(tmp_path / "o")],
    ):
        out = runner.invoke(app, [*args, "--data-root", str(root)])
        assert out.exit_code != 0 and "invalid dataset name" in out.output, (args, out.output)
    assert not (tmp_path / "o").exists()
    with pytest.raises(CurationError):
        sql('SELECT count(*) FROM "../good@1".pairs', root)
    assert sql("SELECT count(*) AS n FROM good.pairs", root)["n"][0] == 3


def test_a_dataset_folder_symlinked_elsewhere_is_refused(tmp_path: Path) -> None:
    """Someone links ROOT/datasets/evil to a dataset outside the root: the store refuses it
    by name and writes nothing through the link."""
    root, outside = tmp_path / "root", tmp_path / "outside"
    DatasetStore(outside).publish("evil", {"pairs": pairs_table(range(3))}, **META)
    store = DatasetStore(root)
    store.publish("good", {"pairs": pairs_table(range(2))}, **META)
    (root / "datasets" / "evil").symlink_to(outside / "datasets" / "evil", target_is_directory=True)
    before = {p: p.stat().st_mtime_ns for p in outside.rglob("*")}
    for call in (
        lambda: store.versions("evil"),
        lambda: store.publish("evil", {"pairs": pairs_table(range(9))}, **META),
        lambda: store.cleanup_orphans("evil", older_than_s=0),
    ):
        with pytest.raises(ConfigError, match="resolves outside"):
            call()
    assert {p: p.stat().st_mtime_ns for p in outside.rglob("*")} == before
    assert [v.tables for v in DatasetStore(outside).versions("evil")] == [{"pairs": 3}]
    assert [v.version for v in store.versions("good")] == [1]
    # the link is not listed, so SQL over the root still works and sees only the real dataset
    assert store.datasets() == ["good"]
    assert sql("SELECT count(*) AS n FROM good.pairs", root)["n"].to_list() == [2]


# --------------------------------------------------------------------------- the planted key


def files_containing(folder: Path, needles: list[bytes]) -> list[str]:
    """Every file under ``folder`` (binary ones included) whose bytes contain a needle."""
    hits = []
    for path in sorted(folder.rglob("*")):
        if path.is_file() and not path.is_symlink():
            data = path.read_bytes()
            if any(n in data for n in needles):
                hits.append(str(path.relative_to(folder)))
    return hits


def test_the_grep_finds_a_planted_key(tmp_path: Path) -> None:
    key = f"sk-planted-{uuid.uuid4().hex}"
    (tmp_path / "a" / "b").mkdir(parents=True)
    (tmp_path / "a" / "b" / "manifest.json").write_text(json.dumps({"headers": {"Authorization": f"Bearer {key}"}}))
    con = sqlite3.connect(tmp_path / "prefect.db")
    con.execute("CREATE TABLE log (message TEXT)")
    con.executemany("INSERT INTO log VALUES (?)", [("x" * 5000,), (f"calling with {key}",)])
    con.commit()
    con.close()
    (tmp_path / "clean.txt").write_text("nothing here")
    assert files_containing(tmp_path, [key.encode()]) == ["a/b/manifest.json", "prefect.db"]


def _snapshot_changes(pg: object, root: Path) -> str:
    """The DuckLake commit-message table of the run's dataset (its schema starts with the
    root's namespace; the session's server holds other tests' catalogs too)."""
    namespace = json.loads((root / "catalog.json").read_text())["namespace"]
    schema = pg.psql(
        "SELECT table_schema FROM information_schema.tables WHERE table_name = 'ducklake_snapshot_changes' "
        f"AND starts_with(table_schema, '{namespace}_secret_')"
    ).strip()
    return f'"{schema}".ducklake_snapshot_changes'


def secret_recipe(folder: Path, stub: OpenAIStub, catalog: str = "file") -> Path:
    backend = {
        "backend": "openai",
        "model": stub.model,
        "base_url": stub.base_url,
        "api_key_env": KEY_ENV,
        "max_concurrency": 4,
        "max_retries": 2,
        "timeout_s": 30,
    }
    lines = SAMPLE.read_text(encoding="utf-8").splitlines()[:12]
    data = folder / "hh.jsonl"
    data.write_text("\n".join(lines) + "\n", encoding="utf-8")
    recipe = {
        "publish": {"dataset": "secret"},
        "sources": [{"name": "hh", "path": str(data), "adapter": "hh_rlhf"}],
        "generate": {"generator": backend, "prompts": {"from": "pairs", "limit": 2}, "n": 2, "max_tokens": 8, "chunk_size": 2},
        "label": {"labelers": [{"name": "judge", "kind": "judge_pairwise", "backend": backend, "max_retries": 0}], "limit": 4},
        "data_root": str(folder / "data"),
        "catalog": catalog,
    }
    path = folder / "recipe.yaml"
    path.write_text(yaml.safe_dump(recipe, sort_keys=False))
    return path


# The CLI as a user runs it, with the diversity report's embedder left out: it loads torch
# (~16 s) and sees no key. Everything else, Prefect flow included, is the real `curate run`.
CURATE = "import curation.stages.generate.stage as g; g.measure_diversity = lambda *a, **k: {}; from curate.cli import main; main()"


@pytest.mark.parametrize("catalog", ["file", "postgres"])
def test_the_api_key_is_never_written_anywhere(tmp_path: Path, catalog: str, request: pytest.FixtureRequest) -> None:
    """With ``catalog: postgres`` the PostgreSQL password (in ``CURATE_PG_DSN``) is planted too,
    and the server's own data folder is searched as well (the catalog's rows live there)."""
    key = f"sk-planted-{uuid.uuid4().hex}"
    needles = [key.encode(), key[11:27].encode()]  # the key, and a piece of it (a cut or masked copy)
    pg = request.getfixturevalue("pg_server") if catalog == "postgres" else None
    if pg is not None:
        needles += [pg.password.encode(), pg.password[11:27].encode()]
    work = tmp_path / "run"
    work.mkdir()
    (tmp_path / "tmp").mkdir()
    prefect_home = tmp_path / "prefect-home"
    env = {
        **os.environ,
        KEY_ENV: key,
        "PREFECT_HOME": str(prefect_home),
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS": "180",  # the default 20 s is too short on a busy 2-core box
        "PREFECT_LOGGING_LEVEL": "DEBUG",  # everything Prefect would log goes to its database too
        "TMPDIR": str(tmp_path / "tmp"),
        "HF_HUB_OFFLINE": "1",
        "PYTHONPATH": str(REPO),
    }
    env.pop("PREFECT_API_URL", None)
    if pg is not None:
        env["CURATE_PG_DSN"] = pg.dsn
    with OpenAIStub(api_key=key) as stub:  # any other key gets 401: the run works only if the key is sent
        recipe = secret_recipe(work, stub, catalog=catalog)
        proc = subprocess.run(
            [sys.executable, "-c", CURATE, "run", str(recipe)], cwd=work, env=env, capture_output=True, timeout=600, check=False
        )
        sent = stub.stats_snapshot()["by_path"]
    out, err = proc.stdout.decode(errors="replace"), proc.stderr.decode(errors="replace")
    assert proc.returncode == 0, f"curate run failed:\n{out[-3000:]}\n{err[-3000:]}"
    assert sent.get("/v1/chat/completions", 0) >= 2 * 2 + 2 * 4  # generation and the judge both reached the stub
    assert "secret@1" in out or "secret v1" in out
    assert prefect_home.is_dir() and any(prefect_home.rglob("*.db")), "Prefect's database is not where the test looks"
    written = sorted(p.relative_to(tmp_path).as_posix() for p in tmp_path.rglob("*") if p.is_file())
    catalog_file = "run/data/datasets/secret/catalog.ducklake" if pg is None else "run/data/catalog.json"
    for expected in (catalog_file, "run/data/cache/requests.sqlite"):
        assert expected in written, f"{expected} not written; the grep would miss it"
    assert any(p.startswith("run/data/cache/labels/") for p in written)
    assert any(p.endswith("summary.json") for p in written) and any(p.endswith(".parquet") for p in written)

    for needle in needles:
        assert needle.decode() not in out and needle.decode() not in err, "the key is in curate run's output"
    assert files_containing(tmp_path, needles) == [], "the key was written to these files"
    if pg is not None:  # the version's record is in the server's tables: flushed to its files, then searched
        pg.psql("CHECKPOINT")
        assert "publish secret v1" in pg.psql("SELECT string_agg(commit_message, ',') FROM " + _snapshot_changes(pg, work / "data"))
        assert files_containing(pg.data, [b"publish secret v1"]), "the grep cannot see the catalog's rows in the server's files"
        assert files_containing(pg.data, needles[:2]) == [], "the API key is in the PostgreSQL catalog"
    assert KEY_ENV in recipe.read_text()  # what the recipe holds: the variable's name only


def test_a_rejected_key_is_not_echoed(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The server refuses the key: the error names the variable, never its value."""
    from typer.testing import CliRunner

    from curate.cli import app

    key = f"sk-wrong-{uuid.uuid4().hex}"
    monkeypatch.setenv(KEY_ENV, key)
    with OpenAIStub(api_key="the-right-one") as stub:
        recipe = secret_recipe(tmp_path, stub)
        out = CliRunner().invoke(app, ["run", str(recipe), "--local"])
    assert out.exit_code != 0 and f"rejected the key in ${KEY_ENV} (HTTP 401)" in out.output, out.output
    assert key not in out.output and key[9:25] not in out.output
    assert files_containing(tmp_path, [key.encode(), key[9:25].encode()]) == []
