"""The ``openai`` backend: any OpenAI-compatible server (``vllm serve``, OpenAI, others).

Why it looks like this:

* The ``openai`` **async** client runs on a private event loop in a daemon thread, and the
  sync methods submit work to it. That works from any thread (Prefect task workers), from
  code that already runs an event loop (it never nests loops), and keeps one connection
  pool for the backend's lifetime.
* The retry policy is ours, not the client's (``max_retries=0`` there): 429, 5xx, timeouts
  and connection errors are retried with exponential backoff and jitter, ``Retry-After`` is
  honoured, and every attempt is counted in ``Usage.attempts`` and ``totals``.
* At most ``max_concurrency`` requests are in flight (one semaphore per backend, shared by
  all calls and threads); the requests of one call are all issued concurrently and the
  results come back in input order.
* Log-prob scoring goes through the completions endpoint with ``echo`` + ``logprobs``: the
  chat template is rendered locally (``tokenizer`` in the backend section), so the server
  needs nothing beyond the standard API.
* A server that still refuses connections when a request's retries run out is down (crashed,
  killed, never restarted): that request raises ``ServerUnreachable``, one line naming the
  server's base URL, the last error and the last error the server itself replied, and the run
  stops there instead of failing item after item; the caches keep what finished.
"""

from __future__ import annotations

import asyncio
import email.utils
import json
import os
import random
import threading
import time
import urllib.error
import urllib.request
import weakref
from collections import Counter
from collections.abc import Coroutine, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar
from urllib.parse import urlparse

from curation.errors import ConfigError, CurationError
from curation.models.base import (
    BackendError,
    Conversation,
    Generation,
    GenerationResult,
    ModelBackend,
    SamplingParams,
    StructuredReply,
    Unsupported,
    Usage,
    parse_json_reply,
    render_turn_prefix,
    with_json_instruction,
)
from curation.models.config import BackendConfig

if TYPE_CHECKING:  # the client is imported when the backend is built, not when the module is
    from openai import AsyncOpenAI
    from transformers import PreTrainedTokenizerBase

T = TypeVar("T")

CHAT = "/chat/completions"
COMPLETIONS = "/completions"
START_SERVER_HINT = "python -m vllm.entrypoints.openai.api_server --model DIR --host 127.0.0.1 --port 8000"
CHECK_TIMEOUT_S = 5.0


class ServerRejected(BackendError):
    """The server answered a non-retryable HTTP error (4xx): retrying would not help."""

    def __init__(self, message: str, status: int, server_message: str):
        super().__init__(message)
        self.status = status
        self.server_message = server_message


class ServerUnreachable(BackendError, ConfigError):
    """The server refused connections through every retry of a request: it is down.

    Why it is also a ``ConfigError``: the stages isolate a failing item (a pair over the
    context, one rejected request) and record it as invalid, but stop the run on a
    ``ConfigError``. A dead server fails every item alike, and isolating them made things
    worse (vLLM killed mid-labelling): each pair waited out its own retry chain, the judge
    recorded pairs invalid until eight had failed, CDR recorded every remaining pair invalid
    and cached those rows as final, and a run with few pairs published all that. Fatal, the
    run stops at once with this one line, and what finished stays in the request and label
    caches, so a rerun against the restarted server resumes.

    ``retryable``: a Prefect task retry may find the server back (``flows/retries.py``).
    """

    retryable = True


# -- configuration checks (cheap, no client) -----------------------------------------------


def api_key(cfg: BackendConfig) -> str:
    """The API key from the environment variable the recipe names ("EMPTY" when none is named,
    which is what ``vllm serve`` without ``--api-key`` accepts)."""
    if cfg.api_key_env is None:
        return "EMPTY"
    key = os.environ.get(cfg.api_key_env)
    if not key:
        raise ConfigError(
            f"backend 'openai': environment variable {cfg.api_key_env} (api_key_env) is not set; "
            f"export {cfg.api_key_env}=YOUR_KEY, or remove api_key_env for a server without a key"
        )
    return key


def _base_url(cfg: BackendConfig) -> str:
    if not cfg.base_url:
        raise ConfigError(
            "backend 'openai' needs base_url, the server's OpenAI-compatible URL, e.g. base_url: http://127.0.0.1:8000/v1 "
            f"(start a local server with `{START_SERVER_HINT}`)"
        )
    parsed = urlparse(cfg.base_url)
    if parsed.scheme not in ("http", "https") or not parsed.netloc:
        raise ConfigError(f"backend 'openai': base_url {cfg.base_url!r} is not an http(s) URL; e.g. http://127.0.0.1:8000/v1")
    return cfg.base_url.rstrip("/")


