"""Benchmark: does curation train a better proxy model? Raw against curated, under injected label noise.

For each shared human-labelled set (HH-RLHF harmless 1,200-row sample; PandaLM pairs with a
strict annotator majority; OpenAssistant ranked siblings), the pairs are split by a seeded hash
of the prompt id (the product's hold-out, ``evaluation_set.held_out``): 20% of the prompts are
evaluation pairs, the rest training pairs, so no evaluation prompt is ever trained on (the
leakage guard drops near copies too). Then, per noise level k (0, 20, 40 %), a seeded k % of the
training pairs get chosen and rejected swapped, and these variants are trained and measured on
the same (clean, human) evaluation pairs:

* ``raw``: every noisy training pair;
* ``voting``: the product's filter core (``filter_pairs``) with the voting step as the main job
  sets it (drop the 10% most disputed pairs), on labels of the ``bt_ensemble`` labeler (5
  cross-fitted members trained on the NOISY labels, as in a real run);
* ``voting (paper)``: the voting step with the paper's defaults (flip the lowest 20% with
  mean < 0, the next 20% ambiguous, dropped);
* ``margin``: the margin step (drop the 5% smallest ensemble margins);
* ``main stack``: the main job's steps that apply to human-labelled pairs, in its order:
  voting, margin, decontaminate (the evaluation prompts), near_dedup, semantic_dedup.

Trainers: ``bt_embed`` everywhere; ``reward_model`` (SmolLM2-135M, LoRA, CPU) on ``--rm-datasets``
for raw and the main stack; one ``dpo`` run (SmolLM2-135M, LoRA, ``--dpo-pairs``) raw vs main
stack on HH at 40% noise with ``--dpo``. Printed per dataset, level, trainer and variant:
training pairs, accuracy with its bootstrap 95% interval, the paired difference to ``raw`` with
its interval, and a verdict; then wall time and peak RSS. Every distinct text is embedded once.

  .venv/bin/python benchmarks/curation_value.py                            # bt_embed, all sets, k = 0 20 40
  .venv/bin/python benchmarks/curation_value.py --rm-datasets hh --dpo     # plus the SmolLM2 trainers
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import pyarrow as pa  # noqa: E402
import pyarrow.parquet as pq  # noqa: E402

from benchmarks.label_noise import inject_noise  # noqa: E402
from benchmarks.shared_sets import PAIRS_SCHEMA, SHARED, load_pairs  # noqa: E402
from curation.config import parse_config  # noqa: E402
from curation.evaluate.config import BtEmbedConfig, DpoConfig, EvaluateConfig, LoraConfig, RewardModelConfig  # noqa: E402
from curation.evaluate.measure import compare, evaluation_pairs, measure  # noqa: E402
from curation.evaluate.trainers.bt_embed import BtEmbedTrainer  # noqa: E402
from curation.models import BackendConfig, build_backend  # noqa: E402
from curation.models.memo import MemoEmbedder  # noqa: E402
from curation.records import prompt_id  # noqa: E402
from curation.stages.evaluation_set.stage import held_out  # noqa: E402
from curation.stages.filter.stage import filter_pairs  # noqa: E402
from curation.stages.label.base import BackendPool  # noqa: E402
from curation.stages.label.bt_ensemble import BTEnsemble  # noqa: E402
from curation.stages.label.config import BTEnsembleConfig  # noqa: E402
from schemas import arrow_schema  # noqa: E402

VOTING = {"kind": "voting", "labelers": ["bt"], "flip_quantile": 0.0, "ambiguous_quantile": 0.1}
MARGIN = {"kind": "margin", "labelers": ["bt"], "quantile": 0.05}
VARIANTS: dict[str, list[dict[str, Any]]] = {
    "voting": [VOTING],
    "voting (paper)": [{"kind": "voting", "labelers": ["bt"]}],
    "margin": [MARGIN],
    "main stack": [
        VOTING,
        MARGIN,
        {"kind": "decontaminate"},
        {"kind": "near_dedup", "level": "prompt", "threshold": 0.8},
        {"kind": "semantic_dedup", "level": "prompt", "threshold": 0.95},
    ],
}


def full_rows(pairs: list[dict[str, Any]]) -> pa.Table:
    """Benchmark pairs as rows of the pairs contract (what the filter stage reads)."""
    rows = [
        {
            **p,
            "prompt_id": prompt_id(p["prompt"]),
            "source_file": "benchmark",
            "source_row": i,
            "source_pair_index": 0,
        }
        for i, p in enumerate(pairs)
    ]
    return pa.Table.from_pylist(rows, schema=arrow_schema("pairs"))


def split(pairs: list[dict[str, Any]], fraction: float) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    train, evaluate = [], []
    for p in pairs:
        (evaluate if held_out(prompt_id(p["prompt"]), fraction, 0) else train).append(p)
    return train, evaluate


def curated(noisy: pa.Table, steps: list[dict], labels_file: Path, eval_file: Path, work: Path) -> pa.Table:
    """The product's filter core over ``noisy`` with ``steps``."""
    cfg = parse_config(
        {
            "data_root": str(work / "root"),
            "publish": {"dataset": "bench"},
            "sources": [{"name": "bench", "path": str(eval_file), "adapter": "trl"}],
            "label": {"labelers": [{"name": "bt", "kind": "bt_ensemble", "members": 5}]},
            "filter": {"steps": steps},
        }
    )
    work.mkdir(parents=True, exist_ok=True)
    pairs_file = work / "noisy-pairs.parquet"
    pq.write_table(noisy, pairs_file)
    out = filter_pairs(cfg, work, [str(pairs_file)], str(labels_file), evaluation_file=str(eval_file))
    return pq.read_table(out.files["pairs"])


