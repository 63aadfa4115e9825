"""Benchmark: how much of the human-label quality a routing budget buys back.

On real human-labelled sets (HH-RLHF harmless 1,200-row sample; PandaLM pairs with a strict
majority of its three annotators) the cross-fitted Bradley-Terry ensemble (``bt_ensemble``,
MiniLM embeddings; every pair is labelled only by members that did not train on it) plays the
AI labeler: a pair's AI label is the sign of the members' mean margin, as the ``ai_label`` step
decides. The human label plays what a person answers when the pair is routed. For each budget
(0..100 % of the pairs, step 5 %) the merged labels (human where routed, AI elsewhere) are
compared with the human labels; printed per dataset and pooled, with columns:

* random: routed pairs drawn at random (mean over ``--random-seeds`` draws);
* default: the route step with its built-in transparent weights;
* learned: weights fitted by ``fit_weights`` on half the prompts and applied to the other half,
  and the other way round (2-fold cross-fitting split by a hash of the prompt, each half routing
  the same budget fraction), so no pair is scored with weights fitted on its own human label;
* oracle: every AI error routed first (the upper bound).

Also printed: the mean agreement over all budgets (area under the curve), the share of the AI
errors caught at 10 / 20 / 30 % budget, and the weights learned on the whole pooled set. A plot
of the curves is saved to ``--out``.

  .venv/bin/python benchmarks/routing_curve.py                    # both datasets, members 8
  .venv/bin/python benchmarks/routing_curve.py --dataset hh --members 10 --out /tmp/curve.png
"""

from __future__ import annotations

import argparse
import hashlib
import math
import os
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import polars as pl  # noqa: E402
import pyarrow as pa  # noqa: E402

from benchmarks.shared_sets import DATASETS, PAIRS_SCHEMA, SHARED, load_pairs  # noqa: E402
from curation.models import BackendConfig, build_backend  # noqa: E402
from curation.models.memo import MemoEmbedder  # noqa: E402
from curation.records import prompt_id  # noqa: E402
from curation.stages.filter.base import STEP_LABEL_COLUMNS  # noqa: E402
from curation.stages.filter.config import RouteStep  # noqa: E402
from curation.stages.filter.route import as_ai_labelled, fit_weights, routing_table, score  # noqa: E402
from curation.stages.filter.route_features import FEATURES, features  # noqa: E402
from curation.stages.label.base import BackendPool  # noqa: E402
from curation.stages.label.bt_ensemble import BTEnsemble  # noqa: E402
from curation.stages.label.config import BTEnsembleConfig  # noqa: E402

BUDGETS = [b / 100 for b in range(0, 101, 5)]
METHODS = ["random", "default", "learned", "oracle"]


def half(prompt: list[dict[str, str]], seed: int) -> int:
    return hashlib.sha256(f"{seed}\x00half\x00{prompt_id(prompt)}".encode()).digest()[0] & 1


def curve(order_wrong: list[np.ndarray], budget: float) -> float:
    """Agreement of the merged labels with people when each group routes ``budget`` of its
    pairs in the given order; ``order_wrong``: per group, AI-wrong flags sorted by routing order."""
    n = sum(len(w) for w in order_wrong)
    still_wrong = sum(int(w[math.floor(budget * len(w) + 0.5) :].sum()) for w in order_wrong)
    return 1 - still_wrong / n


def evaluate(pairs: pl.DataFrame, labels: pl.DataFrame, wrong: pl.Series, seeds: int, split_seed: int) -> dict[str, list[float]]:
    """Curves of every method over BUDGETS for AI-labelled ``pairs`` (``wrong``: AI label !=
    human label, aligned with ``pairs``)."""
    truth = dict(zip(pairs["pair_id"].to_list(), wrong.to_list()))
    table = routing_table(RouteStep(budget=1), pairs, labels)
    default = np.array([truth[p] for p in table["pair_id"].to_list()])
    w = wrong.to_numpy()
    rng = np.random.default_rng(0)
    shuffles = [w[rng.permutation(len(w))] for _ in range(seeds)]

    # learned: 2-fold cross-fitting by prompt; fit on one half "as the AI labelled it"
    halves = np.array([half(p, split_seed) for p in pairs["prompt"].to_list()])
    feats = features(pairs, labels)
    learned_groups = []
    for h in (0, 1):
        train = pairs.filter(pl.Series(halves != h))
        weights = fit_weights(feats.filter(pl.Series(halves != h)), ~pl.Series([truth[p] for p in train["pair_id"].to_list()]))
        test = feats.filter(pl.Series(halves == h))
        order = np.argsort(-score(test, weights).to_numpy(), kind="stable")
        learned_groups.append(np.array([truth[p] for p in test["pair_id"].to_list()])[order])
    oracle = np.sort(w)[::-1]
    return {
        "random": [float(np.mean([curve([s], b) for s in shuffles])) for b in BUDGETS],
        "default": [curve([default], b) for b in BUDGETS],
        "learned": [curve(learned_groups, b) for b in BUDGETS],
        "oracle": [curve([oracle], b) for b in BUDGETS],
    }


def auc(x: np.ndarray, wrong: np.ndarray) -> float:
    """P(a random AI-wrong pair has a higher value than a random AI-right one), ties half."""
    ranks = pl.Series(x).rank("average").to_numpy()
    n1, n0 = int(wrong.sum()), int((~wrong).sum())
    return float((ranks[wrong].sum() - n1 * (n1 + 1) / 2) / (n1 * n0)) if n1 and n0 else float("nan")


