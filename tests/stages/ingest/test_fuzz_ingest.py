"""Property-based fuzzing (hypothesis) of the ingest adapters, the readers and the recipe loader.

Properties:
* an adapter given any row (arbitrary JSON values, and rows close to its real shape with
  fields of the wrong type, missing, empty, huge numbers, odd markers) returns well-formed
  drafts, or raises ``RowError`` (quarantined, with a code and a message) or ``NoPairs``
  (filtered, with a reason); nothing else;
* the ingest -> validate -> dedup stages over arbitrary JSONL or CSV bytes never raise, every
  quarantined row has a code and a message, and the row accounting adds up (checked by
  ``curation.run.accounting.check`` on the counts and on the staged files);
* the recipe loader on arbitrary YAML text or recipe-like dicts returns a config or raises
  ``ConfigError``.

Examples are derandomized (fixed per test), so CI runs the same cases every time; the budget
is a few hundred examples, about 30 s in all on the 2-core CI machine.
"""

from __future__ import annotations

import json
import math
import tempfile
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from curation import spine
from curation.config import RunConfig, load_config, parse_config
from curation.errors import ConfigError, NoPairs, RowError, SourceError
from curation.progress import NoProgress
from curation.records import PairDraft
from curation.run import accounting
from curation.stages.ingest.adapters import build_adapter

FAST = settings(max_examples=100, derandomize=True, deadline=None, database=None, suppress_health_check=list(HealthCheck))
SLOW = settings(max_examples=25, derandomize=True, deadline=None, database=None, suppress_health_check=list(HealthCheck))

FIELDS = [
    "chosen", "rejected", "prompt", "system", "instruction", "completions", "response", "overall_score", "model",
    "history", "human_ref_A", "human_ref_B", "labels", "role", "content", "messages", "annotations", "Rating",
]  # fmt: skip
ROLES = ["user", "assistant", "system", "tool", "wizard", "", "User"]

# --------------------------------------------------------------------------- strategies

INVISIBLE = ["\x00", "\u200b", "\u2060", "\ufeff", "\xad", "\U000e0020"]  # empty to a reader
texts = (
    st.text(max_size=40)
    | st.sampled_from(["", " ", "N/A", "nan", "inf", "-Infinity", "1e999", "1", "0", "4.5", "\ud800", "Human:", "\n\nAssistant: hi"])
    | st.text(alphabet=st.sampled_from([*INVISIBLE, " ", "\n", "a", "é"]), max_size=6)
)
numbers = (
    st.integers(min_value=-(10**400), max_value=10**400)
    | st.floats(allow_nan=True, allow_infinity=True)
    | st.sampled_from([0, 1, 2, -1, 10**20, 1e308, float("inf"), float("-inf"), float("nan")])
)
leaves = st.none() | st.booleans() | numbers | texts
json_values = st.recursive(
    leaves,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.sampled_from(FIELDS) | st.text(max_size=8), inner, max_size=5),
    max_leaves=20,
)


@st.composite
def dropping(draw: st.DrawFn, rows: st.SearchStrategy) -> Any:
    """Rows of ``rows`` with each field left out one time in ten."""
    return {k: v for k, v in draw(rows).items() if draw(st.integers(0, 9)) < 9}


def field_or_junk(valid: st.SearchStrategy) -> st.SearchStrategy:
    """Mostly the valid shape, sometimes any JSON value."""
    return st.one_of(valid, valid, valid, valid, valid, json_values)


messages = st.lists(st.fixed_dictionaries({"role": field_or_junk(st.sampled_from(ROLES)), "content": field_or_junk(texts)}), max_size=4)


@st.composite
def transcripts(draw: st.DrawFn) -> str:
    marks = ["\n\nHuman:", "\n\nAssistant:", "\n\nHuman: ", "\n\nAssistant: ", "Human:", "\nAssistant:", ""]
    turns = draw(st.lists(st.tuples(st.sampled_from(marks), texts), max_size=6))
    return "".join(m + t for m, t in turns)


@st.composite
def dialogue(draw: st.DrawFn, end_with: str) -> str:
    """A well-formed HH transcript: Human and Assistant turns alternating, ending as asked."""
    turns = draw(st.integers(0, 2)) * 2 + (1 if end_with == "Human" else 2)
    return "".join(f"\n\n{'Human' if i % 2 == 0 else 'Assistant'}: {draw(texts)}" for i in range(turns))


