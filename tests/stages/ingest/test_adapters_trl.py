"""TRL adapter: standard/conversational, explicit/implicit prompts, checked against TRL itself."""

from __future__ import annotations

import pytest

from curation.errors import ConfigError, RowError
from curation.stages.ingest.adapters import build_adapter, check_options


def adapt(row: dict, **options):
    [d] = build_adapter("trl", options)(row, "trl:0")
    return d


def U(text):  # noqa: N802 - reads like a message literal
    return {"role": "user", "content": text}


def A(text):  # noqa: N802
    return {"role": "assistant", "content": text}


def S(text):  # noqa: N802
    return {"role": "system", "content": text}


def test_standard_explicit():
    d = adapt({"prompt": "The sky is", "chosen": " blue.", "rejected": " green."})
    assert d.prompt == [U("The sky is")]
    assert d.chosen == [A(" blue.")] and d.rejected == [A(" green.")]


def test_conversational_explicit():
    d = adapt({"prompt": [S("Be brief."), U("Sky colour?")], "chosen": [A("Blue.")], "rejected": [A("Green.")]})
    assert d.prompt == [S("Be brief."), U("Sky colour?")]
    assert d.chosen == [A("Blue.")] and d.rejected == [A("Green.")]


def test_extra_message_keys_are_dropped():
    d = adapt({"prompt": [U("q")], "chosen": [{"role": "assistant", "content": "a", "name": "x"}], "rejected": [A("b")]})
    assert d.chosen == [A("a")]


def test_system_field_is_prepended():
    d = adapt({"system": "You are terse.", "prompt": "Sky?", "chosen": "Blue", "rejected": "Green"})
    assert d.prompt == [S("You are terse."), U("Sky?")]
    d = adapt({"system": None, "prompt": "Sky?", "chosen": "Blue", "rejected": "Green"})
    assert d.prompt == [U("Sky?")]
    # A prompt that already has a system message keeps its own.
    d = adapt({"system": "other", "prompt": [S("mine"), U("q")], "chosen": [A("a")], "rejected": [A("b")]})
    assert d.prompt == [S("mine"), U("q")]
    d = adapt({"sys": "S", "prompt": "q", "chosen": "a", "rejected": "b"}, system_field="sys")
    assert d.prompt[0] == S("S")


def test_custom_field_names_and_nested_paths():
    row = {"q": "Sky?", "pair": {"good": "Blue", "bad": "Green"}}
    d = adapt(row, prompt_field="q", chosen_field="pair.good", rejected_field="pair.bad")
    assert (d.prompt, d.chosen, d.rejected) == ([U("Sky?")], [A("Blue")], [A("Green")])


def test_string_prompt_with_assistant_only_completions():
    d = adapt({"prompt": "Sky?", "chosen": [A("Blue")], "rejected": [A("Green")]})
    assert d.prompt == [U("Sky?")] and d.chosen == [A("Blue")]


def test_message_prompt_with_string_completions():
    d = adapt({"prompt": [U("Sky?")], "chosen": "Blue", "rejected": "Green"})
    assert d.prompt == [U("Sky?")] and d.rejected == [A("Green")]


IMPLICIT_CONVERSATIONAL = [
    {"chosen": [U("What color is the sky?"), A("It is blue.")], "rejected": [U("What color is the sky?"), A("It is green.")]},
    {
        "chosen": [S("sys"), U("a"), A("b"), U("c"), A("good")],
        "rejected": [S("sys"), U("a"), A("b"), U("c"), A("bad")],
    },
    {"chosen": [U("a"), A("b")], "rejected": [U("a"), A("b"), U("c"), A("d")]},  # one side a prefix of the other
    {"chosen": [U("a"), A("same")], "rejected": [U("a"), A("same")]},  # identical
    {"chosen": [U("x"), A("b")], "rejected": [U("y"), A("b")]},  # nothing shared
]

IMPLICIT_STANDARD = [
    {"chosen": "The sky is blue.", "rejected": "The sky is green."},
    {"chosen": "Q: 2+2?\nA: 4", "rejected": "Q: 2+2?\nA: 5"},
    {"chosen": "same", "rejected": "same"},
    {"chosen": "abc", "rejected": "abcdef"},
    {"chosen": "Blue", "rejected": "Green"},  # nothing shared
]


