"""Benchmark: every labeler beside the length baseline on the shared human-labelled sets.

On HH-RLHF (harmless-base), PandaLM (majority of three annotators, ties dropped) and OASST1
(sibling ranks), the same seeded sample of pairs per set goes to:

* ``length``: the longer response wins (costs nothing; the bar to clear);
* ``bt``: the 5-member Bradley-Terry ensemble on MiniLM embeddings (its mean margin), trained
  cross-fitted on the whole set's human labels and measured on the sample;
* ``judge``: a pairwise judge reading its verdict off P("A") / P("B"), strict (both orders must
  agree) and calibrated (P(A better) averaged over both orders, tie band 0.1; ``calibrated0``:
  tie band 0, the sign alone), from one set of log-probs: the other two are recomputed from the
  calibrated row (its two order verdicts; its margin);
* ``cdr``: density ratio log p_strong - log p_weak (1.5B over 0.5B Qwen2.5-Coder: one tokenizer);
* ``flr``: follow-up likelihood (two satisfied, two dissatisfied follow-ups).

Printed per set and labeler: pairs, decided, ties, accuracy with a bootstrap 95% CI (none below
10 decided pairs), the longer-wins accuracy on the very same pairs, a judge's position bias,
wall seconds and input tokens/s (tokens of the scored conversations, counted with the model's
tokenizer). Model labelers are slow on 2 CPU cores: ``--model-pairs`` caps their sample apart
from ``--pairs``.

  .venv/bin/python benchmarks/labelers_shared.py --pairs 200 --model-pairs 200 \\
      --judge smollm2:200 qwen2.5-coder-0.5b:200 --cdr qwen2.5-coder-1.5b qwen2.5-coder-0.5b --flr qwen2.5-coder-0.5b --json out.json
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import resource
import sys
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "benchmarks"))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import polars as pl  # noqa: E402
import pyarrow as pa  # noqa: E402
import pyarrow.parquet as pq  # noqa: E402
from shared_sets import PAIRS_SCHEMA, SHARED, load_pairs  # noqa: E402

from curation.models import BackendConfig  # noqa: E402
from curation.stages.label import build_labeler  # noqa: E402
from curation.stages.label.agreement import agreement, summary_rows  # noqa: E402
from curation.stages.label.base import BackendPool  # noqa: E402
from curation.stages.label.config import (  # noqa: E402
    BTEnsembleConfig,
    DensityRatioConfig,
    FollowUpConfig,
    JudgePairwiseConfig,
    LengthConfig,
)
from curation.stages.label.judge import combine_orders  # noqa: E402

FOLLOW_UPS = {
    "satisfaction": {
        "positive": ["Thank you, that's exactly what I needed!", "Great, that answers my question."],
        "negative": ["That's wrong and doesn't answer my question.", "That's not helpful at all."],
    }
}


def sample(pairs: list[dict[str, Any]], n: int, seed: int) -> list[dict[str, Any]]:
    """``n`` pairs chosen by a seeded hash of their id (no order or length bias)."""
    key = lambda p: hashlib.sha256(f"{seed}\x00{p['pair_id']}".encode()).hexdigest()  # noqa: E731
    return sorted(pairs, key=key)[:n]


def strict_from_calibrated(labels: pa.Table) -> pa.Table:
    """The strict rule's verdicts from a calibrated letter judge's rows (same log-probs)."""
    rows = labels.to_pylist()
    for r in rows:
        if r["verdict"] != "invalid":
            d = json.loads(r["details"])
            r["verdict"] = combine_orders(d["verdict_ab"], d["verdict_ba"])[2]
        r["labeler"] = r["labeler_group"] = r["labeler"].replace("calibrated", "strict")
    return pa.Table.from_pylist(rows, schema=labels.schema)


def without_tie_band(labels: pa.Table) -> pa.Table:
    """The calibrated judge with tie_band 0: the sign of P(A better) - 0.5 (= of the margin)."""
    rows = labels.to_pylist()
    for r in rows:
        if r["verdict"] != "invalid":
            r["verdict"] = "A" if r["margin"] > 0 else "B" if r["margin"] < 0 else "tie"
        r["labeler"] = r["labeler_group"] = r["labeler"].replace("calibrated", "calibrated0")
    return pa.Table.from_pylist(rows, schema=labels.schema)


def input_tokens(pool: BackendPool, model: str, table: pa.Table, per_pair: int) -> int:
    """Tokens of the prompt and both responses per pair, times how often a labeler scores them."""
    tok = pool.get(BackendConfig(backend="transformers", model=model)).tokenizer
    total = 0
    for r in table.to_pylist():
        text = "\n".join(m["content"] for m in r["prompt"])
        for side in ("chosen", "rejected"):
            total += len(tok(text + "\n".join(m["content"] for m in r[side]), add_special_tokens=False)["input_ids"])
    return total * per_pair // 2


def run_labeler(cfg: Any, pool: BackendPool, table: pa.Table) -> tuple[pa.Table, float]:
    started = time.perf_counter()
    labels = build_labeler(cfg, pool).label(table)
    return labels, time.perf_counter() - started


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sets", nargs="+", default=["hh", "pandalm", "oasst"])
    ap.add_argument("--pairs", type=int, default=200, help="pairs per set for length and the BT ensemble")
    ap.add_argument("--model-pairs", type=int, default=200, help="pairs per set for the model labelers (a prefix of the sample)")
    ap.add_argument(
        "--judge", nargs="*", default=["qwen2.5-coder-0.5b"], metavar="MODEL[:PAIRS]", help="judge models, each on its own pair count"
    )
    ap.add_argument("--cdr", nargs=2, default=["qwen2.5-coder-1.5b", "qwen2.5-coder-0.5b"], metavar=("STRONG", "WEAK"))
    ap.add_argument("--no-cdr", action="store_true")
    ap.add_argument("--flr", default="", help="follow-up model ('' to skip)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--bootstrap", type=int, default=2000)
    ap.add_argument("--json", type=Path, help="write the rows here as well")
    ap.add_argument("--labels-dir", type=Path, help="write every labeler's label rows here (Parquet, one file per set and labeler)")
    args = ap.parse_args()

    pool = BackendPool(REPO / "data")

    def backend(model: str) -> BackendConfig:
        return BackendConfig(backend="transformers", model=model, threads=args.threads)

    results: list[dict[str, Any]] = []
    for set_name in args.sets:
        everything = load_pairs(set_name, SHARED)
        picked = sample(everything, args.pairs, args.seed)
        table = pa.Table.from_pylist(picked, schema=PAIRS_SCHEMA)
        model_table = table.slice(0, min(args.model_pairs, table.num_rows))
        runs: list[tuple[str, pa.Table, float, int | None]] = []

        labels, seconds = run_labeler(LengthConfig(name="length"), pool, table)
        runs.append(("length", labels, seconds, None))
        bt_table = pa.Table.from_pylist(everything, schema=PAIRS_SCHEMA)
        labels, seconds = run_labeler(BTEnsembleConfig(name="bt-minilm", members=5), pool, bt_table)
        runs.append(("bt-minilm/mean", labels, seconds, None))
        for spec in args.judge:
            model, _, count = spec.partition(":")
            judged = table.slice(0, min(int(count or args.model_pairs), table.num_rows))
            name = f"judge-calibrated-{model}"
            cfg = JudgePairwiseConfig(name=name, backend=backend(model), verdict_by="logprobs", mode="calibrated")
            labels, seconds = run_labeler(cfg, pool, judged)
            tokens = input_tokens(pool, model, judged, 2)
            runs.append((name, labels, seconds, tokens))
            runs.append((name.replace("calibrated", "calibrated0"), without_tie_band(labels), seconds, tokens))
            runs.append((name.replace("calibrated", "strict"), strict_from_calibrated(labels), seconds, tokens))
        if not args.no_cdr:
            strong, weak = args.cdr
            labels, seconds = run_labeler(DensityRatioConfig(name="cdr", strong=backend(strong), weak=backend(weak)), pool, model_table)
            runs.append(("cdr", labels, seconds, input_tokens(pool, weak, model_table, 2) * 2))
        if args.flr:
            cfg = FollowUpConfig(name="flr", backend=backend(args.flr), follow_ups=FOLLOW_UPS)
            labels, seconds = run_labeler(cfg, pool, model_table)
            runs.append(("flr", labels, seconds, input_tokens(pool, args.flr, model_table, 2) * 4))

        if args.labels_dir:
            args.labels_dir.mkdir(parents=True, exist_ok=True)
            for label, labels, _, _ in runs:
                pq.write_table(labels, args.labels_dir / f"{set_name}-{label.replace('/', '_')}.parquet")
        for label, labels, seconds, tokens in runs:
            rows = summary_rows(agreement(labels, table, resamples=args.bootstrap, seed=args.seed))
            row = next(r for r in rows if r["labeler"] == label)
            results.append(
                {
                    "set": set_name,
                    "labeler": label,
                    "model": cfg_model(label, args),
                    **{k: row[k] for k in ("n", "n_decided", "n_tie", "n_invalid", "accuracy", "ci_low", "ci_high")},
                    "length_accuracy": row["length_accuracy"],
                    "length_correlation": row["length_correlation"],
                    "position_bias": row["position_bias"],
                    "seconds": round(seconds, 1),
                    "tokens_per_s": round(tokens / seconds) if tokens and seconds else None,
                }
            )
            print_row(results[-1])
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024 / 1024
    print(f"\npeak RSS {peak:.1f} GiB; threads {args.threads}; seed {args.seed}; sample: {args.pairs} pairs per set")
    if args.json:
        args.json.write_text(json.dumps(results, indent=1))
    print("\n" + markdown(results))


def cfg_model(label: str, args: argparse.Namespace) -> str:
    if label.startswith("judge"):
        return label.split("-", 2)[2]
    if label == "cdr":
        return " over ".join(args.cdr)
    if label == "flr":
        return args.flr
    return "all-MiniLM-L6-v2" if label.startswith("bt") else ""


def _pct(x: float | None) -> str:
    return "-" if x is None else f"{100 * x:.1f}%"


def print_row(r: dict[str, Any]) -> None:
    ci = f"[{_pct(r['ci_low'])}, {_pct(r['ci_high'])}]" if r["ci_low"] is not None else ""
    print(
        f"{r['set']:8} {r['labeler']:18} n={r['n']:4} decided={r['n_decided']:4} ties={r['n_tie']:4} acc={_pct(r['accuracy']):>6} {ci:18}"
        f" longer-wins={_pct(r['length_accuracy']):>6} pos-bias={_pct(r['position_bias']):>6} {r['seconds']:7.1f}s"
        f" {'' if r['tokens_per_s'] is None else str(r['tokens_per_s']) + ' tok/s'}",
        flush=True,
    )


def markdown(results: list[dict[str, Any]]) -> str:
    lines = [
        "| set | labeler | model | pairs | decided | ties | accuracy | 95% CI | longer wins, same pairs | position bias | seconds | tokens/s |",
        "|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in results:
        ci = f"{_pct(r['ci_low'])}-{_pct(r['ci_high'])}" if r["ci_low"] is not None else "-"
        lines.append(
            f"| {r['set']} | {r['labeler']} | {r['model']} | {r['n']} | {r['n_decided']} | {r['n_tie']} | {_pct(r['accuracy'])} | {ci} |"
            f" {_pct(r['length_accuracy'])} | {_pct(r['position_bias'])} | {r['seconds']} | {r['tokens_per_s'] or ''} |"
        )
    return "\n".join(lines)


if __name__ == "__main__":
    pl.Config.set_tbl_rows(50)
    main()