@st.composite
def hh_rows(draw: st.DrawFn) -> Any:
    if draw(st.booleans()):  # a real shape: a shared prompt, then each side's reply (or more turns)
        shared = draw(dialogue("Human"))
        sides = [shared + f"\n\nAssistant: {draw(texts)}" + draw(st.sampled_from(["", draw(transcripts())])) for _ in range(2)]
    else:
        shared = draw(transcripts())
        sides = [shared + draw(transcripts()) for _ in range(2)]
    return draw(dropping(st.fixed_dictionaries({"chosen": field_or_junk(st.just(sides[0])), "rejected": field_or_junk(st.just(sides[1]))})))


trl_rows = dropping(
    st.fixed_dictionaries(
        {
            "prompt": field_or_junk(texts | messages | st.none()),
            "chosen": field_or_junk(texts | messages),
            "rejected": field_or_junk(texts | messages),
            "system": field_or_junk(texts | st.none()),
        }
    )
)
scores = field_or_junk(numbers | st.sampled_from(["N/A", "4", " 7.5 ", "seven", "", None, "nan", "inf", "-inf", "1e999"]))
completions = dropping(
    st.fixed_dictionaries({"response": field_or_junk(texts), "overall_score": scores, "model": json_values, "annotations": json_values})
)
rated_rows = dropping(
    st.fixed_dictionaries({"instruction": field_or_junk(texts | messages), "completions": field_or_junk(st.lists(completions, max_size=5))})
)
shp_rows = dropping(
    st.fixed_dictionaries(
        {
            "history": field_or_junk(texts | st.none()),
            "human_ref_A": field_or_junk(texts),
            "human_ref_B": field_or_junk(texts),
            "labels": field_or_junk(st.sampled_from([0, 1, "0", "1", 2, True, None])),
            "score_A": scores,
            "score_B": scores,
            "v1": field_or_junk(st.sampled_from([0, 1, 2, None, "1"])),
            "v2": field_or_junk(st.sampled_from([0, 1, 2, None, "2"])),
        }
    )
)
mapping_rows = dropping(
    st.fixed_dictionaries(
        {
            "q": field_or_junk(texts | messages),
            "a": field_or_junk(dropping(st.fixed_dictionaries({"b": field_or_junk(texts | messages)})) | st.lists(texts, max_size=2)),
            "r": field_or_junk(texts | messages),
            "s": scores,
            "t": scores,
            "w": json_values,
            "sys": field_or_junk(texts | st.none()),
        }
    )
)

ADAPTERS: list[tuple[str, dict[str, Any], st.SearchStrategy]] = [
    ("hh_rlhf", {}, hh_rows()),
    ("hh_rlhf", {"diverging": "quarantine"}, hh_rows()),
    ("trl", {}, trl_rows),
    ("rated", {}, rated_rows),
    ("rated", {"rule": "all_above_gap", "min_gap": 0.5, "model_field": "model"}, rated_rows),
    ("rated", {"rule": "best_vs_worst", "score_field": "annotations.helpfulness.Rating"}, rated_rows),
    ("shp", {}, shp_rows),
    ("shp", {"score_a_field": "score_A", "score_b_field": "score_B", "min_ratio": 2.0}, shp_rows),
    ("shp", {"vote_fields": ["v1", "v2"], "min_agreement": 1.0}, shp_rows),
    (
        "mapping",
        {"prompt": "q", "chosen": "a.b", "rejected": "r", "system": "sys", "chosen_score": "s", "rejected_score": "t",
         "metadata_fields": ["w"], "swap_when": {"field": "w", "equals": 1}},
        mapping_rows,
    ),
]  # fmt: skip


def check_draft(d: Any) -> None:
    """The adapter contract: message lists of string role/content, scores numbers or None."""
    assert isinstance(d, PairDraft), d
    for part in (d.prompt, d.chosen, d.rejected):
        assert isinstance(part, list)
        for m in part:
            assert set(m) == {"role", "content"} and type(m["role"]) is str and type(m["content"]) is str, m
    for score in (d.chosen_score, d.rejected_score):
        assert score is None or (type(score) is float and math.isfinite(score)), score
    json.dumps(d.metadata, default=str)