@pytest.fixture(scope="module")
def trl_extract_prompt():
    data_utils = pytest.importorskip("trl.data_utils")
    return data_utils.extract_prompt


@pytest.mark.parametrize("row", IMPLICIT_CONVERSATIONAL)
def test_implicit_conversational_matches_trl(row, trl_extract_prompt):
    expected = trl_extract_prompt(row)
    d = adapt(row)
    assert (d.prompt, d.chosen, d.rejected) == (expected["prompt"], expected["chosen"], expected["rejected"])
    assert d.metadata["implicit_prompt"] is True


@pytest.mark.parametrize("row", IMPLICIT_STANDARD)
def test_implicit_standard_matches_trl(row, trl_extract_prompt):
    expected = trl_extract_prompt(row)
    d = adapt(row)
    assert d.chosen == [A(expected["chosen"])] and d.rejected == [A(expected["rejected"])]
    assert d.prompt == ([U(expected["prompt"])] if expected["prompt"] else [])


def test_implicit_standard_example():
    d = adapt({"chosen": "The sky is blue.", "rejected": "The sky is green."})
    assert d.prompt == [U("The sky is")]
    assert d.chosen == [A(" blue.")]  # TRL leaves the boundary space on the completion


def test_implicit_with_null_prompt():
    d = adapt({"prompt": None, "chosen": [U("q"), A("a")], "rejected": [U("q"), A("b")]})
    assert d.prompt == [U("q")]


def test_string_prompt_beside_full_conversations_is_ignored_like_trl(trl_extract_prompt):
    row = {"prompt": "q", "chosen": [U("q"), A("a")], "rejected": [U("q"), A("b")]}
    from trl.data_utils import maybe_extract_prompt

    expected = maybe_extract_prompt(row)
    d = adapt(row)
    assert (d.prompt, d.chosen, d.rejected) == (expected["prompt"], expected["chosen"], expected["rejected"])
    assert d.metadata["prompt_field_ignored"] is True


def test_implicit_conversational_with_system_field():
    d = adapt({"system": "S", "chosen": [U("q"), A("a")], "rejected": [U("q"), A("b")]})
    assert d.prompt == [S("S"), U("q")]


@pytest.mark.parametrize(
    ("row", "code", "field", "words"),
    [
        ({"prompt": "q", "chosen": 5, "rejected": "b"}, "wrong_type", "chosen", "'chosen' is int, expected string or list of messages"),
        ({"prompt": "q", "rejected": "b"}, "missing_field", "chosen", "'chosen' is missing"),
        ({"prompt": "q", "chosen": "a"}, "missing_field", "rejected", "'rejected' is missing"),
        ({"prompt": "q", "chosen": "a", "rejected": [A("b")]}, "wrong_type", "rejected", "expected string like 'chosen'"),
        (
            {"prompt": [U("q")], "chosen": [{"content": "a"}], "rejected": [A("b")]},
            "missing_field",
            "chosen[0].role",
            "'chosen[0].role' is missing",
        ),
        (
            {"prompt": [U("q")], "chosen": [A("a")], "rejected": [{"role": "assistant", "content": None}]},
            "wrong_type",
            "rejected[0].content",
            "is null, expected string",
        ),
        ({"prompt": [U("q")], "chosen": ["a"], "rejected": [A("b")]}, "wrong_type", "chosen[0]", "is string, expected message object"),
        ({"prompt": 3, "chosen": "a", "rejected": "b"}, "wrong_type", "prompt", "'prompt' is int"),
        ({"prompt": [{"role": 1, "content": "q"}], "chosen": "a", "rejected": "b"}, "wrong_type", "prompt[0].role", "is int"),
        ({"system": 1, "prompt": "q", "chosen": "a", "rejected": "b"}, "wrong_type", "system", "'system' is int"),
        ({"chosen": "", "rejected": "b"}, "invalid_value", "chosen", "implicit prompt"),
        ({"chosen": [], "rejected": [U("q"), A("b")]}, "invalid_value", "chosen", "implicit prompt"),
    ],
)
def test_bad_rows(row, code, field, words):
    with pytest.raises(RowError) as err:
        adapt(row)
    assert (err.value.code, err.value.field) == (code, field)
    assert words in err.value.message


def test_options():
    assert check_options("trl", {}).prompt_field == "prompt"
    with pytest.raises(ConfigError, match="chosen_fields: unknown option"):
        check_options("trl", {"chosen_fields": "x"})
