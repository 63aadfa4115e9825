"""The openai backend against a real HTTP stub: retries, timeouts, concurrency, costs, log-probs.

Everything goes over a real socket (``tests.support.openai_stub``), so the retry policy,
``Retry-After`` and the concurrency limit are exercised as they run against vLLM or OpenAI.
Waits are kept short (backoff base 10 ms, one 1 s Retry-After, a 0.3 s client timeout).
"""

from __future__ import annotations

import asyncio
import email.utils
import socket
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from curation.errors import ConfigError
from curation.models import BackendConfig, BackendError, SamplingParams, Unsupported, build_backend
from curation.models.openai_backend import OpenAIBackend, ServerRejected, retry_after_seconds, split_completion_tokens
from tests.support.openai_stub import OpenAIStub, stub_chat_text, stub_prompt_logprobs

REPO = Path(__file__).resolve().parents[2]
SMOLLM2_FOLDER = REPO / "data" / "models" / "SmolLM2-135M-Instruct"

SCORE_SCHEMA = {
    "type": "object",
    "properties": {"score": {"type": "integer", "minimum": 1, "maximum": 10}, "reason": {"type": "string"}},
    "required": ["score"],
}


def conv(text: str) -> list[dict[str, str]]:
    return [{"role": "user", "content": text}]


def make_backend(stub: OpenAIStub, **overrides: Any) -> OpenAIBackend:
    settings: dict[str, Any] = {"backend": "openai", "model": stub.model, "base_url": stub.base_url, "max_retries": 3, "timeout_s": 5.0}
    settings.update(overrides)
    backend = OpenAIBackend(BackendConfig(**settings), Path("data"))
    backend.backoff_base_s = 0.01  # keep retry waits short; Retry-After still wins
    return backend


@pytest.fixture
def stub():
    with OpenAIStub() as s:
        yield s


def test_generate_n_order_usage_and_cost(stub: OpenAIStub) -> None:
    prompts = [f"question number {i} about preference data" for i in range(6)]
    params = SamplingParams(n=3, max_tokens=64, seed=7, temperature=0.8)
    with make_backend(stub, price_input_per_mtok=2.0, price_output_per_mtok=6.0, max_concurrency=3) as backend:
        results = backend.generate([conv(p) for p in prompts], params)
        assert len(results) == len(prompts)
        for prompt, result in zip(prompts, results):  # input order, choices in index order
            assert [g.text for g in result.generations] == [stub_chat_text(prompt, 7, i) for i in range(3)]
            assert [g.index for g in result.generations] == [0, 1, 2]
            assert all(g.seed == 7 and g.finish_reason == "stop" for g in result.generations)
            u = result.usage
            assert u.prompt_tokens == len(prompt.split()) + 3 and u.attempts == 1 and u.seconds > 0
            assert u.completion_tokens == sum(len(g.text.split()) for g in result.generations)
            assert sum(g.completion_tokens for g in result.generations) == u.completion_tokens
            assert u.cost_usd == pytest.approx((u.prompt_tokens * 2.0 + u.completion_tokens * 6.0) / 1e6)
        sent = [body for path, body in stub.bodies if path == "/v1/chat/completions"]
        assert {(b["n"], b["seed"], b["max_tokens"], b["temperature"]) for b in sent} == {(3, 7, 64, 0.8)}
        totals = backend.totals
        assert totals["requests"] == totals["attempts"] == 6
        assert totals["prompt_tokens"] == sum(r.usage.prompt_tokens for r in results)
        assert totals["cost_usd"] == pytest.approx(sum(r.usage.cost_usd for r in results))
        assert "EMPTY" not in str(backend.describe()) and backend.describe()["base_url_host"] == f"127.0.0.1:{stub.port}"


def test_max_tokens_and_no_prices(stub: OpenAIStub) -> None:
    with make_backend(stub) as backend:
        (result,) = backend.generate([conv("cut me short")], SamplingParams(max_tokens=2))
    (gen,) = result.generations
    assert gen.finish_reason == "length" and gen.completion_tokens == 2 and result.usage.cost_usd is None