def adapt(name: str, options: dict[str, Any], row: Any) -> str:
    """Run one row through the adapter as ingest does; where it ended."""
    try:
        drafts = build_adapter(name, options)(row, "fuzz:0")
    except RowError as err:
        assert err.code and err.message and isinstance(err.message, str)
        return "quarantined"
    except NoPairs as np_:
        assert np_.reason
        return "filtered"
    assert isinstance(drafts, list) and drafts
    for d in drafts:
        check_draft(d)
    return "pairs"


# --------------------------------------------------------------------------- adapters


@pytest.mark.parametrize(("name", "options", "rows"), ADAPTERS, ids=[f"{a}-{i}" for i, (a, _, _) in enumerate(ADAPTERS)])
def test_adapters_never_crash_on_near_valid_rows(name: str, options: dict[str, Any], rows: st.SearchStrategy) -> None:
    seen: set[str] = set()

    @FAST
    @given(rows)
    def run(row: Any) -> None:
        seen.add(adapt(name, options, row))

    run()
    assert "quarantined" in seen  # the generators reach the error paths...
    assert "pairs" in seen or "filtered" in seen  # ...and the good ones


@FAST
@given(st.sampled_from(ADAPTERS), json_values)
def test_adapters_never_crash_on_any_json_value(adapter: tuple, row: Any) -> None:
    name, options, _ = adapter
    adapt(name, options, row if isinstance(row, dict) else {"chosen": row})


# --------------------------------------------------------------------------- readers + stages


def ingest_bytes(data: bytes, suffix: str, adapter: str, options: dict[str, Any], work: Path) -> dict[str, Any] | None:
    """The ingest, validate and dedup stages over a file holding ``data``; the checked funnel
    (None when the file as a whole cannot be read: a ``SourceError`` naming the file)."""
    path = work / f"input{suffix}"
    path.write_bytes(data)
    source = {"name": "fuzz", "path": str(path), "adapter": adapter, "options": options}
    cfg = parse_config({"publish": {"dataset": "fuzz"}, "sources": [source], "data_root": str(work / "root"), "batch_size": 7})
    outs: dict[str, Any] = {}
    try:
        outs["ingest"] = spine.stage("ingest").run(cfg, work, {}, NoProgress())
    except SourceError as err:  # e.g. a CSV header that repeats a column name
        assert str(path) in str(err)
        return None
    outs["validate"] = spine.stage("validate").run(cfg, work, {"ingest": outs["ingest"]}, NoProgress())
    outs["dedup"] = spine.stage("dedup").run(cfg, work, {"validate": outs["validate"]}, NoProgress())
    funnel = accounting.funnel(outs)
    accounting.check(funnel, outs)  # raises on any row unaccounted for
    for name in ("quarantine-ingest.parquet", "quarantine-validate.parquet"):
        import pyarrow.parquet as pq

        for row in pq.read_table(work / name).to_pylist():
            assert row["error_code"] and row["error"], row
    return funnel


@st.composite
def jsonl_files(draw: st.DrawFn) -> tuple[bytes, str, dict[str, Any]]:
    name, options, rows = draw(st.sampled_from(ADAPTERS))
    lines = draw(
        st.lists(
            st.one_of(
                rows.map(lambda r: json.dumps(r, default=str).encode("utf-8", "surrogatepass")),
                json_values.map(lambda v: json.dumps(v, default=str).encode("utf-8", "surrogatepass")),
                st.binary(max_size=30),
                st.sampled_from(
                    [
                        b"",
                        b"   ",
                        b"{",
                        b'{"chosen": "\\ud800"}',
                        b"\xef\xbb\xbf{}",
                        b"[1, 2]",
                        b"null",
                        b"1e999",
                        b'{"chosen": ' + b"9" * 5000 + b"}",
                        b'{"prompt": "Q", "chosen": "\\u200b\\u0000", "rejected": "x", "score": NaN, "s": Infinity}',
                        b'{"history": "Q", "human_ref_A": "a\\ufeff", "human_ref_B": "a", "labels": -Infinity}',
                    ]
                ),
            ),
            max_size=8,
        )
    )
    end = draw(st.sampled_from([b"\n", b"\r\n", b""]))
    return b"\n".join(lines) + end, name, options


@SLOW
@given(jsonl_files())
def test_jsonl_bytes_through_the_stages(case: tuple[bytes, str, dict[str, Any]]) -> None:
    data, name, options = case
    with tempfile.TemporaryDirectory() as tmp:
        f = ingest_bytes(data, ".jsonl", name, options, Path(tmp))
    assert f is not None and f["rows_in"] <= data.count(b"\n") + 1  # a JSONL file never fails as a whole


