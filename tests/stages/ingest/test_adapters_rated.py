"""Rated (UltraFeedback-style) adapter: pair rules, gaps, N/A scores, determinism, bad rows."""

from __future__ import annotations

import pytest

from curation.errors import ConfigError, NoPairs, RowError
from curation.stages.ingest.adapters import build_adapter, check_options


def run(row: dict, key: str = "uf:0", **options):
    return build_adapter("rated", options)(row, key)


def comp(text, score, model="m"):
    return {"response": text, "overall_score": score, "model": model}


ROW = {
    "instruction": "Explain photosynthesis to a child.",
    "completions": [
        comp("Plants eat sunlight.", 6.5, "alpaca-7b"),
        comp("Plants use light, water and air to make food.", 8.0, "gpt-4"),
        comp("I don't know.", 2.0, "falcon-40b"),
        comp("It is a process.", 5.0, "llama-2-7b"),
    ],
}

# UltraFeedback's real layout: fine-grained ratings as strings, "N/A" where not rated.
UF_ROW = {
    "instruction": "Write a haiku about rain.",
    "completions": [
        {"model": "gpt-4", "response": "Soft rain on tin roofs", "annotations": {"helpfulness": {"Rating": "5", "Rationale": "good"}}},
        {"model": "pythia-12b", "response": "Rain rain rain", "annotations": {"helpfulness": {"Rating": "2", "Rationale": "meh"}}},
        {"model": "starchat", "response": "...", "annotations": {"helpfulness": {"Rating": "N/A", "Rationale": "empty"}}},
        {"model": "wizardlm-7b", "response": "Drops fall", "annotations": {"helpfulness": {"Rating": "4", "Rationale": "ok"}}},
    ],
}


def test_best_vs_random_lower_default():
    [d] = run(ROW)
    assert d.prompt == [{"role": "user", "content": ROW["instruction"]}]
    assert d.chosen == [{"role": "assistant", "content": "Plants use light, water and air to make food."}]
    assert d.chosen_score == 8.0 and d.rejected_score in {6.5, 2.0, 5.0}
    assert d.rejected[0]["content"] in {c["response"] for c in ROW["completions"]} - {d.chosen[0]["content"]}
    assert d.metadata["rule"] == "best_vs_random_lower" and d.metadata["chosen_index"] == 1
    assert d.metadata["scores"] == [6.5, 8.0, 2.0, 5.0] and d.metadata["unscored"] == 0


def test_random_pick_is_deterministic_and_varies_by_key_and_seed():
    picks = {run(ROW, key=f"uf:{i}")[0].metadata["rejected_index"] for i in range(40)}
    assert picks == {0, 2, 3}  # every lower completion gets picked for some row key
    assert [run(ROW, key="uf:7")[0].rejected for _ in range(5)] == [run(ROW, key="uf:7")[0].rejected] * 5
    by_seed = {run(ROW, key="uf:7", seed=s)[0].metadata["rejected_index"] for s in range(30)}
    assert len(by_seed) > 1


def test_random_pick_is_pinned():
    """sha256-seeded, not hash()-seeded: these picks are the same on every machine and run."""
    picks = [run(ROW, key=f"uf:{i}")[0].metadata["rejected_index"] for i in range(8)]
    assert picks == [2, 3, 0, 3, 3, 0, 0, 0]


def test_best_vs_worst():
    [d] = run(ROW, rule="best_vs_worst", model_field="model")
    assert (d.chosen_score, d.rejected_score) == (8.0, 2.0)
    assert d.metadata["chosen_model"] == "gpt-4" and d.metadata["rejected_model"] == "falcon-40b"


def test_all_above_gap():
    drafts = run(ROW, rule="all_above_gap")
    assert len(drafts) == 6  # 4 distinct scores: every unordered pair once, better one chosen
    assert all(d.chosen_score > d.rejected_score for d in drafts)
    drafts = run(ROW, rule="all_above_gap", min_gap=1.5)
    assert sorted((d.chosen_score, d.rejected_score) for d in drafts) == [(5.0, 2.0), (6.5, 2.0), (8.0, 2.0), (8.0, 5.0)]


def test_min_gap_is_strict_and_random_respects_it():
    for i in range(20):
        [d] = run(ROW, key=f"k{i}", min_gap=1.5)
        assert d.rejected_score in {5.0, 2.0}
    [d] = run(ROW, rule="best_vs_worst", min_gap=5.9)
    assert d.rejected_score == 2.0
    with pytest.raises(NoPairs, match="no_pair_above_gap"):
        run(ROW, rule="best_vs_worst", min_gap=6.0)  # 8 - 2 == 6 is not > 6


