"""HH-RLHF adapter: exact turn splitting, divergence handling, and the real 1,200-row sample."""

from __future__ import annotations

import json
from collections import Counter

import pytest

from curation.errors import ConfigError, RowError
from curation.stages.ingest.adapters import ADAPTERS, build_adapter, check_options


def adapt(row: dict, **options):
    return build_adapter("hh_rlhf", options)(row, "hh:0")


def t(*turns: str) -> str:
    """Transcript from alternating turns, starting with Human."""
    return "".join(f"\n\n{'Human' if i % 2 == 0 else 'Assistant'}: {text}" for i, text in enumerate(turns))


def test_single_turn():
    [d] = adapt({"chosen": t("Hi?", "Hello."), "rejected": t("Hi?", "Go away.")})
    assert d.prompt == [{"role": "user", "content": "Hi?"}]
    assert d.chosen == [{"role": "assistant", "content": "Hello."}]
    assert d.rejected == [{"role": "assistant", "content": "Go away."}]
    assert d.metadata == {} and d.chosen_score is None


def test_multi_turn_shared_prefix_is_prompt():
    [d] = adapt({"chosen": t("a", "b", "c", "good"), "rejected": t("a", "b", "c", "bad")})
    assert [m["role"] for m in d.prompt] == ["user", "assistant", "user"]
    assert [m["content"] for m in d.prompt] == ["a", "b", "c"]
    assert d.chosen[0]["content"] == "good" and d.rejected[0]["content"] == "bad"


def test_inline_human_stays_in_content():
    text = "Sure. A script:\nHuman: hello\nBot: hi.  Also Human: is a label."
    [d] = adapt({"chosen": t("q", text), "rejected": t("q", "no")})
    assert d.chosen[0]["content"] == text


def test_strips_one_leading_space_and_trailing_whitespace_only():
    [d] = adapt({"chosen": "\n\nHuman:   indented\n\nAssistant: line1\n\n  line2  \n", "rejected": "\n\nHuman:   indented\n\nAssistant:x"})
    assert d.prompt[0]["content"] == "  indented"
    assert d.chosen[0]["content"] == "line1\n\n  line2"
    assert d.rejected[0]["content"] == "x"


def test_empty_final_response_is_kept():
    [d] = adapt({"chosen": t("q", ""), "rejected": t("q", "answer")})
    assert d.chosen == [{"role": "assistant", "content": ""}]


def test_identical_transcripts_still_adapt():
    [d] = adapt({"chosen": t("q", "same"), "rejected": t("q", "same")})
    assert d.chosen == d.rejected  # validate stage decides what to do with it


DIVERGING = {"chosen": t("a", "b", "c", "d"), "rejected": t("a", "B", "C", "D")}


def test_diverging_shared_prefix():
    [d] = adapt(DIVERGING)
    assert d.prompt == [{"role": "user", "content": "a"}]
    assert [m["content"] for m in d.chosen] == ["b", "c", "d"]
    assert [m["content"] for m in d.rejected] == ["B", "C", "D"]
    assert d.chosen[0]["role"] == "assistant"
    assert d.metadata["diverged_at_turn"] == 1


def test_diverging_at_human_turn_backs_off_to_previous_human():
    [d] = adapt({"chosen": t("a", "b", "c", "d"), "rejected": t("a", "b", "C", "D")})
    assert [m["content"] for m in d.prompt] == ["a"]
    assert [m["content"] for m in d.chosen] == ["b", "c", "d"]
    assert d.metadata["diverged_at_turn"] == 2


def test_diverging_different_lengths():
    [d] = adapt({"chosen": t("a", "b"), "rejected": t("a", "b", "c", "d")})
    assert [m["content"] for m in d.prompt] == ["a"]
    assert [m["content"] for m in d.chosen] == ["b"]
    assert [m["content"] for m in d.rejected] == ["b", "c", "d"]
    assert d.metadata == {"diverged_at_turn": 2, "chosen_turns": 2, "rejected_turns": 4}


