"""Dedup beyond exact: MinHash near-duplicates, semantic (MiniLM) duplicates and the prompt cap,
on real rows of ../shared/data.

Near-duplicates are made from real HH-RLHF prompts by seeded light edits (a word changed, a
punctuation mark changed, case and spacing changed); they must land in their original's
cluster while the originals keep the clusters they have among themselves, checked against
exact shingle Jaccard. Paraphrase-like edits (contractions and near-synonym phrasings) of real
single-turn prompts must cluster with their originals under the real MiniLM embedder, checked
against a brute-force similarity matrix. PandaLM, which repeats its prompts across up to 10
model pairs, checks the prompt cap, ranked by the real annotators' votes.
"""

from __future__ import annotations

import json
import random
import re
from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl
import pytest

from curation.errors import NoPairs, RowError
from curation.models import BackendConfig, build_backend
from curation.models.memo import MemoEmbedder
from curation.records import content_ids
from curation.stages.filter import step_function
from curation.stages.filter.base import FramePairs, StepContext, StepResult
from curation.stages.filter.config import NearDedupStep, PromptCapStep, SemanticDedupStep
from curation.stages.filter.near_dedup import conversation_text, item_text, shingles
from curation.stages.filter.semantic_dedup import embed_texts, recent_first, similar_pairs
from curation.stages.ingest.adapters import build_adapter
from curation.stages.label.base import BackendPool
from tests.helpers import hh_drafts

MINILM = BackendConfig(backend="sentence_transformers", model="all-MiniLM-L6-v2", threads=1, batch_size=64)
PANDALM = {
    "prompt_fields": ["instruction", "input"],
    "response_a_field": "response1",
    "response_b_field": "response2",
    "vote_fields": ["annotator1", "annotator2", "annotator3"],
}
NO_LABELS = pl.DataFrame()
N_HH = 300


def pair_row(prompt: list, chosen: list, rejected: list, source: str = "hh", **extra: Any) -> dict[str, Any]:
    pid, paid = content_ids(prompt, chosen, rejected)
    return {"pair_id": paid, "prompt_id": pid, "prompt": prompt, "chosen": chosen, "rejected": rejected, "source_dataset": source, **extra}


def frame(rows: list[dict[str, Any]]) -> FramePairs:
    return FramePairs(
        pl.DataFrame([{k: r[k] for k in ("pair_id", "prompt_id", "prompt", "chosen", "rejected", "source_dataset")} for r in rows])
    )


def run_step(cfg: Any, rows: list[dict[str, Any]], labels: pl.DataFrame = NO_LABELS, ctx: StepContext | None = None) -> StepResult:
    result = step_function(cfg.kind)(cfg, frame(rows), labels, ctx or StepContext())
    result.check(cfg.stage_name)
    return result


def by_pair(result: StepResult) -> dict[str, dict[str, Any]]:
    return {r["pair_id"]: r for r in result.decisions.to_dicts()}


def partition(result: StepResult, ids: Sequence[str]) -> set[frozenset[str]]:
    """The clusters (by cluster_id) restricted to ``ids``."""
    groups: dict[float, set[str]] = defaultdict(set)
    rows = by_pair(result)
    for i in ids:
        groups[rows[i]["cluster_id"]].add(i)
    return {frozenset(g) for g in groups.values()}


def jaccard(a: str, b: str, size: int = 3) -> float:
    sa, sb = shingles(a, size), shingles(b, size)
    return len(sa & sb) / len(sa | sb)


# --------------------------------------------------------------------------- real rows


@pytest.fixture(scope="module")
def hh_rows(hh_path: Path) -> list[dict[str, Any]]:
    """The first N_HH real HH-RLHF pairs with distinct prompts, as pairs-table rows."""
    rows, prompts = [], set()
    for d in hh_drafts(hh_path):
        row = pair_row(d.prompt, d.chosen, d.rejected)
        if row["prompt_id"] not in prompts:
            prompts.add(row["prompt_id"])
            rows.append(row)
        if len(rows) == N_HH:
            return rows
    raise AssertionError(f"only {len(rows)} HH pairs with distinct prompts")


