"""Ties on a single label field (``tie_values``) and per-row ``metadata_fields`` in the ``shp``
and ``mapping`` adapters, on the real PandaLM test set.

A label field with a tie value is the common shape of A/B annotation exports ("A" / "B" /
"tie"). Before ``tie_values`` a tie row was quarantined as ``invalid_value`` (shp) or silently
kept as "A is better" (mapping); now it is filtered with reason ``tie``, as vote ties are, and
a value that is neither side nor a tie is still quarantined naming the field.
"""

from __future__ import annotations

import json
import math
from collections import Counter
from pathlib import Path

import pytest

from curation.errors import ConfigError, NoPairs, RowError
from curation.run.runner import curate
from curation.stages.ingest.adapters import build_adapter, check_options
from curation.store.query import sql
from tests.helpers import recipe_config, write_jsonl

# PandaLM's annotator1 on its own is a single label field: 0 = tie, 1 = response1, 2 = response2.
SHP_ANNOTATOR1 = {
    "prompt_fields": ["instruction", "input"],
    "response_a_field": "response1",
    "response_b_field": "response2",
    "label_field": "annotator1",
    "a_value": 1,
    "b_value": 2,
    "tie_values": [0],
    "metadata_fields": ["idx", "cmp_key", "motivation_app"],
}
MAPPING_ANNOTATOR1 = {
    "prompt": "instruction",
    "chosen": "response1",
    "rejected": "response2",
    "swap_when": {"field": "annotator1", "equals": 2},
    "tie_values": [0],
    "metadata_fields": ["idx", "cmp_key"],
}
WINNER = {0: "tie", 1: "A", 2: "B"}


@pytest.fixture(scope="module")
def pandalm(shared_data: Path) -> list[dict]:
    return json.loads((shared_data / "pandalm-testset" / "testset-v1.json").read_text(encoding="utf-8"))


def outcomes(adapter_name: str, options: dict, rows: list[dict]) -> tuple[Counter, dict[int, object]]:
    adapter = build_adapter(adapter_name, options)
    seen: Counter = Counter()
    drafts = {}
    for i, row in enumerate(rows):
        try:
            [drafts[i]] = adapter(row, f"pandalm:{i}")
            seen["pair"] += 1
        except NoPairs as np_:
            seen[np_.reason] += 1
        except RowError as err:
            seen[f"{err.code}:{err.field}"] += 1
    return seen, drafts


def strings(row: dict) -> bool:
    return isinstance(row["response1"], str) and isinstance(row["response2"], str)


@pytest.mark.parametrize(("adapter", "options"), [("shp", SHP_ANNOTATOR1), ("mapping", MAPPING_ANNOTATOR1)])
def test_real_pandalm_ties_on_one_label_field_are_filtered_with_metadata(adapter: str, options: dict, pandalm: list[dict]) -> None:
    seen, drafts = outcomes(adapter, options, pandalm)
    ties = sum(r["annotator1"] == 0 and strings(r) for r in pandalm)
    broken = Counter(f"wrong_type:{'response1' if not isinstance(r['response1'], str) else 'response2'}" for r in pandalm if not strings(r))
    assert ties == 97 and sum(broken.values()) == 6  # counted in the file: 97 ties from annotator1, 6 boolean responses
    assert seen == {"pair": len(pandalm) - ties - 6, "tie": ties, **broken}
    for i, d in drafts.items():
        row = pandalm[i]
        assert all(d.metadata[f] == row[f] for f in options["metadata_fields"])
        win = row["annotator1"]
        assert d.chosen[0]["content"] == row[f"response{win}"] and d.rejected[0]["content"] == row[f"response{3 - win}"]


def test_shp_tie_values_match_csv_strings_and_bad_values_still_quarantine(pandalm: list[dict]) -> None:
    row = next(r for r in pandalm if r["annotator1"] == 0 and strings(r))
    with pytest.raises(NoPairs, match="tie"):
        build_adapter("shp", SHP_ANNOTATOR1)({**row, "annotator1": "0"}, "k")  # CSV gives strings
    for bad in (3, "tie", None):
        with pytest.raises(RowError) as err:
            build_adapter("shp", SHP_ANNOTATOR1)({**row, "annotator1": bad}, "k")
        assert (err.value.code, err.value.field) == ("invalid_value", "annotator1")
        assert err.value.message == f"field 'annotator1' is {bad!r}, expected 1 (A), 2 (B) or 0 (tie)"
    with pytest.raises(RowError) as err:
        build_adapter("shp", SHP_ANNOTATOR1)({k: v for k, v in row.items() if k != "cmp_key"}, "k")
    assert (err.value.code, err.value.field) == ("missing_field", "cmp_key")


def test_mapping_label_that_is_no_single_finite_value_is_quarantined(pandalm: list[dict]) -> None:
    row = next(r for r in pandalm if r["annotator1"] == 1 and strings(r))
    adapter = build_adapter("mapping", MAPPING_ANNOTATOR1)
    for bad, code in ((math.nan, "non_finite_score"), ([2], "wrong_type"), ({"winner": 2}, "wrong_type")):
        with pytest.raises(RowError) as err:
            adapter({**row, "annotator1": bad}, "k")
        assert (err.value.code, err.value.field) == (code, "annotator1") and "'annotator1'" in err.value.message
    with pytest.raises(RowError) as err:
        adapter({k: v for k, v in row.items() if k != "annotator1"}, "k")
    assert (err.value.code, err.value.field) == ("missing_field", "annotator1")


