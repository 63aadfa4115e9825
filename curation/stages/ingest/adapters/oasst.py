"""OpenAssistant message tables (oasst1/oasst2): sibling ranks become preference pairs.

One row per message (``message_id``, ``parent_id``, ``role`` prompter|assistant, ``text``,
``rank``, ``deleted``, ``lang``); conversations are trees through ``parent_id``. A pair
needs two sibling rows and their ancestors, so this is a table-level adapter (see
``_table.py``): it sees the whole source at once.

Pairs. For each message with at least two *usable* ranked assistant replies (usable: not
deleted, language allowed, every ancestor present and usable), the replies are ordered by
``rank`` (0 = best; gaps left by deleted siblings do not matter; equal ranks never pair) and
paired by ``rule``:

* ``best_vs_lower`` (default): the best-ranked reply against each lower-ranked one;
* ``all_ordered``: every reply against each lower-ranked one;
* ``adjacent``: each rank level against the next.

The prompt is the conversation from the root to that message (prompter -> user, assistant
-> assistant; follow-up turns included); chosen is the better-ranked reply, rejected the
worse. A pair's ``source_row`` is the replied-to message's row; ranks and message ids go
to its metadata. Rank is an order, not a score, so ``chosen_score``/``rejected_score`` stay null.

Every row ends in one place:

* kept: its text is in at least one pair (prompt turn, chosen or rejected);
* quarantined: malformed (a required field missing or of the wrong type, a rank that is
  not a whole number, a role other than prompter/assistant, a ``message_id`` that a
  well-formed earlier row already has, a ``parent_id`` chain that loops);
* filtered, with the first reason that applies: ``deleted``, ``language`` (not in
  ``languages``), ``parent_missing`` (no row has its ``parent_id``), ``parent_quarantined``;
  then, inherited from the nearest excluded ancestor, ``ancestor_deleted``,
  ``ancestor_language``, ``ancestor_missing``, ``ancestor_quarantined`` (its conversation
  is incomplete, so no pair may use it); otherwise, for a usable message in no pair,
  ``unranked`` (assistant with a null rank), ``no_prompt`` (assistant without parent),
  ``no_ranked_sibling`` (the only usable ranked reply), ``rank_tie`` (all its ranked
  siblings share its rank) or ``no_pair_below`` (prompter message with no pair anywhere
  in its subtree, e.g. a last follow-up that got no ranked replies).
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from curation.errors import NoPairs, RowError
from curation.records import Message, PairDraft
from curation.stages.ingest.adapters._fields import MISSING, get_path, get_str, parse_score, wrong_type
from curation.stages.ingest.adapters._table import Outcome, TableAdapter, TableResult

SCOPE = "table"

ROLES = {"prompter": "user", "assistant": "assistant"}
INHERITED = {
    "deleted": "ancestor_deleted",
    "language": "ancestor_language",
    "parent_missing": "ancestor_missing",
    "parent_quarantined": "ancestor_quarantined",
}


class Options(BaseModel):
    model_config = ConfigDict(extra="forbid")

    rule: Literal["best_vs_lower", "all_ordered", "adjacent"] = Field(default="best_vs_lower", description="which ranked siblings pair up")
    languages: list[str] | None = Field(
        default=None, min_length=1, description="keep only messages whose 'lang' is one of these (exact codes, e.g. en, pt-BR); default all"
    )


@dataclass(frozen=True, slots=True)
class Msg:
    pos: int
    id: str
    parent: str | None
    role: str
    text: str
    rank: int | None
    deleted: bool
    lang: str | None


def build(options: Options) -> TableAdapter:
    o = options

    def adapt(rows: list[dict]) -> TableResult:
        outcomes: list[Outcome] = [None] * len(rows)
        msgs, bad_ids = _parse_all(rows, o, outcomes)
        blocked = _blocked(msgs, bad_ids, o)
        groups: dict[str, list[Msg]] = defaultdict(list)
        for m in msgs.values():
            if m.role == "assistant" and m.rank is not None and m.parent is not None and blocked[m.id] is None:
                groups[m.parent].append(m)
        pairs: dict[int, list[PairDraft]] = {}
        used: set[str] = set()
        for parent_id, members in groups.items():
            ordered = _select(sorted(members, key=lambda m: (m.rank, m.pos)), o.rule)
            if not ordered:
                continue
            chain = _chain(msgs, parent_id)
            prompt: list[Message] = [{"role": ROLES[m.role], "content": m.text} for m in chain]
            pairs[msgs[parent_id].pos] = [_draft(prompt, a, b, o.rule, len(members)) for a, b in ordered]
            used.update(m.id for m in chain)
            used.update(m.id for pair in ordered for m in pair)
        for m in msgs.values():
            if m.id not in used:
                outcomes[m.pos] = NoPairs(_reason(m, blocked, groups))
        return TableResult(outcomes, pairs)

    return adapt


def _parse_all(rows: list[dict], o: Options, outcomes: list[Outcome]) -> tuple[dict[str, Msg], set[str]]:
    """Well-formed messages by id (first row wins an id); malformed rows get their RowError in
    ``outcomes``, and the ids of those that had a readable id are returned so their children
    can say why their parent is absent."""
    msgs: dict[str, Msg] = {}
    bad_ids: set[str] = set()
    for pos, row in enumerate(rows):
        try:
            m = _parse(pos, row, o)
            if m.id in msgs:
                raise RowError("duplicate_id", f"field 'message_id' is {m.id!r}, which an earlier row already has", field="message_id")
        except RowError as err:
            outcomes[pos] = err
            if isinstance(row.get("message_id"), str) and row["message_id"] not in msgs:
                bad_ids.add(row["message_id"])
            continue
        msgs[m.id] = m
    for mid in _cycles(msgs):
        outcomes[msgs.pop(mid).pos] = RowError(
            "parent_cycle", "field 'parent_id' leads back to this message: its conversation has no root", field="parent_id"
        )
        bad_ids.add(mid)
    return msgs, bad_ids


def _parse(pos: int, row: dict, o: Options) -> Msg:
    mid = get_path(row, "message_id")
    if not isinstance(mid, str):
        raise wrong_type("message_id", mid, "string")
    if not mid:
        raise RowError("invalid_value", "field 'message_id' is empty", field="message_id")
    parent = get_path(row, "parent_id")
    if parent is not None and not isinstance(parent, str):
        raise wrong_type("parent_id", parent, "string or null")
    role = get_str(row, "role")
    if role not in ROLES:
        raise RowError("invalid_value", f"field 'role' is {role!r}, expected 'prompter' or 'assistant'", field="role")
    text = get_str(row, "text")
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        raise RowError("undecodable_text", "field 'text' is not valid Unicode text", field="text") from None
    rank = _rank(get_path(row, "rank"))
    deleted = get_path(row, "deleted", required=False)
    if deleted is MISSING or deleted is None:
        deleted = False
    elif not isinstance(deleted, bool):
        raise wrong_type("deleted", deleted, "bool")
    lang = None
    if o.languages is not None:
        lang = get_path(row, "lang")
        if lang is not None and not isinstance(lang, str):
            raise wrong_type("lang", lang, "string or null")
    return Msg(pos, mid, parent or None, role, text, rank, deleted, lang)


def _rank(value: Any) -> int | None:
    """A whole number or null; numeric strings are accepted as in CSV files."""
    score = parse_score(value, "rank", nan_is_missing=True)
    if score is None:
        return None
    if not score.is_integer():
        raise RowError("invalid_value", f"field 'rank' is {value!r}, expected a whole number or null", field="rank")
    return int(score)


def _cycles(msgs: dict[str, Msg]) -> set[str]:
    """Ids on a loop of parent links (a malformed table); their descendants are not on it."""
    done: set[str] = set()
    on_cycle: set[str] = set()
    for start in msgs:
        path: list[str] = []
        index: dict[str, int] = {}
        node: str | None = start
        while node in msgs and node not in done:
            if node in index:
                on_cycle.update(path[index[node] :])
                break
            index[node] = len(path)
            path.append(node)
            node = msgs[node].parent
        done.update(path)
    return on_cycle


def _own_reason(m: Msg, msgs: dict[str, Msg], bad_ids: set[str], o: Options) -> str | None:
    if m.deleted:
        return "deleted"
    if o.languages is not None and m.lang not in o.languages:
        return "language"
    if m.parent is not None and m.parent not in msgs:
        return "parent_quarantined" if m.parent in bad_ids else "parent_missing"
    return None


def _blocked(msgs: dict[str, Msg], bad_ids: set[str], o: Options) -> dict[str, str | None]:
    """Why each message cannot be part of any pair (its own reason first, else its nearest
    excluded ancestor's), or None when it and its whole conversation are usable."""
    reason: dict[str, str | None] = {}
    for mid in msgs:
        path: list[str] = []
        node = mid
        while node not in reason:
            own = _own_reason(msgs[node], msgs, bad_ids, o)
            if own is not None or msgs[node].parent is None:
                reason[node] = own
                break
            path.append(node)
            node = msgs[node].parent  # present in msgs, else it would have an own reason
        found = reason[node]
        inherited = None if found is None else INHERITED.get(found, found)
        for n in path:
            reason[n] = inherited
    return reason


def _chain(msgs: dict[str, Msg], last: str) -> list[Msg]:
    """The conversation from the root to ``last``."""
    chain = [msgs[last]]
    while chain[-1].parent is not None:
        chain.append(msgs[chain[-1].parent])
    return chain[::-1]


def _select(ranked: list[Msg], rule: str) -> list[tuple[Msg, Msg]]:
    """(better, worse) pairs from replies sorted by rank; equal ranks never pair."""
    levels = sorted({m.rank for m in ranked})
    if rule == "best_vs_lower":
        return [(a, b) for a in ranked if a.rank == levels[0] for b in ranked if b.rank > a.rank]
    if rule == "all_ordered":
        return [(a, b) for a in ranked for b in ranked if a.rank < b.rank]
    nxt = dict(zip(levels, levels[1:]))
    return [(a, b) for a in ranked for b in ranked if a.rank in nxt and b.rank == nxt[a.rank]]


def _draft(prompt: list[Message], a: Msg, b: Msg, rule: str, ranked_siblings: int) -> PairDraft:
    return PairDraft(
        prompt=prompt,
        chosen=[{"role": "assistant", "content": a.text}],
        rejected=[{"role": "assistant", "content": b.text}],
        metadata={
            "rule": rule,
            "chosen_rank": a.rank,
            "rejected_rank": b.rank,
            "chosen_message_id": a.id,
            "rejected_message_id": b.id,
            "parent_message_id": a.parent,
            "ranked_siblings": ranked_siblings,
        },
    )


def _reason(m: Msg, blocked: dict[str, str | None], groups: dict[str, list[Msg]]) -> str:
    """Why a message is in no pair (see the module docstring for the order)."""
    why = blocked[m.id]
    if why is not None:
        return why
    if m.role == "prompter":
        return "no_pair_below"
    if m.parent is None:
        return "no_prompt"
    if m.rank is None:
        return "unranked"
    if len(groups.get(m.parent, [])) < 2:
        return "no_ranked_sibling"
    return "rank_tie"