@pytest.fixture(scope="module")
def pandalm_rows(shared_data: Path) -> list[dict[str, Any]]:
    """PandaLM's majority-vote pairs (the shp adapter, as recipes/agreement-shared.yaml sets it up),
    first occurrence of each pair id, with the vote counts the adapter records."""
    adapt = build_adapter("shp", PANDALM)
    rows, seen = [], set()
    for i, raw in enumerate(json.loads((shared_data / "pandalm-testset" / "testset-v1.json").read_text())):
        try:
            drafts = adapt(raw, f"pandalm:{i}")
        except (NoPairs, RowError):
            continue  # ties, and 6 rows whose response is not a string
        for d in drafts:
            row = pair_row(d.prompt, d.chosen, d.rejected, "pandalm", votes=d.metadata["votes"])
            if row["pair_id"] not in seen:
                seen.add(row["pair_id"])
                rows.append(row)
    return rows


def edit_word(rng: random.Random, text: str) -> str:
    words = text.split(" ")
    i = rng.randrange(len(words))
    words[i] = "really" if words[i] != "really" else "truly"
    return " ".join(words)


def edit_punctuation(rng: random.Random, text: str) -> str:
    marks = [m.start() for m in re.finditer(r"[.?!,]", text)]
    if not marks:
        return text + "!"
    i = rng.choice(marks)
    return text[:i] + {".": "!", "?": "?!", "!": ".", ",": ";"}[text[i]] + text[i + 1 :]


def edit_case(rng: random.Random, text: str) -> str:
    return text.upper().replace(" ", "  ", 3)


EDITS = {"word": edit_word, "punct": edit_punctuation, "case": edit_case}


def perturbed(rng: random.Random, row: dict[str, Any], kind: str, column: str = "prompt") -> dict[str, Any]:
    """A copy of ``row`` with one message of ``column`` lightly edited."""
    messages = [dict(m) for m in row[column]]
    k = rng.randrange(len(messages))
    messages[k]["content"] = EDITS[kind](rng, messages[k]["content"])
    parts = {c: row[c] for c in ("prompt", "chosen", "rejected")} | {column: messages}
    return pair_row(parts["prompt"], parts["chosen"], parts["rejected"], original=row["pair_id"], edit=kind)


@pytest.fixture(scope="module")
def near_rows(hh_rows: list[dict[str, Any]]) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """(HH rows, 30 lightly edited copies of long prompts, after the originals). Edits need a
    long text: one changed word changes up to 3 of a text's 3-word shingles, so a 20-word
    prompt drops to Jaccard ~0.7; at >= 60 words it stays near 0.9."""
    rng = random.Random(5)
    long = [r for r in hh_rows if len(conversation_text(r["prompt"]).split()) >= 60]
    assert len(long) >= 30
    copies = [perturbed(rng, r, kind) for r, kind in zip(rng.sample(long, 30), list(EDITS) * 10)]
    return hh_rows, copies


# --------------------------------------------------------------------------- near_dedup