@pytest.mark.parametrize(
    ("adapter", "options", "words"),
    [
        ("shp", {"vote_fields": ["a"], "tie_values": [0]}, "tie_values needs label_field"),
        ("shp", {"tie_values": [1]}, "tie_values must not hold a_value or b_value"),
        ("shp", {"label_field": "w", "a_value": "A", "b_value": "B", "tie_values": ["B"]}, "must not hold"),
        ("shp", {"metadata_fields": ["label"]}, "'label' is a metadata key the adapter writes itself"),
        ("shp", {"metadata_fields": ["idx", "idx"]}, "listed twice"),
        ("mapping", {"tie_values": ["tie"]}, "tie_values needs swap_when"),
        ("mapping", {"swap_when": {"field": "w", "equals": "B"}, "tie_values": ["B"]}, "must not hold swap_when.equals"),
        ("mapping", {"metadata_fields": ["swapped"]}, "'swapped' is a metadata key"),
    ],
)
def test_tie_and_metadata_options_checked_when_the_recipe_loads(adapter: str, options: dict, words: str) -> None:
    with pytest.raises(ConfigError) as err:
        check_options(adapter, options)
    assert words in str(err.value)


FIRST, LAST = 80, 150  # PandaLM rows 80-149: 16 of them annotator1 ties, no boolean response


def exported(pandalm: list[dict]) -> list[dict]:
    """Real PandaLM rows as an A/B annotation tool exports them: one ``winner`` field saying
    "A", "B" or "tie" (annotator1's vote) and a nested ``meta`` object."""
    rows = []
    for r in pandalm[FIRST:LAST]:
        rows.append(
            {
                "question": "\n\n".join(p for p in (r["instruction"], r["input"]) if p.strip()),
                "a": r["response1"],
                "b": r["response2"],
                "winner": WINNER[r["annotator1"]],
                "meta": {"idx": r["idx"], "models": r["cmp_key"]},
            }
        )
    return rows


SINGLE_FIELD = {
    "shp": {
        "prompt_fields": ["question"],
        "response_a_field": "a",
        "response_b_field": "b",
        "label_field": "winner",
        "a_value": "A",
        "b_value": "B",
        "tie_values": ["tie"],
        "metadata_fields": ["meta.idx", "meta.models"],
    },
    "mapping": {
        "prompt": "question",
        "chosen": "a",
        "rejected": "b",
        "swap_when": {"field": "winner", "equals": "B"},
        "tie_values": ["tie"],
        "metadata_fields": ["meta.idx", "meta.models"],
    },
}


@pytest.mark.parametrize("adapter", ["shp", "mapping"])
def test_run_filters_tie_rows_as_tie_and_quarantines_a_bad_label_naming_the_field(
    tmp_path: Path, pandalm: list[dict], adapter: str
) -> None:
    rows = exported(pandalm)
    ties = [i for i, r in enumerate(rows) if r["winner"] == "tie"]
    bad_row = next(i for i, r in enumerate(rows) if r["winner"] == "A")
    # shp knows the label's whole value space, so a typo is an invalid value; mapping only knows
    # "swap" and "tie", so a label that is an object is what it can tell as broken
    rows[bad_row]["winner"] = "A?" if adapter == "shp" else {"vote": "A"}
    expected = (
        ("invalid_value", "'winner' is 'A?', expected 'A' (A), 'B' (B) or 'tie' (tie)")
        if adapter == "shp"
        else ("wrong_type", "'winner' is object")
    )
    assert len(ties) == 16
    path = write_jsonl(tmp_path / "export.jsonl", rows)
    source = {"name": "ab", "path": str(path), "adapter": adapter, "options": SINGLE_FIELD[adapter]}
    cfg = recipe_config(tmp_path, [source], dataset=f"ties-{adapter}")
    f = curate(cfg).funnel
    assert f["filtered_by_reason"]["adapt"] == {"tie": len(ties)}
    assert f["quarantined_by_error"]["read/adapt"] == {expected[0]: 1}

    filtered = sql("SELECT source_row, decision, reason FROM decisions WHERE stage = 'adapt' ORDER BY 1", cfg.data_root)
    assert filtered["source_row"].to_list() == ties and set(filtered["decision"]) == {"filtered"} and set(filtered["reason"]) == {"tie"}
    quarantined = sql("SELECT source_row, field, error_code, error FROM quarantine WHERE stage = 'adapt'", cfg.data_root).to_dicts()
    assert len(quarantined) == 1
    q = quarantined[0]
    assert (q["source_row"], q["field"], q["error_code"]) == (bad_row, "winner", expected[0]) and expected[1] in q["error"]

    pairs = sql("SELECT source_row, metadata, chosen[1].content AS c FROM pairs", cfg.data_root)
    assert pairs.height > 0
    for i, meta, chosen in pairs.iter_rows():
        meta = json.loads(meta)
        assert (meta["meta.idx"], meta["meta.models"]) == (pandalm[FIRST + i]["idx"], pandalm[FIRST + i]["cmp_key"])
        assert chosen == rows[i]["a" if rows[i]["winner"] == "A" else "b"]