def test_tie_for_best_takes_first():
    row = {"instruction": "q", "completions": [comp("low", 1), comp("first best", 9), comp("second best", 9)]}
    [d] = run(row, rule="best_vs_worst")
    assert d.chosen[0]["content"] == "first best" and d.metadata["chosen_index"] == 1
    # the other best is never a "lower" completion
    assert {run(row, key=f"k{i}")[0].rejected[0]["content"] for i in range(20)} == {"low"}
    assert len(run(row, rule="all_above_gap")) == 2


def test_dotted_score_path_string_numbers_and_na():
    drafts = run(UF_ROW, score_field="annotations.helpfulness.Rating", model_field="model", rule="all_above_gap")
    assert sorted((d.chosen_score, d.rejected_score) for d in drafts) == [(4.0, 2.0), (5.0, 2.0), (5.0, 4.0)]
    assert all(d.metadata["unscored"] == 1 and d.metadata["scores"] == [5.0, 2.0, None, 4.0] for d in drafts)
    assert all("starchat" not in (d.metadata["chosen_model"], d.metadata["rejected_model"]) for d in drafts)


def test_no_pairs():
    with pytest.raises(NoPairs, match="all_scores_equal"):
        run({"instruction": "q", "completions": [comp("a", 7), comp("b", "7"), comp("c", 7.0)]})
    with pytest.raises(NoPairs, match="fewer_than_two_scored"):
        run({"instruction": "q", "completions": [comp("a", 7), comp("b", "N/A"), comp("c", None)]})
    with pytest.raises(NoPairs, match="fewer_than_two_scored"):
        run({"instruction": "q", "completions": []})
    with pytest.raises(NoPairs, match="no_pair_above_gap"):
        run({"instruction": "q", "completions": [comp("a", 7), comp("b", 6.5)]}, min_gap=1)


def test_prompt_may_be_messages_and_model_may_be_absent():
    row = {
        "instruction": [{"role": "system", "content": "s"}, {"role": "user", "content": "q"}],
        "completions": [{"response": "a", "overall_score": 2}, {"response": "b", "overall_score": 1}],
    }
    [d] = run(row, model_field="model")
    assert d.prompt[0]["role"] == "system" and d.metadata["chosen_model"] is None


@pytest.mark.parametrize(
    ("row", "code", "field", "words"),
    [
        ({"completions": []}, "missing_field", "instruction", "'instruction' is missing"),
        ({"instruction": "q"}, "missing_field", "completions", "'completions' is missing"),
        ({"instruction": "q", "completions": {"a": 1}}, "wrong_type", "completions", "is object, expected list"),
        ({"instruction": "q", "completions": [comp("a", 1), "b"]}, "wrong_type", "completions[1]", "is string, expected object"),
        (
            {"instruction": "q", "completions": [comp("a", 1), {"overall_score": 2}]},
            "missing_field",
            "completions[1].response",
            "'completions[1].response' is missing",
        ),
        (
            {"instruction": "q", "completions": [comp(5, 1), comp("b", 2)]},
            "wrong_type",
            "completions[0].response",
            "is int, expected string",
        ),
        (
            {"instruction": "q", "completions": [comp("a", 1), {"response": "b"}]},
            "missing_field",
            "completions[1].overall_score",
            "missing",
        ),
        (
            {"instruction": "q", "completions": [comp("a", 1), comp("b", "great")]},
            "invalid_value",
            "completions[1].overall_score",
            "'great'",
        ),
        (
            {"instruction": "q", "completions": [comp("a", 1), comp("b", [2])]},
            "wrong_type",
            "completions[1].overall_score",
            "is list, expected number",
        ),
        ({"instruction": "q", "completions": [comp("a", 1), comp("b", True)]}, "wrong_type", "completions[1].overall_score", "is bool"),
        ({"instruction": 3, "completions": []}, "wrong_type", "instruction", "is int"),
    ],
)
def test_bad_rows(row, code, field, words):
    with pytest.raises(RowError) as err:
        run(row)
    assert (err.value.code, err.value.field) == (code, field)
    assert words in err.value.message


def test_bad_nested_score_path():
    row = {"instruction": "q", "completions": [{"response": "a", "annotations": "oops"}]}
    with pytest.raises(RowError) as err:
        run(row, score_field="annotations.helpfulness.Rating")
    assert err.value.code == "wrong_type" and err.value.field == "completions[0].annotations.helpfulness.Rating"
    assert "annotations is string, expected object" in err.value.message


def test_options():
    with pytest.raises(ConfigError) as err:
        check_options("rated", {"rule": "best", "min_gap": -1})
    assert "rule:" in str(err.value) and "min_gap:" in str(err.value)
    assert check_options("rated", {}).rule == "best_vs_random_lower"
