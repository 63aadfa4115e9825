"""The dataset card `curate export` writes (``curation/export/card.py``) and ``--push-to-hub``
(``curation/export/hub.py``), on a real published version.

The version: 240 real HH-RLHF rows with four of them repeated and one cut-off line, through
exact dedup, a BT-ensemble labeler (agreement with the human labels), near dedup, a
decontaminate step whose benchmark file holds real HH prompts of rows the recipe does not read
with three of the read prompts planted among them, and a prompt cap. The export goes through
the CLI; the card's front matter, its numbers, ``datasets.load_dataset`` on the folder, and the
push with the Hub out of reach are checked against what the store recorded.
"""

from __future__ import annotations

import json
import shutil
import threading
from collections import Counter
from http.server import BaseHTTPRequestHandler, HTTPServer
from pathlib import Path
from typing import Any

import huggingface_hub.constants
import pyarrow.parquet as pq
import pytest
import yaml
from typer.testing import CliRunner

from curate.cli import app
from curation.config import load_config
from curation.errors import RowError
from curation.export.card import size_category
from curation.overlap import prompt_text
from curation.run.evaluation import write_log
from curation.run.runner import curate
from curation.stages.ingest.adapters import build_adapter
from curation.store.catalog import DatasetStore, VersionInfo
from tests.helpers import write_jsonl, write_recipe

REPO = Path(__file__).resolve().parents[2]
SAMPLE = REPO / "data" / "samples" / "hh-rlhf-harmless-base" / "test-dev-1200.jsonl"
READ = 240  # HH rows the recipe reads
DATASET = "card"


def front_matter(text: str) -> dict[str, Any]:
    assert text.startswith("---\n")
    head, _, _ = text[4:].partition("\n---\n")
    return yaml.safe_load(head)


def single_turn_prompts(lines: list[str]) -> list[str]:
    """Prompt texts of HH rows with one user turn on one line (a .txt benchmark holds one a line)."""
    adapt = build_adapter("hh_rlhf", {})
    out = []
    for i, line in enumerate(lines):
        try:
            drafts = adapt(json.loads(line), f"hh:{i}")
        except RowError:
            continue
        text = prompt_text(drafts[0].prompt)
        if len(drafts[0].prompt) == 1 and "\n" not in text and len(text.split()) >= 6:
            out.append(text)
    return list(dict.fromkeys(out))


@pytest.fixture(scope="module")
def published(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str, VersionInfo]:
    tmp = tmp_path_factory.mktemp("card")
    lines = SAMPLE.read_text(encoding="utf-8").splitlines()
    write_jsonl(tmp / "in.jsonl", [*lines[:READ], *lines[:4], '{"chosen": "\\n\\nHuman: cut off'])
    planted = single_turn_prompts(lines[:READ])[10:13]
    unread = [p for p in single_turn_prompts(lines[1000:1060]) if p not in single_turn_prompts(lines[:READ])][:30]
    (tmp / "bench").mkdir()
    (tmp / "bench" / "planted.txt").write_text("\n".join(unread[:15] + planted + unread[15:]) + "\n", encoding="utf-8")
    write_jsonl(tmp / "bench" / "other.jsonl", [{"question": q} for q in single_turn_prompts(lines[1100:1130])[:10]])
    recipe = write_recipe(
        tmp,
        [{"name": "hh", "path": "in.jsonl", "adapter": "hh_rlhf"}],
        dataset=DATASET,
        label={"labelers": [{"name": "bt-minilm", "kind": "bt_ensemble", "members": 2}]},
        filter={
            "steps": [
                {"kind": "near_dedup", "level": "prompt", "threshold": 0.8},
                {
                    "kind": "decontaminate",
                    "benchmarks": [{"name": "planted", "path": "bench/planted.txt"}, {"name": "other", "path": "bench/other.jsonl"}],
                },
                {"kind": "prompt_cap", "max_pairs": 1},
            ]
        },
    )
    cfg = load_config(recipe)
    curate(cfg)
    info = DatasetStore(cfg.data_root).version(DATASET)
    assert info.counts["rows_in"] == READ + 5 and info.counts["rows_quarantined"] == 1
    return tmp, str(cfg.data_root), info