def test_edited_prompts_join_their_original_and_nothing_else_changes(near_rows) -> None:
    originals, copies = near_rows
    same_prompt = [pair_row(r["prompt"], r["rejected"], r["chosen"]) for r in originals[:5]]  # swapped: same prompt_id
    rows = originals + copies + same_prompt
    cfg = NearDedupStep()
    result = run_step(cfg, rows)
    alone = run_step(cfg, originals)
    got = by_pair(result)
    assert result.decisions["pair_id"].to_list() == [r["pair_id"] for r in rows]  # every judged pair, in order

    # Each copy is filtered against its original's cluster, whose kept pair is the first in order.
    for c in copies:
        row, orig = got[c["pair_id"]], got[c["original"]]
        assert (row["decision"], row["reason"]) == ("filtered", "near_duplicate_prompt"), c["edit"]
        assert row["cluster_id"] == orig["cluster_id"] and row["cluster_size"] == orig["cluster_size"] >= 2
        assert row["matched_pair_id"] == (orig["matched_pair_id"] or orig["pair_id"])
        text = conversation_text(c["prompt"])
        exact = jaccard(text, conversation_text(originals[[r["pair_id"] for r in originals].index(c["original"])]["prompt"]))
        assert row["similarity"] == pytest.approx(exact, abs=0.15)  # 128 permutations: sd <= 0.045
        if c["edit"] == "case":
            assert row["similarity"] == 1.0  # normalised away

    # The originals' clusters among themselves are those they have without the copies, and a
    # cluster member always has a member within reach of the threshold by exact Jaccard.
    ids = [r["pair_id"] for r in originals]
    assert partition(result, ids) == partition(alone, ids)
    text = {r["pair_id"]: conversation_text(r["prompt"]) for r in rows}
    for group in partition(result, [r["pair_id"] for r in originals + copies]):
        for a in group:
            assert len(group) == 1 or max(jaccard(text[a], text[b]) for b in group if b != a) >= 0.65
    kept_first = {r["cluster_id"] for r in got.values() if r["decision"] == "kept"}
    assert {r["cluster_id"] for r in got.values()} == kept_first  # every cluster keeps its first item
    position = {r["pair_id"]: i for i, r in reversed(list(enumerate(rows)))}
    first_of_prompt = {r["prompt_id"]: r["pair_id"] for r in reversed(rows)}
    for r in rows:
        d = got[r["pair_id"]]  # cluster_id: the position of the kept representative's first pair
        assert d["cluster_id"] == position[d["matched_pair_id"] or first_of_prompt[r["prompt_id"]]]
        assert (d["similarity"] is None) == (d["decision"] == "kept")

    # A second pair of a kept prompt is not its duplicate; it shares the prompt's cluster.
    for s, o in zip(same_prompt, originals):
        assert got[s["pair_id"]]["decision"] == got[o["pair_id"]]["decision"]
        assert got[s["pair_id"]]["cluster_id"] == got[o["pair_id"]]["cluster_id"]
    s = result.summary
    assert s["filtered"] == sum(r["decision"] == "filtered" for r in got.values()) >= len(copies)
    assert s["clusters"] >= len({got[c["original"]]["cluster_id"] for c in copies})
    assert s["pairs_in_clusters"] == sum(r["cluster_size"] > 1 for r in got.values())
    assert s["items"] == len(rows) - len(same_prompt) and s["threshold"] == 0.8


def test_a_higher_threshold_finds_fewer_clusters(near_rows) -> None:
    originals, copies = near_rows
    rows = originals + copies
    clusters = [run_step(NearDedupStep(threshold=t), rows).summary["clusters"] for t in (0.5, 0.7, 0.8, 0.9, 1.0)]
    assert clusters == sorted(clusters, reverse=True) and clusters[0] > clusters[-1], clusters
    # At 1.0 only texts equal after normalisation match: the case edits, not the word edits.
    exact = by_pair(run_step(NearDedupStep(threshold=1.0), rows))
    assert all(exact[c["pair_id"]]["decision"] == ("filtered" if c["edit"] == "case" else "kept") for c in copies)


def test_same_seed_same_clusters_and_sources_are_honoured(near_rows, pandalm_rows) -> None:
    originals, copies = near_rows
    rows = pandalm_rows[:50] + originals + copies
    first = run_step(NearDedupStep(sources=["hh"]), rows)
    assert set(first.decisions["pair_id"]) == {r["pair_id"] for r in originals + copies}  # PandaLM pairs: no row
    again = run_step(NearDedupStep(sources=["hh"]), rows)
    assert first.decisions.equals(again.decisions)
    # cluster_id is the representative's position in the pairs the step read (PandaLM's included)
    copy = by_pair(first)[copies[0]["pair_id"]]
    assert copy["cluster_id"] == 50 + [r["pair_id"] for r in originals].index(copy["matched_pair_id"])


