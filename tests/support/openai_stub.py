"""A real HTTP server that speaks the OpenAI-compatible API, for tests and benchmarks.

Why a server and not a mock: the backend's retry policy, timeouts, ``Retry-After`` handling
and concurrency limit live in the HTTP layer, so they are only tested for real over a real
socket. The stub is stdlib only (``ThreadingHTTPServer`` in a background thread) and
deterministic: the same request always gets the same reply, so tests can compare values.

    with OpenAIStub(latency_s=0.0, faults=[{"status": 429, "retry_after": 1}, 500, "hang"]) as stub:
        stub.base_url  # http://127.0.0.1:PORT/v1

Faults apply, in order, to the next POST requests (one fault per request; a fault with a
``path`` waits for a request to that path, one with ``match`` for a body containing a text).
``GET /v1/models`` is never faulted, so a backend's ``check`` still passes. ``GET /stub/stats`` returns the counters as JSON and
``POST /stub/reset`` zeroes them, for a stub run in another process
(``python -m tests.support.openai_stub --latency 0.05``; it prints its base URL).

Random faults, for reliability tests: ``FaultPlan(rate=0.2, seed=7)`` fails a seeded share
of POST requests with a mix of 429 (with ``Retry-After``), 500, timeouts (the reply never
comes), truncated bodies (the connection closes part-way through the body) and invalid JSON
(a complete 200 reply whose JSON is cut short). Whether a request fails depends only on the
seed, the request body and how many times that body was seen before, not on arrival
order, so a run with concurrent requests meets the same faults every time, and a retry of
a failed request draws again. ``on_post(n, path)`` is called as the n-th POST arrives (a
test kills a client process at a chosen request that way).
"""

from __future__ import annotations

import argparse
import collections
import hashlib
import json
import math
import re
import sys
import threading
import time
import zlib
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

_WORDS = (
    "the answer is simple and clear because every careful reader can check each step of this short reply "
    "while models keep learning from preference data with kind honest helpful words"
).split()

_TOKEN_RE = re.compile(r"\n|[^\S\n]*[^\s]+|[^\S\n]+")
"""Stub tokens: a newline alone, or a word with the spaces before it (concatenate back to the text)."""


def stub_tokens(text: str) -> list[tuple[int, str]]:
    """``(text_offset, token)`` pairs the stub uses for ``text``; joined they give ``text`` back."""
    return [(m.start(), m.group()) for m in _TOKEN_RE.finditer(text)]


def stub_logprob(token: str, position: int) -> float:
    """The stub's deterministic log-prob of ``token`` at ``position`` (in [-5, -0.01])."""
    h = zlib.crc32(f"{position}\x00{token}".encode())
    return -round(0.01 + (h % 4990) / 1000.0, 3)


def stub_prompt_logprobs(text: str) -> list[tuple[int, str, float | None]]:
    """What the stub echoes for a completions prompt: the first token's log-prob is None,
    as in OpenAI's and vLLM's echo."""
    return [(off, tok, None if i == 0 else stub_logprob(tok, i)) for i, (off, tok) in enumerate(stub_tokens(text))]


def _digest(*parts: object) -> int:
    return int.from_bytes(hashlib.blake2b("\x00".join(map(str, parts)).encode(), digest_size=8).digest(), "big")


def stub_chat_text(last_user: str, seed: int | None, index: int) -> str:
    """The deterministic reply to ``last_user`` for a seed and choice index, before ``max_tokens``."""
    h = _digest(last_user, seed, index)
    n_words = 6 + h % 10
    words = [_WORDS[(h >> (3 * i)) % len(_WORDS)] for i in range(n_words - 2)]
    return f"Reply {index} {' '.join(words)}."


def schema_example(schema: dict[str, Any]) -> Any:
    """A value satisfying a simple JSON Schema (what judges use): enum, types, minimum, required."""
    if "enum" in schema:
        return schema["enum"][0]
    kind = schema.get("type")
    if kind == "object":
        return {k: schema_example(sub) for k, sub in schema.get("properties", {}).items()}
    if kind == "array":
        items = schema.get("items")
        return [schema_example(items)] * max(1, schema.get("minItems", 1)) if isinstance(items, dict) else []
    if kind == "integer":
        return int(schema.get("minimum", 1))
    if kind == "number":
        return float(schema.get("minimum", 0.5))
    if kind == "boolean":
        return True
    if kind == "null":
        return None
    return "ok"