def verdict(row: dict[str, Any]) -> str:
    if row.get("difference") is None:
        return ""
    if row["difference_low"] > 0:
        return "helps"
    if row["difference_high"] < 0:
        return "hurts"
    return "no clear effect"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--datasets", nargs="+", default=["hh", "pandalm", "oasst"])
    parser.add_argument("--noise", type=float, nargs="+", default=[0, 20, 40], help="percent of training labels to swap")
    parser.add_argument("--noise-seeds", type=int, nargs="+", default=[0], help="seeds of the injected flips (a row per seed, then means)")
    parser.add_argument("--holdout", type=float, default=0.2, help="share of the prompts held out for evaluation")
    parser.add_argument("--rm-datasets", nargs="*", default=[], help="datasets also measured with reward_model (SmolLM2, CPU)")
    parser.add_argument("--rm-pairs", type=int, default=400, help="reward_model: at most this many training pairs (seeded sample)")
    parser.add_argument("--dpo", action="store_true", help="one dpo run (SmolLM2, LoRA) raw vs main stack on hh at the highest noise")
    parser.add_argument("--dpo-pairs", type=int, default=1000)
    parser.add_argument(
        "--heavy-eval-pairs", type=int, default=None, help="SmolLM2 trainers: score a seeded sample of this many evaluation pairs"
    )
    parser.add_argument("--max-length", type=int, default=256, help="tokens per sequence for the SmolLM2 trainers")
    parser.add_argument("--data-dir", type=Path, default=SHARED)
    parser.add_argument("--json", type=Path, default=None, help="also write every result row here")
    args = parser.parse_args()

    started = time.perf_counter()
    real = build_backend(BackendConfig(backend="sentence_transformers", model="all-MiniLM-L6-v2", batch_size=64))
    embedder = MemoEmbedder(real)
    bt = BtEmbedConfig()
    cfg = EvaluateConfig(holdout_fraction=args.holdout, trainers=[bt], bootstrap=1000)
    rm = RewardModelConfig(lora=LoraConfig(r=16, alpha=32), learning_rate=2e-4, batch_size=8, max_length=args.max_length,
                           max_train_pairs=args.rm_pairs)  # fmt: skip
    dpo = DpoConfig(learning_rate=5e-5, batch_size=8, max_length=args.max_length, max_train_pairs=args.dpo_pairs)
    out_rows: list[dict[str, Any]] = []
    trainer = BtEmbedTrainer(bt, str(REPO / "data"))
    trainer.vectors = embedder.vectors  # the same texts embedded once for labels and proxies
    made = {bt.model_dump_json(): trainer}
    with tempfile.TemporaryDirectory(prefix="curation-value-") as tmp:
        root = Path(tmp)
        for dataset in args.datasets:
            pairs = load_pairs(dataset, args.data_dir)
            train_pairs, eval_pairs = split(pairs, args.holdout)
            eval_file = root / f"{dataset}-eval.parquet"
            pq.write_table(full_rows(eval_pairs), eval_file)
            ev, leaked_out = evaluation_pairs(full_rows(eval_pairs), [full_rows(train_pairs)], cfg)
            print(
                f"{dataset}: {len(train_pairs)} training pairs, {ev.num_rows} evaluation pairs ({leaked_out} leaked, left out)", flush=True
            )
            # no flips at k = 0: every noise seed would be the same draw, so it runs once
            for k, noise_seed in [(level, s) for level in args.noise for s in (args.noise_seeds if level else args.noise_seeds[:1])]:
                noisy_pairs, _ = inject_noise(train_pairs, k, noise_seed)
                noisy = full_rows(noisy_pairs)
                labeler = BTEnsemble(BTEnsembleConfig(name="bt", members=5, seed=0), BackendPool(".", build=lambda c, r: embedder))
                labels_file = root / f"{dataset}-{k:g}-{noise_seed}-labels.parquet"
                pq.write_table(labeler.label(noisy.select(PAIRS_SCHEMA.names)), labels_file)
                variants = {"raw": noisy}
                for name, steps in VARIANTS.items():
                    variants[name] = curated(
                        noisy, steps, labels_file, eval_file, root / f"{dataset}-{k:g}-{noise_seed}-{name.replace(' ', '_')}"
                    )
                trainers: list[Any] = [bt]
                if dataset in args.rm_datasets:
                    trainers.append(rm)
                if args.dpo and dataset == "hh" and k == max(args.noise) and noise_seed == args.noise_seeds[0]:
                    trainers.append(dpo)
                for tcfg in trainers:
                    heavy = tcfg.kind != "bt_embed"
                    names = ["raw", "main stack"] if heavy else list(variants)
                    on = ev
                    if heavy and args.heavy_eval_pairs and ev.num_rows > args.heavy_eval_pairs:  # the same sample for both variants
                        on = ev.take(np.sort(np.random.default_rng(0).choice(ev.num_rows, args.heavy_eval_pairs, replace=False)))
                    reference = None
                    for name in names:
                        t0 = time.perf_counter()
                        base = {"evaluation_id": "bench", "dataset": dataset, "version": None, "eval_set": "holdout",
                                "leaked_excluded": leaked_out}  # fmt: skip
                        work = root / "train" / f"{dataset}-{k:g}-{noise_seed}-{tcfg.kind}-{name.replace(' ', '_')}"
                        done = measure(name, variants[name], on, cfg, work_dir=work, work_root=str(REPO / "data"), base=base,
                                       trainers=[tcfg], with_baselines=reference is None, made=made)  # fmt: skip
                        if reference is None:
                            reference = done
                        else:
                            compare(done, "raw", reference, cfg.bootstrap)
                        for row in done.rows:
                            if row["trainer"].startswith("baseline:") and tcfg.kind != "bt_embed":
                                continue
                            out_rows.append(
                                {
                                    **row,
                                    "noise": k,
                                    "noise_seed": noise_seed,
                                    "wall_s": time.perf_counter() - t0 if row["trainer"] == tcfg.kind else None,
                                }
                            )
                        print(
                            f"  k={k:g} seed={noise_seed} {tcfg.kind} {name}: {done.rows[0]['accuracy']:.3f} ({time.perf_counter() - started:.0f} s)",
                            flush=True,
                        )
    real.close()
    if args.json:  # first: a long run's rows survive whatever the printing below does
        args.json.write_text(json.dumps(out_rows, default=str, indent=1))

    print()
    print(f"{'dataset':8} {'k %':>4} {'seed':>4} {'trainer':22} {'variant':15} {'train':>6} {'eval':>5} {'accuracy':>8} {'95% CI':>15} "
          f"{'vs raw (paired 95% CI)':>28} {'verdict':16} {'train s':>8}")  # fmt: skip
    for r in out_rows:
        ci = f"{r['ci_low']:.3f}-{r['ci_high']:.3f}"
        diff = (
            f"{r['difference']:+.3f} [{r['difference_low']:+.3f}, {r['difference_high']:+.3f}]" if r.get("difference") is not None else ""
        )
        wall = f"{r['wall_s']:.0f}" if r.get("wall_s") is not None else ""
        print(f"{r['dataset']:8} {r['noise']:>4g} {r['noise_seed']:>4} {r['trainer']:22} {r['variant']:15} {r['train_pairs']:>6} {r['eval_pairs']:>5} "
              f"{r['accuracy']:>8.3f} {ci:>15} {diff:>28} {verdict(r):16} {wall:>8}")  # fmt: skip
    if len(args.noise_seeds) > 1:
        print(
            f"\nmeans over the {len(args.noise_seeds)} noise seeds (k = 0: one draw); in brackets the 95% t-interval of the mean "
            "difference over the draws (it covers the noise draw, not the evaluation sample); verdicts: how many seeds the "
            "paired interval says helps / hurts"
        )
        groups: dict[tuple, list[dict[str, Any]]] = {}
        for r in out_rows:
            if not r["trainer"].startswith("baseline:"):
                groups.setdefault((r["dataset"], r["noise"], r["trainer"], r["variant"]), []).append(r)
        for (dataset, k, trainer_name, variant), rs in groups.items():
            diffs = [r["difference"] for r in rs if r.get("difference") is not None]
            mean_diff = (
                f"{np.mean(diffs):+.3f} {seed_interval(diffs)} ({sum(d > 0 for d in diffs)} of {len(diffs)} above 0)" if diffs else ""
            )
            helps, hurts = sum(verdict(r) == "helps" for r in rs), sum(verdict(r) == "hurts" for r in rs)
            counts = f"helps {helps}, hurts {hurts} of {len(rs)}" if diffs else ""
            acc = sum(r["accuracy"] for r in rs) / len(rs)
            print(f"{dataset:8} {k:>4g} {trainer_name:10} {variant:15} accuracy {acc:.3f}  vs raw {mean_diff:>46}  {counts}")
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"\ntotal {time.perf_counter() - started:.0f} s, peak RSS {peak:.0f} MiB")


def seed_interval(diffs: list[float]) -> str:
    """The 95% t-interval of the mean over noise draws ("" for one draw)."""
    from scipy.stats import t

    if len(diffs) < 2:
        return ""
    half = t.ppf(0.975, len(diffs) - 1) * np.std(diffs, ddof=1) / np.sqrt(len(diffs))
    return f"[{np.mean(diffs) - half:+.3f}, {np.mean(diffs) + half:+.3f}]"


if __name__ == "__main__":
    main()