def export(root: str, out: Path, *extra: str) -> Any:
    result = CliRunner().invoke(app, ["export", DATASET, "--out", str(out), "--data-root", root, *extra])
    return result


@pytest.fixture(scope="module")
def exported(published: tuple[Path, str, VersionInfo]) -> tuple[Path, str, VersionInfo, str]:
    tmp, root, info = published
    out = tmp / "export"
    result = export(root, out)
    assert result.exit_code == 0, result.output
    assert f"Dataset card: {out / 'README.md'}" in result.output
    return out, root, info, (out / "README.md").read_text(encoding="utf-8")


def test_front_matter_parses_with_the_hub_keys_and_the_exported_split_sizes(exported) -> None:
    out, _, info, card = exported
    meta = front_matter(card)
    counts = json.loads((out / "export_info.json").read_text())["counts"]
    rows = {s: pq.ParquetFile(out / f"{s}.parquet").metadata.num_rows for s in ("train", "test")}
    assert counts == rows and rows["train"] > rows["test"] > 0 and sum(rows.values()) == info.tables["pairs"]
    assert meta["license"] == "other" and meta["pretty_name"] == f"{DATASET} v{info.version}"
    assert meta["task_categories"] == ["text-generation"] and meta["tags"] == ["dpo", "preference", "curated"]
    assert meta["size_categories"] == ["n<1K"]
    assert meta["configs"] == [
        {"config_name": "default", "data_files": [{"split": "train", "path": "train.parquet"}, {"split": "test", "path": "test.parquet"}]}
    ]
    splits = {s["name"]: s for s in meta["dataset_info"]["splits"]}
    assert {s: v["num_examples"] for s, v in splits.items()} == rows
    assert all(v["num_bytes"] == pq.read_table(out / f"{s}.parquet").nbytes for s, v in splits.items())


@pytest.mark.parametrize(
    ("n", "bucket"), [(0, "n<1K"), (999, "n<1K"), (1_000, "1K<n<10K"), (54_321, "10K<n<100K"), (10**6, "1M<n<10M"), (10**13, "n>1T")]
)
def test_size_category_is_the_hubs_bucket(n: int, bucket: str) -> None:
    assert size_category(n) == bucket


def test_datasets_loads_the_exported_folder_offline_by_the_card(exported, tmp_path, monkeypatch) -> None:
    import datasets
    from datasets.exceptions import NonMatchingSplitsSizesError

    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    out, _, _, card = exported
    sizes = {s["name"]: s["num_examples"] for s in front_matter(card)["dataset_info"]["splits"]}
    ds = datasets.load_dataset(str(out), cache_dir=str(tmp_path / "cache"))
    assert {s: d.num_rows for s, d in ds.items()} == sizes
    assert ds["train"].column_names == ["prompt", "chosen", "rejected", "pair_id"]
    # datasets reads the card: a split size that disagrees with the files is refused
    copy = tmp_path / "copy"
    shutil.copytree(out, copy)
    (copy / "README.md").write_text(card.replace(f"num_examples: {sizes['test']}", f"num_examples: {sizes['test'] + 1}"))
    with pytest.raises(NonMatchingSplitsSizesError):
        datasets.load_dataset(str(copy), cache_dir=str(tmp_path / "cache2"))