def _normalise_fault(spec: Any) -> dict[str, Any]:
    if isinstance(spec, dict):
        return dict(spec)
    if spec == "hang":
        return {"hang": True}
    if isinstance(spec, (int, str)) and str(spec).isdigit():
        return {"status": int(spec)}
    raise ValueError(f"unknown fault {spec!r}: use an HTTP status, 'hang', or a dict with status/retry_after/message/hang/path")


FAULT_KINDS = ("429", "500", "timeout", "truncated", "invalid_json")


@dataclass
class FaultPlan:
    """A seeded share of POST requests that fail, and how (see the module docstring).

    ``mix`` weighs the kinds (default: all of ``FAULT_KINDS`` equally); ``hang_s`` is how long
    a timeout fault keeps the request open (set it above the client's timeout);
    ``retry_after_s`` is what a 429 asks for, sent both as ``retry-after-ms`` and, rounded
    up to whole seconds, as ``Retry-After``.
    """

    rate: float = 0.2
    seed: int = 0
    mix: dict[str, float] = field(default_factory=lambda: dict.fromkeys(FAULT_KINDS, 1.0))
    hang_s: float = 1.0
    retry_after_s: float = 0.02

    def __post_init__(self) -> None:
        unknown = sorted(set(self.mix) - set(FAULT_KINDS))
        if unknown or not self.mix or not 0.0 <= self.rate <= 1.0:
            raise ValueError(f"FaultPlan: rate must be in [0, 1] and mix a non-empty weighting of {FAULT_KINDS}, got {unknown or self.mix}")
        self._seen: collections.Counter[int] = collections.Counter()
        self._lock = threading.Lock()

    def draw(self, path: str, body: bytes) -> str | None:
        """The fault for this request (a kind from the mix), or None to serve it."""
        key = _digest(path, body.decode("utf-8", "replace"))
        with self._lock:
            occurrence = self._seen[key]
            self._seen[key] += 1
        h = _digest(self.seed, key, occurrence)
        if (h % 1_000_000) / 1_000_000 >= self.rate:
            return None
        pick = ((h >> 24) % 1_000_000) / 1_000_000 * sum(self.mix.values())
        for kind, weight in self.mix.items():
            pick -= weight
            if pick < 0:
                return kind
        return next(reversed(self.mix))


