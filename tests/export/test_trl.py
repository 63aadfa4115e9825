"""export_trl on real HH-RLHF pairs: files, formats, the seeded split, the two TRL styles."""

from __future__ import annotations

import json
import random
import re
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from curation.errors import CurationError
from curation.export.trl import ExportError, export_trl, split_key
from curation.records import pair_id, prompt_id
from schemas import arrow_schema

HH_TURN = re.compile(r"\n\n(Human|Assistant): ?")
ROLE = {"Human": "user", "Assistant": "assistant"}


def _turns(transcript: str) -> list[dict[str, str]] | None:
    parts = HH_TURN.split(transcript)
    if parts[0].strip():
        return None
    return [{"role": ROLE[r], "content": c.strip()} for r, c in zip(parts[1::2], parts[2::2], strict=True)]


def hh_pairs_table(path: Path) -> pa.Table:
    """The HH rows whose two transcripts share all turns but the last, as ``pairs`` rows."""
    rows = []
    for n, line in enumerate(path.read_text(encoding="utf-8").splitlines()):
        raw = json.loads(line)
        chosen, rejected = _turns(raw["chosen"]), _turns(raw["rejected"])
        if not chosen or not rejected or chosen[:-1] != rejected[:-1] or len(chosen) < 2:
            continue
        prompt, c, r = chosen[:-1], chosen[-1:], rejected[-1:]
        if prompt[-1]["role"] != "user" or c[0]["role"] != "assistant" or r[0]["role"] != "assistant":
            continue
        if not c[0]["content"] or not r[0]["content"]:
            continue
        rows.append(
            {
                "pair_id": pair_id(prompt, c, r),
                "prompt_id": prompt_id(prompt),
                "prompt": prompt,
                "chosen": c,
                "rejected": r,
                "chosen_score": None,
                "rejected_score": None,
                "label_source": "human",
                "label_model": None,
                "source_dataset": "hh-rlhf-harmless-base",
                "source_file": path.name,
                "source_row": n,
                "source_pair_index": 0,
                "metadata": json.dumps({"turns": len(prompt)}),
            }
        )
    return pa.Table.from_pylist(rows, schema=arrow_schema("pairs"))


@pytest.fixture(scope="module")
def hh_table(hh_path: Path) -> pa.Table:
    table = hh_pairs_table(hh_path)
    assert table.num_rows > 1000  # nearly all 1,200 rows qualify
    return table


@pytest.fixture(scope="module")
def tokenizer():
    from curation.models.tokenizers import smollm2_tokenizer

    return smollm2_tokenizer()


def _split_ids(out: Path) -> dict[str, set[str]]:
    return {s: set(pq.read_table(out / f"{s}.parquet", columns=["pair_id"]).column(0).to_pylist()) for s in ("train", "test")}


def test_conversational_all_formats(hh_table: pa.Table, tmp_path: Path) -> None:
    from datasets import load_dataset, load_from_disk
    from trl.data_utils import is_conversational

    out = tmp_path / "export"
    res = export_trl(hh_table.to_reader(max_chunksize=100), out, info={"source": "hh-dev"})
    n = hh_table.num_rows
    assert res.style == "conversational" and res.out_dir == out
    assert res.counts["train"] + res.counts["test"] == n
    assert 0.05 * n < res.counts["test"] < 0.15 * n
    names = {p.relative_to(out).as_posix() for p in res.files}
    assert {
        "train.parquet",
        "test.parquet",
        "train.jsonl",
        "test.jsonl",
        "export_info.json",
        "hf/dataset_dict.json",
    } <= names
    assert all(p.is_file() for p in res.files)
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no staging left

    info = json.loads((out / "export_info.json").read_text())
    assert info["counts"] == res.counts and info["seed"] == 0 and info["test_size"] == 0.1
    assert info["style"] == "conversational" and info["info"] == {"source": "hh-dev"}

    hf = load_from_disk(str(out / "hf"))
    files = {s: str(out / f"{s}.parquet") for s in ("train", "test")}
    pq_ds = load_dataset("parquet", data_files=files)
    js_ds = load_dataset("json", data_files={s: str(out / f"{s}.jsonl") for s in ("train", "test")})
    for ds in (hf, pq_ds, js_ds):
        assert {s: ds[s].num_rows for s in ("train", "test")} == res.counts
        assert set(ds["train"].column_names) == {"prompt", "chosen", "rejected", "pair_id"}

    source = {r["pair_id"]: r for r in hh_table.select(["pair_id", "prompt", "chosen", "rejected"]).to_pylist()}
    for ds in (hf, pq_ds, js_ds):
        row = ds["test"][0]
        assert is_conversational(row)
        want = source[row["pair_id"]]
        assert [row[k] for k in ("prompt", "chosen", "rejected")] == [want[k] for k in ("prompt", "chosen", "rejected")]
    assert set(hf["train"]["pair_id"]) | set(hf["test"]["pair_id"]) == set(source)


def test_split_is_seeded_and_order_free(hh_table: pa.Table, tmp_path: Path) -> None:
    kw = {"formats": ["parquet"], "test_size": 0.2}
    a = _split_ids(export_trl(hh_table, tmp_path / "a", seed=7, **kw).out_dir)
    b = _split_ids(export_trl(hh_table, tmp_path / "b", seed=7, **kw).out_dir)
    other = _split_ids(export_trl(hh_table, tmp_path / "c", seed=8, **kw).out_dir)
    order = list(range(hh_table.num_rows))
    random.Random(1).shuffle(order)
    shuffled = hh_table.take(order).to_batches(max_chunksize=37)  # other order, other batch boundaries
    d = _split_ids(export_trl(iter(shuffled), tmp_path / "d", seed=7, **kw).out_dir)
    assert a == b == d
    assert a["test"] != other["test"]
    assert not a["train"] & a["test"]
    assert a["test"] == {p for p in hh_table.column("pair_id").to_pylist() if split_key(7, p) < 0.2}