def test_server_ignoring_n_gets_extra_seeded_requests(stub: OpenAIStub) -> None:
    stub.ignore_n = True
    with make_backend(stub) as backend:
        (result,) = backend.generate([conv("same prompt")], SamplingParams(n=3, seed=10))
        assert [g.index for g in result.generations] == [0, 1, 2]
        assert [g.seed for g in result.generations] == [10, 11, 12]
        assert [g.text for g in result.generations] == [stub_chat_text("same prompt", s, 0) for s in (10, 11, 12)]
        assert result.usage.attempts == 3 and backend.totals["extra_n_requests"] == 2


def test_429_retry_after_is_honoured(stub: OpenAIStub) -> None:
    stub.add_faults({"status": 429, "retry_after": 1})
    with make_backend(stub) as backend:
        started = time.perf_counter()
        (result,) = backend.generate([conv("rate limited")], SamplingParams())
        elapsed = time.perf_counter() - started
        assert elapsed >= 1.0, "the retry came sooner than Retry-After"
        assert result.usage.attempts == 2 and len(result.generations) == 1
        assert backend.totals["retries"]["429"] == 1 and backend.totals["attempts"] == 2


def test_retry_after_header_forms() -> None:
    now = time.time()
    assert retry_after_seconds({"retry-after": "2"}) == 2.0
    assert retry_after_seconds({"retry-after-ms": "250"}) == 0.25
    assert retry_after_seconds({"retry-after": email.utils.formatdate(now + 30, usegmt=True)}, now=now) == pytest.approx(30, abs=1)
    assert retry_after_seconds({"retry-after": "soon"}) is None and retry_after_seconds({}) is None


def test_5xx_then_success(stub: OpenAIStub) -> None:
    stub.add_faults(500, 503)
    with make_backend(stub) as backend:
        (result,) = backend.generate([conv("flaky")], SamplingParams())
        assert result.usage.attempts == 3 and backend.totals["retries"]["5xx"] == 2


def test_timeout_then_success(stub: OpenAIStub) -> None:
    stub.hang_s = 15.0
    stub.add_faults("hang")
    with make_backend(stub, timeout_s=0.3) as backend:
        started = time.perf_counter()
        (result,) = backend.generate([conv("slow")], SamplingParams())
        assert time.perf_counter() - started < 10  # timed out and retried, did not wait for the hang
        assert result.usage.attempts == 2 and backend.totals["retries"]["timeout"] == 1
        assert result.generations[0].text == stub_chat_text("slow", 0, 0)


def test_exhausted_retries_say_how_many_attempts(stub: OpenAIStub) -> None:
    stub.add_faults(500, 500, 500, 500)
    with make_backend(stub, max_retries=2) as backend:
        with pytest.raises(BackendError, match=r"after 3 attempts .*last error: HTTP 500: injected error 500"):
            backend.generate([conv("doomed")], SamplingParams())
    assert stub.stats_snapshot()["faults_applied"] == {"500": 3}


def test_non_retryable_400_fails_at_once(stub: OpenAIStub) -> None:
    stub.add_faults({"status": 400, "message": "max_tokens is too large for this model"})
    with make_backend(stub) as backend:
        with pytest.raises(ServerRejected, match=r"HTTP 400: max_tokens is too large") as info:
            backend.generate([conv("bad request")], SamplingParams())
        assert info.value.status == 400 and backend.totals["attempts"] == 1
    assert stub.stats_snapshot()["requests"] == 1


def test_non_json_reply_is_retried_then_a_backend_error(stub: OpenAIStub) -> None:
    stub.add_faults({"status": 200, "raw": '{"id": "cut off mid-bo'})  # a truncated body: transient
    with make_backend(stub) as backend:
        [result] = backend.generate([conv("a cut connection")], SamplingParams())
        assert result.generations and backend.totals["retries"]["bad_reply"] == 1
    stub.add_faults(*[{"status": 200, "raw": "<html>proxy login</html>"}] * 4)  # every attempt: gives up
    with make_backend(stub) as backend, pytest.raises(BackendError, match="after 4 attempts.*not an OpenAI JSON reply.*proxy login"):
        backend.generate([conv("behind a proxy")], SamplingParams())


