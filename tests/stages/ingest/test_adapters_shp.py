"""SHP-style adapter: label, vote-count and annotator-vote modes; the real PandaLM test set."""

from __future__ import annotations

import json
from collections import Counter

import pytest

from curation.errors import ConfigError, NoPairs, RowError
from curation.run.runner import curate
from curation.stages.ingest.adapters import build_adapter, check_options
from curation.store.query import sql
from tests.helpers import recipe_config

SHP_ROW = {
    "post_id": "himvcd",
    "domain": "askculinary_train",
    "history": "How do I keep my cast iron from rusting?",
    "human_ref_A": "Dry it on the stove and oil it lightly.",
    "human_ref_B": "Just buy stainless.",
    "labels": 1,
    "score_A": 12,
    "score_B": 3,
}

PANDALM = {
    "prompt_fields": ["instruction", "input"],
    "response_a_field": "response1",
    "response_b_field": "response2",
    "vote_fields": ["annotator1", "annotator2", "annotator3"],
}


def run(row: dict, **options):
    return build_adapter("shp", options)(row, "shp:0")


def test_label_mode_default():
    [d] = run(SHP_ROW)
    assert d.prompt == [{"role": "user", "content": SHP_ROW["history"]}]
    assert d.chosen[0]["content"] == SHP_ROW["human_ref_A"] and d.rejected[0]["content"] == SHP_ROW["human_ref_B"]
    assert d.metadata == {"preferred": "a", "label": 1}
    [d] = run({**SHP_ROW, "labels": 0})
    assert d.chosen[0]["content"] == SHP_ROW["human_ref_B"] and d.metadata["preferred"] == "b"
    [d] = run({**SHP_ROW, "labels": "1"})  # CSV gives strings
    assert d.metadata["preferred"] == "a"


def test_label_values_configurable():
    [d] = run({**SHP_ROW, "winner": "B"}, label_field="winner", a_value="A", b_value="B")
    assert d.metadata["preferred"] == "b"


def test_score_mode():
    [d] = run(SHP_ROW, score_a_field="score_A", score_b_field="score_B")
    assert (d.chosen_score, d.rejected_score) == (12.0, 3.0) and d.metadata["preferred"] == "a"
    assert d.metadata["score_a"] == 12 and d.metadata["score_b"] == 3
    [d] = run({**SHP_ROW, "score_A": 2, "score_B": "7"}, score_a_field="score_A", score_b_field="score_B")
    assert d.metadata["preferred"] == "b" and d.chosen_score == 7.0
    with pytest.raises(NoPairs, match="tie"):
        run({**SHP_ROW, "score_B": 12}, score_a_field="score_A", score_b_field="score_B")
    with pytest.raises(NoPairs, match="below_min_ratio"):
        run({**SHP_ROW, "score_B": 7}, score_a_field="score_A", score_b_field="score_B", min_ratio=2)
    [d] = run({**SHP_ROW, "score_B": 0}, score_a_field="score_A", score_b_field="score_B", min_ratio=2)
    assert d.rejected_score == 0.0


def test_prompt_fields_join_and_skip_empty():
    row = {
        "instruction": "Translate to French.",
        "input": "Good morning",
        "response1": "Bonjour",
        "response2": "Bonsoir",
        "annotator1": 1,
        "annotator2": 1,
        "annotator3": 2,
    }
    [d] = run(row, **PANDALM)
    assert d.prompt[0]["content"] == "Translate to French.\n\nGood morning"
    [d] = run({**row, "input": ""}, **PANDALM)
    assert d.prompt[0]["content"] == "Translate to French."
    [d] = run({**row, "input": None}, **PANDALM)
    assert d.prompt[0]["content"] == "Translate to French."


