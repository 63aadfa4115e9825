"""Benchmark: the openai backend's client overhead against a fixed-latency HTTP stub.

The stub (``tests.support.openai_stub``) answers every request after a fixed latency, so
a perfect client would keep ``concurrency`` requests in flight all the time and reach
``concurrency / latency`` requests/s. What falls short is client overhead: the event loop,
the ``openai`` client, our retry/usage bookkeeping. Printed:

* requests/s against that ideal;
* mean requests in flight (time-weighted, measured by the stub) as a fraction of the
  concurrency limit (target >= 0.9);
* wall overhead per request, ``elapsed * concurrency / requests - latency``;
* CPU time per request of the client process (the stub runs in a child process by default,
  so its CPU is not counted; its own CPU per request is printed beside it).

  .venv/bin/python benchmarks/api_client.py --requests 2000 --concurrency 32 --latency 0.05
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
import urllib.request
from contextlib import contextmanager
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from curation.models import BackendConfig, SamplingParams  # noqa: E402
from curation.models.openai_backend import OpenAIBackend  # noqa: E402
from tests.support.openai_stub import OpenAIStub  # noqa: E402


def _proc_cpu_s(pid: int) -> float | None:
    """User+system CPU seconds of another process (Linux /proc), None elsewhere."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except (OSError, IndexError, ValueError):
        return None


class _RemoteStub:
    """The stub in a child process: its CPU is kept apart from the client's."""

    def __init__(self, latency_s: float) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "tests.support.openai_stub", "--latency", str(latency_s)],
            cwd=REPO,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        assert self.proc.stdout is not None
        self.base_url = self.proc.stdout.readline().strip()
        if not self.base_url.startswith("http"):
            raise SystemExit(f"the stub did not start (said {self.base_url!r})")
        self.root = self.base_url.removesuffix("/v1")

    def reset(self) -> None:
        urllib.request.urlopen(urllib.request.Request(f"{self.root}/stub/reset", data=b"{}", method="POST"), timeout=5).read()

    def stats(self) -> dict[str, Any]:
        return json.loads(urllib.request.urlopen(f"{self.root}/stub/stats", timeout=5).read())

    def cpu_s(self) -> float | None:
        return _proc_cpu_s(self.proc.pid)

    def close(self) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.close()
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()


class _LocalStub:
    """The stub in this process (its CPU then counts as client CPU)."""

    def __init__(self, latency_s: float) -> None:
        self.stub = OpenAIStub(latency_s=latency_s).start()
        self.base_url = self.stub.base_url

    def reset(self) -> None:
        self.stub.reset_stats()

    def stats(self) -> dict[str, Any]:
        return self.stub.stats_snapshot()

    def cpu_s(self) -> float | None:
        return None

    def close(self) -> None:
        self.stub.stop()


@contextmanager
def _stub(latency_s: float, in_process: bool):
    stub = _LocalStub(latency_s) if in_process else _RemoteStub(latency_s)
    try:
        yield stub
    finally:
        stub.close()


def run(requests: int, concurrency: int, latency_s: float, batch: int, max_tokens: int, in_process: bool) -> dict[str, float]:
    with _stub(latency_s, in_process) as stub:
        cfg = BackendConfig(
            backend="openai",
            model="stub-model",
            base_url=stub.base_url,
            max_concurrency=concurrency,
            timeout_s=30,
            price_input_per_mtok=0.15,
            price_output_per_mtok=0.60,
        )
        OpenAIBackend.check(cfg, REPO / "data")
        params = SamplingParams(max_tokens=max_tokens, temperature=0.7, seed=1)
        conversations = [[{"role": "user", "content": f"benchmark prompt number {i}: say something short"}] for i in range(requests)]
        with OpenAIBackend(cfg, REPO / "data") as backend:
            backend.generate(conversations[: concurrency * 2], params)  # warm-up: imports, connections, pool
            stub.reset()
            attempts_before = backend.totals["attempts"]
            stub_cpu0, cpu0, t0 = stub.cpu_s(), time.process_time(), time.perf_counter()
            done = 0
            for start in range(0, requests, batch):
                done += len(backend.generate(conversations[start : start + batch], params))
            elapsed = time.perf_counter() - t0
            cpu = time.process_time() - cpu0
            stub_cpu1 = stub.cpu_s()
            attempts = backend.totals["attempts"] - attempts_before
            cost = backend.totals["cost_usd"]
        stats = stub.stats()
    assert done == requests and stats["requests"] == requests, (done, stats["requests"])
    figures = {
        "requests": requests,
        "attempts": attempts,
        "concurrency": concurrency,
        "latency_ms": latency_s * 1000,
        "elapsed_s": elapsed,
        "requests_per_s": requests / elapsed,
        "ideal_requests_per_s": concurrency / latency_s,
        "max_in_flight": stats["max_in_flight"],
        "mean_in_flight": stats["mean_in_flight"],
        "in_flight_fraction": stats["mean_in_flight"] / concurrency,
        "overhead_ms_per_request": (elapsed * concurrency / requests - latency_s) * 1000,
        "client_cpu_ms_per_request": cpu / requests * 1000,
        "cost_usd_total": cost or 0.0,
    }
    if stub_cpu0 is not None and stub_cpu1 is not None:
        figures["stub_cpu_ms_per_request"] = (stub_cpu1 - stub_cpu0) / requests * 1000
    return figures