def test_concurrency_is_bounded_and_reached() -> None:
    # 150 ms per request leaves room for a loaded CI machine to open all 4 connections
    with OpenAIStub(latency_s=0.15) as stub, make_backend(stub, max_concurrency=4) as backend:
        results = backend.generate([conv(f"c{i}") for i in range(16)], SamplingParams())
        stats = stub.stats_snapshot()
        assert stats["max_in_flight"] == 4, stats
        assert stats["mean_in_flight"] > 2.5, stats
        assert [r.generations[0].text for r in results] == [stub_chat_text(f"c{i}", 0, 0) for i in range(16)]


def test_works_from_threads_and_inside_a_running_loop(stub: OpenAIStub) -> None:
    with make_backend(stub) as backend:
        out: list[str] = []
        worker = threading.Thread(target=lambda: out.append(backend.generate([conv("thread")], SamplingParams())[0].generations[0].text))
        worker.start()
        worker.join()

        async def inside_loop() -> str:  # e.g. an async Prefect task calling sync code
            return backend.generate([conv("loop")], SamplingParams())[0].generations[0].text

        out.append(asyncio.run(inside_loop()))
    assert out == [stub_chat_text("thread", 0, 0), stub_chat_text("loop", 0, 0)]


@pytest.mark.slow
def test_score_logprobs_returns_only_response_tokens(stub: OpenAIStub) -> None:
    # the converted SmolLM2 folder loads in ~1 s once transformers is imported; the GGUF takes longer
    tokenizer = str(SMOLLM2_FOLDER) if (SMOLLM2_FOLDER / "tokenizer.json").is_file() else "smollm2"
    conversations = [
        conv("What is the capital of France?"),
        [*conv("Hi"), {"role": "assistant", "content": "Hello!"}, *conv("Name a colour.")],
    ]
    responses = ["The capital of France is Paris.", "Blue, like\nthe sky."]
    with make_backend(stub, tokenizer=tokenizer) as backend:
        scores = backend.score_logprobs(conversations, responses)
        template = backend._get_tokenizer()
    for c, response, got, n_tokens in zip(conversations, responses, scores, [6, 5]):  # "\n" is a stub token of its own
        prompt = template.apply_chat_template(c, tokenize=False, add_generation_prompt=True)
        assert prompt.endswith("assistant\n")
        expected = [lp for off, _, lp in stub_prompt_logprobs(prompt + response) if off >= len(prompt)]
        assert got == expected and len(got) == n_tokens
    sent = [body for path, body in stub.bodies if path == "/v1/completions"]
    assert all(b["echo"] is True and b["logprobs"] == 1 and b["max_tokens"] == 1 for b in sent)

    stub.reject_echo_logprobs = True
    with make_backend(stub, tokenizer=tokenizer) as backend:
        with pytest.raises(Unsupported, match="does not return prompt log-probs through completions echo"):
            backend.score_logprobs(conversations[:1], responses[:1])
    stub.reject_echo_logprobs = False
    # A request the server refuses for another reason (too long) is a failed request, not a missing capability.
    stub.add_faults({"status": 400, "message": "This model's maximum context length is 2048 tokens", "path": "/v1/completions"})
    with make_backend(stub, tokenizer=tokenizer) as backend:
        with pytest.raises(BackendError, match="maximum context length") as err:
            backend.score_logprobs(conversations[:1], responses[:1])
        assert not isinstance(err.value, Unsupported)


def test_score_logprobs_needs_a_tokenizer(stub: OpenAIStub) -> None:
    with make_backend(stub) as backend, pytest.raises(Unsupported, match="set tokenizer"):
        backend.score_logprobs([conv("q")], ["a"])
    with make_backend(stub) as backend, pytest.raises(Unsupported, match="hidden states"):
        backend.hidden_states([conv("q")], ["a"])