@pytest.mark.parametrize(
    ("votes", "expected"),
    [
        ((1, 1, 1), ("a", 3, 0)),
        ((2, 1, 2), ("b", 2, 1)),
        ((1, 1, 0), ("a", 2, 0)),
        ((1, 0, 0), "tie"),  # two "tie" votes outweigh one A
        ((0, 0, 0), "tie"),
        ((1, 2, 0), "tie"),  # no majority
        ((1, None, 2), "tie"),  # abstention: 1-1
        ((1, None, 1), ("a", 2, 0)),
        ((None, None, None), "no_votes"),
    ],
)
def test_vote_majority(votes, expected):
    row = {"instruction": "i", "input": "", "response1": "r1", "response2": "r2", **{f"annotator{i + 1}": v for i, v in enumerate(votes)}}
    if isinstance(expected, str):
        with pytest.raises(NoPairs) as err:
            run(row, **PANDALM)
        assert err.value.reason == expected
        return
    [d] = run(row, **PANDALM)
    win, w, lose = expected
    assert d.metadata["preferred"] == win and (d.chosen_score, d.rejected_score) == (w, lose)
    assert d.chosen[0]["content"] == ("r1" if win == "a" else "r2")
    assert sum(d.metadata["votes"].values()) == sum(v is not None for v in votes)


def test_min_agreement():
    row = {"instruction": "i", "input": "", "response1": "r1", "response2": "r2", "annotator1": 1, "annotator2": 1, "annotator3": 2}
    with pytest.raises(NoPairs, match="below_min_agreement"):
        run(row, **PANDALM, min_agreement=1.0)
    [d] = run(row, **PANDALM, min_agreement=0.6)
    assert d.metadata["agreement"] == pytest.approx(0.6667)


@pytest.mark.parametrize(
    ("row", "options", "code", "field"),
    [
        ({k: v for k, v in SHP_ROW.items() if k != "history"}, {}, "missing_field", "history"),
        ({**SHP_ROW, "history": 5}, {}, "wrong_type", "history"),
        ({**SHP_ROW, "human_ref_B": None}, {}, "wrong_type", "human_ref_B"),
        ({**SHP_ROW, "labels": 2}, {}, "invalid_value", "labels"),
        ({k: v for k, v in SHP_ROW.items() if k != "labels"}, {}, "missing_field", "labels"),
        ({**SHP_ROW, "score_A": "many"}, {"score_a_field": "score_A", "score_b_field": "score_B"}, "invalid_value", "score_A"),
        ({**SHP_ROW, "score_B": None}, {"score_a_field": "score_A", "score_b_field": "score_B"}, "missing_field", "score_B"),
        ({**SHP_ROW, "v1": 1, "v2": 3}, {"vote_fields": ["v1", "v2"]}, "invalid_value", "v2"),
        ({**SHP_ROW, "v1": 1}, {"vote_fields": ["v1", "v2"]}, "missing_field", "v2"),
    ],
)
def test_bad_rows(row, options, code, field):
    with pytest.raises(RowError) as err:
        run(row, **options)
    assert (err.value.code, err.value.field) == (code, field)
    assert repr(field) in err.value.message


@pytest.mark.parametrize(
    ("options", "words"),
    [
        ({"label_field": "labels", "vote_fields": ["a"]}, "exactly one of"),
        ({"score_a_field": "x"}, "set together"),
        ({"min_ratio": 2}, "min_ratio needs"),
        ({"vote_fields": ["a"], "min_agreement": 1.5}, "min_agreement"),
        ({"min_agreement": 0.5}, "min_agreement needs"),
        ({"vote_fields": ["a"], "a_vote": 1, "b_vote": 1}, "must differ"),
        ({"prompt_fields": []}, "prompt_fields"),
        ({"prompt_field": "x"}, "prompt_field: unknown option"),
    ],
)
def test_bad_options(options, words):
    with pytest.raises(ConfigError) as err:
        check_options("shp", options)
    assert words in str(err.value) and "Traceback" not in str(err.value)