def feature_aucs(pairs: pl.DataFrame, labels: pl.DataFrame, wrong: pl.Series) -> str:
    feats = features(pairs, labels)
    w = wrong.to_numpy()
    present = [f for f in FEATURES if feats[f].null_count() < feats.height]  # a judge feature without judges is all null
    return ", ".join(f"{f} {auc(feats[f].fill_null(feats[f].median()).to_numpy(), w):.2f}" for f in present)


def caught(curves: dict[str, list[float]], method: str, budget: float) -> float:
    """Share of the AI errors fixed at ``budget``."""
    errors = 1 - curves[method][0]
    return (curves[method][BUDGETS.index(budget)] - curves[method][0]) / errors if errors else 1.0


def print_table(name: str, n: int, curves: dict[str, list[float]]) -> None:
    print(f"\n{name}: {n} pairs, AI (ensemble mean vote) agrees with people on {curves['default'][0]:.3f}")
    print(f"{'budget':>7} " + " ".join(f"{m:>8}" for m in METHODS))
    for i, b in enumerate(BUDGETS):
        print(f"{b:>7.0%} " + " ".join(f"{curves[m][i]:>8.3f}" for m in METHODS))
    print(f"{'mean':>7} " + " ".join(f"{np.mean(curves[m]):>8.3f}" for m in METHODS))
    for b in (0.1, 0.2, 0.3):
        print(f"errors caught at {b:.0%}: " + ", ".join(f"{m} {caught(curves, m, b):.2f}" for m in METHODS))


def plot(results: dict[str, tuple[int, dict[str, list[float]]]], out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(results), figsize=(5 * len(results), 4), squeeze=False)
    styles = {"random": ":", "default": "-", "learned": "--", "oracle": "-."}
    for ax, (name, (n, curves)) in zip(axes[0], results.items()):
        for m in METHODS:
            ax.plot([100 * b for b in BUDGETS], curves[m], styles[m], label=m)
        ax.set_title(f"{name} ({n} pairs)")
        ax.set_xlabel("budget: % of pairs routed to people")
        ax.set_ylabel("agreement of merged labels with people")
        ax.grid(alpha=0.3)
        ax.legend()
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=120)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dataset", choices=[*DATASETS, "all"], default="all")
    parser.add_argument("--members", type=int, default=8, help="ensemble members K (each pair gets K - ceil(K/2) votes)")
    parser.add_argument("--seed", type=int, default=0, help="ensemble fold seed and the learned router's half split")
    parser.add_argument("--random-seeds", type=int, default=50, help="random routing draws to average")
    parser.add_argument("--data-dir", type=Path, default=SHARED)
    parser.add_argument("--threads", type=int, default=None, help="embedder threads")
    parser.add_argument("--labels-cache", type=Path, default=None, help="Parquet of the ensemble's labels: read if present, else written")
    parser.add_argument("--out", type=Path, default=REPO / "benchmarks" / "out" / "routing_curve.png", help="where to save the plot")
    args = parser.parse_args()

    started = time.perf_counter()
    names = list(DATASETS) if args.dataset == "all" else [args.dataset]
    rows = [p for d in names for p in load_pairs(d, args.data_dir)]
    if args.labels_cache is not None and args.labels_cache.exists():
        labels = pl.read_parquet(args.labels_cache)
        print(f"read {labels.height} label rows from {args.labels_cache} (delete it after changing --members/--seed/--dataset)")
    else:
        real = build_backend(BackendConfig(backend="sentence_transformers", model="all-MiniLM-L6-v2", batch_size=64, threads=args.threads))
        embedder = MemoEmbedder(real)
        cfg = BTEnsembleConfig(name="bt", members=args.members, seed=args.seed)
        labeler = BTEnsemble(cfg, BackendPool(".", build=lambda c, root: embedder))
        labels = pl.from_arrow(labeler.label(pa.Table.from_pylist(rows, schema=PAIRS_SCHEMA))).select(STEP_LABEL_COLUMNS)
        real.close()
        print(f"labelled {len(rows)} pairs ({len(embedder.vectors)} texts embedded) in {time.perf_counter() - started:.0f} s", flush=True)
        if args.labels_cache is not None:
            labels.write_parquet(args.labels_cache)

    human = pl.from_arrow(pa.Table.from_pylist(rows, schema=PAIRS_SCHEMA))
    ai_pairs, ai_labels, correct = as_ai_labelled(human, labels)
    ai_pairs = ai_pairs.with_columns(pl.lit("ai").alias("label_source"))
    wrong = ~correct
    results: dict[str, tuple[int, dict[str, list[float]]]] = {}
    groups = [(d, pl.col("source_dataset") == d) for d in names] + ([("pooled", pl.lit(True))] if len(names) > 1 else [])
    for name, mask in groups:
        keep = ai_pairs.select(mask).to_series()
        part = ai_pairs.filter(keep)
        results[name] = (part.height, evaluate(part, ai_labels, wrong.filter(keep), args.random_seeds, args.seed))
        print_table(name, part.height, results[name][1])
        print("single-feature AUC for 'AI label wrong' (0.5 = no signal, < 0.5 = lower means wrong):")
        print("  " + feature_aucs(part, ai_labels, wrong.filter(keep)))

    weights = fit_weights(features(ai_pairs, ai_labels), correct)
    print("\nweights learned on all pairs (percentile-rank features; + = route first):")
    print("  " + ", ".join(f"{k} {v:+.2f}" for k, v in sorted(weights.items(), key=lambda kv: -abs(kv[1])) if v))
    plot(results, args.out)
    print(f"\nplot: {args.out}   total {time.perf_counter() - started:.0f} s")


if __name__ == "__main__":
    main()
