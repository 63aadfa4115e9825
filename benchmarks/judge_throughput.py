"""Benchmark: pairwise-judge throughput against a local fixed-latency OpenAI-compatible stub.

The judge asks every pair twice (both orders), so an ideal client holding ``concurrency``
requests in flight against a server answering in ``latency`` seconds labels
``concurrency / latency / 2`` pairs/s. The stub (``tests.support.openai_stub``, in a child
process) answers each chat request after the fixed latency with a schema-valid JSON verdict,
so what falls short is the judge's own cost: rendering templates, parsing, building label
rows, plus the openai client. Printed: pairs/s, requests/s, their fraction of the ideal, and
the client CPU per pair. Pairs are real HH-RLHF pairs from the shipped sample.

  .venv/bin/python benchmarks/judge_throughput.py --pairs 400 --concurrency 32 --latency 0.2
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import pyarrow as pa  # noqa: E402

from benchmarks.api_client import _stub  # noqa: E402
from benchmarks.logprob_scoring import real_pairs  # noqa: E402
from curation.stages.label import BackendPool, build_labeler  # noqa: E402
from curation.stages.label.config import JudgePairwiseConfig  # noqa: E402
from schemas import arrow_schema  # noqa: E402


def pairs_table(n: int) -> pa.Table:
    conversations, chosen = real_pairs(n)
    # a second response per prompt: the next prompt's reply (off-topic, but real text of real length)
    rejected = chosen[1:] + chosen[:1]
    rows = [
        {
            "pair_id": f"bench-{i}",
            "prompt": conv,
            "chosen": [{"role": "assistant", "content": c}],
            "rejected": [{"role": "assistant", "content": r}],
            "label_source": "human",
            "source_dataset": "hh",
        }
        for i, (conv, c, r) in enumerate(zip(conversations, chosen, rejected))
    ]
    schema = arrow_schema("pairs")
    return pa.Table.from_pylist(rows, schema=pa.schema([schema.field(k) for k in rows[0]]))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--pairs", type=int, default=400)
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--latency", type=float, default=0.2, help="seconds the stub takes per request")
    parser.add_argument("--chunk", type=int, default=64, help="pairs per judge call (the label stage's chunk_size)")
    args = parser.parse_args()

    pairs = pairs_table(args.pairs)
    with _stub(args.latency, in_process=False) as stub:
        cfg = JudgePairwiseConfig(
            name="bench-judge",
            backend={"backend": "openai", "model": "stub-model", "base_url": stub.base_url, "max_concurrency": args.concurrency},
            max_tokens=64,
        )
        pool = BackendPool(REPO / "data")
        judge = build_labeler(cfg, pool)
        judge.label(pairs.slice(0, min(args.concurrency, pairs.num_rows)))  # warm-up: imports, connections
        stub.reset()
        cpu0, t0 = time.process_time(), time.perf_counter()
        verdicts: dict[str, int] = {}
        for start in range(0, pairs.num_rows, args.chunk):
            for v in judge.label(pairs.slice(start, args.chunk))["verdict"].to_pylist():
                verdicts[v] = verdicts.get(v, 0) + 1
        elapsed, cpu = time.perf_counter() - t0, time.process_time() - cpu0
        stats = stub.stats()
        pool.close()
    n = pairs.num_rows
    ideal = args.concurrency / args.latency / 2
    print(
        f"pairwise judge over openai backend, stub latency {args.latency * 1000:.0f} ms, concurrency {args.concurrency}, chunk {args.chunk}"
    )
    print(f"  {n} real HH pairs, {stats['requests']} requests in {elapsed:.2f} s; verdicts {verdicts}")
    print(
        f"  {n / elapsed:.1f} pairs/s = {n / elapsed / ideal:.2f} of ideal {ideal:.1f} pairs/s; {stats['requests'] / elapsed:.1f} requests/s"
    )
    print(f"  mean in flight (stub): {stats.get('mean_in_flight', float('nan')):.1f} of {args.concurrency}")
    print(f"  client CPU {1000 * cpu / n:.1f} ms per pair")


if __name__ == "__main__":
    main()
