"""Benchmark: recovering injected label noise with multi-reward-model voting, against cleanlab.

Takes a real human-labelled set (HH-RLHF harmless 1,200-row sample; PandaLM pairs with a strict
majority of its three annotators), swaps chosen and rejected of a seeded k % of the pairs, then
asks each method which pairs are mislabelled and scores the answer against the swapped set:

* voting: the cross-fitted Bradley-Terry ensemble (``bt_ensemble``, members 10, so 5 held-out
  votes per pair) trained on the NOISY labels, then the voting filter step
  (``curation.stages.filter.voting``) with each rule; "flagged" = its ``flipped`` decisions.
* cleanlab: ``cleanlab.filter.find_label_issues`` on the same MiniLM features. A pair becomes
  phi = e_chosen - e_rejected as the noisy label orients it, with a seeded random half mirrored
  (-phi, class 0) so both classes exist; pred_probs are out-of-fold from a logistic regression
  (no intercept, C = 1 / l2 of the ensemble's heads) via ``cross_val_predict`` with 5 folds
  grouped by prompt (pairs that share a prompt never sit on both sides of a split).

The original labels are themselves noisy (people disagree on 25-35 % of such pairs), so a method
that finds those is counted wrong here: the scores compare methods, they are not absolute.
Every distinct text is embedded once (MiniLM, ~70 texts/s on 2 cores) and reused for all k and
seeds. Printed: per dataset, k and method the precision, recall and F1 of finding the swapped
pairs, the number flagged and ``net`` (labels that flipping the flagged pairs corrects minus those
it breaks: TP - FP, positive only above 0.5 precision), averaged over seeds (F1 sd across seeds
beside it), with the trivial "flag every pair" baseline (F1 = 2k / (1 + k)); then the held-out
accuracy of the ensemble's mean vote and of the cleanlab classifier against the true labels.

  .venv/bin/python benchmarks/label_noise.py                      # both datasets, k = 10 20 30, seeds 0 1 2
  .venv/bin/python benchmarks/label_noise.py --dataset hh --seeds 0 --z 0 0.5 1 2
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

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
from curation.records import prompt_id, response_text  # noqa: E402
from curation.stages.filter.base import STEP_LABEL_COLUMNS, FramePairs, StepContext  # noqa: E402
from curation.stages.filter.config import VotingStep  # noqa: E402
from curation.stages.filter.voting import run as voting_run  # noqa: E402
from curation.stages.label.base import BackendPool  # noqa: E402
from curation.stages.label.bt_ensemble import BTEnsemble  # noqa: E402
from curation.stages.label.config import BTEnsembleConfig  # noqa: E402


def inject_noise(pairs: list[dict[str, Any]], k: float, seed: int) -> tuple[list[dict[str, Any]], set[str]]:
    """Swap chosen and rejected of round(k/100 * n) pairs drawn with ``seed``; ids stay (they
    are only keys here), so the swapped set can be scored."""
    rng = np.random.default_rng([seed, round(k * 10)])
    swap = set(rng.choice(len(pairs), size=round(k / 100 * len(pairs)), replace=False).tolist())
    noisy = [{**p, "chosen": p["rejected"], "rejected": p["chosen"]} if i in swap else p for i, p in enumerate(pairs)]
    return noisy, {pairs[i]["pair_id"] for i in swap}


def ensemble_labels(pairs: list[dict[str, Any]], embedder: MemoEmbedder, cfg: BTEnsembleConfig) -> pl.DataFrame:
    labeler = BTEnsemble(cfg, BackendPool(".", build=lambda c, root: embedder))
    return pl.from_arrow(labeler.label(pa.Table.from_pylist(pairs, schema=PAIRS_SCHEMA))).select(STEP_LABEL_COLUMNS)


def cleanlab_issues(pairs: list[dict[str, Any]], embedder: MemoEmbedder, c: float, seed: int, truth: set[str]) -> tuple[set[str], float]:
    """Pair ids cleanlab flags, and its classifier's out-of-fold accuracy against the true labels
    (a prediction that disagrees with a swapped pair's noisy label is right)."""
    from cleanlab.filter import find_label_issues
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import GroupKFold, cross_val_predict

    phi = embedder.embed([response_text(p["chosen"]) for p in pairs]) - embedder.embed([response_text(p["rejected"]) for p in pairs])
    mirrored = np.random.default_rng([seed, 7]).random(len(pairs)) < 0.5
    x = np.where(mirrored[:, None], -phi, phi).astype(np.float64)
    y = np.where(mirrored, 0, 1)
    groups = [prompt_id(p["prompt"]) for p in pairs]
    model = LogisticRegression(C=c, fit_intercept=False, max_iter=2000)
    probs = cross_val_predict(model, x, y, groups=groups, cv=GroupKFold(n_splits=5), method="predict_proba")
    issues = find_label_issues(labels=y, pred_probs=probs)
    swapped = np.array([p["pair_id"] in truth for p in pairs])
    return {p["pair_id"] for p, bad in zip(pairs, issues) if bad}, float(((probs.argmax(1) == y) != swapped).mean())


def scores(flagged: set[str], truth: set[str]) -> dict[str, float]:
    """Precision, recall, F1 of finding the swapped pairs; ``net`` = labels a flip of the flagged
    pairs corrects minus labels it breaks (TP - FP: positive only when precision > 0.5)."""
    tp = len(flagged & truth)
    precision = tp / len(flagged) if flagged else 0.0
    recall = tp / len(truth) if truth else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return {"precision": precision, "recall": recall, "f1": f1, "flagged": len(flagged), "net": tp - (len(flagged) - tp)}


def voting_rules(z_values: list[float]) -> dict[str, VotingStep]:
    rules = {"voting quantile (paper)": VotingStep(labelers=["bt"]), "voting threshold": VotingStep(labelers=["bt"], rule="threshold")}
    rules |= {f"voting confidence z={z:g}": VotingStep(labelers=["bt"], rule="confidence", z=z) for z in z_values}
    return rules


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dataset", choices=[*DATASETS, "all"], default="all")
    parser.add_argument("--noise", type=float, nargs="+", default=[10, 20, 30], help="percent of labels to swap")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2], help="noise (and ensemble fold) seeds")
    parser.add_argument("--members", type=int, default=10, help="ensemble members K (each pair gets K - ceil(K/2) votes)")
    parser.add_argument(
        "--z", type=float, nargs="+", default=[VotingStep.model_fields["z"].default], help="z values of the confidence rule to report"
    )
    parser.add_argument("--data-dir", type=Path, default=SHARED)
    parser.add_argument("--threads", type=int, default=None, help="embedder threads")
    args = parser.parse_args()

    started = time.perf_counter()
    real = build_backend(BackendConfig(backend="sentence_transformers", model="all-MiniLM-L6-v2", batch_size=64, threads=args.threads))
    embedder = MemoEmbedder(real)
    rules = voting_rules(args.z)
    results: dict[tuple[str, float, str], list[dict[str, float]]] = defaultdict(list)
    accuracy: dict[tuple[str, float, str], list[float]] = defaultdict(list)
    sizes: dict[str, int] = {}
    for dataset in DATASETS if args.dataset == "all" else [args.dataset]:
        pairs = load_pairs(dataset, args.data_dir)
        sizes[dataset] = len(pairs)
        t0 = time.perf_counter()
        embedder.embed([response_text(p[s]) for p in pairs for s in ("chosen", "rejected")])
        print(
            f"{dataset}: {len(pairs)} pairs, {len(embedder.vectors)} texts embedded so far ({time.perf_counter() - t0:.0f} s)", flush=True
        )
        frame = FramePairs(pl.DataFrame({"pair_id": [p["pair_id"] for p in pairs], "source_dataset": [dataset] * len(pairs)}))
        for k in args.noise:
            for seed in args.seeds:
                noisy, truth = inject_noise(pairs, k, seed)
                cfg = BTEnsembleConfig(name="bt", members=args.members, seed=seed)
                labels = ensemble_labels(noisy, embedder, cfg)
                mean_vote = labels.group_by("pair_id").agg(pl.col("margin").mean())
                right = mean_vote.select((pl.col("margin") > 0) != pl.col("pair_id").is_in(list(truth))).to_series()
                accuracy[(dataset, k, "ensemble mean vote")].append(float(right.mean()))
                for name, rule in rules.items():
                    result = voting_run(rule, frame, labels, StepContext())
                    flagged = set(result.decisions.filter(pl.col("decision") == "flipped")["pair_id"].to_list())
                    results[(dataset, k, name)].append(scores(flagged, truth))
                flagged, oof = cleanlab_issues(noisy, embedder, 1.0 / cfg.l2, seed, truth)
                results[(dataset, k, "cleanlab find_label_issues")].append(scores(flagged, truth))
                results[(dataset, k, "(baseline: flag every pair)")].append(scores({p["pair_id"] for p in pairs}, truth))
                accuracy[(dataset, k, "cleanlab logistic regression")].append(oof)
            print(f"  k = {k:g} %: done ({time.perf_counter() - started:.0f} s)", flush=True)
    real.close()

    print()
    print(
        f"{'dataset':8} {'pairs':>5} {'k %':>4} {'method':30} {'precision':>9} {'recall':>7} {'F1':>6} {'F1 sd':>6} {'flagged':>8} {'net':>6}"
    )
    for (dataset, k, name), runs in results.items():
        mean = {key: float(np.mean([r[key] for r in runs])) for key in runs[0]}
        sd = float(np.std([r["f1"] for r in runs]))
        print(
            f"{dataset:8} {sizes[dataset]:>5} {k:>4g} {name:30} {mean['precision']:>9.3f} {mean['recall']:>7.3f} "
            f"{mean['f1']:>6.3f} {sd:>6.3f} {mean['flagged']:>8.1f} {mean['net']:>6.1f}"
        )
    print()
    print("held-out accuracy against the TRUE labels (ensemble: sign of the mean vote; cleanlab: its classifier on the noisy ones)")
    for (dataset, k, name), values in accuracy.items():
        print(f"{dataset:8} {k:>4g} {name:30} {np.mean(values):.3f}")
    print(f"\nseeds {args.seeds}, members {args.members}, total {time.perf_counter() - started:.0f} s")


if __name__ == "__main__":
    main()
