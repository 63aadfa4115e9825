"""The overlap matcher (curation/overlap.py) against its definition, on real prompts.

The definition is written again here, apart from the code and as plainly as possible: tokens by
a character loop, n-grams as tuples, coverage as a set of covered positions, one (training,
reference) pair at a time. The index must agree with it on a few hundred training texts built
from real HH-RLHF prompts and real benchmark-like prompts of ../shared/data (OASST prompter
turns, PandaLM instructions, FineGrainedRLHF questions), with pieces of the references planted
at lengths around the threshold. The rest pins the boundary, exact matches, short references,
several reference sets, the choice of the best match and MinHash.
"""

from __future__ import annotations

import json
import random
import unicodedata
from pathlib import Path

import polars as pl
import pytest

import curation.overlap as overlap
from curation.overlap import Match, OverlapIndex, prompt_text, prompt_text_expr
from tests.helpers import hh_drafts

SPLIT = ',.?!:;()"-\\\u2013\u2014'
APOSTROPHES = {0x2018: "'", 0x2019: "'", 0x201B: "'", 0x2BC: "'"}


# --------------------------------------------------------------------------- the definition, written apart


def def_tokens(text: str) -> list[str]:
    text = unicodedata.normalize("NFKC", text)
    text = "".join(ch for ch in text if ch.isspace() or unicodedata.category(ch) not in ("Cc", "Cf"))
    text = text.translate(APOSTROPHES).lower()
    tokens, word = [], ""
    for ch in text:
        if ch.isspace() or ch in SPLIT:
            if word:
                tokens.append(word)
            word = ""
        else:
            word += ch
    return tokens + ([word] if word else [])


def def_coverage(train: list[str], ref: list[str], n: int) -> float:
    """The share of the reference's tokens inside one of its n-grams that the training text has."""
    grams = {tuple(train[i : i + n]) for i in range(len(train) - n + 1)}
    covered: set[int] = set()
    for i in range(len(ref) - n + 1):
        if tuple(ref[i : i + n]) in grams:
            covered.update(range(i, i + n))
    return len(covered) / len(ref)


def def_best(text: str, refs: dict[str, list[str]], n: int, threshold: float) -> tuple[str, int, str, float] | None:
    """Exact (same non-empty tokens) first, then the largest coverage above the threshold;
    ties go to the earlier reference set, then the earlier item."""
    train = def_tokens(text)
    items = [(name, i, def_tokens(t)) for name, texts in refs.items() for i, t in enumerate(texts)]
    for name, i, ref in items:
        if train and train == ref:
            return (name, i, "exact", 1.0)
    best = None
    for name, i, ref in items:
        if len(ref) >= n:
            cov = def_coverage(train, ref, n)
            if cov > threshold and (best is None or cov > best[3]):
                best = (name, i, "ngram", cov)
    return best


def shingle_jaccard(a: str, b: str, k: int = 3) -> float:
    ta, tb = def_tokens(a), def_tokens(b)
    sa = {tuple(ta[i : i + k]) for i in range(len(ta) - k + 1)}
    sb = {tuple(tb[i : i + k]) for i in range(len(tb) - k + 1)}
    return len(sa & sb) / len(sa | sb)


def as_tuple(m: Match | None) -> tuple[str, int, str, float] | None:
    return None if m is None else (m.reference, m.item, m.kind, m.overlap)


# --------------------------------------------------------------------------- real prompts


@pytest.fixture(scope="module")
def hh_prompts(hh_path: Path) -> list[str]:
    seen: dict[str, None] = {}
    for d in hh_drafts(hh_path):
        seen.setdefault(prompt_text(d.prompt))
    return list(seen)


@pytest.fixture(scope="module")
def bench_prompts(shared_data: Path) -> dict[str, list[str]]:
    """Three real prompt sets standing in for benchmarks."""
    oasst = [json.loads(line) for line in (shared_data / "oasst1-en-validation" / "en-validation.jsonl").open()]
    pandalm = json.loads((shared_data / "pandalm-testset" / "testset-v1.json").read_text())
    qa = json.loads((shared_data / "finegrained-rlhf-qa-dev" / "dev_feedback.json").read_text())
    return {
        "oasst": list(dict.fromkeys(m["text"] for m in oasst if m["role"] == "prompter")),
        "pandalm": list(dict.fromkeys(f"{r['instruction']}\n{r['input']}".strip() for r in pandalm)),
        "qa": list(dict.fromkeys(r["question"] for r in qa)),
    }


