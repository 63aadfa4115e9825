"""The model-free parts of generation: parsing, personas, pairing, diversity, cache, prompts, config."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from curation.config import parse_config
from curation.errors import ConfigError, CurationError, SourceError
from curation.models import SamplingParams
from curation.records import prompt_id
from curation.stages.generate.cache import RequestCache, request_key
from curation.stages.generate.diversity import distinct_n, mean_pairwise_cosine_distance, strategy_diversity
from curation.stages.generate.pairing import candidate_pairs, pair_rows
from curation.stages.generate.prompts import Prompt, from_file, from_pairs
from curation.stages.generate.strategies import Candidate, parse_numbered, pick_personas

HH = Path(__file__).resolve().parents[3] / "data" / "samples" / "hh-rlhf-harmless-base" / "test-dev-1200.jsonl"


def test_parse_numbered_reads_markdown_and_plain_headers():
    reply = "Sure.\n### Response 1\nFirst answer.\nmore\n\n### Response 2:\nSecond.\n**Response 3**\nThird.\nResponse 4.\n\n"
    assert parse_numbered(reply, 4) == ["First answer.\nmore", "Second.", "Third."]
    assert parse_numbered(reply, 2) == ["First answer.\nmore", "Second."]
    assert parse_numbered("no headers at all", 3) == []
    # "Response 1" inside a sentence is not a header
    assert parse_numbered("My Response 1 is this", 2) == []


def test_personas_are_distinct_per_prompt_seeded_and_cycle_when_short():
    people = ["a", "b", "c", "d", "e"]
    one = pick_personas(people, "p1", 4, seed=0)
    assert len(set(one)) == 4 and one == pick_personas(people, "p1", 4, seed=0)
    assert pick_personas(people, "p2", 4, seed=0) != one or pick_personas(people, "p1", 4, seed=1) != one
    many = pick_personas(people, "p1", 7, seed=0)
    assert len(many) == 7 and set(many[:5]) == set(people)


def test_candidate_pairs_all_and_sampled():
    assert candidate_pairs(4, "all", 2, 0, "p") == [(0, 1), (0, 2), (0, 3), (1, 2), (1, 3), (2, 3)]
    sampled = candidate_pairs(4, "sample", 2, 0, "p")
    assert len(sampled) == 2 and all(i < j for i, j in sampled)
    assert sampled == candidate_pairs(4, "sample", 2, 0, "p")
    assert candidate_pairs(2, "sample", 5, 0, "p") == [(0, 1)]
    assert candidate_pairs(1, "all", 2, 0, "p") == []


def _cand(prompt: Prompt, text: str, i: int) -> Candidate:
    p = SamplingParams(n=1, seed=i)
    return Candidate(prompt, text, "iid", i, p, prompt.conversation, "stop", f"k{i}", candidate_id=f"c{i}")


def test_pair_rows_filter_identical_and_empty_and_keep_provenance():
    conv = [{"role": "user", "content": "Is it safe to eat raw cookie dough?"}]
    prompt = Prompt(prompt_id(conv), conv, "pairs")
    cands = [
        _cand(prompt, "Usually not: raw flour and eggs.", 0),
        _cand(prompt, "Usually not: raw flour and eggs. ", 1),
        _cand(prompt, "  ", 2),
    ]
    out = list(pair_rows([cands], "all", 2, 0))
    decisions = [d for _, d in out]
    assert [d["reason"] for d in decisions] == ["identical_candidates", "empty_candidate", "empty_candidate"]
    cands[1] = _cand(prompt, "It is fine in small amounts.", 1)
    rows = [r for r, _ in pair_rows([cands], "all", 2, 0) if r is not None]
    assert len(rows) == 1
    row = rows[0]
    assert row["label_source"] == "unlabeled" and row["prompt_id"] == prompt.prompt_id
    assert json.loads(row["metadata"])["candidate_ids"] == ["c0", "c1"]
    assert row["chosen"] == [{"role": "assistant", "content": "Usually not: raw flour and eggs."}]


def test_diversity_measures():
    v = np.array([[1.0, 0.0], [0.0, 1.0], [1.0, 0.0]], dtype=np.float32)
    assert mean_pairwise_cosine_distance(v) == pytest.approx((1 + 0 + 1) / 3)
    assert mean_pairwise_cosine_distance(v[:1]) is None
    assert distinct_n(["a b a b"], 1) == 0.5
    assert distinct_n(["a b c", "a b d"], 2) == pytest.approx(3 / 4)
    assert distinct_n([""], 2) is None

    def embed(texts: list[str]) -> np.ndarray:  # one-hot by first word: a transparent embedding
        vocab = sorted({t.split()[0] for t in texts})
        out = np.zeros((len(texts), len(vocab)), dtype=np.float32)
        for i, t in enumerate(texts):
            out[i, vocab.index(t.split()[0])] = 1.0
        return out

    same = strategy_diversity([["yes a", "yes b"], ["no c", "no d"]], embed)
    varied = strategy_diversity([["yes a", "no b"], ["maybe c", "no d"]], embed)
    assert same["mean_cosine_distance"] == 0.0 and varied["mean_cosine_distance"] == 1.0
    assert same["candidates"] == 4 and same["prompts"] == 2


def test_request_cache_persists_and_keys_change_with_any_parameter(tmp_path: Path):
    conv = [{"role": "user", "content": "hi"}]
    base = SamplingParams(n=2, seed=1)
    key = request_key("generate", {"model": "m"}, base, conv)
    assert key == request_key("generate", {"model": "m"}, SamplingParams(n=2, seed=1), conv)
    variants = [
        request_key("generate", {"model": "m2"}, base, conv),
        request_key("generate", {"model": "m"}, SamplingParams(n=2, seed=2), conv),
        request_key("generate", {"model": "m"}, SamplingParams(n=2, seed=1, temperature=0.1), conv),
        request_key("generate", {"model": "m"}, base, [{"role": "user", "content": "hi!"}]),
        request_key("score", {"model": "m"}, base, conv),
    ]
    assert len({key, *variants}) == 6
    cache = RequestCache(tmp_path / "c.sqlite")
    cache.put_many("generate", {key: {"x": 1}})
    cache.close()
    again = RequestCache(tmp_path / "c.sqlite")
    assert again.get_many([key, variants[0]]) == {key: {"x": 1}} and len(again) == 1


def test_prompts_from_pairs_are_distinct_user_ended_and_limited(tmp_path: Path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    from schemas import arrow_schema

    rows = [json.loads(line) for line in HH.open()][:20]
    convs = []
    for r in rows:
        human = r["chosen"].split("\n\nAssistant:")[0].split("Human:", 1)[1].strip()
        convs.append([{"role": "user", "content": human}])
    convs.insert(1, convs[0])  # a repeated prompt is used once
    schema = arrow_schema("pairs")
    table = pa.table(
        {
            "pair_id": [str(i) for i in range(len(convs))],
            "prompt_id": [prompt_id(c) for c in convs],
            "prompt": convs,
            "chosen": [[{"role": "assistant", "content": "a"}]] * len(convs),
            "rejected": [[{"role": "assistant", "content": "b"}]] * len(convs),
            "chosen_score": [None] * len(convs),
            "rejected_score": [None] * len(convs),
            "label_source": ["human"] * len(convs),
            "label_model": [None] * len(convs),
            "source_dataset": ["hh"] * len(convs),
            "source_file": ["f"] * len(convs),
            "source_row": list(range(len(convs))),
            "source_pair_index": [0] * len(convs),
            "metadata": [None] * len(convs),
            "preference_strength": [None] * len(convs),
            "preference_strength_std": [None] * len(convs),
        },
        schema=schema,
    )
    pq.write_table(table, tmp_path / "kept.parquet")
    got = from_pairs(tmp_path / "kept.parquet", limit=5)
    assert [p.conversation for p in got] == [convs[0], convs[2], convs[3], convs[4], convs[5]]
    assert len({p.prompt_id for p in got}) == 5


def test_prompt_file_formats_and_errors(tmp_path: Path):
    txt = tmp_path / "p.txt"
    txt.write_text("What is DPO?\n\nName a prime.\nWhat is DPO?\n")
    assert [p.conversation[0]["content"] for p in from_file(txt, None)] == ["What is DPO?", "Name a prime."]
    jl = tmp_path / "p.jsonl"
    jl.write_text(json.dumps({"prompt": "Hi"}) + "\n" + json.dumps({"messages": [{"role": "user", "content": "Yo"}]}) + "\n")
    assert len(from_file(jl, None)) == 2
    jl.write_text(json.dumps({"prompt": "Hi"}) + "\n{broken\n")
    with pytest.raises(SourceError, match=r"p.jsonl, line 2: invalid JSON"):
        from_file(jl, None)
    jl.write_text(json.dumps({"messages": [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}]}) + "\n")
    with pytest.raises(SourceError, match="must end with a user turn"):
        from_file(jl, None)
    with pytest.raises(SourceError, match="prompt file not found"):
        from_file(tmp_path / "missing.txt", None)


def test_generate_config_errors_are_clear():
    base = {
        "publish": {"dataset": "g"},
        "generate": {"generator": {"backend": "transformers", "model": "smollm2"}, "prompts": {"from": "file", "path": "x.txt"}},
    }
    cfg = parse_config(base)
    assert cfg.sources == [] and cfg.generate.strategies == ["iid"]
    bad = json.loads(json.dumps(base))
    bad["generate"]["n"] = 0
    bad["generate"]["generator"]["backend"] = "tgi"
    with pytest.raises(ConfigError) as err:
        parse_config(bad)
    assert "generate.n" in str(err.value) and "unknown backend 'tgi'" in str(err.value)
    with pytest.raises(ConfigError, match="at least one source"):
        parse_config({"publish": {"dataset": "g"}})
    with pytest.raises(CurationError, match="n must be at least 1"):
        SamplingParams(n=0)


def test_config_hash_ignores_cache_location_but_not_sampling():
    base = {
        "publish": {"dataset": "g"},
        "generate": {"generator": {"backend": "transformers", "model": "smollm2"}, "prompts": {"from": "file", "path": "x.txt"}},
    }
    h = parse_config(base).config_hash()
    moved = json.loads(json.dumps(base))
    moved["generate"]["cache_path"] = "/elsewhere.sqlite"
    assert parse_config(moved).config_hash() == h
    hotter = json.loads(json.dumps(base))
    hotter["generate"]["temperature"] = 1.2
    assert parse_config(hotter).config_hash() != h
