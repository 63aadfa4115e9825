"""Generic mapping adapter: field paths, message lists, scores, metadata, swap_when, errors."""

from __future__ import annotations

import pytest

from curation.errors import ConfigError, RowError
from curation.stages.ingest.adapters import build_adapter, check_options


def run(row: dict, **options):
    [d] = build_adapter("mapping", options)(row, "map:0")
    return d


# A nested row as exported from an annotation tool: A/B columns and a "winner" label.
TOOL_ROW = {
    "id": "task-0042",
    "task": {"system_prompt": "You are a careful assistant.", "question": "Is 91 prime?", "lang": "en"},
    "answers": {"a": {"text": "No: 91 = 7 x 13.", "rating": "4"}, "b": {"text": "Yes, 91 is prime.", "rating": 1.5}},
    "winner": "a",
    "annotator": {"id": 7},
}

TOOL_OPTIONS = {
    "prompt": "task.question",
    "system": "task.system_prompt",
    "chosen": "answers.a.text",
    "rejected": "answers.b.text",
    "chosen_score": "answers.a.rating",
    "rejected_score": "answers.b.rating",
    "metadata_fields": ["id", "task.lang", "annotator.id"],
    "swap_when": {"field": "winner", "equals": "b"},
}


def test_defaults_plain_strings():
    d = run({"prompt": "Hi", "chosen": "Hello!", "rejected": "What."})
    assert d.prompt == [{"role": "user", "content": "Hi"}]
    assert d.chosen == [{"role": "assistant", "content": "Hello!"}]
    assert d.rejected == [{"role": "assistant", "content": "What."}]
    assert d.chosen_score is None and d.metadata == {}


def test_nested_paths_scores_metadata():
    d = run(TOOL_ROW, **TOOL_OPTIONS)
    assert d.prompt == [{"role": "system", "content": "You are a careful assistant."}, {"role": "user", "content": "Is 91 prime?"}]
    assert d.chosen[0]["content"] == "No: 91 = 7 x 13." and d.rejected[0]["content"] == "Yes, 91 is prime."
    assert (d.chosen_score, d.rejected_score) == (4.0, 1.5)
    assert d.metadata == {"id": "task-0042", "task.lang": "en", "annotator.id": 7}


def test_swap_when():
    d = run({**TOOL_ROW, "winner": "b"}, **TOOL_OPTIONS)
    assert d.chosen[0]["content"] == "Yes, 91 is prime." and d.rejected[0]["content"] == "No: 91 = 7 x 13."
    assert (d.chosen_score, d.rejected_score) == (1.5, 4.0)
    assert d.metadata["swapped"] is True
    d = run({"prompt": "q", "chosen": "x", "rejected": "y", "label": 0}, swap_when={"field": "label", "equals": 1})
    assert d.chosen[0]["content"] == "x" and "swapped" not in d.metadata


def test_message_lists_and_list_index_paths():
    row = {
        "conversation": [
            {"role": "user", "content": "Plan a trip"},
            {"role": "assistant", "content": "Where to?"},
            {"role": "user", "content": "Rome"},
        ],
        "responses": [[{"role": "assistant", "content": "Day 1: Colosseum"}], "Go somewhere else."],
    }
    d = run(row, prompt="conversation", chosen="responses.0", rejected="responses.1")
    assert len(d.prompt) == 3 and d.chosen == [{"role": "assistant", "content": "Day 1: Colosseum"}]
    assert d.rejected == [{"role": "assistant", "content": "Go somewhere else."}]


def test_null_system_and_na_score():
    d = run(
        {
            **TOOL_ROW,
            "task": {**TOOL_ROW["task"], "system_prompt": None},
            "answers": {"a": {"text": "x", "rating": "N/A"}, "b": {"text": "y", "rating": 2}},
        },
        **TOOL_OPTIONS,
    )
    assert d.prompt == [{"role": "user", "content": "Is 91 prime?"}]
    assert (d.chosen_score, d.rejected_score) == (None, 2.0)


@pytest.mark.parametrize(
    ("row", "options", "code", "field", "words"),
    [
        ({"prompt": "q", "chosen": "a"}, {}, "missing_field", "rejected", "'rejected' is missing"),
        ({"prompt": "q", "chosen": 1, "rejected": "b"}, {}, "wrong_type", "chosen", "'chosen' is int, expected string or list of messages"),
        ({"prompt": [{"role": "user"}], "chosen": "a", "rejected": "b"}, {}, "missing_field", "prompt[0].content", "is missing"),
        ({"task": "flat"}, {"prompt": "task.question"}, "wrong_type", "task.question", "task is string, expected object"),
        ({"task": {"q": "x"}}, {"prompt": "task.question"}, "missing_field", "task.question", "'task.question' is missing; keys there: q"),
        ({"l": ["a"], "chosen": "a", "rejected": "b"}, {"prompt": "l.3"}, "missing_field", "l.3", "l has 1 items"),
        ({"prompt": "q", "chosen": "a", "rejected": "b", "sys": ["x"]}, {"system": "sys"}, "wrong_type", "sys", "'sys' is list"),
        ({"prompt": "q", "chosen": "a", "rejected": "b", "s": "high"}, {"chosen_score": "s"}, "invalid_value", "s", "'high'"),
        ({"prompt": "q", "chosen": "a", "rejected": "b"}, {"metadata_fields": ["source.url"]}, "missing_field", "source.url", "missing"),
        (
            {"prompt": "q", "chosen": "a", "rejected": "b"},
            {"swap_when": {"field": "label", "equals": 1}},
            "missing_field",
            "label",
            "missing",
        ),
    ],
)
def test_bad_rows(row, options, code, field, words):
    with pytest.raises(RowError) as err:
        run(row, **options)
    assert (err.value.code, err.value.field) == (code, field)
    assert words in err.value.message


def test_flat_key_with_dots():
    d = run({"prompt.text": "q", "chosen": "a", "rejected": "b"}, prompt="prompt.text")
    assert d.prompt[0]["content"] == "q"


def test_options():
    with pytest.raises(ConfigError) as err:
        check_options("mapping", {"swap_when": {"field": "label"}, "promt": "x"})
    msg = str(err.value)
    assert "swap_when.equals: Field required" in msg and "promt: unknown option" in msg
    assert check_options("mapping", {"swap_when": {"field": "label", "equals": None}}).swap_when.equals is None
