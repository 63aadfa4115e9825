"""Bad input never stops a run and never vanishes: each bad row is quarantined with a
reason naming the row and field; a file that cannot be read at all is a clear error."""

from __future__ import annotations

import gzip
import json

import pytest

from curation.config import ConfigError, load_config
from curation.errors import CurationError
from curation.run.runner import curate
from curation.store.query import sql
from tests.helpers import hh, recipe_config, write_jsonl, write_recipe

GOOD = hh([("user", "What is the capital of France?")], "Paris.", "I don't know.")


def _run(tmp_path, path, adapter="hh_rlhf", allow_empty=False, **src):
    cfg = recipe_config(tmp_path, [{"name": "bad", "path": str(path), "adapter": adapter, **src}], allow_empty=allow_empty)
    result = curate(cfg)
    q = sql("SELECT source_row, stage, field, error_code, error, raw_bytes FROM quarantine ORDER BY source_row", cfg.data_root)
    return result, {r["source_row"]: r for r in q.to_dicts()}


def test_truncated_jsonl_last_line(tmp_path):
    path = tmp_path / "in.jsonl"
    lines = [json.dumps(GOOD)] * 3
    lines[1] = json.dumps(hh([("user", "Other question?")], "Answer.", "Non-answer."))
    path.write_text("\n".join(lines[:2]) + "\n" + lines[2][: len(lines[2]) // 2])
    result, q = _run(tmp_path, path)
    assert result.funnel["rows_in"] == 3 and result.funnel["kept"] == 2
    assert q[2]["error_code"] == "unparsable_json" and q[2]["stage"] == "read"


def test_wrong_types_name_the_field(tmp_path):
    path = write_jsonl(tmp_path / "in.jsonl", [GOOD, {"chosen": 5, "rejected": GOOD["rejected"]}, {"rejected": GOOD["rejected"]}, [1, 2]])
    result, q = _run(tmp_path, path)
    assert result.funnel["kept"] == 1
    assert q[1]["error_code"] == "wrong_type" and q[1]["field"] == "chosen"
    assert q[2]["error_code"] == "missing_field" and q[2]["field"] == "chosen"
    assert q[3]["error_code"] == "not_an_object"


def test_empty_strings(tmp_path):
    rows = [
        {"prompt": "", "chosen": "yes", "rejected": "no"},
        {"prompt": "Q?", "chosen": "", "rejected": "no"},
        {"prompt": "Q?", "chosen": "   ", "rejected": "no"},
        {"prompt": "Q?", "chosen": "same", "rejected": "same"},
        {"prompt": "Q?", "chosen": "fine", "rejected": "worse"},
    ]
    result, q = _run(tmp_path, write_jsonl(tmp_path / "in.jsonl", rows), adapter="trl")
    assert result.funnel["kept"] == 1
    assert [q[i]["error_code"] for i in range(4)] == ["empty_prompt", "empty_response", "empty_response", "identical_responses"]
    assert q[1]["field"] == "chosen" and all(q[i]["stage"] == "validate" for i in range(4))


def test_broken_transcripts(tmp_path):
    rows = [
        GOOD,
        {"chosen": "no markers at all", "rejected": "none here either"},
        {"chosen": "\n\nHuman: hi\n\nHuman: again", "rejected": "\n\nHuman: hi\n\nAssistant: hello"},
        # diverges at the first human turn: no shared prompt
        {"chosen": "\n\nHuman: A?\n\nAssistant: a", "rejected": "\n\nHuman: B?\n\nAssistant: b"},
    ]
    result, q = _run(tmp_path, write_jsonl(tmp_path / "in.jsonl", rows))
    assert result.funnel["kept"] == 1
    assert q[1]["error_code"] == "malformed_transcript"
    assert q[2]["error_code"] == "malformed_transcript"
    assert q[3]["error_code"] == "diverging_transcript"


def test_fifty_megabyte_row_is_quarantined_and_neighbours_survive(tmp_path):
    path = tmp_path / "in.jsonl"
    big = hh([("user", "Tell me a long story.")], "x" * (50 * 1024 * 1024), "Short.")
    with path.open("w") as fh:
        fh.write(json.dumps(GOOD) + "\n" + json.dumps(big) + "\n" + json.dumps(hh([("user", "Hi?")], "Hello!", "Go away.")) + "\n")
    result, q = _run(tmp_path, path)
    assert result.funnel["kept"] == 2
    assert q[1]["error_code"] == "row_too_large" and q[1]["raw_bytes"] > 50 * 1024 * 1024


def test_non_utf8_bytes(tmp_path):
    path = tmp_path / "in.jsonl"
    path.write_bytes(
        json.dumps(GOOD).encode()
        + b"\n"
        + b'{"chosen": "\\n\\nHuman: caf\xe9?", "rejected": "x"}\n'
        + json.dumps(hh([("user", "Hi?")], "Hello!", "No.")).encode()
        + b"\n"
    )
    result, q = _run(tmp_path, path)
    assert result.funnel["kept"] == 2 and q[1]["error_code"] == "undecodable_text"


def test_lone_surrogate_escape_is_undecodable_text(tmp_path):
    path = tmp_path / "in.jsonl"
    path.write_text(json.dumps(GOOD) + "\n" + '{"prompt": "Q?", "chosen": "bad \\ud800 text", "rejected": "ok"}\n')
    result, q = _run(tmp_path, path, adapter="trl")
    assert result.funnel["rows_in"] == 2 and q[1]["error_code"] == "undecodable_text"


def test_invalid_roles(tmp_path):
    rows = [
        {
            "prompt": [{"role": "user", "content": "Q?"}],
            "chosen": [{"role": "assistant", "content": "A"}],
            "rejected": [{"role": "assistant", "content": "B"}],
        },
        {
            "prompt": [{"role": "wizard", "content": "Q?"}],
            "chosen": [{"role": "assistant", "content": "A"}],
            "rejected": [{"role": "assistant", "content": "B"}],
        },
    ]
    result, q = _run(tmp_path, write_jsonl(tmp_path / "in.jsonl", rows), adapter="trl")
    assert result.funnel["kept"] == 1 and q[1]["error_code"] == "invalid_role" and q[1]["field"] == "prompt[0].role"


def test_truncated_gzip_keeps_rows_before_the_cut(tmp_path):
    data = gzip.compress(
        ("\n".join(json.dumps(hh([("user", f"Question {i}?")], f"Answer {i}.", "No.")) for i in range(2000)) + "\n").encode()
    )
    path = tmp_path / "in.jsonl.gz"
    path.write_bytes(data[: len(data) * 2 // 3])
    result, q = _run(tmp_path, path)
    f = result.funnel
    assert 0 < f["kept"] < 2000 and f["rows_in"] == f["kept"] + f["rows_quarantined"] + f["pairs_quarantined"]
    assert any(r["error_code"] == "truncated_file" for r in q.values())


@pytest.mark.parametrize("name", ["../../etc", "a/b", "", "UPPER", "x" * 100, "..", "/abs"])
def test_dataset_names_cannot_escape_the_data_root(tmp_path, name):
    path = write_jsonl(tmp_path / "in.jsonl", [GOOD])
    with pytest.raises(ConfigError, match="invalid dataset name"):
        load_config(write_recipe(tmp_path, [{"name": "src", "path": str(path), "adapter": "hh_rlhf"}], dataset=name))
    assert not (tmp_path / "root").exists()


def test_unreadable_file_is_one_clear_error(tmp_path):
    cfg = recipe_config(tmp_path, [{"name": "src", "path": str(tmp_path / "missing.jsonl"), "adapter": "hh_rlhf"}])
    with pytest.raises(CurationError, match="missing.jsonl"):
        curate(cfg)


def test_unknown_adapter_and_bad_options_fail_before_work(tmp_path):
    path = write_jsonl(tmp_path / "in.jsonl", [GOOD])
    with pytest.raises(ConfigError, match="nope"):
        load_config(write_recipe(tmp_path, [{"name": "s", "path": str(path), "adapter": "nope"}]))
    with pytest.raises(ConfigError, match="rule"):
        load_config(write_recipe(tmp_path, [{"name": "s", "path": str(path), "adapter": "rated", "options": {"rule": "coin_flip"}}]))


def test_invisible_text_is_empty_and_identical_through_a_run(tmp_path):
    """Through ingest (row path) and validate (its vectorised pre-check) and exact dedup."""
    rows = [
        {"prompt": "\u200b\u2060", "chosen": "yes", "rejected": "no"},
        {"prompt": "Q?", "chosen": "\ufeff\x00 \u200b", "rejected": "no"},
        {"prompt": "Q?", "chosen": "sa\u200bme", "rejected": "same"},
        {"prompt": "Q?", "chosen": "fine", "rejected": "worse"},
        {"prompt": "Q?", "chosen": "fi\u2060ne\x00", "rejected": "\ufeffworse"},  # row 3 as a reader sees it
    ]
    result, q = _run(tmp_path, write_jsonl(tmp_path / "in.jsonl", rows), adapter="trl")
    assert [q[i]["error_code"] for i in range(3)] == ["empty_prompt", "empty_response", "identical_responses"]
    assert result.funnel["kept"] == 1 and result.funnel["filtered_by_reason"]["dedup_exact"] == {"exact_duplicate": 1}


NON_FINITE = ["Infinity", "-Infinity", "NaN", "1e999", '"inf"', '"-inf"', '"nan"', '"Infinity"', '"1e999"']


@pytest.mark.parametrize(
    ("adapter", "options", "row"),
    [
        (
            "rated",
            {},
            '{{"instruction": "Q?", "completions": [{{"response": "a", "overall_score": {v}}}, {{"response": "b", "overall_score": 2}}]}}',
        ),
        (
            "shp",
            {"score_a_field": "sa", "score_b_field": "sb"},
            '{{"history": "Q?", "human_ref_A": "a", "human_ref_B": "b", "sa": 3, "sb": {v}}}',
        ),
        ("shp", {"vote_fields": ["v1", "v2"]}, '{{"history": "Q?", "human_ref_A": "a", "human_ref_B": "b", "v1": 1, "v2": {v}}}'),
        ("shp", {}, '{{"history": "Q?", "human_ref_A": "a", "human_ref_B": "b", "labels": {v}}}'),
        ("mapping", {"prompt": "q", "chosen": "c", "rejected": "r", "chosen_score": "s"}, '{{"q": "Q?", "c": "a", "r": "b", "s": {v}}}'),
    ],
    ids=["rated", "shp-scores", "shp-votes", "shp-label", "mapping"],
)
def test_non_finite_scores_and_votes_are_quarantined(tmp_path, adapter, options, row):
    """JSON's bare Infinity/NaN, a float beyond range, and the same as strings: never a score."""
    lines = [row.format(v=v) for v in NON_FINITE]
    if adapter == "shp" and "score_a_field" not in options:
        lines = lines[:4]  # votes and labels are values, not numbers parsed from text: only real floats apply
    path = tmp_path / "in.jsonl"
    path.write_text("\n".join(lines) + "\n")
    result, q = _run(tmp_path, path, adapter=adapter, options=options, allow_empty=True)  # every row is bad
    assert {r["error_code"] for r in q.values()} == {"non_finite_score"} and len(q) == len(lines)
    assert result.funnel["rows_quarantined"] == len(lines)


def test_a_nan_rank_is_no_rank_and_an_infinite_one_is_quarantined(tmp_path):
    """OASST tables that went through pandas write missing ranks as NaN."""
    rows = [
        '{"message_id": "p", "parent_id": null, "role": "prompter", "text": "Q?", "rank": NaN}',
        '{"message_id": "a", "parent_id": "p", "role": "assistant", "text": "good", "rank": 0}',
        '{"message_id": "b", "parent_id": "p", "role": "assistant", "text": "bad", "rank": 1.0}',
        '{"message_id": "c", "parent_id": "p", "role": "assistant", "text": "odd", "rank": Infinity}',
    ]
    path = tmp_path / "in.jsonl"
    path.write_text("\n".join(rows) + "\n")
    result, q = _run(tmp_path, path, adapter="oasst")
    assert [r["error_code"] for r in q.values()] == ["non_finite_score"] and result.funnel["kept"] == 1
