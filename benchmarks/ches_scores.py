"""Benchmark: the CHES filter step on real HH-RLHF pairs with SmolLM2 as the policy.

Runs ``curation.stages.filter.ches.run`` (the step itself: two forward passes per pair, hidden states
summed over the positions that predict each response) on the first N pairs of the shipped
HH-RLHF sample, then prints:

* throughput: pairs/s and tokens/s (every prompt + response token through the model), model
  load excluded;
* the distribution of CHES and LN-CHES (quantiles) and how many pairs could not be scored;
* the Spearman correlation between LN-CHES and the MiniLM cosine of the two responses (does
  "similar to the policy" track "similar in meaning"?);
* how many of the dropped top ``--drop`` fraction have near-identical responses (difflib ratio
  >= 0.9 or MiniLM cosine >= 0.95), against the rate among all scored pairs.

  .venv/bin/python benchmarks/ches_scores.py --pairs 100 --threads 2
"""

from __future__ import annotations

import argparse
import difflib
import json
import os
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np  # noqa: E402
import polars as pl  # noqa: E402

from curation.models import BackendConfig, build_backend  # noqa: E402
from curation.records import response_text  # noqa: E402
from curation.stages.filter.base import FramePairs, StepContext  # noqa: E402
from curation.stages.filter.ches import run  # noqa: E402
from curation.stages.filter.config import ChesStep  # noqa: E402
from curation.stages.label.base import BackendPool  # noqa: E402

SAMPLE = REPO / "data" / "samples" / "hh-rlhf-harmless-base" / "test-dev-1200.jsonl"
COLUMNS = ["pair_id", "prompt", "chosen", "rejected", "source_dataset"]


def real_pairs(n: int) -> pl.DataFrame:
    """The first ``n`` pairs of the HH sample as the hh_rlhf adapter makes them (rows it rejects are
    skipped; empty responses are kept: the step must cope with them)."""
    import pyarrow as pa

    from curation.records import pair_id
    from curation.stages.ingest.adapters import build_adapter
    from schemas import arrow_schema

    adapter = build_adapter("hh_rlhf", {})
    rows = []
    with SAMPLE.open(encoding="utf-8") as fh:
        for i, line in enumerate(fh):
            try:
                drafts = adapter(json.loads(line), f"row {i}")
            except Exception:  # noqa: BLE001 - broken sample rows are the ingest tests' business
                continue
            for d in drafts:
                rows.append(
                    {
                        "pair_id": pair_id(d.prompt, d.chosen, d.rejected),
                        "prompt": d.prompt,
                        "chosen": d.chosen,
                        "rejected": d.rejected,
                        "source_dataset": "hh-rlhf-harmless-base",
                    }
                )
            if len(rows) >= n:
                break
    schema = pa.schema([arrow_schema("pairs").field(c) for c in COLUMNS])
    frame = pl.from_arrow(pa.Table.from_pylist(rows[:n], schema=schema))
    assert isinstance(frame, pl.DataFrame)
    return frame.unique("pair_id", keep="first", maintain_order=True)


def spearman(a: np.ndarray, b: np.ndarray) -> float:
    ra = pl.Series(a).rank("average").to_numpy()
    rb = pl.Series(b).rank("average").to_numpy()
    return float(np.corrcoef(ra, rb)[0, 1])