def plant(rng: random.Random, ref: str, host: str) -> str:
    """A training text holding a random share of a reference's words, inside a real HH prompt,
    sometimes with a word changed or in other case and spacing."""
    words = ref.split()
    keep = rng.randint(max(1, len(words) // 3), len(words))
    start = rng.randint(0, len(words) - keep)
    piece = words[start : start + keep]
    if piece and rng.random() < 0.3:
        piece[rng.randrange(len(piece))] = "zebra"
    text = " ".join(piece)
    if rng.random() < 0.3:
        text = text.upper().replace(" ", "  \n ")
    return rng.choice([f"{host}\n{text}", f"{text} {host}", text])


def test_index_equals_the_per_pair_definition_on_real_prompts(hh_prompts: list[str], bench_prompts: dict[str, list[str]]) -> None:
    rng = random.Random(7)
    refs = {name: rng.sample(texts, 25) for name, texts in bench_prompts.items()}
    refs["hh"] = rng.sample(hh_prompts, 15)  # references that share HH's phrasing
    flat = [t for texts in refs.values() for t in texts]
    texts = rng.sample(hh_prompts, 150) + [plant(rng, rng.choice(flat), rng.choice(hh_prompts)) for _ in range(250)]
    texts += [rng.choice(flat).upper() for _ in range(20)] + ["", "?!", "\u200b"]
    for n, threshold in ((8, 0.5), (3, 0.7), (13, 0.2)):
        got = [as_tuple(m) for m in OverlapIndex(refs, ngram=n, ngram_threshold=threshold, minhash_threshold=None).match(texts)]
        want = [def_best(t, refs, n, threshold) for t in texts]
        assert got == want, f"n={n}: first difference at text {next(i for i, (a, b) in enumerate(zip(got, want)) if a != b)}"
        kinds = {w[2] for w in want if w}
        assert kinds == {"exact", "ngram"} and sum(w is None for w in want) > 100  # the sample exercises every branch


def test_tokens_match_the_definition_on_real_text(hh_prompts: list[str], bench_prompts: dict[str, list[str]]) -> None:
    texts = hh_prompts[:300] + bench_prompts["oasst"][:300] + ["Ｆｕｌｌ\u00a0width\u200b don\u2019t—stop \ufb01ne\u2026ok", "A\x00b\tc"]
    assert overlap.tokenize(texts).lists.to_list() == [def_tokens(t) for t in texts]


def test_ngram_rule_at_the_threshold_boundary() -> None:
    ref = " ".join(f"w{i}" for i in range(16))
    index = OverlapIndex({"b": [ref]}, ngram=8, ngram_threshold=0.5, minhash_threshold=None)
    at, above = " ".join(f"w{i}" for i in range(8)), " ".join(f"w{i}" for i in range(9))
    two_windows = "w0 w1 w2 w3 w4 w5 w6 w7 and then w12 w13 w14 w15 w8 w9 w10 w11"
    seven = "w0 w1 w2 w3 w4 w5 w6 x w7 w8 w9 w10 w11 w12 w13 x w14 w15"  # no 8-gram survives
    assert index.match([at, above, two_windows, seven]) == [
        None,  # 8 of 16 tokens: not more than half
        Match("b", 0, "ngram", 9 / 16),
        None,  # the same tokens, but the second window (w8..w15) is not in it
        None,
    ]
    assert OverlapIndex({"b": [ref]}, ngram=4, minhash_threshold=None).match([two_windows]) == [Match("b", 0, "ngram", 1.0)]


def test_exact_match_ignores_case_spacing_split_punctuation_and_invisibles() -> None:
    index = OverlapIndex({"b": ["What's the capital of France?", "Name a prime."]}, minhash_threshold=None)
    got = index.match(
        ["what\u2019s  the CAPITAL\nof france", "\u200bWHAT'S THE CAPITAL OF FRANCE!!", "whats the capital of france", "Name a prime"]
    )
    assert got == [Match("b", 0, "exact", 1.0), Match("b", 0, "exact", 1.0), None, Match("b", 1, "exact", 1.0)]


def test_a_reference_shorter_than_n_matches_only_exactly() -> None:
    refs = {"b": ["What is 2 plus 2?"]}  # 5 tokens
    texts = ["what is 2 plus 2", "Quick question: what is 2 plus 2? Thanks", "so what is 2 plus 2"]
    # the last text shares 3 of its 4 shingles with the reference (Jaccard 0.75), yet no MinHash match
    assert OverlapIndex(refs, ngram=8, minhash_threshold=0.5).match(texts) == [Match("b", 0, "exact", 1.0), None, None]
    # with n = 3 the same reference has windows, and a text holding them covers it fully
    assert OverlapIndex(refs, ngram=3).match(texts[1:]) == [Match("b", 0, "ngram", 1.0)] * 2


def test_several_reference_sets_name_the_set_and_the_item(bench_prompts: dict[str, list[str]]) -> None:
    refs = {name: texts[:40] for name, texts in bench_prompts.items()}
    index = OverlapIndex(refs, minhash_threshold=None)
    want = [("oasst", 3), ("pandalm", 17), ("qa", 39), ("qa", 0)]
    got = index.match([f"Please help.\n{refs[name][i]}" for name, i in want])
    assert [(m.reference, m.item) for m in got if m] == want and all(m and m.kind == "ngram" and m.overlap == 1.0 for m in got)


def test_the_best_match_is_chosen() -> None:
    a = "one two three four five six seven eight nine ten"
    b = "alpha beta gamma delta epsilon zeta eta theta iota kappa"
    refs = {"first": [a, b], "second": [a.upper(), "alpha beta gamma delta epsilon zeta eta theta lambda mu", "eleven twelve", f"{b} y"]}
    index = OverlapIndex(refs, minhash_threshold=None)
    got = index.match(
        [
            "eleven twelve",  # exact beats nothing
            a,  # exact in both sets: the first set
            f"{b} and more",  # covers first:1 fully and second:1 at 0.8
            "alpha beta gamma delta epsilon zeta eta theta lambda mu",  # exact second:1 beats ngram first:1 (0.8)
            f"{b} y and more",  # covers first:1 and second:3 fully: the earlier set
        ]
    )
    assert got == [
        Match("second", 2, "exact", 1.0),
        Match("first", 0, "exact", 1.0),
        Match("first", 1, "ngram", 1.0),
        Match("second", 1, "exact", 1.0),
        Match("first", 1, "ngram", 1.0),
    ]


def test_minhash_matches_near_copies_the_ngram_rule_misses(hh_prompts: list[str]) -> None:
    """With 40-grams, a word changed every 35 tokens leaves no 40-token window intact, while the
    3-shingle Jaccard stays above 0.8: MinHash finds them, its estimate close to the true Jaccard."""
    rng = random.Random(3)
    long = [t for t in hh_prompts if 100 <= len(def_tokens(t)) <= 300][:40]
    assert len(long) == 40
    edited = []
    for text in long:
        tokens = def_tokens(text)
        for at in range(17, len(tokens), 35):
            tokens[at] = "zebra"
        edited.append(" ".join(tokens))
    others = rng.sample([t for t in hh_prompts if t not in long], 200)
    index = OverlapIndex({"b": long}, ngram=40, minhash_threshold=0.8)
    got = index.match(edited + others)
    assert OverlapIndex({"b": long}, ngram=40, minhash_threshold=None).match(edited) == [None] * 40
    true = [shingle_jaccard(e, t) for e, t in zip(edited, long)]
    found = [(m, j) for m, j in zip(got[:40], true) if m is not None]
    assert len(found) >= 0.9 * sum(j >= 0.85 for j in true) and len(found) >= 30, (len(found), true)
    for i, (m, j) in enumerate(zip(got[:40], true)):
        if m is not None:
            assert (m.reference, m.item, m.kind) == ("b", i, "minhash") and m.overlap >= 0.8 and abs(m.overlap - j) < 0.15
    assert got[40:] == [None] * 200  # unrelated real prompts


def test_batches_do_not_change_the_result(monkeypatch: pytest.MonkeyPatch, hh_prompts: list[str]) -> None:
    rng = random.Random(5)
    refs = {"b": hh_prompts[:50]}
    texts = [rng.choice(hh_prompts[:80]) + " " + str(i) for i in range(60)]
    whole = OverlapIndex(refs).match(texts)
    monkeypatch.setattr(overlap, "BATCH", 7)
    assert OverlapIndex(refs).match(texts) == whole and sum(m is not None for m in whole) > 20


def test_prompt_text_is_the_same_in_python_and_polars(hh_path: Path) -> None:
    prompts = [d.prompt for d, _ in zip(hh_drafts(hh_path), range(200))]
    frame = pl.DataFrame({"prompt": prompts + [None]})
    assert frame.select(prompt_text_expr())["prompt"].to_list() == [prompt_text(p) for p in prompts] + [""]
    assert prompt_text([{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}]) == "a\nb"


def test_matched_items_are_every_item_any_text_matches(hh_prompts: list[str], bench_prompts: dict[str, list[str]]) -> None:
    """The leakage guard's side: not each text's best item, but every item some text matches
    (a training prompt that matches two evaluation prompts leaks both)."""
    rng = random.Random(11)
    refs = {name: rng.sample(texts, 20) for name, texts in bench_prompts.items()}
    flat = [t for texts in refs.values() for t in texts]
    texts = rng.sample(hh_prompts, 100) + [plant(rng, rng.choice(flat), rng.choice(hh_prompts)) for _ in range(120)]
    texts.append(refs["oasst"][0] + "\n" + refs["pandalm"][1])  # one text, two items
    index = OverlapIndex(refs, minhash_threshold=None)
    expected: dict[str, set[int]] = {}
    for name, items in refs.items():
        for i, ref in enumerate(items):
            r = def_tokens(ref)
            for t in texts:
                tt = def_tokens(t)
                if (tt and tt == r) or (len(r) >= 8 and def_coverage(tt, r, 8) > 0.5):
                    expected.setdefault(name, set()).add(i)
                    break
    got = index.matched_items(texts)
    assert got == expected
    assert 0 in got["oasst"] and 1 in got["pandalm"]
    assert index.matched_items(texts[-1:]) == {"oasst": {0}, "pandalm": {1}}  # both, not only the best
