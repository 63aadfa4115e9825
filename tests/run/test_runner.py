"""End to end on real data: the HH-RLHF sample through ingest -> validate -> dedup -> publish."""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from curation.run.runner import curate
from curation.store.catalog import DatasetStore
from curation.store.query import sql
from schemas import arrow_schema
from tests.helpers import hh, recipe_config, write_jsonl


@pytest.fixture(scope="module")
def hh_run(tmp_path_factory, hh_path):
    tmp = tmp_path_factory.mktemp("hh")
    cfg = recipe_config(tmp, [{"name": "hh", "path": str(hh_path), "adapter": "hh_rlhf"}], dataset="hh")
    return cfg, curate(cfg)


def test_real_hh_sample_accounts_for_every_row(hh_run, hh_path):
    cfg, result = hh_run
    f = result.funnel
    n_lines = sum(1 for line in hh_path.open() if line.strip())
    assert f["rows_in"] == n_lines == 1200
    assert f["rows_in"] == f["rows_quarantined"] + f["rows_filtered"] + f["rows_with_pairs"]
    assert f["pairs_out"] == f["pairs_quarantined"] + f["pairs_filtered"] + f["kept"]
    store = DatasetStore(cfg.data_root)
    v = store.version("hh")
    assert v.version == 1 and v.tables["pairs"] == f["kept"]
    assert v.tables["quarantine"] == f["rows_quarantined"] + f["pairs_quarantined"]


def test_real_hh_empty_chosen_rows_are_quarantined_with_reason(hh_run, hh_path):
    cfg, _ = hh_run
    empty_rows = []
    for i, line in enumerate(hh_path.open()):
        row = json.loads(line)
        if row["chosen"].rsplit("\n\nAssistant:", 1)[1].strip() == "":
            empty_rows.append(i)
    assert len(empty_rows) == 4  # as the data README counts
    q = sql("SELECT source_row, error_code, field, stage FROM quarantine ORDER BY source_row", cfg.data_root)
    got = q.filter(q["error_code"] == "empty_response")
    assert got["source_row"].to_list() == empty_rows
    assert set(got["field"].to_list()) == {"chosen"} and set(got["stage"].to_list()) == {"validate"}


def test_real_hh_inline_human_text_stays_in_the_response(hh_run, hh_path):
    cfg, _ = hh_run
    df = sql(
        "SELECT source_row, chosen[1].content AS c, rejected[1].content AS r FROM pairs WHERE c LIKE '%Human:%' OR r LIKE '%Human:%'",
        cfg.data_root,
    )
    assert df.height > 0
    for c, r in zip(df["c"], df["r"]):
        assert "\n\nHuman:" not in c and "\n\nHuman:" not in r


def test_published_tables_follow_the_contract(hh_run):
    cfg, _ = hh_run
    store = DatasetStore(cfg.data_root)
    for table in ("pairs", "decisions", "quarantine"):
        got = store.read("hh", table).schema
        want = arrow_schema(table)
        assert [(f.name, f.type) for f in got] == [(f.name, f.type) for f in want], table


def test_pair_ids_are_stable_and_unique(hh_run, tmp_path, hh_path):
    cfg, _ = hh_run
    ids = sql("SELECT pair_id FROM pairs ORDER BY source_row", cfg.data_root)["pair_id"].to_list()
    assert len(ids) == len(set(ids))
    cfg2 = recipe_config(tmp_path, [{"name": "hh", "path": str(hh_path), "adapter": "hh_rlhf"}], dataset="hh")
    curate(cfg2)
    ids2 = sql("SELECT pair_id FROM pairs ORDER BY source_row", cfg2.data_root)["pair_id"].to_list()
    assert ids == ids2


def test_rerun_with_same_config_and_inputs_is_unchanged_and_force_republishes(tmp_path, hh_path):
    src = [{"name": "hh", "path": str(hh_path), "adapter": "hh_rlhf", "limit": 50}]
    cfg = recipe_config(tmp_path, src, dataset="hh")
    first = curate(cfg)
    again = curate(cfg)
    assert again.unchanged and again.version == first.version == 1
    forced = curate(cfg, force=True)
    assert not forced.unchanged and forced.version == 2
    v2 = DatasetStore(cfg.data_root).version("hh", 2)
    assert v2.parents == ["hh@1"]


