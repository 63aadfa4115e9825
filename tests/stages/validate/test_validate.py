"""Validation rules, and the vectorised pre-check never missing a pair the rules reject."""

from __future__ import annotations

import json

import polars as pl
import pyarrow as pa
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from curation.errors import RowError
from curation.stages.validate.fast import suspect_rows
from curation.stages.validate.rules import check_content

ROLES = frozenset({"system", "user", "assistant", "tool"})
# whitespace, invisible characters (controls and format characters that are not whitespace) and visible ones
INVISIBLE = ["\x00", "\x07", "\x7f", "\x9f", "\xad", "\u200b", "\u2060", "\ufeff", "\U000e0020"]
TEXT = st.text(alphabet=st.sampled_from([" ", "\t", "\n", "\x1f", "\x85", "\u3000", *INVISIBLE, "a", "B", "é", "?"]), max_size=4)
MESSAGE = st.fixed_dictionaries({"role": st.sampled_from(["user", "assistant", "system", "wizard"]), "content": TEXT})
PAIR = st.fixed_dictionaries(
    {
        "prompt": st.lists(MESSAGE, max_size=3),
        "chosen": st.lists(MESSAGE, min_size=1, max_size=2),
        "rejected": st.lists(MESSAGE, min_size=1, max_size=2),
    }
)


def rejected_by_rules(pair: dict, allow_empty_prompt: bool = False) -> bool:
    try:
        check_content(pair, allowed_roles=ROLES, allow_empty_prompt=allow_empty_prompt)
    except RowError:
        return True
    return False


def frame(pairs: list[dict]) -> pa.Table:
    msg = pl.List(pl.Struct({"role": pl.String, "content": pl.String}))
    return pl.DataFrame(pairs, schema={"prompt": msg, "chosen": msg, "rejected": msg}).to_arrow()


@settings(max_examples=300, deadline=None)
@given(st.lists(PAIR, min_size=1, max_size=20))
def test_precheck_flags_exactly_the_pairs_the_rules_reject(pairs):
    suspect = suspect_rows(frame(pairs), allowed_roles=ROLES).tolist()
    assert suspect == [rejected_by_rules(pair) for pair in pairs]
    sliced = suspect_rows(frame(pairs).slice(1), allowed_roles=ROLES).tolist()  # a batch that starts mid-file
    assert sliced == suspect[1:]
    lenient = suspect_rows(frame(pairs), allowed_roles=ROLES, allow_empty_prompt=True).tolist()
    assert lenient == [rejected_by_rules(pair, allow_empty_prompt=True) for pair in pairs]


def test_precheck_passes_real_pairs_through(hh_path):
    from curation.stages.ingest.adapters import build_adapter

    adapt = build_adapter("hh_rlhf", {})
    pairs = []
    for i, line in enumerate(hh_path.open()):
        try:
            d = adapt(json.loads(line), str(i))[0]
        except RowError:
            continue
        pairs.append({"prompt": d.prompt, "chosen": d.chosen, "rejected": d.rejected})
    suspect = suspect_rows(frame(pairs), allowed_roles=ROLES).tolist()
    truly_bad = [rejected_by_rules(p) for p in pairs]
    assert sum(truly_bad) == 4  # the four empty chosen responses
    assert suspect == truly_bad


@pytest.mark.parametrize(
    ("pair", "code", "field"),
    [
        (
            {
                "prompt": [{"role": "user", "content": " \x1f "}],
                "chosen": [{"role": "assistant", "content": "a"}],
                "rejected": [{"role": "assistant", "content": "b"}],
            },
            "empty_prompt",
            "prompt",
        ),
        (
            {
                "prompt": [{"role": "user", "content": "q"}],
                "chosen": [{"role": "user", "content": "a"}],
                "rejected": [{"role": "assistant", "content": "b"}],
            },
            "invalid_role",
            "chosen[0].role",
        ),
        (
            {
                "prompt": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "x"}],
                "chosen": [{"role": "assistant", "content": "a"}],
                "rejected": [{"role": "assistant", "content": "b"}],
            },
            "invalid_role",
            "prompt",
        ),
        (
            {
                "prompt": [{"role": "user", "content": "q"}],
                "chosen": [{"role": "assistant", "content": " same "}],
                "rejected": [{"role": "assistant", "content": "same"}],
            },
            "identical_responses",
            "rejected",
        ),
    ],
)
def test_rules_name_code_and_field(pair, code, field):
    with pytest.raises(RowError) as err:
        check_content(pair, allowed_roles=ROLES)
    assert (err.value.code, err.value.field) == (code, field)