def test_on_pair_clusters_edited_responses_not_shared_prompts(near_rows, pandalm_rows) -> None:
    originals, _ = near_rows
    rng = random.Random(11)
    long = [r for r in originals if len(item_text(r, "pair").split()) >= 80]
    copies = [perturbed(rng, r, kind, column="chosen") for r, kind in zip(rng.sample(long, 20), ["word", "punct"] * 10)]
    result = run_step(NearDedupStep(level="pair"), originals + copies)
    got = by_pair(result)
    for c in copies:
        assert (got[c["pair_id"]]["decision"], got[c["pair_id"]]["reason"]) == ("filtered", "near_duplicate_pair")
        assert got[c["pair_id"]]["matched_pair_id"] == (got[c["original"]]["matched_pair_id"] or c["original"])
    # PandaLM compares answers to one prompt across model pairs, and models often answer alike
    # (measured: 204 of its 782 distinct pairs go at 0.8). A pair only matches a pair of its own
    # prompt (its 158 prompts are far apart), and only when the texts really overlap.
    panda = run_step(NearDedupStep(level="pair"), pandalm_rows)
    assert panda.summary["filtered"] > 0
    text = {r["pair_id"]: item_text(r, "pair") for r in pandalm_rows}
    prompt_of = {r["pair_id"]: r["prompt_id"] for r in pandalm_rows}
    for r in panda.decisions.filter(pl.col("decision") == "filtered").to_dicts():
        assert prompt_of[r["pair_id"]] == prompt_of[r["matched_pair_id"]]
        assert jaccard(text[r["pair_id"]], text[r["matched_pair_id"]]) >= 0.5


# --------------------------------------------------------------------------- semantic_dedup

# Meaning-preserving rewrites (the first that applies is used). "do you" -> "would you" was
# dropped: MiniLM reads it as a change of meaning (cosine down to 0.86 on these prompts).
PARAPHRASES = [
    (r"\bWhat's\b", "What is"),
    (r"\bwhat's\b", "what is"),
    (r"\b[Cc]an you\b", "Could you"),
    (r"\bHow do I\b", "How can I"),
    (r"\bHow can I\b", "How do I"),
    (r"\bI want to\b", "I'd like to"),
    (r"\b[Ww]hat is\b", "What's"),
    (r"\bI'm\b", "I am"),
    (r"\bdon't\b", "do not"),
]


@pytest.fixture(scope="module")
def embedder(tmp_path_factory: pytest.TempPathFactory):
    real = build_backend(MINILM, tmp_path_factory.mktemp("minilm"))
    yield MemoEmbedder(real)
    real.close()


def semantic_ctx(embedder: MemoEmbedder, progress: Any = None) -> StepContext:
    pool = BackendPool(".", build=lambda cfg, root: embedder)
    return StepContext(backends=pool, **({"progress": progress} if progress else {}))


@pytest.fixture(scope="module")
def paraphrase_rows(hh_path: Path) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """(the first 250 HH rows with distinct single-turn prompts, 40 paraphrased copies after them)."""
    single, prompts = [], set()
    for d in hh_drafts(hh_path):
        row = pair_row(d.prompt, d.chosen, d.rejected)
        if len(d.prompt) == 1 and row["prompt_id"] not in prompts and len(single) < 250:
            prompts.add(row["prompt_id"])
            single.append(row)
    candidates = []
    for r in single:
        text = r["prompt"][0]["content"]
        rewrite = next((re.sub(p, s, text, count=1) for p, s in PARAPHRASES if re.search(p, text)), None)
        if rewrite is not None:
            prompt = [{"role": "user", "content": rewrite}]
            candidates.append(pair_row(prompt, r["chosen"], r["rejected"], original=r["pair_id"]))
    assert len(candidates) >= 40
    return single, random.Random(3).sample(candidates, 40)


class Recorder:
    def __init__(self) -> None:
        self.calls: list[tuple[str, Any]] = []

    def start(self, description: str, total: int | None = None) -> None:
        self.calls.append(("start", total))

    def advance(self, n: int = 1) -> None:
        self.calls.append(("advance", n))

    def finish(self) -> None:
        self.calls.append(("finish", None))


def components(vectors: np.ndarray, threshold: float) -> list[int]:
    """Brute force: the full similarity matrix, components by graph search; smallest member as root."""
    adjacent = (vectors @ vectors.T) >= threshold - 1e-6
    root = [-1] * len(vectors)
    for start in range(len(vectors)):
        if root[start] < 0:
            stack, root[start] = [start], start
            while stack:
                for j in np.flatnonzero(adjacent[stack.pop()]).tolist():
                    if root[j] < 0:
                        root[j] = start
                        stack.append(j)
    return root


