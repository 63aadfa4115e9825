"""The embedded CPU backends with the real shipped models (SmolLM2-135M-Instruct, all-MiniLM-L6-v2).

Nothing is mocked: these tests pin what techniques rely on (seeded sampling, teacher-forced
log-probs, pooled hidden states, structured replies, embeddings). Token budgets are tiny so the
file runs in about a minute on two cores, plus ~30 s the first time SmolLM2 is converted.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch

from curation.errors import ConfigError
from curation.models import BackendConfig, SamplingParams, Unsupported, build_backend, check_backend
from curation.models.base import ModelBackend, schema_problem
from curation.models.embedder import SentenceTransformerBackend
from curation.models.transformers_backend import TransformersBackend

HH_SAMPLE = Path(__file__).resolve().parents[2] / "data" / "samples" / "hh-rlhf-harmless-base" / "test-dev-1200.jsonl"
FRANCE = [{"role": "user", "content": "What is the capital of France?"}]
HAIKU = [{"role": "user", "content": "Write a haiku about a long winter night in the mountains."}]
HELLO = [{"role": "system", "content": "You are terse."}, {"role": "user", "content": "Hi"}]


pytestmark = pytest.mark.usefixtures("torch_threads")  # tests/model_fixtures.py


@pytest.fixture(scope="module")
def lm(smollm2_dir: Path, models_root: Path) -> Iterator[TransformersBackend]:
    cfg = BackendConfig(backend="transformers", model="smollm2", batch_size=4)
    backend = build_backend(cfg, models_root)
    assert isinstance(backend, TransformersBackend)
    yield backend
    backend.close()


@pytest.fixture(scope="module")
def embedder() -> Iterator[SentenceTransformerBackend]:
    backend = build_backend(BackendConfig(backend="sentence_transformers", model="all-MiniLM-L6-v2", batch_size=32))
    yield backend
    backend.close()


# ------------------------------------------------------------------ generate


def test_generate_n_seeded_samples_independent_of_batch(lm: TransformersBackend) -> None:
    params = SamplingParams(max_tokens=12, temperature=1.0, n=2, seed=7)
    batch = lm.generate([FRANCE, HAIKU, HELLO], params)
    assert [len(r.generations) for r in batch] == [2, 2, 2]
    for conv, res in zip([FRANCE, HAIKU, HELLO], batch):
        prompt = lm.tokenizer.apply_chat_template(conv, add_generation_prompt=True, tokenize=True, return_dict=False)
        assert [g.index for g in res.generations] == [0, 1]
        assert all(g.seed == 7 and g.prompt_tokens == len(prompt) for g in res.generations)
        assert all(1 <= g.completion_tokens <= 12 and g.finish_reason in ("stop", "length") for g in res.generations)
        assert res.usage.prompt_tokens == len(prompt)  # counted once per request, as OpenAI does
        assert res.usage.completion_tokens == sum(g.completion_tokens for g in res.generations)
        assert res.usage.seconds > 0

    haiku = [g.text for g in batch[1].generations]
    assert haiku[0] != haiku[1], "the n samples of one request should differ at temperature 1"
    alone = lm.generate([HAIKU], params)[0]
    assert [g.text for g in alone.generations] == haiku, "same (conversation, params) must not depend on the batch"
    other = lm.generate([HAIKU], SamplingParams(max_tokens=12, temperature=1.0, n=2, seed=8))[0]
    assert [g.text for g in other.generations] != haiku


def test_length_finish_and_token_counts(lm: TransformersBackend) -> None:
    res = lm.generate([HAIKU], SamplingParams(max_tokens=3, temperature=1.0, n=2, seed=1))[0]
    for g in res.generations:
        assert g.finish_reason == "length"
        assert g.completion_tokens == 3
        assert 1 <= len(lm.response_ids(g.text)) <= 4  # re-tokenising the text gives back about the same tokens


def test_greedy_answers_paris_and_stops(lm: TransformersBackend) -> None:
    res = lm.generate([FRANCE], SamplingParams(max_tokens=16, temperature=0, n=2))[0]
    first, second = res.generations
    assert "Paris" in first.text
    assert first.finish_reason == "stop"
    assert first.completion_tokens == len(lm.response_ids(first.text)) + 1  # the answer plus its EOS
    assert second.text == first.text and second.index == 1  # greedy: the n samples are one text

    stopped = lm.generate([FRANCE], SamplingParams(max_tokens=16, temperature=0, stop=("Paris",)))[0].generations[0]
    assert stopped.finish_reason == "stop"
    assert "Paris" not in stopped.text and first.text.startswith(stopped.text)


# ------------------------------------------------------------------ teacher forcing

RESPONSES = ["Paris", "The capital of France is Paris.", "Banana carburetor seventeen purple whisk.", ""]


def test_score_logprobs_batched_equals_one_by_one(lm: TransformersBackend) -> None:
    batched = lm.score_logprobs([FRANCE] * len(RESPONSES), RESPONSES)
    for response, scores in zip(RESPONSES, batched):
        assert len(scores) == len(lm.response_ids(response))
        assert all(v <= 0 for v in scores)
        alone = lm.score_logprobs([FRANCE], [response])[0]
        np.testing.assert_allclose(scores, alone, atol=1e-4)
    assert batched[3] == []
    assert np.mean(batched[1]) > np.mean(batched[2]) + 1.0  # a sensible answer is far likelier than nonsense


def test_choice_logprobs_one_pass_equals_teacher_forcing(lm: TransformersBackend) -> None:
    """Single-token choices are read off one forward pass; the numbers equal scoring each
    choice as the whole reply, and multi-token choices fall back to that scoring."""
    convs = [[{"role": "user", "content": p}] for p in ("Is Paris in France? Answer A for yes, B for no.", "Pick A or B.", *_hh_prompts(2))]
    fast = lm.choice_logprobs(convs, ["A", "B"])
    slow = ModelBackend.choice_logprobs(lm, convs, ["A", "B"])  # the generic path: score_logprobs per choice
    assert np.allclose(fast, slow, atol=1e-4)
    assert all(np.exp(a) + np.exp(b) <= 1.0 for a, b in fast)  # two of the vocabulary's next tokens
    multi = lm.choice_logprobs(convs[:2], ["Yes, it is.", "No"])
    assert np.allclose(multi, ModelBackend.choice_logprobs(lm, convs[:2], ["Yes, it is.", "No"]))


def test_score_logprobs_match_full_forward(lm: TransformersBackend) -> None:
    prompt, response = lm.prompt_ids(FRANCE), lm.response_ids(RESPONSES[1])
    with torch.inference_mode():
        logits = lm.lm(input_ids=torch.tensor([prompt + response])).logits[0].float()
    expected = [torch.log_softmax(logits[len(prompt) - 1 + k], dim=-1)[t].item() for k, t in enumerate(response)]
    np.testing.assert_allclose(lm.score_logprobs([FRANCE], [RESPONSES[1]])[0], expected, atol=1e-4)


def test_hidden_states_pool_the_positions_that_predict_the_response(lm: TransformersBackend) -> None:
    """CHES sums the states that predict the response's tokens: from the last prompt token to
    the second-to-last response token (princeton-nlp/unintentional-unalignment ches/ches.py)."""
    convs = [FRANCE, HAIKU, HELLO]
    pooled = lm.hidden_states(convs, RESPONSES[:3])  # one batch of three different lengths
    for conv, response, h in zip(convs, RESPONSES, pooled):
        prompt, ids = lm.prompt_ids(conv), lm.response_ids(response)
        assert h.sum.shape == h.mean.shape == (576,)
        assert h.sum.dtype == h.mean.dtype == np.float32
        assert h.n_tokens == len(ids)
        np.testing.assert_allclose(h.mean, h.sum / h.n_tokens, rtol=1e-5, atol=1e-6)
        with torch.inference_mode():
            last = lm.lm(input_ids=torch.tensor([prompt + ids]), output_hidden_states=True).hidden_states[-1][0].double()
        expected = last[len(prompt) - 1 : len(prompt) + len(ids) - 1].sum(dim=0).numpy()
        np.testing.assert_allclose(h.sum, expected, rtol=1e-4, atol=2e-3)
        own = last[len(prompt) :].sum(dim=0).numpy()  # the response's own positions: not what CHES sums
        assert np.abs(h.sum - own).max() > 1.0

    # The pooled state of a one-token response is the state that predicts it: through the LM head
    # it gives the token's teacher-forced log-prob.
    (token,) = lm.response_ids(RESPONSES[0])
    with torch.inference_mode():
        logits = lm.lm.lm_head(torch.from_numpy(pooled[0].sum).unsqueeze(0)).float()
    np.testing.assert_allclose(
        torch.log_softmax(logits, dim=-1)[0, token].item(), lm.score_logprobs([FRANCE], [RESPONSES[0]])[0][0], atol=1e-3
    )

    empty = lm.hidden_states([FRANCE], [""])[0]
    assert empty.n_tokens == 0 and not empty.sum.any() and np.isnan(empty.mean).all()


# ------------------------------------------------------------------ structured chat

SCHEMA = {"type": "object", "properties": {"answer": {"type": "string"}}, "required": ["answer"]}


def test_chat_json_gives_a_value_or_an_error(lm: TransformersBackend) -> None:
    replies = lm.chat_json([FRANCE, HELLO], SCHEMA, SamplingParams(max_tokens=24, temperature=0))
    assert len(replies) == 2
    for reply in replies:
        assert (reply.value is None) != (reply.error is None), reply
        assert reply.text.startswith("{")
        if reply.value is not None:
            assert schema_problem(reply.value, SCHEMA) is None
        assert reply.usage.completion_tokens >= 1


def test_transformers_backend_does_not_embed(lm: TransformersBackend) -> None:
    with pytest.raises(Unsupported, match="embeddings"):
        lm.embed(["x"])
    assert lm.describe()["dtype"] == "float32" and Path(lm.describe()["model_dir"]).is_dir()


# ------------------------------------------------------------------ embeddings


def _hh_prompts(n: int) -> list[str]:
    rows = [json.loads(line) for line in HH_SAMPLE.read_text(encoding="utf-8").splitlines()[:n]]
    return [r["chosen"].split("\n\nAssistant:")[0].replace("\n\nHuman: ", "").strip() for r in rows]


def test_embeddings_are_unit_vectors_and_semantic(embedder: SentenceTransformerBackend) -> None:
    texts = _hh_prompts(5) if HH_SAMPLE.is_file() else ["a", "b", "c", "d", "e"]
    vectors = embedder.embed(texts)
    assert vectors.shape == (5, 384) and vectors.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)
    assert embedder.embed([]).shape == (0, 384)

    a, b, c = embedder.embed(
        [
            "How do I bake a loaf of bread at home?",
            "What is the way to make homemade bread?",
            "The stock market fell sharply on Tuesday.",
        ]
    )
    assert a @ b > a @ c + 0.3


# ------------------------------------------------------------------ check()


def test_check_missing_model_says_how_to_get_it(tmp_path: Path) -> None:
    missing = str(tmp_path / "no-such-model")
    with pytest.raises(ConfigError, match="hf download") as err:
        check_backend(BackendConfig(backend="transformers", model=missing), tmp_path)
    assert "smollm2" in str(err.value)

    (tmp_path / "empty").mkdir()
    with pytest.raises(ConfigError, match="config.json"):
        check_backend(BackendConfig(backend="transformers", model=str(tmp_path / "empty")), tmp_path)
    with pytest.raises(ConfigError, match="dtype"):
        check_backend(BackendConfig(backend="transformers", model="smollm2", dtype="int3"), tmp_path)
    with pytest.raises(ConfigError, match="all-MiniLM-L6-v2"):
        check_backend(BackendConfig(backend="sentence_transformers", model=missing), tmp_path)
    check_backend(BackendConfig(backend="transformers", model="smollm2"), tmp_path)  # cheap: converts nothing
    assert not (tmp_path / "models").exists()