def test_exact_duplicates_are_filtered_and_point_at_the_kept_pair(tmp_path):
    rows = [
        hh([("user", "How do I bake bread?")], "Mix flour, water, yeast; knead; bake.", "No."),
        hh([("user", "how do I  bake bread?")], "mix flour, water, yeast; knead; bake.", "no."),  # same up to case/space
        hh([("user", "How do I bake bread?")], "Mix flour, water, yeast; knead; bake.", "No."),  # exact repeat
        hh([("user", "How do I bake cake?")], "Cream butter and sugar first.", "Buy one."),
    ]
    path = write_jsonl(tmp_path / "in.jsonl", rows)
    cfg = recipe_config(tmp_path, [{"name": "x", "path": str(path), "adapter": "hh_rlhf"}])
    result = curate(cfg)
    assert result.funnel["kept"] == 2
    assert result.funnel["filtered_by_reason"]["dedup_exact"] == {"exact_duplicate": 2}
    d = sql(
        "SELECT d.source_row, d.matched_pair_id, p.source_row AS kept_row FROM decisions d "
        "JOIN pairs p ON p.pair_id = d.matched_pair_id WHERE d.decision = 'filtered' ORDER BY 1",
        cfg.data_root,
    )
    assert d["source_row"].to_list() == [1, 2] and d["kept_row"].to_list() == [0, 0]


def test_run_folder_keeps_summary_and_drops_staging(tmp_path, hh_path):
    cfg = recipe_config(tmp_path, [{"name": "hh", "path": str(hh_path), "adapter": "hh_rlhf", "limit": 20}])
    result = curate(cfg)
    from pathlib import Path

    run_dir = Path(result.run_dir)
    assert (run_dir / "summary.json").exists() and not list(run_dir.glob("*.parquet")) and not list(run_dir.glob("*.arrow"))
    report = Path(result.report_dir)
    assert (report / "report.html").read_text().count("data:image/png;base64,") == 2  # the funnel and the length ratios
    summary = json.loads((report / "summary.json").read_text())
    assert summary["funnel"]["rows_in"] == 20 and summary["version"] == 1


def test_staged_parquet_is_contract_shaped(tmp_path, hh_path):
    cfg = recipe_config(tmp_path, [{"name": "hh", "path": str(hh_path), "adapter": "hh_rlhf", "limit": 30}])
    result = curate(cfg, keep_staging=True)
    from pathlib import Path

    kept = pq.read_table(Path(result.run_dir) / "kept.parquet")
    assert kept.schema.equals(arrow_schema("pairs"), check_metadata=False)
    assert kept.num_rows == result.funnel["kept"]


@pytest.mark.parametrize("compression", ["lz4", "zstd"])
def test_staging_compression_changes_the_staged_file_not_the_dataset(hh_run, hh_path, tmp_path, compression):
    cfg, result = hh_run
    runs = {}
    for name in ("none", compression):
        other = recipe_config(
            tmp_path / name,
            [{"name": "hh", "path": str(hh_path), "adapter": "hh_rlhf"}],
            dataset="hh",
            ingest={"staging_compression": name},
        )
        assert other.config_hash() == cfg.config_hash()  # how a run stages its files is no part of what it publishes
        runs[name] = (other, curate(other, keep_staging=True))
    sizes = {name: (Path(r.run_dir) / "ingested.arrow").stat().st_size for name, (_, r) in runs.items()}
    assert sizes[compression] < 0.8 * sizes["none"]
    for other, again in runs.values():
        assert again.funnel == result.funnel
        assert DatasetStore(other.data_root).read("hh", "pairs").equals(DatasetStore(cfg.data_root).read("hh", "pairs"))


def test_row_writer_flushes_large_rows_before_batch_size(tmp_path):
    """Quarantined rows carry raw text: the writer's buffer is bounded by bytes too, so a file
    of bad rows never holds batch_size rows of raw text in memory."""
    from curation import tables

    path = tmp_path / "quarantine.parquet"
    raw = "x" * (tables.ROW_BUFFER_BYTES // 4 + 1)
    with tables.TableWriter(path, "quarantine", batch_size=20_000) as writer:
        for i in range(10):
            writer.append(
                {"source_dataset": "s", "source_file": "f", "source_row": i, "stage": "adapt", "error_code": "e", "error": "e", "raw": raw}
            )
            assert len(writer._rows) < 4
    meta = pq.ParquetFile(path).metadata
    assert meta.num_rows == 10 and meta.num_row_groups == 3

    # pairs from the row path: their text is in the messages
    from curation.records import PairDraft
    from curation.sources import SourceConfig
    from curation.stages.ingest.rows import pair_row

    src = SourceConfig(name="s", path="f.jsonl", adapter="trl")
    path = tmp_path / "pairs.parquet"
    with tables.TableWriter(path, "pairs", batch_size=20_000) as writer:
        for i in range(10):
            turn = [{"role": "assistant", "content": f"{i} " + raw}]
            writer.append(
                pair_row(PairDraft([{"role": "user", "content": "q"}], turn, [{"role": "assistant", "content": "no"}]), src, "f", i, 0)
            )
            assert len(writer._rows) < 4
    meta = pq.ParquetFile(path).metadata
    assert meta.num_rows == 10 and meta.num_row_groups == 3