def test_card_carries_the_versions_identity_recipe_and_funnel(exported) -> None:
    _, _, info, card = exported
    f = info.counts
    assert f"# {DATASET}@{info.version}" in card and info.created_at in card
    assert f"| config hash | `{info.config_hash}` |" in card and f"| code version | `{info.code_version}` |" in card
    recipe = card.split("```yaml\n", 1)[1].split("```", 1)[0]
    assert yaml.safe_load(recipe) == info.config
    for label, n in [
        ("rows in", f["rows_in"]),
        ("quarantined at read/adapt", -f["rows_quarantined"]),
        ("pairs produced", f["pairs_out"]),
        ("quarantined at validate", -f["pairs_quarantined"]),
        ("filtered (dedup)", -f["pairs_filtered"]),
        ("kept", f["kept"]),
        ("pairs into the filters", f["filter"]["pairs_in"]),
        ("published pairs", info.tables["pairs"]),
    ]:
        assert f"| {label} | {n:,} |" in card, label
    assert f["pairs_filtered"] == 4 and "| filtered | dedup_exact | exact_duplicate | 4 |" in card
    assert "| quarantined | read/adapt | unparsable_json | 1 |" in card
    for stage, s in f["filter"]["steps"].items():
        if s["filtered"]:
            assert f"| filtered ({stage}) | -{s['filtered']:,} |" in card
    assert (
        f"Row accounting: {f['rows_in']:,} rows in = {f['rows_quarantined']:,} quarantined + {f['rows_filtered']:,} filtered"
        f" + {f['rows_with_pairs']:,} with pairs" in card
    )
    assert f"Published pairs: {info.tables['pairs']:,}; exported: {info.tables['pairs']:,}." in card


def test_card_shows_label_agreement_as_recorded(exported) -> None:
    _, _, info, card = exported
    rows = info.counts["labels"]["agreement"]
    assert rows and "## Label agreement" in card
    for r in rows:
        counts = f"{r['n']} | {r['n_decided']} | {r['n_tie']} | {r['n_invalid']}"
        accuracy = f"{100 * r['accuracy']:.1f}%" if r["n_decided"] >= 10 else "-"
        assert f"| {r['labeler']} | {r['kind']} | {counts} | {accuracy} |" in card
        assert f"| {100 * r['length_accuracy']:.1f}% |" in card  # the length baseline on the same pairs


def test_decontamination_counts_per_benchmark_are_the_decisions(exported, published) -> None:
    _, root, info, card = exported
    decisions = DatasetStore(root).read(DATASET, "decisions", columns=["stage", "decision", "reason", "matched_pair_id"]).to_pylist()
    dropped = [d for d in decisions if d["stage"] == "decontaminate" and d["decision"] == "filtered"]
    by_bench = Counter(d["matched_pair_id"].split(":")[0] for d in dropped)
    assert by_bench["planted"] >= 3  # the three planted prompts (and any repeat of them in the rows read)
    assert len(dropped) == info.counts["filter"]["steps"]["decontaminate"]["filtered"]
    refs = info.counts["filter"]["steps"]["decontaminate"]["summary"]["references"]
    for bench in ("planted", "other"):
        reasons = Counter(d["reason"] for d in dropped if d["matched_pair_id"].startswith(f"{bench}:"))
        detail = ", ".join(f"{r} {n:,}" for r, n in reasons.most_common())
        assert f"| decontaminate | {bench} | {refs[bench]:,} | {by_bench[bench]:,} | {detail} |" in card


def test_evaluations_of_this_version_only_and_none_said_plainly(exported, tmp_path) -> None:
    out, root, info, card = exported
    assert "No evaluation recorded for this version." in card
    base = {"dataset": DATASET, "seeds": ["0"], "eval_set": "source hh-test", "leaked_excluded": 3, "details": None, "seconds": 1.0}
    rows = [
        base
        | {"evaluation_id": "e1", "version": info.version, "variant": f"{DATASET}@{info.version}", "trainer": "bt_embed", "eval_pairs": 120}
        | {"train_pairs": 200, "accuracy": 0.615, "ci_low": 0.55, "ci_high": 0.68, "mean_margin": 0.2}
        | {"reference": f"{DATASET}@0", "difference": 0.035, "difference_low": 0.005, "difference_high": 0.065},
        base
        | {"evaluation_id": "e1", "version": info.version, "variant": f"{DATASET}@{info.version}", "trainer": "baseline:longer_wins"}
        | {"eval_pairs": 120, "train_pairs": 0, "accuracy": 0.52, "ci_low": 0.43, "ci_high": 0.61, "mean_margin": None}
        | {"reference": None, "difference": None, "difference_low": None, "difference_high": None},
    ]
    other = rows[0] | {"evaluation_id": "e2", "version": info.version + 1, "variant": f"{DATASET}@{info.version + 1}", "accuracy": 0.9}
    write_log(root, DATASET, "e1", rows)
    write_log(root, DATASET, "e2", [other])
    again = export(root, tmp_path / "again", "--files", "jsonl", "--license", "mit")
    assert again.exit_code == 0, again.output
    card = (tmp_path / "again" / "README.md").read_text()
    meta = front_matter(card)
    assert meta["license"] == "mit" and "`mit` (as given at export)" in card
    assert [e["path"] for e in meta["configs"][0]["data_files"]] == ["train.jsonl", "test.jsonl"]
    assert "No evaluation recorded" not in card and "Evaluation set: source hh-test." in card
    assert f"| {DATASET}@1 | bt_embed | 61.5% (55.0% - 68.0%) | 120 | 3 | +3.5 pt (+0.5 to +6.5) vs {DATASET}@0 |" in card
    assert f"| {DATASET}@1 | baseline:longer_wins | 52.0% (43.0% - 61.0%) | 120 | 3 |  |" in card
    assert "90.0%" not in card  # the other version's evaluation