def test_paraphrases_cluster_with_their_original_and_match_brute_force(paraphrase_rows, embedder: MemoEmbedder) -> None:
    originals, copies = paraphrase_rows
    rows = originals + copies
    progress = Recorder()
    result = run_step(SemanticDedupStep(), rows, ctx=semantic_ctx(embedder, progress))
    got = by_pair(result)
    for c in copies:
        row = got[c["pair_id"]]
        assert (row["decision"], row["reason"]) == ("filtered", "semantic_duplicate_prompt")
        assert row["cluster_id"] == got[c["original"]]["cluster_id"]
        assert row["matched_pair_id"] == (got[c["original"]]["matched_pair_id"] or c["original"])

    # The same clusters as the full similarity matrix gives, and the blockwise search does not
    # depend on the block size.
    vectors = embedder.embed([recent_first(r["prompt"]) for r in rows])
    truth = components(vectors, 0.95)
    assert similar_pairs(vectors, 0.95, block=7).roots() == similar_pairs(vectors, 0.95).roots() == truth
    ids = [r["pair_id"] for r in rows]
    for i, r in enumerate(rows):
        d = got[r["pair_id"]]
        assert d["cluster_id"] == truth[i] and d["matched_pair_id"] == (None if truth[i] == i else ids[truth[i]])
        if d["similarity"] is not None:
            assert d["similarity"] == pytest.approx(float(vectors[i] @ vectors[truth[i]]), abs=1e-5)
    assert progress.calls[0] == ("start", len(rows)) and sum(n for k, n in progress.calls[:-1] if k == "advance") >= len(rows)
    assert progress.calls.count(("finish", None)) == 2

    # MinHash on 3-word shingles misses most of these rewrites of short prompts.
    near = by_pair(run_step(NearDedupStep(), rows))
    assert sum(near[c["pair_id"]]["decision"] == "filtered" for c in copies) < len(copies) / 2


def test_a_higher_cosine_threshold_finds_fewer_clusters(paraphrase_rows, embedder: MemoEmbedder) -> None:
    originals, copies = paraphrase_rows
    ctx = semantic_ctx(embedder)
    clusters = [run_step(SemanticDedupStep(threshold=t), originals + copies, ctx=ctx).summary["clusters"] for t in (0.85, 0.95, 0.99)]
    assert clusters == sorted(clusters, reverse=True) and clusters[0] > clusters[-1], clusters
    # the real HH prompts hold a few paraphrases of their own below 0.95 ("sneak into a movie theater")
    assert run_step(SemanticDedupStep(threshold=0.85), originals, ctx=ctx).summary["clusters"] > 0


def test_long_conversations_are_told_apart_by_their_last_turn(hh_rows, paraphrase_rows, embedder: MemoEmbedder) -> None:
    """MiniLM reads 256 word pieces: embedded from the start, a long conversation and a branch
    of it with another last question look identical; the step embeds the latest turn first."""
    originals, _ = paraphrase_rows
    long = [r for r in hh_rows if len(conversation_text(r["prompt"]).split()) > 350][:3]
    assert len(long) == 3
    branches = [
        pair_row(r["prompt"][:-1] + [{"role": "user", "content": q["prompt"][0]["content"]}], r["chosen"], r["rejected"])
        for r, q in zip(long, originals[-3:])
    ]
    start_first = embedder.embed([conversation_text(r["prompt"]) for r in long + branches])
    assert np.einsum("id,id->i", start_first[:3], start_first[3:]).min() > 0.99  # truncation hides the last turn
    result = run_step(SemanticDedupStep(), long + branches, ctx=semantic_ctx(embedder))
    assert result.summary["clusters"] == 0