@pytest.mark.parametrize("blank", [" ", "\t\n", "\x1c", "\x1f", "\x85", "\u3000", "\u2029 "])
@pytest.mark.parametrize("part", ["prompt", "chosen", "rejected"])
def test_precheck_sees_whitespace_as_python_does(blank, part):
    pair = {
        "prompt": [{"role": "user", "content": "q"}],
        "chosen": [{"role": "assistant", "content": "a"}],
        "rejected": [{"role": "assistant", "content": "b"}],
    }
    pair[part] = [{"role": pair[part][0]["role"], "content": blank}]
    assert rejected_by_rules(pair)
    assert suspect_rows(frame([pair]), allowed_roles=ROLES).tolist() == [True]


@pytest.mark.parametrize("pad", [" ", "\n\t", "\x1c", "\x85", "\u3000", "\u2029 "])
def test_precheck_finds_responses_that_differ_only_in_padding(pad):
    """Raw texts differ, stripped they are equal: flagged, in any message and either response;
    padding inside the text, or on texts that differ anyway, is no reason."""

    def pair(chosen: list[str], rejected: list[str]) -> dict:
        return {
            "prompt": [{"role": "user", "content": "q"}],
            "chosen": [{"role": "assistant", "content": c} for c in chosen],
            "rejected": [{"role": "assistant", "content": r} for r in rejected],
        }

    pairs = [
        pair([pad + "same"], ["same"]),
        pair(["same"], ["same" + pad]),
        pair(["a", pad + "b" + pad], ["a", "b"]),
        pair(["a" + pad + "b"], ["ab"]),
        pair([pad + "x"], ["y" + pad]),
        pair(["a", "b"], ["a", pad + "c"]),
        pair(["same"], ["same"]),
    ]
    expected = [True, True, True, False, False, False, True]
    assert [rejected_by_rules(p) for p in pairs] == expected
    assert suspect_rows(frame(pairs), allowed_roles=ROLES).tolist() == expected


@pytest.mark.parametrize("invisible", INVISIBLE + ["\u200b\u2060\ufeff\x00", " \u200b\n"])
@pytest.mark.parametrize("part", ["prompt", "chosen", "rejected"])
def test_text_of_invisible_characters_is_empty(invisible, part):
    """Zero-width spaces, NULs, a BOM, a soft hyphen, tag characters: nothing a person sees."""
    pair = {
        "prompt": [{"role": "user", "content": "q"}],
        "chosen": [{"role": "assistant", "content": "a"}],
        "rejected": [{"role": "assistant", "content": "b"}],
    }
    pair[part] = [{"role": pair[part][0]["role"], "content": invisible}]
    with pytest.raises(RowError) as err:
        check_content(pair, allowed_roles=ROLES)
    assert err.value.code == ("empty_prompt" if part == "prompt" else "empty_response")
    assert suspect_rows(frame([pair]), allowed_roles=ROLES).tolist() == [True]


@pytest.mark.parametrize("invisible", INVISIBLE)
def test_responses_that_differ_only_by_invisible_characters_are_identical(invisible):
    def pair(chosen: str, rejected: str) -> dict:
        return {
            "prompt": [{"role": "user", "content": "q"}],
            "chosen": [{"role": "assistant", "content": chosen}],
            "rejected": [{"role": "assistant", "content": rejected}],
        }

    pairs = [
        pair(f"sa{invisible}me", "same"),
        pair("same", f"{invisible}same{invisible}"),
        pair(f" same{invisible} ", "same"),
        pair(f"a{invisible}b", "a b"),  # an invisible character is not a space
        pair(f"x{invisible}", "y"),
    ]
    expected = [True, True, True, False, False]
    codes = []
    for p in pairs:
        try:
            check_content(p, allowed_roles=ROLES)
            codes.append(None)
        except RowError as err:
            codes.append(err.code)
    assert codes == ["identical_responses" if e else None for e in expected]
    assert suspect_rows(frame(pairs), allowed_roles=ROLES).tolist() == expected