def _about_echo(message: str) -> bool:
    """Whether a server's rejection is about echo/logprobs (vLLM, OpenAI and others name the
    parameter), as opposed to a bad request such as a prompt over the context length."""
    text = message.lower()
    return any(word in text for word in ("echo", "logprob", "not supported", "unsupported"))


def _one_line(text: str) -> str:
    """``text`` with its line breaks and runs of spaces made single spaces: an error message
    is one line on the console and in a label row, whatever the server put in its body."""
    return " ".join(text.split())


def _host(url: str) -> str:
    parsed = urlparse(url)
    return parsed.hostname + (f":{parsed.port}" if parsed.port else "") if parsed.hostname else url


def _check_tokenizer(cfg: BackendConfig) -> None:
    from curation.models.local_models import is_smollm2
    from curation.models.tokenizers import smollm2_gguf_path

    if cfg.tokenizer is None:
        return
    if is_smollm2(cfg.tokenizer):
        smollm2_gguf_path()  # raises with the install hint
    elif not Path(cfg.tokenizer).expanduser().is_dir():
        raise ConfigError(f"backend 'openai': tokenizer {cfg.tokenizer!r} is neither 'smollm2' nor a local folder with a tokenizer")


def _probe_models(base_url: str, key: str, cfg: BackendConfig) -> None:
    """GET {base_url}/models with a short timeout: reachable, key accepted, model served."""
    url = f"{base_url}/models"
    request = urllib.request.Request(url, headers={"Authorization": f"Bearer {key}", "Accept": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=CHECK_TIMEOUT_S) as reply:
            body = reply.read()
    except urllib.error.HTTPError as err:
        if err.code in (401, 403):
            where = f"the key in ${cfg.api_key_env}" if cfg.api_key_env else "no API key (set api_key_env)"
            raise ConfigError(f"the model server at {base_url} rejected {where} (HTTP {err.code})") from None
        if err.code == 404:
            raise ConfigError(f"{url} was not found (HTTP 404): base_url should be the API root, usually ending in /v1") from None
        raise ConfigError(f"the model server at {base_url} answered HTTP {err.code} to GET /models") from None
    except (urllib.error.URLError, OSError) as err:
        reason = getattr(err, "reason", err)
        raise ConfigError(
            f"cannot reach the model server at {base_url} ({reason}). Start an OpenAI-compatible server, e.g. "
            f"`{START_SERVER_HINT}`, and set base_url: http://127.0.0.1:8000/v1"
        ) from None
    try:
        served = [m["id"] for m in json.loads(body)["data"]]
    except (ValueError, KeyError, TypeError):
        return  # not a standard model list; the first request will tell
    if served and cfg.model not in served:
        shown = ", ".join(served[:10]) + (" ..." if len(served) > 10 else "")
        raise ConfigError(
            f"the model server at {base_url} does not serve model {cfg.model!r}; it serves: {shown}. "
            "Set model to a served name (vLLM serves the --model path unless --served-model-name is given)"
        )


# -- retry policy helpers ------------------------------------------------------------------


def retry_after_seconds(headers: Any, now: float | None = None) -> float | None:
    """Seconds the server asks to wait: ``retry-after-ms``, ``Retry-After`` in seconds or as an
    HTTP-date; None when absent or unreadable."""
    if headers is None:
        return None
    ms = headers.get("retry-after-ms")
    if ms:
        try:
            return max(0.0, float(ms) / 1000)
        except ValueError:
            pass
    value = headers.get("retry-after")
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        return None
    return max(0.0, when.timestamp() - (time.time() if now is None else now))


def _server_message(err: Any) -> str:
    body = getattr(err, "body", None)
    if isinstance(body, dict):
        inner = body.get("error", body)
        msg = inner.get("message") if isinstance(inner, dict) else inner
        if msg:
            return _one_line(str(msg))
    if isinstance(body, str) and body:
        return _one_line(body[:500])
    return _one_line(str(getattr(err, "message", err)))


@dataclass
class _Spent:
    """What the requests for one input cost; summed into its ``Usage``."""

    prompt_tokens: int = 0
    completion_tokens: int = 0
    attempts: int = 0
    seconds: float = 0.0

    def add(self, other: _Spent) -> None:
        self.prompt_tokens += other.prompt_tokens
        self.completion_tokens += other.completion_tokens
        self.attempts += other.attempts
        self.seconds += other.seconds


def _json_reply(response: Any) -> dict[str, Any] | None:
    """The reply's JSON object, or None when it is not one (the caller says what came back)."""
    try:
        data = response.json()
    except ValueError:
        return None
    return data if isinstance(data, dict) else None


def _choices(reply: dict[str, Any]) -> list[dict[str, Any]]:
    choices = reply.get("choices")
    if not isinstance(choices, list):
        return []
    return sorted((c for c in choices if isinstance(c, dict)), key=lambda c: c.get("index") or 0)


def _message_text(choice: dict[str, Any]) -> str:
    message = choice.get("message")
    content = message.get("content") if isinstance(message, dict) else None
    return content if isinstance(content, str) else ""


def _usage_tokens(reply: dict[str, Any]) -> tuple[int, int]:
    """(prompt_tokens, completion_tokens) of a reply; zeros when the server reports no usage."""
    usage = reply.get("usage")
    if not isinstance(usage, dict):
        return 0, 0
    return int(usage.get("prompt_tokens") or 0), int(usage.get("completion_tokens") or 0)


def split_completion_tokens(total: int, texts: Sequence[str], finishes: Sequence[str], max_tokens: int) -> list[int]:
    """Per-choice token counts from the request's total (the API reports only the total).

    Choices cut at ``max_tokens`` ("length") used exactly ``max_tokens``; the rest of the total
    is shared in proportion to text length, rounded so the counts add up to the total.
    """
    if len(texts) <= 1:
        return [total] * len(texts)
    fixed = {i: max_tokens for i, f in enumerate(finishes) if f == "length"}
    rest = total - sum(fixed.values())
    if rest < 0:  # the server counts differently; share everything by length
        fixed, rest = {}, total
    free = [i for i in range(len(texts)) if i not in fixed]
    counts = dict(fixed)
    if free:
        weights = [len(texts[i]) for i in free]
        if sum(weights) == 0:
            weights = [1] * len(free)
        shares = [rest * w / sum(weights) for w in weights]
        floors = [int(s) for s in shares]
        order = sorted(range(len(free)), key=lambda k: shares[k] - floors[k], reverse=True)
        for k in order[: rest - sum(floors)]:
            floors[k] += 1
        counts.update(zip(free, floors))
    return [counts[i] for i in range(len(texts))]


async def _gather_all(coros: Iterable[Coroutine[Any, Any, T]]) -> list[T]:
    """All results in input order; on the first failure the others are cancelled (no orphan
    requests keep running against the server after the call has failed)."""
    tasks = [asyncio.ensure_future(c) for c in coros]
    try:
        return list(await asyncio.gather(*tasks))
    except BaseException:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        raise


class _LoopThread:
    """A private event loop in a daemon thread; sync code submits coroutines to it."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self._serve, name="openai-backend-loop", daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        asyncio.set_event_loop(self.loop)
        self.loop.run_forever()

    def run(self, coro: Coroutine[Any, Any, T]) -> T:
        if threading.current_thread() is self.thread:
            coro.close()
            raise RuntimeError("OpenAIBackend's sync methods cannot be called from its own event loop")
        future = asyncio.run_coroutine_threadsafe(coro, self.loop)
        try:
            return future.result()
        except BaseException:
            future.cancel()  # e.g. KeyboardInterrupt in the caller: stop the requests too
            raise

    def stop(self) -> None:
        if self.loop.is_closed():
            return
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(timeout=5)
        if not self.thread.is_alive():
            self.loop.close()


def _shutdown(runner: _LoopThread, client: Any, pid: int) -> None:
    """Close the client's connections, then the loop thread (only in the process that owns them)."""
    if os.getpid() != pid:
        return
    try:
        if client is not None:
            runner.run(client.close())
    finally:
        runner.stop()


class OpenAIBackend(ModelBackend):
    """Generation, log-prob scoring and structured chat against an OpenAI-compatible server.

    ``Usage.seconds`` is the time a result spent in requests and retry waits, not the time it
    queued for a concurrency slot; ``Usage.attempts`` counts every HTTP attempt behind it.
    """

    name = "openai"
    backoff_base_s = 0.5
    """First retry waits about this long (jittered to 50-100%), doubling each retry."""
    backoff_max_s = 30.0
    max_retry_after_s = 300.0
    """A longer ``Retry-After`` fails the request at once instead of blocking the run for it."""

    def __init__(self, cfg: BackendConfig, data_root: Path | str = Path("data")) -> None:
        self.cfg = cfg
        self.model = cfg.model
        self.data_root = Path(data_root)
        self.base_url = _base_url(cfg)
        self._api_key = api_key(cfg)
        self.totals: dict[str, Any] = {
            "requests": 0,
            "attempts": 0,
            "prompt_tokens": 0,
            "completion_tokens": 0,
            "cost_usd": 0.0 if self._priced else None,
            "retries": Counter(),
            "extra_n_requests": 0,
        }
        """Running totals over the backend's life; ``retries`` counts retries by reason
        ("429", "5xx", "timeout", "connection"); ``extra_n_requests`` counts requests made
        because the server returned fewer than ``n`` choices."""
        self._runner: _LoopThread | None = None
        self._client: AsyncOpenAI | None = None
        self._semaphore: asyncio.Semaphore | None = None
        self._pid = os.getpid()
        self._start_lock = threading.Lock()
        self._finalizer = weakref.finalize(self, lambda: None)  # replaced once the loop thread starts
        self._tokenizer: PreTrainedTokenizerBase | None = None
        self._json_schema_ok = True
        self._last_5xx: tuple[float, str] | None = None
        """(time.monotonic(), error) of the server's latest 5xx reply: why a server that died
        mid-request died (vLLM answers 500 "EngineCore encountered an issue", then stops)."""

    @classmethod
    def check(cls, cfg: BackendConfig, data_root: Any) -> None:
        """base_url set and well formed, API key present, tokenizer findable, server reachable
        (GET /models, ~5 s timeout) and serving ``model``."""
        base_url = _base_url(cfg)
        key = api_key(cfg)
        _check_tokenizer(cfg)
        _probe_models(base_url, key, cfg)

    def describe(self) -> dict[str, Any]:
        return {**super().describe(), "base_url_host": _host(self.base_url)}

    # -- event loop and client -------------------------------------------------------------

    def _run(self, coro: Coroutine[Any, Any, T]) -> T:
        with self._start_lock:
            if self._runner is not None and self._pid != os.getpid():  # forked: the loop thread stayed in the parent
                self._finalizer.detach()
                self._runner, self._client, self._semaphore = None, None, None
            if self._runner is None:
                self._pid = os.getpid()
                runner = _LoopThread()
                runner.run(self._open())
                self._runner = runner
                # a backend dropped without close() still closes its connections and loop thread
                self._finalizer = weakref.finalize(self, _shutdown, runner, self._client, self._pid)
            runner = self._runner
        return runner.run(coro)

    async def _open(self) -> None:
        from openai import AsyncOpenAI

        self._client = AsyncOpenAI(base_url=self.base_url, api_key=self._api_key, max_retries=0, timeout=self.cfg.timeout_s)
        self._semaphore = asyncio.Semaphore(self.cfg.max_concurrency)

    def close(self) -> None:
        with self._start_lock:
            self._runner, self._client, self._semaphore = None, None, None
            self._finalizer()  # runs _shutdown once; later calls do nothing

    # -- one request with the retry policy -------------------------------------------------

    @property
    def _priced(self) -> bool:
        return self.cfg.price_input_per_mtok is not None or self.cfg.price_output_per_mtok is not None

    def _cost(self, prompt_tokens: int, completion_tokens: int) -> float | None:
        if not self._priced:
            return None
        return (prompt_tokens * (self.cfg.price_input_per_mtok or 0.0) + completion_tokens * (self.cfg.price_output_per_mtok or 0.0)) / 1e6

    def _usage(self, spent: _Spent) -> Usage:
        return Usage(
            prompt_tokens=spent.prompt_tokens,
            completion_tokens=spent.completion_tokens,
            cost_usd=self._cost(spent.prompt_tokens, spent.completion_tokens),
            attempts=spent.attempts,
            seconds=spent.seconds,
        )

    def _backoff(self, retry: int, retry_after: float | None) -> float:
        delay = min(self.backoff_max_s, self.backoff_base_s * 2 ** (retry - 1)) * (0.5 + random.random() / 2)
        return delay if retry_after is None else max(delay, retry_after)

    async def _call(self, what: str, path: str, body: dict[str, Any]) -> tuple[dict[str, Any], _Spent]:
        """POST ``body`` to ``path`` under the concurrency limit, retried by our policy; the
        reply is the server's JSON object.

        The slot is held only while a request is in flight, not while backing off, so one
        rate-limited request does not idle a slot. The body goes through the client's plain
        ``post`` (its documented way to send custom requests) rather than ``create``, and the
        reply comes back as plain JSON rather than typed models: the body is already plain
        JSON, and skipping the client's parameter transform and model construction takes
        about a third off the client's CPU per request (``benchmarks/api_client.py``). Auth,
        timeouts and the error classes are still the client's.
        """
        assert self._client is not None and self._semaphore is not None
        import httpx2
        import openai

        spent = _Spent()  # seconds: in requests and retry waits, not queued for a slot
        retries_left = self.cfg.max_retries
        began = time.monotonic()
        while True:
            spent.attempts += 1
            self.totals["attempts"] += 1
            retry_after: float | None = None
            refused = False  # nothing accepted the connection: no server listens at base_url
            try:
                async with self._semaphore:
                    sent = time.perf_counter()
                    try:
                        response = await self._client.post(path, body=body, cast_to=httpx2.Response)
                    finally:
                        spent.seconds += time.perf_counter() - sent
            except openai.APIStatusError as err:
                status, message = err.status_code, _server_message(err)
                if status == 429:
                    reason = "429"
                elif status >= 500 or status == 408:
                    reason = "5xx" if status >= 500 else "timeout"
                else:
                    self.totals["requests"] += 1
                    raise ServerRejected(
                        f"{what} at {_host(self.base_url)} failed with HTTP {status}: {message}", status=status, server_message=message
                    ) from None
                last = f"HTTP {status}: {message}"
                retry_after = retry_after_seconds(err.response.headers)
                if status >= 500:
                    self._last_5xx = (time.monotonic(), last)
            except openai.APITimeoutError:
                reason, last = "timeout", f"no reply within {self.cfg.timeout_s:g} s (timeout_s)"
            except openai.APIConnectionError as err:
                cause = err.__cause__ or err
                reason, last = "connection", _one_line(f"connection error: {type(cause).__name__}: {cause}")
                refused = isinstance(cause, httpx2.ConnectError)
            else:
                reply = _json_reply(response)
                if reply is not None:
                    self.totals["requests"] += 1
                    spent.prompt_tokens, spent.completion_tokens = _usage_tokens(reply)
                    self._count_tokens(spent.prompt_tokens, spent.completion_tokens)
                    return reply, spent
                # A body cut off mid-way, or a proxy's HTML page, with status 200: retried like a
                # 5xx, since a cut connection is transient (a proxy page fails every attempt).
                reason, last = "bad_reply", f"not an OpenAI JSON reply: {response.text[:200]!r}"
            if retries_left <= 0:
                self.totals["requests"] += 1
                tries = f"failed after {spent.attempts} attempt{'s' if spent.attempts > 1 else ''} (max_retries={self.cfg.max_retries})"
                if refused:
                    raise ServerUnreachable(self._unreachable(what, tries, last, began)) from None
                raise BackendError(f"{what} at {_host(self.base_url)} {tries}; last error: {last}") from None
            if retry_after is not None and retry_after > self.max_retry_after_s:
                self.totals["requests"] += 1
                raise BackendError(
                    f"{what} at {_host(self.base_url)}: the server asks to retry after {retry_after:.0f} s "
                    f"(more than the {self.max_retry_after_s:.0f} s this backend waits); last error: {last}"
                ) from None
            retries_left -= 1
            self.totals["retries"][reason] += 1
            delay = self._backoff(spent.attempts, retry_after)
            spent.seconds += delay
            await asyncio.sleep(delay)

    def _unreachable(self, what: str, tries: str, last: str, began: float) -> str:
        """One line: the server's base URL, what failed, the last error, and the server's own
        last 5xx reply when one came while this request was being tried (the cause, for a
        server that crashed under it)."""
        message = f"the model server at {self.base_url} is unreachable: {what} {tries}; last error: {last}"
        if self._last_5xx is not None and self._last_5xx[0] >= began:
            message += f"; the server's last error reply: {self._last_5xx[1]}"
        return message

    def _count_tokens(self, prompt_tokens: int, completion_tokens: int) -> None:
        self.totals["prompt_tokens"] += prompt_tokens
        self.totals["completion_tokens"] += completion_tokens
        cost = self._cost(prompt_tokens, completion_tokens)
        if cost is not None:
            self.totals["cost_usd"] += cost

    def _sampling_kwargs(self, params: SamplingParams) -> dict[str, Any]:
        kwargs: dict[str, Any] = {
            "model": self.model,
            "temperature": params.temperature,
            "top_p": params.top_p,
            "max_tokens": params.max_tokens,
            "seed": params.seed,
        }
        if params.stop:
            kwargs["stop"] = list(params.stop)
        return kwargs

    # -- generate --------------------------------------------------------------------------

    def generate(self, conversations: Sequence[Conversation], params: SamplingParams) -> list[GenerationResult]:
        if not conversations:
            return []
        return self._run(_gather_all(self._generate_one(list(c), params) for c in conversations))

    async def _generate_one(self, conversation: Conversation, params: SamplingParams) -> GenerationResult:
        kwargs = self._sampling_kwargs(params)
        reply, spent = await self._call("chat completion", CHAT, {**kwargs, "messages": conversation, "n": params.n})
        generations = self._generations(reply, params, first_index=0, seed=params.seed)[: params.n]
        missing = params.n - len(generations)
        if missing > 0:
            # Some servers ignore n: ask for each missing sample alone, seeded seed+index so
            # the samples differ and stay reproducible.
            self.totals["extra_n_requests"] += missing

            async def one(index: int) -> tuple[list[Generation], _Spent]:
                kw = {**kwargs, "seed": params.seed + index}
                extra, extra_spent = await self._call("chat completion", CHAT, {**kw, "messages": conversation, "n": 1})
                return self._generations(extra, params, first_index=index, seed=params.seed + index)[:1], extra_spent

            for extra, extra_spent in await _gather_all(one(i) for i in range(len(generations), params.n)):
                if not extra:
                    raise BackendError(f"chat completion at {_host(self.base_url)} returned no choices")
                generations.extend(extra)
                spent.add(extra_spent)
        return GenerationResult(generations=generations, usage=self._usage(spent))

    def _generations(self, reply: dict[str, Any], params: SamplingParams, first_index: int, seed: int) -> list[Generation]:
        choices = _choices(reply)
        texts = [_message_text(ch) for ch in choices]
        finishes = [str(ch.get("finish_reason") or "unknown") for ch in choices]
        prompt_tokens, total = _usage_tokens(reply)
        counts = split_completion_tokens(total, texts, finishes, params.max_tokens)
        return [
            Generation(text=t, index=first_index + i, completion_tokens=k, finish_reason=f, seed=seed, prompt_tokens=prompt_tokens)
            for i, (t, f, k) in enumerate(zip(texts, finishes, counts))
        ]

    # -- log-prob scoring ------------------------------------------------------------------

    def _get_tokenizer(self) -> PreTrainedTokenizerBase:
        if self._tokenizer is not None:
            return self._tokenizer
        tok_name = self.cfg.tokenizer
        if tok_name is None:
            raise Unsupported(
                f"backend 'openai' (model {self.model!r}) scores log-probs by rendering the chat template locally: "
                "set tokenizer in the backend section to 'smollm2' or a local folder holding the served model's tokenizer"
            )
        from curation.models.local_models import is_smollm2

        if is_smollm2(tok_name):
            from curation.models.tokenizers import smollm2_tokenizer

            self._tokenizer = smollm2_tokenizer()
        else:
            folder = Path(tok_name).expanduser()
            if not folder.is_dir():
                raise ConfigError(f"backend 'openai': tokenizer {tok_name!r} is neither 'smollm2' nor a local folder")
            from transformers import AutoTokenizer

            try:
                self._tokenizer = AutoTokenizer.from_pretrained(str(folder), local_files_only=True)
            except (OSError, ValueError) as err:
                raise ConfigError(f"cannot load a tokenizer from {folder}: {err}") from None
        if not getattr(self._tokenizer, "chat_template", None):
            raise ConfigError(f"the tokenizer {tok_name!r} has no chat template; cannot render conversations for log-prob scoring")
        return self._tokenizer

    def score_logprobs(
        self, conversations: Sequence[Conversation], responses: Sequence[str], *, role: str = "assistant"
    ) -> list[list[float]]:
        """Per-token log-probs of each response, from the server's echo of prompt log-probs.

        The prompt is ``template(conversation, add_generation_prompt=True)``, the scored text
        that prompt plus the response; the response's tokens are those whose ``text_offset``
        falls inside the response (a token straddling the boundary belongs to the prompt).
        Offsets are in the server's echoed text, so the server must tokenize the rendered
        prompt as the local tokenizer does: a server that adds its own BOS in front of a
        template that already writes one shifts them (not the case for SmolLM2).
        """
        if len(conversations) != len(responses):
            raise CurationError(f"score_logprobs got {len(conversations)} conversations but {len(responses)} responses")
        if not conversations:
            return []
        tokenizer = self._get_tokenizer()
        prompts = [render_turn_prefix(tokenizer, c, role) for c in conversations]
        return self._run(_gather_all(self._score_one(p, r) for p, r in zip(prompts, responses)))

    def _no_echo(self, detail: str) -> Unsupported:
        return Unsupported(
            f"server {_host(self.base_url)} (model {self.model!r}) does not return prompt log-probs through completions "
            f"echo+logprobs ({detail}); log-prob scoring needs a server that does, such as vLLM"
        )

    async def _score_one(self, prompt: str, response: str) -> list[float]:
        full = prompt + response
        try:
            reply, _ = await self._call(
                "completion (log-probs)",
                COMPLETIONS,
                {"model": self.model, "prompt": full, "max_tokens": 1, "temperature": 0.0, "echo": True, "logprobs": 1},
            )
        except ServerRejected as err:
            if err.status == 404 or (err.status in (400, 422) and _about_echo(err.server_message)):
                raise self._no_echo(f"HTTP {err.status}: {err.server_message}") from None
            raise  # e.g. a prompt longer than the context: a failed request, not a missing capability
        choices = _choices(reply)
        logprobs = choices[0].get("logprobs") if choices else None
        offsets = logprobs.get("text_offset") if isinstance(logprobs, dict) else None
        values = logprobs.get("token_logprobs") if isinstance(logprobs, dict) else None
        if not isinstance(offsets, list) or not isinstance(values, list):
            raise self._no_echo("the reply has no logprobs.token_logprobs/text_offset")
        start, end = len(prompt), len(full)
        scored: list[float] = []
        for offset, value in zip(offsets, values):
            if start <= offset < end:
                if value is None:
                    raise BackendError(f"server {_host(self.base_url)} returned no log-prob for the response token at offset {offset}")
                scored.append(float(value))
        return scored

    # -- structured chat -------------------------------------------------------------------

    def chat_json(self, conversations: Sequence[Conversation], schema: dict, params: SamplingParams) -> list[StructuredReply]:
        """One reply per conversation, constrained by ``response_format`` json_schema when the
        server accepts it (else asked in a system instruction); unparsable replies come back
        with ``error`` set, never as a default value."""
        if not conversations:
            return []
        return self._run(_gather_all(self._chat_json_one(list(c), schema, params) for c in conversations))

    async def _chat_json_one(self, conversation: Conversation, schema: dict, params: SamplingParams) -> StructuredReply:
        kwargs = self._sampling_kwargs(params)
        spent = _Spent()
        reply = None
        if self._json_schema_ok:
            fmt = {"type": "json_schema", "json_schema": {"name": "reply", "schema": schema}}
            try:
                reply, spent = await self._call(
                    "structured chat", CHAT, {**kwargs, "messages": conversation, "n": 1, "response_format": fmt}
                )
            except ServerRejected as err:
                if err.status not in (400, 422):
                    raise
                spent.attempts += 1
        if reply is None:
            messages = with_json_instruction(conversation, schema)
            reply, plain = await self._call("structured chat", CHAT, {**kwargs, "messages": messages, "n": 1})
            spent.add(plain)
            # The plain request passed where the constrained one was rejected: the server does
            # not take response_format, so later calls go straight to the instruction.
            self._json_schema_ok = False
        choices = _choices(reply)
        text = _message_text(choices[0]) if choices else ""
        value, error = parse_json_reply(text, schema)
        return StructuredReply(text=text, value=value, error=error, usage=self._usage(spent))