def test_no_card_writes_none(published, tmp_path) -> None:
    _, root, _ = published
    result = export(root, tmp_path / "bare", "--no-card", "--files", "parquet")
    assert result.exit_code == 0 and not (tmp_path / "bare" / "README.md").exists() and "Dataset card" not in result.output


class Refuses(BaseHTTPRequestHandler):
    """A Hub that answers every request 401, as huggingface.co does for a bad token."""

    def do_POST(self) -> None:  # noqa: N802 - the http.server API
        body = json.dumps({"error": "Invalid credentials in Authorization header"}).encode()
        self.send_response(401)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    do_GET = do_PUT = do_POST  # noqa: N815

    def log_message(self, *args: Any) -> None:
        pass


@pytest.fixture
def refusing_hub():
    server = HTTPServer(("127.0.0.1", 0), Refuses)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


@pytest.mark.parametrize("hub", ["offline", "unroutable", "no token", "bad token"])
def test_push_to_an_unreachable_hub_is_one_line_exit_2_and_keeps_the_export(published, tmp_path, monkeypatch, hub, request) -> None:
    _, root, _ = published
    if hub != "offline":  # conftest put the whole session offline; this case goes online
        monkeypatch.setenv("HF_HUB_OFFLINE", "0")
        monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)
        monkeypatch.setenv("HF_TOKEN", "hf_not_a_real_token")
        monkeypatch.setenv("HF_ENDPOINT", "http://127.0.0.1:9")  # nothing listens on the discard port
    if hub == "no token":
        monkeypatch.delenv("HF_TOKEN")
        monkeypatch.delenv("HUGGING_FACE_HUB_TOKEN", raising=False)
        monkeypatch.delenv("HF_OIDC_RESOURCE", raising=False)
        monkeypatch.setattr(huggingface_hub.constants, "HF_TOKEN_PATH", str(tmp_path / "no-token"))
    if hub == "bad token":
        monkeypatch.setenv("HF_ENDPOINT", request.getfixturevalue("refusing_hub"))
    out = tmp_path / "pushed"
    result = export(root, out, "--files", "parquet", "--push-to-hub", "someone/card-test", "--private")
    assert result.exit_code == 2, result.output
    errors = result.stderr.strip().splitlines()
    assert len(errors) == 1 and "Traceback" not in result.output, result.output
    expected = {
        "offline": "could not reach the Hugging Face Hub (offline?)",
        "unroutable": "could not reach the Hugging Face Hub (offline?)",
        "no token": "not logged in to the Hugging Face Hub",
        "bad token": "could not push to someone/card-test: the Hub refused the token (401",
    }[hub]
    assert errors[0].startswith(f"error: {expected}"), errors[0]
    assert f"the export is in {out}" in errors[0] and "--push-to-hub someone/card-test" in errors[0]
    assert (out / "README.md").is_file() and (out / "train.parquet").is_file()