def test_diverging_quarantine():
    with pytest.raises(RowError) as err:
        adapt(DIVERGING, diverging="quarantine")
    assert err.value.code == "diverging_transcript" and "turn 1" in err.value.message
    # Rows that only differ in the last turn are not affected by the option.
    assert adapt({"chosen": t("a", "x"), "rejected": t("a", "y")}, diverging="quarantine")


def test_diverging_from_first_turn_has_no_prompt():
    with pytest.raises(RowError) as err:
        adapt({"chosen": t("a", "b"), "rejected": t("A", "b")})
    assert err.value.code == "diverging_transcript"


@pytest.mark.parametrize(
    ("row", "code", "field", "words"),
    [
        ({"rejected": t("a", "b")}, "missing_field", "chosen", "'chosen' is missing"),
        ({"chosen": 3, "rejected": t("a", "b")}, "wrong_type", "chosen", "'chosen' is int, expected string"),
        ({"chosen": t("a", "b"), "rejected": None}, "wrong_type", "rejected", "is null"),
        ({"chosen": "Human: a\n\nAssistant: b", "rejected": t("a", "b")}, "malformed_transcript", "chosen", "text before"),
        ({"chosen": t("a", "b"), "rejected": "just text"}, "malformed_transcript", "rejected", "text before"),
        ({"chosen": t("a", "b"), "rejected": ""}, "malformed_transcript", "rejected", "no '"),
        ({"chosen": t("a", "b", "c"), "rejected": t("a", "b")}, "malformed_transcript", "chosen", "ends with a Human"),
        (
            {"chosen": "\n\nHuman: a\n\nHuman: b\n\nAssistant: c", "rejected": t("a", "b")},
            "malformed_transcript",
            "chosen",
            "two Human turns",
        ),
        ({"chosen": "\n\nAssistant: a", "rejected": t("a", "b")}, "malformed_transcript", "chosen", "starts with an Assistant"),
    ],
)
def test_bad_rows(row, code, field, words):
    with pytest.raises(RowError) as err:
        adapt(row)
    assert (err.value.code, err.value.field) == (code, field)
    assert words in err.value.message and field in err.value.message


def test_options():
    assert check_options("hh_rlhf", {}).diverging == "shared_prefix"
    with pytest.raises(ConfigError, match="diverging"):
        check_options("hh_rlhf", {"diverging": "drop"})
    with pytest.raises(ConfigError, match="unknown option"):
        check_options("hh_rlhf", {"divergin": "quarantine"})
    [d] = adapt({"good": t("a", "b"), "bad": t("a", "c")}, chosen_field="good", rejected_field="bad")
    assert d.chosen[0]["content"] == "b"
    assert set(ADAPTERS) == {"hh_rlhf", "trl", "rated", "shp", "mapping", "oasst"}


def test_real_sample(hh_path):
    adapter = build_adapter("hh_rlhf", {})
    rows = [json.loads(line) for line in hh_path.read_text(encoding="utf-8").splitlines()]
    assert len(rows) == 1200
    outcome: Counter = Counter()
    inline_rows, empty_chosen, errors = [], [], []
    for i, row in enumerate(rows):
        try:
            [d] = adapter(row, f"hh:{i}")
        except RowError as err:
            outcome[err.code] += 1
            errors.append((i, err))
            continue
        outcome["ok"] += 1
        # Rebuilding the transcripts from the drafts gives back the source (modulo layout).
        for side, msgs in (("chosen", d.chosen), ("rejected", d.rejected)):
            rebuilt = "".join(f"\n\n{'Human' if m['role'] == 'user' else 'Assistant'}: {m['content']}" for m in d.prompt + msgs)
            assert rebuilt.rstrip() == row[side].rstrip()
        if any("Human:" in m["content"] for m in d.chosen + d.rejected):
            inline_rows.append(i)
        if d.chosen[0]["content"] == "":
            empty_chosen.append(i)
    # Two upstream rows have two Assistant turns in a row: quarantined, not guessed at.
    assert outcome == {"ok": 1198, "malformed_transcript": 2}
    assert [i for i, _ in errors] == [667, 763]
    assert all("two Assistant turns" in e.message and e.field == "chosen" for _, e in errors)
    assert len(inline_rows) == 18  # the README's count: inline "Human:" stays in the response
    assert len(empty_chosen) == 4