def run_bare(requests: int, concurrency: int, latency_s: float, max_tokens: int) -> dict[str, float]:
    """The floor: the same requests through a bare ``httpx2.AsyncClient`` (the HTTP stack under
    the ``openai`` client), no openai client, no backend. Measured in the same conditions, it
    separates what the backend costs from what the machine and HTTP stack cost."""
    import asyncio

    import httpx2

    async def go(base_url: str) -> tuple[float, float]:
        sem = asyncio.Semaphore(concurrency)
        async with httpx2.AsyncClient(base_url=base_url, timeout=30, headers={"Authorization": "Bearer EMPTY"}) as client:

            async def one(i: int) -> None:
                body = {
                    "model": "stub-model",
                    "messages": [{"role": "user", "content": f"benchmark prompt number {i}: say something short"}],
                    "max_tokens": max_tokens,
                    "temperature": 0.7,
                    "top_p": 1.0,
                    "seed": 1,
                    "n": 1,
                }
                async with sem:
                    reply = await client.post("/chat/completions", json=body)
                    reply.raise_for_status()
                    reply.json()

            await asyncio.gather(*(one(i) for i in range(concurrency * 2)))
            stub.reset()
            cpu0, t0 = time.process_time(), time.perf_counter()
            await asyncio.gather(*(one(i) for i in range(requests)))
            return time.perf_counter() - t0, time.process_time() - cpu0

    with _stub(latency_s, in_process=False) as stub:
        elapsed, cpu = asyncio.run(go(stub.base_url))
        stats = stub.stats()
    return {
        "requests_per_s": requests / elapsed,
        "in_flight_fraction": stats["mean_in_flight"] / concurrency,
        "overhead_ms_per_request": (elapsed * concurrency / requests - latency_s) * 1000,
        "client_cpu_ms_per_request": cpu / requests * 1000,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=2000)
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--latency", type=float, default=0.05, help="stub latency per request, seconds")
    parser.add_argument("--batch", type=int, default=0, help="conversations per generate() call (0: all in one call)")
    parser.add_argument("--max-tokens", type=int, default=32)
    parser.add_argument("--in-process", action="store_true", help="run the stub in this process (its CPU counts as the client's)")
    parser.add_argument("--bare", action="store_true", help="also run the same load through a bare httpx2 client (the floor)")
    parser.add_argument("--json", action="store_true", help="print the figures as one JSON object")
    args = parser.parse_args()
    f = run(args.requests, args.concurrency, args.latency, args.batch or args.requests, args.max_tokens, args.in_process)
    bare = run_bare(args.requests, args.concurrency, args.latency, args.max_tokens) if args.bare else None
    if args.json:
        print(json.dumps({**f, "bare": bare}))
        return
    print(f"openai backend vs stub: {f['requests']} requests, concurrency {f['concurrency']}, stub latency {f['latency_ms']:.0f} ms")
    print(f"  elapsed                 {f['elapsed_s']:8.2f} s   ({f['attempts']} attempts)")
    print(f"  throughput              {f['requests_per_s']:8.1f} req/s  (ideal {f['ideal_requests_per_s']:.0f} req/s)")
    target = "ok" if f["in_flight_fraction"] >= 0.9 else "BELOW TARGET 0.9"
    print(
        f"  mean in flight          {f['mean_in_flight']:8.1f}  = {f['in_flight_fraction']:.2f} of the limit  [{target}]  (max {f['max_in_flight']})"
    )
    print(f"  wall overhead/request   {f['overhead_ms_per_request']:8.2f} ms  (elapsed*concurrency/requests - latency)")
    print(f"  client CPU/request      {f['client_cpu_ms_per_request']:8.2f} ms")
    if "stub_cpu_ms_per_request" in f:
        print(f"  stub CPU/request        {f['stub_cpu_ms_per_request']:8.2f} ms  (child process; {os.cpu_count()} cores shared)")
    if bare is not None:
        print("bare httpx2 client, same load (the floor under the openai client):")
        print(f"  throughput              {bare['requests_per_s']:8.1f} req/s")
        print(f"  mean in flight          {bare['in_flight_fraction']:8.2f} of the limit")
        print(f"  wall overhead/request   {bare['overhead_ms_per_request']:8.2f} ms")
        print(f"  client CPU/request      {bare['client_cpu_ms_per_request']:8.2f} ms")


if __name__ == "__main__":
    main()