def test_semantic_on_pair_needs_prompt_and_both_responses_alike(paraphrase_rows, embedder: MemoEmbedder) -> None:
    """A pair's similarity is the smallest of its prompt's and responses' cosines: an edited
    response stays a duplicate, the same prompt with other responses (the swap) is not."""
    originals, _ = paraphrase_rows
    rng = random.Random(2)
    base = originals[:12]
    # a changed word in a 6-word reply changes the reply (cosine down to 0.48): edit long ones
    copies = [perturbed(rng, r, "word", column="chosen") for r in base if len(r["chosen"][0]["content"].split()) >= 25][:4]
    assert len(copies) == 4
    swapped = [pair_row(r["prompt"], r["rejected"], r["chosen"]) for r in base[4:8]]
    rows = base + copies + swapped
    result = run_step(SemanticDedupStep(level="pair", threshold=0.9), rows, ctx=semantic_ctx(embedder))
    got = by_pair(result)
    for c in copies:
        assert (got[c["pair_id"]]["reason"], got[c["pair_id"]]["matched_pair_id"]) == ("semantic_duplicate_pair", c["original"])
        original = next(o for o in base if o["pair_id"] == c["original"])
        cosines = np.einsum("kd,kd->k", *(embedder.embed(list(embed_texts(r, "pair"))) for r in (c, original)))
        assert got[c["pair_id"]]["similarity"] == pytest.approx(float(cosines.min()), abs=1e-5) and cosines[0] > 0.999
    assert result.summary["filtered"] == len(copies)  # the swaps (and the other HH pairs) stay


# --------------------------------------------------------------------------- prompt_cap


def vote_labels(rows: list[dict[str, Any]]) -> pl.DataFrame:
    """The annotators as a labeler group: each vote for chosen +1, for rejected -1, tie 0."""
    out = []
    for r in rows:
        votes = r["votes"]
        winner, loser = sorted((votes["a"], votes["b"]), reverse=True)
        for k, margin in enumerate([1.0] * winner + [-1.0] * loser + [0.0] * votes["tie"]):
            out.append({"pair_id": r["pair_id"], "labeler": f"annotators/m{k}", "labeler_group": "annotators", "margin": margin})
    return pl.DataFrame(out)


def test_prompt_cap_keeps_the_first_pairs_of_each_prompt(pandalm_rows) -> None:
    per_prompt: dict[str, list[str]] = defaultdict(list)
    for r in pandalm_rows:
        per_prompt[r["prompt_id"]].append(r["pair_id"])
    assert max(len(v) for v in per_prompt.values()) == 10  # PandaLM repeats prompts across model pairs
    result = run_step(PromptCapStep(max_pairs=3), pandalm_rows)
    got = by_pair(result)
    for ids in per_prompt.values():
        assert [got[i]["decision"] for i in ids] == ["kept"] * min(3, len(ids)) + ["filtered"] * max(0, len(ids) - 3)
        assert [got[i]["rank_in_prompt"] for i in ids] == list(range(1, len(ids) + 1))
    assert {got[i]["reason"] for ids in per_prompt.values() for i in ids[3:]} <= {"prompt_cap"}
    assert result.summary["prompts_capped"] == sum(len(v) > 3 for v in per_prompt.values())
    assert result.summary["filtered"] == sum(max(0, len(v) - 3) for v in per_prompt.values())


def test_prompt_cap_largest_margin_keeps_the_clearest_votes(pandalm_rows) -> None:
    labels = vote_labels(pandalm_rows)
    no_margin = {r["pair_id"] for r in pandalm_rows[::7]}  # pretend these were never labelled
    labels = labels.filter(~pl.col("pair_id").is_in(list(no_margin)))
    result = run_step(PromptCapStep(max_pairs=2, keep="largest_margin", labelers=["annotators"]), pandalm_rows, labels)
    got = by_pair(result)
    order = {r["pair_id"]: i for i, r in enumerate(pandalm_rows)}
    margins = labels.group_by("pair_id").agg(pl.col("margin").mean())
    margin = dict(zip(margins["pair_id"], margins["margin"]))
    groups: dict[str, list[str]] = defaultdict(list)
    for r in pandalm_rows:
        groups[r["prompt_id"]].append(r["pair_id"])
    assert len(set(margin.values())) > 2  # unanimous and split votes: margins really differ
    for ids in groups.values():
        kept = [i for i in ids if got[i]["decision"] == "kept"]
        assert len(kept) == min(2, len(ids))

        def key(i: str) -> tuple:
            return (i not in margin, -margin.get(i, 0.0), order[i])  # no margin last, then larger margin, then pair order

        assert sorted(ids, key=key)[:2] == sorted(kept, key=key)
        for i in ids:
            assert got[i]["margin"] == (pytest.approx(margin[i]) if i in margin else None)
            assert got[i]["rank_in_prompt"] == sorted(ids, key=key).index(i) + 1
    assert result.summary["pairs_without_margin"] == len(no_margin)
