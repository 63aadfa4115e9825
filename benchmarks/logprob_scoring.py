"""Benchmark: log-prob scoring throughput against the backend's raw forward pass.

Scores (prompt, response) pairs from the real HH-RLHF sample with the transformers backend's
``score_logprobs`` (what CDR and follow-up rewards call), then runs the model's bare forward
pass over exactly the same padded batches, timed the same way. Printed:

* scoring tokens/s (all tokens of the scored sequences) and scored response tokens/s;
* the raw forward's tokens/s: the base model alone (no LM head: a strict upper bound on any
  scorer) and the base model + LM head over every position (what a plain ``model(ids)`` does);
* ratio scoring / raw (target >= 0.8 against the base-model bound).

  .venv/bin/python benchmarks/logprob_scoring.py --pairs 64 --repeat 3
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

from curation.models import BackendConfig, build_backend  # noqa: E402
from curation.models.transformers_backend import score_token_budget  # noqa: E402

SAMPLE = REPO / "data" / "samples" / "hh-rlhf-harmless-base" / "test-dev-1200.jsonl"


def real_pairs(n: int) -> tuple[list[list[dict]], list[str]]:
    """(prompt conversation, chosen response) from the shipped HH sample, parsed by the adapter."""
    from curation.stages.ingest.adapters import build_adapter

    adapter = build_adapter("hh_rlhf", {})
    conversations, responses = [], []
    with SAMPLE.open(encoding="utf-8") as fh:
        for i, line in enumerate(fh):
            try:
                (draft,) = adapter(json.loads(line), f"row {i}")
            except Exception:  # noqa: BLE001 - broken sample rows are the ingest tests' business
                continue
            text = "\n\n".join(m["content"] for m in draft.chosen)
            if text.strip():
                conversations.append([{"role": m["role"], "content": m["content"]} for m in draft.prompt])
                responses.append(text)
            if len(responses) == n:
                break
    return conversations, responses


def best_times(fns: list, repeat: int) -> list[float]:
    """Best of ``repeat`` runs of each, interleaved so that load from other processes on a
    shared machine falls on all of them alike."""
    best = [float("inf")] * len(fns)
    for _ in range(repeat):
        for i, fn in enumerate(fns):
            started = time.perf_counter()
            fn()
            best[i] = min(best[i], time.perf_counter() - started)
    return best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--pairs", type=int, default=64)
    parser.add_argument("--repeat", type=int, default=3, help="best of N timings")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--data-root", default=str(REPO / "data"))
    args = parser.parse_args()

    import torch

    cfg = BackendConfig(backend="transformers", model="smollm2", batch_size=args.batch_size, threads=args.threads)
    backend = build_backend(cfg, args.data_root)
    conversations, responses = real_pairs(args.pairs)
    forced = backend._forced(conversations, responses)
    total_tokens = sum(len(p) + len(r) for p, r in forced)
    scored_tokens = sum(len(r) for _, r in forced)
    batches = [
        ids for _, ids in backend._forced_batches(forced, score_token_budget(backend.lm.config.get_text_config().vocab_size))
    ]  # the batches score_logprobs runs

    def scoring() -> None:
        backend.score_logprobs(conversations, responses)

    def base_only() -> None:
        with torch.inference_mode():
            for ids in batches:
                backend.lm.base_model(input_ids=ids, use_cache=False)

    def full_logits() -> None:
        with torch.inference_mode():
            for ids in batches:
                backend.lm(input_ids=ids, use_cache=False)

    scoring()  # warm-up
    t_score, t_base, t_full = best_times([scoring, base_only, full_logits], args.repeat)
    print(
        f"SmolLM2-135M fp32, {len(responses)} real HH pairs, {total_tokens:,} tokens ({scored_tokens:,} scored), torch threads {torch.get_num_threads()}"
    )
    print(f"  score_logprobs           {total_tokens / t_score:8.0f} tok/s  ({scored_tokens / t_score:.0f} scored tok/s)  {t_score:.2f} s")
    print(f"  raw forward, base model  {total_tokens / t_base:8.0f} tok/s  {t_base:.2f} s")
    print(f"  raw forward, full logits {total_tokens / t_full:8.0f} tok/s  {t_full:.2f} s")
    print(f"  ratio scoring / base-model forward: {t_base / t_score:.2f}  (target >= 0.8)")
    print(f"  ratio scoring / full-logits forward: {t_full / t_score:.2f}")
    backend.close()


if __name__ == "__main__":
    main()