class _Stats:
    """Request counters, including a time-weighted mean of requests in flight."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.reset()

    def reset(self) -> None:
        self.requests = 0
        self.by_path: collections.Counter[str] = collections.Counter()
        self.faults_applied: collections.Counter[str] = collections.Counter()
        self.in_flight = 0
        self.max_in_flight = 0
        self._area = 0.0  # integral of in_flight over time
        self._first: float | None = None
        self._last_change = 0.0
        self._last_end = 0.0

    def _advance(self, now: float) -> None:
        if self._first is None:
            self._first = now
        else:
            self._area += self.in_flight * (now - self._last_change)
        self._last_change = now

    def begin(self, path: str) -> None:
        with self.lock:
            self._advance(time.perf_counter())
            self.requests += 1
            self.by_path[path] += 1
            self.in_flight += 1
            self.max_in_flight = max(self.max_in_flight, self.in_flight)

    def end(self) -> None:
        with self.lock:
            now = time.perf_counter()
            self._advance(now)
            self.in_flight -= 1
            self._last_end = now

    def snapshot(self) -> dict[str, Any]:
        with self.lock:
            span = (self._last_end - self._first) if self._first is not None and self._last_end > self._first else 0.0
            return {
                "requests": self.requests,
                "by_path": dict(self.by_path),
                "faults_applied": dict(self.faults_applied),
                "in_flight": self.in_flight,
                "max_in_flight": self.max_in_flight,
                # over the span from the first request's start to the last request's end
                "mean_in_flight": (self._area / span) if span > 0 else 0.0,
                "busy_seconds": span,
            }


class _Server(ThreadingHTTPServer):
    def handle_error(self, request: Any, client_address: Any) -> None:
        """A client that went away mid-request (killed, timed out) is normal here: no traceback."""
        if isinstance(sys.exc_info()[1], (ConnectionError, TimeoutError)):
            return
        super().handle_error(request, client_address)


class OpenAIStub:
    """An OpenAI-compatible HTTP server on 127.0.0.1 with fault injection and counters.

    Settings are plain attributes and may change while it runs: ``latency_s`` (sleep per
    request), ``hang_s`` (how long a "hang" fault sleeps; longer than the client timeout),
    ``ignore_n`` (return one choice whatever ``n`` asks, like some servers),
    ``reject_echo_logprobs`` (completions with echo+logprobs answer 400),
    ``reject_response_format`` (chat with ``response_format`` answers 400), ``api_key``
    (when set, other bearer tokens get 401), ``model`` (the one model listed).
    """

    def __init__(
        self,
        latency_s: float = 0.0,
        faults: Iterable[Any] = (),
        *,
        model: str = "stub-model",
        hang_s: float = 30.0,
        ignore_n: bool = False,
        reject_echo_logprobs: bool = False,
        reject_response_format: bool = False,
        api_key: str | None = None,
        port: int = 0,
        fault_plan: FaultPlan | None = None,
    ) -> None:
        self.latency_s = latency_s
        self.model = model
        self.hang_s = hang_s
        self.ignore_n = ignore_n
        self.reject_echo_logprobs = reject_echo_logprobs
        self.reject_response_format = reject_response_format
        self.api_key = api_key
        self.fault_plan = fault_plan
        """Random faults (``FaultPlan``); scripted faults (``add_faults``) go first."""
        self.on_post: Callable[[int, str], None] | None = None
        """Called with (n, path) as the n-th POST arrives, before it is served."""
        self._posts = 0
        self._faults: list[dict[str, Any]] = [_normalise_fault(f) for f in faults]
        self._replies: collections.deque[str] = collections.deque()
        self._lock = threading.Lock()
        self._stopping = threading.Event()
        self.stats = _Stats()
        self.bodies: collections.deque[tuple[str, dict[str, Any]]] = collections.deque(maxlen=1000)
        """The last POST bodies received, as (path, body): tests check what the client sent."""
        self._port = port
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None

    # -- lifecycle -------------------------------------------------------------------------

    def start(self) -> OpenAIStub:
        self._stopping.clear()
        handler = type("_BoundHandler", (_Handler,), {"stub": self})
        server = _Server(("127.0.0.1", self._port), handler, bind_and_activate=False)
        server.request_queue_size = 256  # a burst of concurrent connects must not overflow the backlog
        server.daemon_threads = True
        server.allow_reuse_address = True
        server.server_bind()
        server.server_activate()
        self._server = server
        self._thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, name="openai-stub", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop serving; hung requests are woken so nothing lingers."""
        self._stopping.set()
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None

    def __enter__(self) -> OpenAIStub:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def port(self) -> int:
        if self._server is None:
            raise RuntimeError("the stub is not running; use it as a context manager or call start()")
        return self._server.server_address[1]

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    # -- scripting -------------------------------------------------------------------------

    def add_faults(self, *faults: Any) -> None:
        """Queue faults for the next POST requests: 429, 500, 503, "hang", or dicts such as
        ``{"status": 429, "retry_after": 1}``, ``{"status": 400, "message": "..."}``,
        ``{"hang": True, "seconds": 2, "path": "/v1/completions"}``,
        ``{"status": 200, "raw": "<html>proxy login</html>"}``; ``"match": TEXT`` waits for a
        request whose JSON body contains TEXT (as JSON encodes it)."""
        with self._lock:
            self._faults.extend(_normalise_fault(f) for f in faults)

    def script_replies(self, *texts: str) -> None:
        """The next chat choices answer these texts verbatim (one text per choice)."""
        with self._lock:
            self._replies.extend(texts)

    def pending_faults(self) -> int:
        with self._lock:
            return len(self._faults)

    def reset_stats(self) -> None:
        """Zero the counters, the POST count ``on_post`` sees included."""
        self.stats.reset()
        with self._lock:
            self._posts = 0

    def stats_snapshot(self) -> dict[str, Any]:
        return self.stats.snapshot()

    def clear_faults(self) -> None:
        """Drop the scripted faults no request has met yet."""
        with self._lock:
            self._faults.clear()

    def _take_fault(self, path: str, raw: bytes = b"") -> dict[str, Any] | None:
        with self._lock:
            for i, fault in enumerate(self._faults):
                if fault.get("path") in (None, path) and fault.get("match", "").encode() in raw:
                    return self._faults.pop(i)
        return None

    def _next_post(self) -> int:
        with self._lock:
            self._posts += 1
            return self._posts

    def _take_reply(self) -> str | None:
        with self._lock:
            return self._replies.popleft() if self._replies else None

    # -- endpoints -------------------------------------------------------------------------

    def chat_completion(self, body: dict[str, Any]) -> tuple[int, dict[str, Any]]:
        if body.get("response_format") and self.reject_response_format:
            return 400, _error("response_format is not supported by this server", "invalid_request_error", param="response_format")
        messages = body.get("messages") or []
        if not messages:
            return 400, _error("messages must not be empty", "invalid_request_error", param="messages")
        last_user = next((m.get("content", "") for m in reversed(messages) if m.get("role") == "user"), "")
        n = 1 if self.ignore_n else int(body.get("n") or 1)
        max_tokens = int(body.get("max_tokens") or body.get("max_completion_tokens") or 10**6)
        seed = body.get("seed")
        stops = body.get("stop") or []
        stops = [stops] if isinstance(stops, str) else list(stops)
        fmt = body.get("response_format") or {}
        choices, completion_tokens = [], 0
        for index in range(n):
            text = self._take_reply()
            scripted = text is not None
            if text is None and fmt.get("type") == "json_schema":
                text = json.dumps(schema_example((fmt.get("json_schema") or {}).get("schema") or {}))
            elif text is None:
                text = stub_chat_text(str(last_user), seed, index)
            finish = "stop"
            for stop in stops:
                if stop and stop in text:
                    text = text[: text.index(stop)]
            words = text.split(" ")
            if not scripted and len(words) > max_tokens:
                text, finish = " ".join(words[:max_tokens]), "length"
            completion_tokens += len(text.split())
            choices.append({"index": index, "message": {"role": "assistant", "content": text}, "finish_reason": finish, "logprobs": None})
        prompt_tokens = sum(len(str(m.get("content", "")).split()) + 3 for m in messages)
        return 200, self._reply("chatcmpl", "chat.completion", body, choices, prompt_tokens, completion_tokens)

    def completion(self, body: dict[str, Any]) -> tuple[int, dict[str, Any]]:
        echo, logprobs = bool(body.get("echo")), body.get("logprobs")
        if echo and logprobs is not None and self.reject_echo_logprobs:
            return 400, _error("echo with logprobs is not supported", "invalid_request_error", param="echo")
        prompts = body.get("prompt")
        prompts = [prompts] if isinstance(prompts, str) else list(prompts or [])
        max_tokens = int(body.get("max_tokens") if body.get("max_tokens") is not None else 16)
        choices, prompt_tokens, completion_tokens = [], 0, 0
        for index, prompt in enumerate(prompts):
            generated = "".join(f" {_WORDS[(_digest(prompt, i) % len(_WORDS))]}" for i in range(max_tokens))
            text = (prompt + generated) if echo else generated
            choice: dict[str, Any] = {"index": index, "text": text, "finish_reason": "length", "logprobs": None}
            prompt_tokens += len(stub_tokens(prompt))
            completion_tokens += max_tokens
            if logprobs is not None:
                base = len(stub_tokens(prompt))
                entries = stub_prompt_logprobs(prompt) if echo else []
                gen = [(off, tok, stub_logprob(tok, base + i)) for i, (off, tok) in enumerate(stub_tokens(generated))]
                entries += [((len(prompt) if echo else 0) + off, tok, lp) for off, tok, lp in gen]
                choice["logprobs"] = {
                    "tokens": [tok for _, tok, _ in entries],
                    "token_logprobs": [lp for _, _, lp in entries],
                    "text_offset": [off for off, _, _ in entries],
                    "top_logprobs": [None if lp is None else {tok: lp} for _, tok, lp in entries] if logprobs else None,
                }
            choices.append(choice)
        return 200, self._reply("cmpl", "text_completion", body, choices, prompt_tokens, completion_tokens)

    def _reply(
        self, prefix: str, kind: str, body: dict[str, Any], choices: list, prompt_tokens: int, completion_tokens: int
    ) -> dict[str, Any]:
        """The response envelope both endpoints share: id, object, model, choices, usage."""
        return {
            "id": f"{prefix}-{_digest(json.dumps(body, sort_keys=True)) % 10**12}",
            "object": kind,
            "created": int(time.time()),
            "model": body.get("model", self.model),
            "choices": choices,
            "usage": {
                "prompt_tokens": prompt_tokens,
                "completion_tokens": completion_tokens,
                "total_tokens": prompt_tokens + completion_tokens,
            },
        }

    def models(self) -> dict[str, Any]:
        return {"object": "list", "data": [{"id": self.model, "object": "model", "created": 0, "owned_by": "stub"}]}