def test_chat_json_valid_and_invalid_replies(stub: OpenAIStub) -> None:
    with make_backend(stub) as backend:
        (good,) = backend.chat_json([conv("judge A")], SCORE_SCHEMA, SamplingParams())
        assert good.value == {"score": 1, "reason": "ok"} and good.error is None
        fmt = stub.bodies[0][1]["response_format"]
        assert fmt == {"type": "json_schema", "json_schema": {"name": "reply", "schema": SCORE_SCHEMA}}

        stub.script_replies("I think it is a 7", '{"score": "high"}')
        first, second = backend.chat_json([conv("judge D"), conv("judge E")], SCORE_SCHEMA, SamplingParams())
        replies = sorted([first, second], key=lambda r: r.text)  # scripted replies go to whichever request lands first
        assert replies[0].value is None and "no JSON object" in replies[0].error
        assert replies[1].value is None and "expected integer" in replies[1].error
        assert all(r.usage.attempts == 1 and r.usage.completion_tokens > 0 for r in (good, first, second))


def test_chat_json_falls_back_when_response_format_is_rejected(stub: OpenAIStub) -> None:
    stub.reject_response_format = True
    judge = [{"role": "system", "content": "You are a strict judge."}, *conv("Rate this.")]
    with make_backend(stub) as backend:
        stub.script_replies('Sure: {"score": 8, "reason": "clear"}')
        (reply,) = backend.chat_json([judge], SCORE_SCHEMA, SamplingParams())
        assert reply.value == {"score": 8, "reason": "clear"} and reply.error is None and reply.usage.attempts == 2
        first, second = [body for _, body in stub.bodies]
        assert "response_format" in first and "response_format" not in second
        system = second["messages"][0]
        assert system["role"] == "system" and system["content"].startswith("You are a strict judge.") and '"score"' in system["content"]
        stub.script_replies('{"score": 3}')
        (again,) = backend.chat_json([judge], SCORE_SCHEMA, SamplingParams())  # straight to the instruction now
        assert again.value == {"score": 3} and again.usage.attempts == 1


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_check_unreachable_server_is_a_config_error_fast() -> None:
    url = f"http://127.0.0.1:{_closed_port()}/v1"
    cfg = BackendConfig(backend="openai", model="m", base_url=url)
    started = time.perf_counter()
    with pytest.raises(ConfigError, match="cannot reach the model server") as info:
        OpenAIBackend.check(cfg, Path("data"))
    assert time.perf_counter() - started < 5  # refused at once, no retries or long timeout
    assert url in str(info.value) and "vllm.entrypoints.openai.api_server" in str(info.value)


def test_check_config_errors(stub: OpenAIStub, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("CURATION_TEST_MISSING_KEY", raising=False)
    with pytest.raises(ConfigError, match="CURATION_TEST_MISSING_KEY"):
        OpenAIBackend.check(
            BackendConfig(backend="openai", model=stub.model, base_url=stub.base_url, api_key_env="CURATION_TEST_MISSING_KEY"), Path("data")
        )
    with pytest.raises(ConfigError, match="needs base_url"):
        OpenAIBackend.check(BackendConfig(backend="openai", model=stub.model), Path("data"))
    with pytest.raises(ConfigError, match="does not serve model 'other'.*stub-model"):
        OpenAIBackend.check(BackendConfig(backend="openai", model="other", base_url=stub.base_url), Path("data"))

    stub.api_key = "s3cret"
    monkeypatch.setenv("CURATION_TEST_KEY", "wrong")
    cfg = BackendConfig(backend="openai", model=stub.model, base_url=stub.base_url, api_key_env="CURATION_TEST_KEY")
    with pytest.raises(ConfigError, match=r"rejected the key in \$CURATION_TEST_KEY \(HTTP 401\)"):
        OpenAIBackend.check(cfg, Path("data"))
    monkeypatch.setenv("CURATION_TEST_KEY", "s3cret")
    with build_backend(cfg) as backend:  # the registry path: check, then construct
        assert backend.generate([conv("with key")], SamplingParams())[0].generations[0].text == stub_chat_text("with key", 0, 0)
        assert "s3cret" not in str(backend.describe())


def test_split_completion_tokens_adds_up() -> None:
    assert split_completion_tokens(10, ["a"], ["stop"], 5) == [10]
    assert split_completion_tokens(13, ["xx", "xxxx", "long"], ["stop", "stop", "length"], 5) == [3, 5, 5]
    assert sum(split_completion_tokens(7, ["a", "b", "c"], ["stop"] * 3, 9)) == 7
