"""OpenAssistant message tables: sibling ranks -> pairs, ancestor prompts, every row accounted.

Most checks run on the real oasst1 English validation file (2,022 messages, 188 trees);
expected counts are recomputed here from the raw JSONL with plain Python.
"""

from __future__ import annotations

import json
from collections import Counter, defaultdict
from pathlib import Path

import pytest

from curation.errors import ConfigError, CurationError, NoPairs, RowError
from curation.run.runner import curate
from curation.stages.ingest.adapters import TableResult, build_adapter, check_options, is_table_adapter
from curation.store.query import sql
from tests.helpers import recipe_config, write_jsonl


@pytest.fixture(scope="module")
def oasst_path(shared_data: Path) -> Path:
    return shared_data / "oasst1-en-validation" / "en-validation.jsonl"


@pytest.fixture(scope="module")
def oasst_rows(oasst_path: Path) -> list[dict]:
    return [json.loads(line) for line in oasst_path.read_text(encoding="utf-8").splitlines()]


def adapt(rows: list[dict], **options) -> TableResult:
    result = build_adapter("oasst", options)(rows)
    result.check(len(rows), "oasst")
    return result


def outcome_of(result: TableResult) -> list[str]:
    return ["kept" if o is None else o.reason if isinstance(o, NoPairs) else f"quarantined:{o.code}" for o in result.outcomes]


def msg(mid: str, parent: str | None, role: str, text: str, rank: int | None = None, **extra) -> dict:
    return {"message_id": mid, "parent_id": parent, "role": role, "text": text, "rank": rank, "deleted": False, "lang": "en", **extra}


def expected_pairs(rows: list[dict], rule: str) -> Counter:
    """(parent, chosen, rejected) message ids, computed independently of the adapter."""
    by_id = {r["message_id"]: r for r in rows}

    def whole(r: dict) -> bool:  # not deleted, and every ancestor present and not deleted
        while True:
            if r["deleted"]:
                return False
            if r["parent_id"] is None:
                return True
            if r["parent_id"] not in by_id:
                return False
            r = by_id[r["parent_id"]]

    siblings = defaultdict(list)
    for r in rows:
        if r["role"] == "assistant" and r["rank"] is not None and whole(r):
            siblings[r["parent_id"]].append(r)
    out: Counter = Counter()
    for parent, group in siblings.items():
        ranks = sorted({r["rank"] for r in group})
        for a in group:
            for b in group:
                if rule == "best_vs_lower":
                    ok = a["rank"] == ranks[0] and b["rank"] > a["rank"]
                elif rule == "all_ordered":
                    ok = a["rank"] < b["rank"]
                else:
                    ok = b["rank"] > a["rank"] and ranks.index(b["rank"]) == ranks.index(a["rank"]) + 1
                if ok:
                    out[(parent, a["message_id"], b["message_id"])] += 1
    return out