def _error(message: str, kind: str, *, param: str | None = None, code: Any = None) -> dict[str, Any]:
    return {"error": {"message": message, "type": kind, "param": param, "code": code}}


class _Handler(BaseHTTPRequestHandler):
    """One connection; HTTP/1.1 keep-alive so a client's connection pool is reused."""

    protocol_version = "HTTP/1.1"
    # The headers and the body go out in two writes. With Nagle's algorithm on, the second
    # waits for the client's delayed ACK of the first (~40 ms on Linux): a per-request stall
    # that real servers (uvicorn under vLLM) do not have and that the benchmark would
    # otherwise charge to the client.
    disable_nagle_algorithm = True
    stub: OpenAIStub  # set on the bound subclass

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - stdlib signature
        """Silent: tests and benchmarks read counters, not access logs."""

    def _send(
        self, status: int, payload: dict[str, Any] | str, headers: dict[str, str] | None = None, content_type: str = "application/json"
    ) -> None:
        data = (payload if isinstance(payload, str) else json.dumps(payload)).encode()
        try:
            self.send_response(status)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(data)))
            for k, v in (headers or {}).items():
                self.send_header(k, v)
            self.end_headers()
            self.wfile.write(data)
        except (BrokenPipeError, ConnectionResetError):  # the client gave up (timeout); nothing to tell it
            self.close_connection = True

    def _authorised(self) -> bool:
        key = self.stub.api_key
        if key is None or self.headers.get("Authorization") == f"Bearer {key}":
            return True
        self._send(401, _error("invalid API key", "authentication_error", code="invalid_api_key"))
        return False

    def do_GET(self) -> None:  # noqa: N802 - stdlib naming
        path = self.path.split("?", 1)[0].rstrip("/")
        if path == "/stub/stats":
            self._send(200, self.stub.stats_snapshot())
        elif path == "/v1/models":
            if self._authorised():
                self._send(200, self.stub.models())
        else:
            self._send(404, _error(f"no route GET {path}", "not_found"))

    def do_POST(self) -> None:  # noqa: N802 - stdlib naming
        stub = self.stub
        path = self.path.split("?", 1)[0].rstrip("/")
        length = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(length) if length else b""
        if path == "/stub/reset":  # counters only (a benchmark resets them after its warm-up); not counted
            stub.reset_stats()
            self._send(200, {"reset": True})
            return
        stub.stats.begin(path)
        try:
            try:
                body = json.loads(raw or b"{}")
            except json.JSONDecodeError:
                self._send(400, _error("request body is not JSON", "invalid_request_error"))
                return
            stub.bodies.append((path, body))
            if stub.on_post is not None:
                stub.on_post(stub._next_post(), path)
            if stub.latency_s > 0:
                time.sleep(stub.latency_s)
            fault = stub._take_fault(path, raw)
            if fault is not None:
                if self._apply_fault(fault):
                    return
            elif stub.fault_plan is not None and (kind := stub.fault_plan.draw(path, raw)) is not None:
                if self._apply_planned(kind, path, body):
                    return
            if not self._authorised():
                return
            self._send(*self._serve(path, body))
        finally:
            stub.stats.end()

    def _serve(self, path: str, body: dict[str, Any]) -> tuple[int, dict[str, Any]]:
        if path == "/v1/chat/completions":
            return self.stub.chat_completion(body)
        if path == "/v1/completions":
            return self.stub.completion(body)
        return 404, _error(f"no route POST {path}", "not_found")

    def _apply_planned(self, kind: str, path: str, body: dict[str, Any]) -> bool:
        """Apply a ``FaultPlan`` fault; True when it answered (or dropped) the request."""
        stub, plan = self.stub, self.stub.fault_plan
        assert plan is not None
        with stub.stats.lock:
            stub.stats.faults_applied[kind] += 1
        if kind == "429":
            wait = plan.retry_after_s
            headers = {"Retry-After": str(max(1, math.ceil(wait))), "retry-after-ms": str(round(wait * 1000))}
            self._send(429, _error("rate limit reached", "rate_limit_error"), headers)
        elif kind == "500":
            self._send(500, _error("injected error 500", "server_error"))
        elif kind == "timeout":  # hold the request past the client's timeout, then drop it unanswered
            stub._stopping.wait(plan.hang_s)
            self.close_connection = True
        else:
            status, payload = self._serve(path, body)
            data = json.dumps(payload).encode()
            cut = data[: max(1, len(data) // 2)]
            try:
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                # truncated: the headers promise the whole body, the connection closes after half;
                # invalid_json: a complete reply whose JSON text is cut short
                self.send_header("Content-Length", str(len(data) if kind == "truncated" else len(cut)))
                self.end_headers()
                self.wfile.write(cut)
                self.wfile.flush()
            except (BrokenPipeError, ConnectionResetError):
                pass
            self.close_connection = True
        return True

    def _apply_fault(self, fault: dict[str, Any]) -> bool:
        """Apply ``fault``; True when it answered the request (False: serve it normally after a hang)."""
        stub = self.stub
        if fault.get("hang"):
            with stub.stats.lock:
                stub.stats.faults_applied["hang"] += 1
            stub._stopping.wait(float(fault.get("seconds", stub.hang_s)))
            self.close_connection = True
            return False
        status = int(fault.get("status", 500))
        with stub.stats.lock:
            stub.stats.faults_applied[str(status)] += 1
        if "raw" in fault:  # a non-API body, e.g. a proxy's HTML page
            self._send(status, str(fault["raw"]), content_type=fault.get("content_type", "text/html"))
            return True
        headers = {}
        if "retry_after" in fault:
            headers["Retry-After"] = str(fault["retry_after"])
        message = fault.get("message") or {429: "rate limit reached", 503: "server overloaded"}.get(status, f"injected error {status}")
        kind = "rate_limit_error" if status == 429 else ("server_error" if status >= 500 else "invalid_request_error")
        self._send(status, _error(message, kind), headers)
        return True


def main(argv: list[str] | None = None) -> None:
    """Serve the stub in this process until stdin closes (so a parent can run it as a child)."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--latency", type=float, default=0.0, help="seconds slept per request")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--model", default="stub-model")
    parser.add_argument("--fault-rate", type=float, default=0.0, help="share of POST requests that fail (see FaultPlan)")
    parser.add_argument("--fault-seed", type=int, default=0)
    args = parser.parse_args(argv)
    plan = FaultPlan(rate=args.fault_rate, seed=args.fault_seed) if args.fault_rate > 0 else None
    with OpenAIStub(latency_s=args.latency, model=args.model, port=args.port, fault_plan=plan) as stub:
        print(stub.base_url, flush=True)
        sys.stdin.read()


if __name__ == "__main__":
    main()