@st.composite
def csv_files(draw: st.DrawFn) -> tuple[bytes, str, dict[str, Any]]:
    cell = st.one_of(texts, st.sampled_from(['"', '""', '"a,b"', "a\nb", "\r", "\x00", "N/A"]))
    header = draw(st.sampled_from([["prompt", "chosen", "rejected"], ["history", "human_ref_A", "human_ref_B", "labels"], ["a", "b"], []]))
    rows = draw(st.lists(st.lists(cell, max_size=5), max_size=6))
    text = "\n".join(",".join(r) for r in [header, *rows])
    data = text.encode("utf-8", "surrogatepass") + draw(st.sampled_from([b"", b"\n", b"\xff\xfe\n"]))
    adapter = "shp" if "history" in header else "trl"
    return data, adapter, {}


@SLOW
@given(csv_files())
def test_csv_bytes_through_the_stages(case: tuple[bytes, str, dict[str, Any]]) -> None:
    data, name, options = case
    with tempfile.TemporaryDirectory() as tmp:
        ingest_bytes(data, ".csv", name, options, Path(tmp))


def test_the_fuzzed_stages_do_see_good_rows(tmp_path: Path) -> None:
    """The stage harness above is not vacuous: a good row goes through, a bad one is quarantined."""
    good = json.dumps({"prompt": "Q?", "chosen": "yes", "rejected": "no"}).encode()
    f = ingest_bytes(good + b"\n{\n", ".jsonl", "trl", {}, tmp_path)
    assert f is not None and (f["rows_in"], f["kept"], f["rows_quarantined"]) == (2, 1, 1)


# --------------------------------------------------------------------------- recipe loader

BASE_RECIPE = {
    "publish": {"dataset": "fuzz"},
    "sources": [{"name": "hh", "path": "hh.jsonl", "adapter": "hh_rlhf", "options": {}, "limit": 10}],
    "validate": {"max_row_bytes": 1000, "allowed_roles": ["user", "assistant"]},
    "dedup": {"exact": True},
    "label": {"labelers": [{"name": "j", "kind": "judge_pairwise", "backend": {"backend": "openai", "model": "m"}}]},
    "generate": {"generator": {"backend": "openai", "model": "m"}, "n": 2},
}


@st.composite
def mutated_recipes(draw: st.DrawFn) -> Any:
    """The base recipe with a few values replaced, keys added or removed, anywhere in it."""
    recipe = json.loads(json.dumps(BASE_RECIPE))
    for _ in range(draw(st.integers(1, 4))):
        node: Any = recipe
        path = []
        while isinstance(node, (dict, list)) and node and draw(st.booleans()):
            key = draw(st.sampled_from(list(node) if isinstance(node, dict) else list(range(len(node)))))
            path.append(key)
            if not isinstance(node[key], (dict, list)):
                break
            node = node[key]
        if isinstance(node, dict):
            action = draw(st.sampled_from(["set", "add", "drop"]))
            if action == "drop" and node:
                node.pop(draw(st.sampled_from(list(node))))
            else:
                key = draw(st.sampled_from(list(node))) if action == "set" and node else draw(st.sampled_from(FIELDS) | st.text(max_size=6))
                node[key] = draw(json_values)
        elif isinstance(node, list):
            node.append(draw(json_values))
    return recipe


@FAST
@given(st.one_of(mutated_recipes(), json_values))
def test_recipe_dicts_load_or_fail_with_a_config_error(data: Any) -> None:
    try:
        cfg = parse_config(data, where="fuzz.yaml", base_dir=Path("/nonexistent"))
    except ConfigError as err:
        assert str(err)
        return
    assert isinstance(cfg, RunConfig)
    cfg.config_hash()


@SLOW
@given(st.one_of(st.text(max_size=200), mutated_recipes().map(lambda r: yaml.safe_dump(r, allow_unicode=True)), st.binary(max_size=60)))
def test_recipe_files_load_or_fail_with_a_config_error(text: str | bytes) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "recipe.yaml"
        if isinstance(text, bytes):
            path.write_bytes(text)
        else:
            path.write_text(text, encoding="utf-8", errors="surrogatepass")
        try:
            load_config(path)
        except ConfigError as err:
            assert str(err)