def fmt(q: dict[str, float] | None) -> str:
    return "n/a" if q is None else "  ".join(f"{k} {v:,.1f}" for k, v in q.items())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--pairs", type=int, default=100, help="real HH pairs to score (default 100)")
    parser.add_argument("--drop", type=float, default=0.1, help="fraction with the highest LN-CHES to drop (default 0.1)")
    parser.add_argument("--batch-size", type=int, default=16, help="pairs per model call (the step's batch_size)")
    parser.add_argument("--model-batch", type=int, default=8, help="sequences per forward pass (the backend's batch_size)")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: the backend's, cores - 1)")
    parser.add_argument("--data-root", default=str(REPO / "data"), help="where the converted SmolLM2 folder lives")
    args = parser.parse_args()

    frame = real_pairs(args.pairs)
    backend_cfg = BackendConfig(backend="transformers", model="smollm2", batch_size=args.model_batch, threads=args.threads)
    cfg = ChesStep(backend=backend_cfg, drop_fraction=args.drop, batch_size=args.batch_size)
    pool = BackendPool(args.data_root)
    lm = pool.get(backend_cfg)  # loaded before the clock starts

    started = time.perf_counter()
    result = run(cfg, FramePairs(frame), pl.DataFrame(), StepContext(backends=pool))
    seconds = time.perf_counter() - started

    prompts = [[{"role": m["role"], "content": m["content"]} for m in p] for p in frame["prompt"].to_list()]
    chosen = [response_text(r) for r in frame["chosen"].to_list()]
    rejected = [response_text(r) for r in frame["rejected"].to_list()]
    tokens = sum(
        2 * len(lm.prompt_ids(p)) + len(lm.response_ids(c)) + len(lm.response_ids(r)) for p, c, r in zip(prompts, chosen, rejected)
    )
    response_tokens = sum(len(lm.response_ids(c)) + len(lm.response_ids(r)) for c, r in zip(chosen, rejected))
    pool.close()

    out = result.decisions
    s = result.summary
    print(
        f"pairs: {frame.height} judged, {s['scored']} scored, {s['unscored_empty_response']} with an empty response, {s['unscored_errors']} errors"
    )
    print(
        f"time: {seconds:.1f} s  ->  {frame.height / seconds:.2f} pairs/s, {tokens / seconds:.0f} tokens/s ({tokens} tokens, {response_tokens} response tokens)"
    )
    print(f"CHES    quantiles: {fmt(s['quantiles']['ches'])}")
    print(f"LN-CHES quantiles: {fmt(s['quantiles']['ln_ches'])}")
    print(f"dropped: {s['dropped']} (top {args.drop:.0%} by {s['ranked_by']}), threshold {s['threshold']}")

    embedder = build_backend(BackendConfig(backend="sentence_transformers", model="all-MiniLM-L6-v2", batch_size=64, threads=args.threads))
    cos = np.einsum("ij,ij->i", embedder.embed(chosen), embedder.embed(rejected))
    embedder.close()
    ratio = np.array([difflib.SequenceMatcher(None, c, r, autojunk=False).ratio() for c, r in zip(chosen, rejected)])
    ln = out["ln_ches"].to_numpy().astype(float)
    ches = out["ches"].to_numpy().astype(float)
    ok = np.isfinite(ln)
    print(f"Spearman(LN-CHES, MiniLM cosine of chosen vs rejected): {spearman(ln[ok], cos[ok]):+.3f}")
    print(f"Spearman(CHES,    MiniLM cosine of chosen vs rejected): {spearman(ches[ok], cos[ok]):+.3f}")
    n_chosen = np.array([len(lm.response_ids(c)) for c in chosen], dtype=float)
    n_rejected = np.array([len(lm.response_ids(r)) for r in rejected], dtype=float)
    log_len = np.log(np.maximum(n_rejected, 1) / np.maximum(n_chosen, 1))
    print(
        f"Spearman(CHES, log(|y-|/|y+|)): {spearman(ches[ok], log_len[ok]):+.3f}   Spearman(LN-CHES, log(|y-|/|y+|)): {spearman(ln[ok], log_len[ok]):+.3f}"
    )

    near = (ratio >= 0.9) | (cos >= 0.95)
    dropped = (out["decision"] == "filtered").to_numpy()
    print(
        f"near-identical responses (difflib >= 0.9 or cosine >= 0.95): {int(near[dropped].sum())} of {int(dropped.sum())} dropped, "
        f"{int(near[ok].sum())} of {int(ok.sum())} scored ({near[ok].mean():.1%} base rate)"
    )
    top = np.argsort(-np.where(ok, ln, -np.inf))[: max(1, int(dropped.sum()))]
    print("highest LN-CHES pairs:")
    for i in top[:5]:
        print(f"  ln_ches {ln[i]:8.2f}  cos {cos[i]:.2f}  difflib {ratio[i]:.2f}  |y+| {n_chosen[i]:.0f} |y-| {n_rejected[i]:.0f}")
        print(f"    chosen:   {chosen[i][:100]!r}\n    rejected: {rejected[i][:100]!r}")


if __name__ == "__main__":
    main()