def test_standard_with_smollm2_chat_template(hh_table: pa.Table, tmp_path: Path, tokenizer) -> None:
    from datasets import load_from_disk
    from trl.data_utils import is_conversational, maybe_apply_chat_template

    small = hh_table.slice(0, 200)
    res = export_trl(small, tmp_path / "std", style="standard", chat_template_tokenizer=tokenizer)
    assert res.counts["train"] + res.counts["test"] == 200
    ds = load_from_disk(str(tmp_path / "std" / "hf"))
    source = {r["pair_id"]: r for r in small.to_pylist()}
    for row in ds["train"].select(range(5)):
        assert not is_conversational(row)
        src = source[row["pair_id"]]
        want = maybe_apply_chat_template({k: src[k] for k in ("prompt", "chosen", "rejected")}, tokenizer)
        assert {k: row[k] for k in want} == want
        assert row["prompt"].startswith("<|im_start|>system\n") and row["prompt"].endswith("<|im_start|>assistant\n")
        assert row["chosen"] == src["chosen"][0]["content"] + "<|im_end|>\n"
    assert json.loads((tmp_path / "std" / "export_info.json").read_text())["chat_template_tokenizer"]


def test_standard_without_tokenizer(hh_table: pa.Table, tmp_path: Path) -> None:
    multi = hh_table.filter(pa.compute.greater(pa.compute.list_value_length(hh_table.column("prompt")), 1))
    with pytest.raises(ExportError, match="chat_template_tokenizer") as err:
        export_trl(multi, tmp_path / "multi", style="standard")
    assert isinstance(err.value, CurationError) and isinstance(err.value, ValueError)
    assert not (tmp_path / "multi").exists()
    assert [p.name for p in tmp_path.iterdir()] == []  # the partial export was removed

    single = hh_table.filter(pa.compute.equal(pa.compute.list_value_length(hh_table.column("prompt")), 1))
    assert single.num_rows > 50
    res = export_trl(single, tmp_path / "single", style="standard", formats=["jsonl"], test_size=0.0)
    assert res.counts == {"train": single.num_rows, "test": 0}
    assert {p.name for p in res.files} == {"train.jsonl", "test.jsonl", "export_info.json"}
    first = json.loads((tmp_path / "single" / "train.jsonl").read_text().splitlines()[0])
    src = single.slice(0, 1).to_pylist()[0]
    assert first == {
        "prompt": src["prompt"][0]["content"],
        "chosen": src["chosen"][0]["content"],
        "rejected": src["rejected"][0]["content"],
        "pair_id": src["pair_id"],
    }


def test_out_dir_and_arguments(hh_table: pa.Table, tmp_path: Path) -> None:
    small = hh_table.slice(0, 20)
    out = tmp_path / "o"
    out.mkdir()  # an existing empty folder is fine
    export_trl(small, out, formats=["parquet"])
    with pytest.raises(ExportError, match="--overwrite"):
        export_trl(small, out, formats=["parquet"])
    res = export_trl(small, out, formats=["jsonl"], overwrite=True, keep_columns=("pair_id", "source_row"))
    assert sorted(p.name for p in out.iterdir()) == ["export_info.json", "test.jsonl", "train.jsonl"]
    assert set(json.loads((out / "train.jsonl").read_text().splitlines()[0])) == {
        "prompt",
        "chosen",
        "rejected",
        "pair_id",
        "source_row",
    }
    assert sum(res.counts.values()) == 20
    with pytest.raises(ExportError, match="no column"):
        export_trl(small, tmp_path / "x", keep_columns=("nope",))
    with pytest.raises(ExportError, match="style"):
        export_trl(small, tmp_path / "x", style="chatml")
    with pytest.raises(ExportError, match="test_size"):
        export_trl(small, tmp_path / "x", test_size=1.0)
    empty = export_trl(iter(()), tmp_path / "empty")  # no batches at all: empty but loadable splits
    assert empty.counts == {"train": 0, "test": 0}
    assert pq.read_table(tmp_path / "empty" / "train.parquet").num_rows == 0
    assert load_from_disk_counts(tmp_path / "empty" / "hf") == {"train": 0, "test": 0}


def load_from_disk_counts(path: Path) -> dict[str, int]:
    from datasets import load_from_disk

    return {s: d.num_rows for s, d in load_from_disk(str(path)).items()}


def test_unlabeled_pairs_are_not_exported_as_training_data(hh_table: pa.Table, tmp_path: Path) -> None:
    """Generated pairs carry label_source 'unlabeled': their chosen/rejected order is arbitrary."""
    small = hh_table.slice(0, 40)
    labels = ["unlabeled" if i % 4 == 0 else "human" for i in range(small.num_rows)]
    mixed = small.set_column(small.schema.get_field_index("label_source"), "label_source", pa.array(labels))
    res = export_trl(mixed, tmp_path / "mixed", formats=["jsonl"])
    assert res.skipped_unlabeled == 10 and sum(res.counts.values()) == 30
    exported = {json.loads(line)["pair_id"] for s in ("train", "test") for line in (res.out_dir / f"{s}.jsonl").read_text().splitlines()}
    unlabeled = {p for p, lab in zip(mixed.column("pair_id").to_pylist(), labels) if lab == "unlabeled"}
    assert exported and not exported & unlabeled
    assert json.loads((res.out_dir / "export_info.json").read_text())["skipped_unlabeled"] == 10