def test_pandalm_real(shared_data):
    rows = json.loads((shared_data / "pandalm-testset" / "testset-v1.json").read_text(encoding="utf-8"))
    assert len(rows) == 999
    adapter = build_adapter("shp", PANDALM)
    outcome: Counter = Counter()
    drafts = {}
    for i, row in enumerate(rows):
        try:
            [drafts[i]] = adapter(row, f"pandalm:{i}")
            outcome[drafts[i].metadata["preferred"]] += 1
        except NoPairs as np:
            outcome[np.reason] += 1
        except RowError as err:
            outcome[err.code] += 1
            # A pitfall of the real file: the answer "True" was exported as JSON true.
            assert row[err.field] is True and err.field in ("response1", "response2")
            assert f"field {err.field!r} is bool, expected string" in err.message
    # Majorities: 368 unanimous A + 54 two-to-one A; 426 unanimous B + 46 two-to-one B;
    # 85 unanimous ties + 20 rows where two annotators said tie = 999. Six of the
    # majority rows (4 A, 2 B; idx 157-164) have a boolean response and are quarantined.
    assert outcome == {"a": 418, "b": 470, "tie": 105, "wrong_type": 6}
    unanimous = sum(1 for d in drafts.values() if d.metadata["agreement"] == 1.0)
    assert unanimous == 368 + 426 - 2  # the README's 879 agreeing rows minus 85 ties, 2 bool rows

    # Hand-checked rows.
    r0, d0 = rows[0], drafts[0]  # idx 0, Grammarly rewrite: all three annotators chose response2
    assert [r0["annotator1"], r0["annotator2"], r0["annotator3"]] == [2, 2, 2]
    assert d0.chosen == [{"role": "assistant", "content": "If you have any questions, please let me know."}]
    assert d0.rejected[0]["content"] == r0["response1"]
    assert d0.prompt[0]["content"] == r0["instruction"] + "\n\n" + r0["input"]
    assert (d0.chosen_score, d0.rejected_score, d0.metadata["agreement"]) == (3.0, 0.0, 1.0)
    for i, row in enumerate(rows):
        votes = [row["annotator1"], row["annotator2"], row["annotator3"]]
        if votes == [2, 1, 2]:
            d = drafts[i]
            assert d.chosen[0]["content"] == row["response2"] and d.rejected[0]["content"] == row["response1"]
            assert (d.chosen_score, d.rejected_score) == (2.0, 1.0)
            assert d.metadata["votes"] == {"a": 1, "b": 2, "tie": 0}
            expected_prompt = "\n\n".join(p for p in (row["instruction"], row["input"]) if p.strip())
            assert d.prompt == [{"role": "user", "content": expected_prompt}]
            break
    no_input = next(i for i, r in enumerate(rows) if r["input"] == "" and i in drafts)
    assert drafts[no_input].prompt[0]["content"] == rows[no_input]["instruction"]


def test_pandalm_recipe_majority_vote_with_ties_filtered(tmp_path, shared_data):
    """The whole PandaLM file through a recipe: majority of annotator1..3, ties filtered."""
    path = shared_data / "pandalm-testset" / "testset-v1.json"
    rows = json.loads(path.read_text(encoding="utf-8"))
    cfg = recipe_config(tmp_path, [{"name": "pandalm", "path": str(path), "adapter": "shp", "options": PANDALM}], dataset="pandalm")
    f = curate(cfg).funnel

    def majority(row: dict) -> int | None:  # 1 = response1, 2 = response2, None = no strict majority
        votes = [row[f"annotator{i}"] for i in (1, 2, 3)]
        return next((side for side in (1, 2) if 2 * votes.count(side) > len(votes)), None)

    broken = [i for i, r in enumerate(rows) if not (isinstance(r["response1"], str) and isinstance(r["response2"], str))]
    ties = [i for i, r in enumerate(rows) if i not in broken and majority(r) is None]
    assert f["rows_in"] == len(rows) == f["rows_quarantined"] + f["rows_filtered"] + f["rows_with_pairs"]
    assert f["filtered_by_reason"]["adapt"] == {"tie": len(ties)}
    assert f["quarantined_by_error"]["read/adapt"] == {"wrong_type": len(broken)}
    assert f["pairs_out"] == len(rows) - len(ties) - len(broken) == f["pairs_quarantined"] + f["pairs_filtered"] + f["kept"]
    filtered = sql("SELECT source_row, reason FROM decisions WHERE stage = 'adapt' ORDER BY 1", cfg.data_root)
    assert filtered["source_row"].to_list() == ties and set(filtered["reason"]) == {"tie"}
    pairs = sql("SELECT source_row, chosen[1].content AS c, rejected[1].content AS r FROM pairs", cfg.data_root)
    assert pairs.height == f["kept"] > 0
    for i, c, r in pairs.iter_rows():
        win = majority(rows[i])
        assert (c, r) == (rows[i][f"response{win}"], rows[i][f"response{3 - win}"])