@pytest.mark.parametrize("rule", ["best_vs_lower", "all_ordered", "adjacent"])
def test_real_pairs_match_an_independent_count(oasst_rows, rule):
    result = adapt(oasst_rows, rule=rule)
    got = Counter(
        (d.metadata["parent_message_id"], d.metadata["chosen_message_id"], d.metadata["rejected_message_id"])
        for ds in result.pairs.values()
        for d in ds
    )
    want = expected_pairs(oasst_rows, rule)
    assert got == want
    # With distinct ranks (as in this file), n ranked siblings give n-1 pairs (best vs lower,
    # adjacent) or n(n-1)/2 (all ordered).
    members = defaultdict(set)
    for parent, c, r in want:
        members[parent] |= {c, r}
    sizes = [len(m) for m in members.values()]
    assert sum(want.values()) == sum(n * (n - 1) // 2 if rule == "all_ordered" else n - 1 for n in sizes)
    by_id = {r["message_id"]: r for r in oasst_rows}
    for ds in result.pairs.values():
        for d in ds:
            c, r = by_id[d.metadata["chosen_message_id"]], by_id[d.metadata["rejected_message_id"]]
            assert c["rank"] < r["rank"] and (d.metadata["chosen_rank"], d.metadata["rejected_rank"]) == (c["rank"], r["rank"])
            assert d.chosen == [{"role": "assistant", "content": c["text"]}] and d.rejected == [{"role": "assistant", "content": r["text"]}]


def test_real_prompts_are_the_ancestor_chains(oasst_rows):
    result = adapt(oasst_rows)
    # The file's first tree, read by hand (rows 0-11):
    # [0] prompter "What do you think about ChatGPT?"
    #   [1] assistant rank 0 -> [2] prompter follow-up -> [3] rank 0, [4] rank 1
    #   [5] assistant rank 1
    #   [6] assistant rank 2 -> [7] prompter follow-up -> [8] rank 0, [9] rank 1, [10] rank 2 -> [11] prompter (no reply)
    t = [r["text"] for r in oasst_rows[:12]]
    assert t[0] == "What do you think about ChatGPT?"
    assert [(r["role"], r["rank"]) for r in oasst_rows[:12]] == [
        ("prompter", None),
        ("assistant", 0),
        ("prompter", None),
        ("assistant", 0),
        ("assistant", 1),
        ("assistant", 1),
        ("assistant", 2),
        ("prompter", None),
        ("assistant", 0),
        ("assistant", 1),
        ("assistant", 2),
        ("prompter", None),
    ]
    u = lambda i: {"role": "user", "content": t[i]}  # noqa: E731
    a = lambda i: {"role": "assistant", "content": t[i]}  # noqa: E731
    assert [(d.prompt, d.chosen, d.rejected) for d in result.pairs[0]] == [([u(0)], [a(1)], [a(5)]), ([u(0)], [a(1)], [a(6)])]
    assert [(d.prompt, d.chosen, d.rejected) for d in result.pairs[2]] == [([u(0), a(1), u(2)], [a(3)], [a(4)])]
    # The follow-up under the worst first reply: its conversation goes through row 6, not the best reply.
    assert [(d.prompt, d.chosen, d.rejected) for d in result.pairs[7]] == [
        ([u(0), a(6), u(7)], [a(8)], [a(9)]),
        ([u(0), a(6), u(7)], [a(8)], [a(10)]),
    ]
    assert outcome_of(result)[:12] == ["kept"] * 11 + ["no_pair_below"]


def test_real_file_through_the_pipeline_accounts_for_every_row(tmp_path, oasst_path, oasst_rows):
    cfg = recipe_config(tmp_path, [{"name": "oasst", "path": str(oasst_path), "adapter": "oasst"}], dataset="oasst")
    f = curate(cfg).funnel
    assert f["rows_in"] == len(oasst_rows) == 2022
    assert f["rows_in"] == f["rows_quarantined"] + f["rows_filtered"] + f["rows_with_pairs"]
    assert f["pairs_out"] == sum(expected_pairs(oasst_rows, "best_vs_lower").values())
    assert f["pairs_out"] == f["pairs_quarantined"] + f["pairs_filtered"] + f["kept"]
    assert f["rows_quarantined"] == 0  # a clean export
    deleted = sum(r["deleted"] for r in oasst_rows)
    filtered = f["filtered_by_reason"]["adapt"]
    assert filtered["deleted"] == deleted == 40
    # Messages whose parent is not in the file: accounted with a reason, never dropped.
    ids = {r["message_id"] for r in oasst_rows}
    orphans = [i for i, r in enumerate(oasst_rows) if r["parent_id"] is not None and r["parent_id"] not in ids]
    assert len(orphans) == 3 and filtered["parent_missing"] == 3
    d = sql("SELECT source_row, reason FROM decisions WHERE stage = 'adapt' AND reason = 'parent_missing' ORDER BY 1", cfg.data_root)
    assert d["source_row"].to_list() == orphans
    # Every assistant message that is some pair's chosen or rejected is kept; every pair is
    # anchored at the row of the message it answers.
    row_of = {r["message_id"]: i for i, r in enumerate(oasst_rows)}
    p = sql("SELECT source_row, source_pair_index, metadata, label_source FROM pairs ORDER BY source_row, source_pair_index", cfg.data_root)
    assert set(p["label_source"].to_list()) == {"human"}
    for row, meta in zip(p["source_row"], p["metadata"]):
        assert row == row_of[json.loads(meta)["parent_message_id"]]
    dec = sql("SELECT source_row, reason FROM decisions WHERE stage = 'adapt'", cfg.data_root)
    filtered_rows = dict(zip(dec["source_row"], dec["reason"]))
    assert len(filtered_rows) == f["rows_filtered"]
    for row, meta in zip(p["source_row"], p["metadata"]):
        m = json.loads(meta)
        assert row not in filtered_rows
        assert row_of[m["chosen_message_id"]] not in filtered_rows and row_of[m["rejected_message_id"]] not in filtered_rows
    unranked = [i for i, r in enumerate(oasst_rows) if r["role"] == "assistant" and r["rank"] is None]
    assert all(filtered_rows.get(i) in ("unranked", "deleted", "parent_missing", None) for i in unranked)


def test_rules_with_tied_ranks():
    rows = [msg("p", None, "prompter", "Q?")] + [msg(f"a{i}", "p", "assistant", f"A{i}", rank) for i, rank in enumerate([0, 0, 1, 2])]
    pairs = {
        rule: [(d.metadata["chosen_message_id"], d.metadata["rejected_message_id"]) for d in adapt(rows, rule=rule).pairs[0]]
        for rule in ("best_vs_lower", "all_ordered", "adjacent")
    }
    assert pairs["best_vs_lower"] == [("a0", "a2"), ("a0", "a3"), ("a1", "a2"), ("a1", "a3")]
    assert pairs["all_ordered"] == [("a0", "a2"), ("a0", "a3"), ("a1", "a2"), ("a1", "a3"), ("a2", "a3")]
    assert pairs["adjacent"] == [("a0", "a2"), ("a1", "a2"), ("a2", "a3")]
    tie = [msg("p", None, "prompter", "Q?"), msg("a", "p", "assistant", "A", 1), msg("b", "p", "assistant", "B", 1)]
    result = adapt(tie)
    assert result.pairs == {} and outcome_of(result) == ["no_pair_below", "rank_tie", "rank_tie"]


def test_reasons_for_rows_in_no_pair():
    rows = [
        msg("p", None, "prompter", "Q?"),
        msg("a", "p", "assistant", "A", 0),
        msg("b", "p", "assistant", "B", 1),
        msg("gone", "p", "assistant", "deleted, ranked", 2, deleted=True),
        msg("c", "p", "assistant", "unranked"),
        msg("f", "gone", "prompter", "follow-up under a deleted reply"),
        msg("o", "not-in-file", "prompter", "orphan"),
        msg("o1", "o", "assistant", "under orphan", 0),
        msg("o2", "o", "assistant", "under orphan too", 1),
        msg("q", "b", "prompter", "follow-up"),
        msg("q1", "q", "assistant", "only ranked reply", 0),
        msg("r", None, "assistant", "assistant root", 0),
    ]
    result = adapt(rows)
    assert outcome_of(result) == [
        "kept",
        "kept",
        "kept",
        "deleted",
        "unranked",
        "ancestor_deleted",
        "parent_missing",
        "ancestor_missing",
        "ancestor_missing",
        "no_pair_below",
        "no_ranked_sibling",
        "no_prompt",
    ]
    [d] = result.pairs[0]
    assert (d.chosen[0]["content"], d.rejected[0]["content"], d.metadata["ranked_siblings"]) == ("A", "B", 2)


@pytest.mark.parametrize(
    ("change", "code", "field"),
    [
        ({"rank": "best"}, "invalid_value", "rank"),
        ({"rank": 1.5}, "invalid_value", "rank"),
        ({"rank": True}, "wrong_type", "rank"),
        ({"message_id": None}, "wrong_type", "message_id"),
        ({"message_id": ""}, "invalid_value", "message_id"),
        ({"role": "user"}, "invalid_value", "role"),
        ({"text": None}, "wrong_type", "text"),
        ({"parent_id": 7}, "wrong_type", "parent_id"),
        ({"deleted": "no"}, "wrong_type", "deleted"),
    ],
)
def test_malformed_rows_are_quarantined_naming_the_field(change, code, field):
    rows = [msg("p", None, "prompter", "Q?"), {**msg("a", "p", "assistant", "A", 0), **change}, msg("b", "p", "assistant", "B", 1)]
    err = adapt(rows).outcomes[1]
    assert isinstance(err, RowError) and (err.code, err.field) == (code, field)
    assert repr(field) in err.message


def test_missing_fields_duplicates_cycles_and_their_children():
    rows = [
        msg("p", None, "prompter", "Q?"),
        {k: v for k, v in msg("x", "p", "assistant", "A", 0).items() if k != "message_id"},
        {k: v for k, v in msg("y", "p", "assistant", "B", 1).items() if k != "rank"},
        msg("p", None, "prompter", "same id again"),
        msg("c1", "c2", "prompter", "loop"),
        msg("c2", "c1", "assistant", "loop", 0),
        msg("c3", "c1", "assistant", "below the loop", 1),
        {**msg("bad", "p", "assistant", "A", 0), "rank": "first"},
        msg("k", "bad", "prompter", "child of a quarantined row"),
        msg("ok1", "p", "assistant", "fine", 0),
        msg("ok2", "p", "assistant", "fine too", 3),
    ]
    result = adapt(rows)
    got = [(o.code, o.field) if isinstance(o, RowError) else o for o in result.outcomes]
    assert got[1] == ("missing_field", "message_id") and got[2] == ("missing_field", "rank")
    assert got[3] == ("duplicate_id", "message_id")
    assert got[4] == got[5] == ("parent_cycle", "parent_id")
    assert outcome_of(result)[6] == "parent_quarantined" and outcome_of(result)[8] == "parent_quarantined"
    assert got[0] is None and got[9] is None and got[10] is None  # the first "p" wins its id
    assert [d.prompt[0]["content"] for d in result.pairs[0]] == ["Q?"]


def test_malformed_row_through_the_pipeline(tmp_path, oasst_rows):
    rows = [dict(r) for r in oasst_rows[:12]]
    rows[9]["rank"] = "second"  # row 9: rank 1 of three replies to row 7
    del rows[5]["message_id"]
    path = write_jsonl(tmp_path / "oasst.jsonl", rows)
    cfg = recipe_config(tmp_path, [{"name": "o", "path": str(path), "adapter": "oasst", "options": {"rule": "all_ordered"}}])
    f = curate(cfg).funnel
    assert f["rows_in"] == 12 == f["rows_quarantined"] + f["rows_filtered"] + f["rows_with_pairs"]
    q = sql("SELECT source_row, field, error_code, stage FROM quarantine ORDER BY 1", cfg.data_root)
    assert q.rows() == [(5, "message_id", "missing_field", "adapt"), (9, "rank", "invalid_value", "adapt")]
    # Pairs left: (1 vs 6) under row 0, (3 vs 4) under row 2, (8 vs 10) under row 7.
    assert f["pairs_out"] == 3 and f["filtered_by_reason"]["adapt"] == {"no_pair_below": 1}


def test_language_filter(oasst_rows):
    assert outcome_of(adapt(oasst_rows[:12], languages=["en"])) == outcome_of(adapt(oasst_rows[:12]))
    assert set(outcome_of(adapt(oasst_rows[:12], languages=["de"]))) == {"language"}
    rows = [
        msg("p", None, "prompter", "Q?"),
        msg("a", "p", "assistant", "A", 0),
        msg("b", "p", "assistant", "B", 1),
        msg("f", "a", "prompter", "Und jetzt?", lang="de"),
        msg("f1", "f", "assistant", "Ja", 0, lang="de"),
        msg("f2", "f", "assistant", "Nein", 1),
    ]
    assert outcome_of(adapt(rows, languages=["en"])) == ["kept", "kept", "kept", "language", "language", "ancestor_language"]
    assert len(adapt(rows).pairs) == 2


def test_options_and_registry():
    assert is_table_adapter("oasst") and not is_table_adapter("shp")
    assert check_options("oasst", {}).rule == "best_vs_lower"
    with pytest.raises(ConfigError, match="rule"):
        check_options("oasst", {"rule": "best_vs_worst"})
    with pytest.raises(ConfigError, match="unknown option"):
        check_options("oasst", {"language": ["en"]})
    with pytest.raises(ConfigError, match="languages"):
        check_options("oasst", {"languages": []})


def test_contract_check_catches_an_adapter_that_loses_rows():
    with pytest.raises(CurationError, match="2 outcomes for 3 rows"):
        TableResult([None, NoPairs("x")]).check(3, "demo")
    with pytest.raises(CurationError, match="not a kept row"):
        TableResult([NoPairs("x")], {0: []}).check(1, "demo")
    with pytest.raises(CurationError, match="kept but no pairs"):
        TableResult([None]).check(1, "demo")
