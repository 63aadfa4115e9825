"""Train the proxy models on some pairs and measure them on the evaluation pairs: rows of the
``evaluations`` table.

Every variant (a version, or an ablation's pairs) is measured on the *same* evaluation pairs:
human-labelled, and never seen in any variant's training pairs (``leakage``). A trainer runs
once per seed; a pair's correctness is averaged over seeds (a tie counts half), and the
accuracy's interval is a bootstrap over pairs. The trivial baselines (a seeded coin, "the
longer response wins", "the shorter one wins") are measured on the same pairs, so a proxy
model's figure always stands beside what no learning gets. A variant compared with a
reference gets the paired bootstrap interval of its difference (same resampled pairs).
"""

from __future__ import annotations

import json
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from curation.errors import CurationError
from curation.evaluate.config import EvaluateConfig, TrainerConfig
from curation.evaluate.leakage import leaked
from curation.evaluate.stats import accuracy_ci, baselines, correct, paired_difference
from curation.evaluate.trainers import trainer_class
from curation.progress import NoProgress, Progress

TRAIN_COLUMNS = ["pair_id", "prompt_id", "prompt", "chosen", "rejected", "label_source"]


@dataclass
class Measured:
    """One variant's results: a row per trainer (and baseline), and each one's per-pair
    correctness on the evaluation pairs (``pair_ids``, in order), for paired comparisons."""

    rows: list[dict[str, Any]]
    correct: dict[str, np.ndarray] = field(default_factory=dict)
    pair_ids: list[str] = field(default_factory=list)


def trainable(pairs: pa.Table) -> pa.Table:
    """The pairs a proxy model can learn from: those with a label (not generated, unlabeled)."""
    pairs = pairs.select(TRAIN_COLUMNS)
    return pairs.filter(pc.not_equal(pairs.column("label_source"), "unlabeled"))


def human(pairs: pa.Table) -> pa.Table:
    return pairs.filter(pc.equal(pairs.column("label_source"), "human"))


def evaluation_pairs(evaluation: pa.Table, trainings: Sequence[pa.Table], cfg: EvaluateConfig) -> tuple[pa.Table, int]:
    """The human-labelled evaluation pairs no variant saw; (pairs, how many were left out as
    leaked). A clear error when nothing is left to measure on."""
    evaluation = human(evaluation.select(TRAIN_COLUMNS))
    if not evaluation.num_rows:
        raise CurationError(
            "the evaluation set has no human-labelled pair: proxy models can only be measured on human preferences "
            "(evaluate.sources with label_source: human, or a hold-out of a human-labelled source)"
        )
    out = np.zeros(evaluation.num_rows, dtype=bool)
    for train in trainings:
        out |= leaked(train, evaluation, cfg.leakage)
    if out.all():
        raise CurationError(
            f"all {evaluation.num_rows:,} evaluation pairs have their prompt in the training pairs (leaked); nothing is left to "
            "measure on: evaluate on prompts the training data does not contain (or decontaminate the training pairs)"
        )
    return evaluation.filter(pa.array(~out)), int(out.sum())


def measure(
    variant: str,
    train: pa.Table,
    evaluation: pa.Table,
    cfg: EvaluateConfig,
    *,
    work_dir: Path,
    work_root: str,
    base: Mapping[str, Any],
    trainers: Sequence[TrainerConfig] | None = None,
    with_baselines: bool = True,
    progress: Progress | None = None,
    made: dict[str, Any] | None = None,
) -> Measured:
    """Every trainer (``cfg.trainers`` unless given) on ``train``, measured on ``evaluation``
    (already checked for leakage); ``base``: the fields every row shares (evaluation id,
    dataset, version, eval set, leaked count). ``made``: trainer objects kept between calls
    (by config), so several variants share what a trainer caches (bt_embed's embeddings)."""
    progress = progress or NoProgress()
    train = trainable(train)
    if not train.num_rows:
        raise CurationError(f"{variant}: no labelled pair to train on")
    result = Measured([], pair_ids=evaluation.column("pair_id").to_pylist())
    for tcfg in trainers or cfg.trainers:
        started = time.perf_counter()
        per_seed, margins = [], []
        for seed in tcfg.seeds:
            folder = work_dir / f"{tcfg.kind}-seed{seed}"
            folder.mkdir(parents=True, exist_ok=True)
            key = tcfg.model_dump_json()
            trainer = made[key] if made is not None and key in made else trainer_class(tcfg.kind)(tcfg, work_root)
            if made is not None:
                made[key] = trainer
            m = np.asarray(trainer.fit_margins(train, evaluation, seed=seed, work_dir=folder, progress=progress), dtype=float)
            if m.shape != (evaluation.num_rows,) or not np.isfinite(m).all():
                raise CurationError(
                    f"trainer {tcfg.kind} returned {m.shape} margins (finite: {np.isfinite(m).all()}) for {evaluation.num_rows} pairs"
                )
            margins.append(m)
            per_seed.append(float(correct(m).mean()))
        hit = np.mean([correct(m) for m in margins], axis=0)
        details = {"per_seed_accuracy": dict(zip(map(str, tcfg.seeds), per_seed))}
        result.rows.append(
            _row(
                base,
                variant,
                tcfg.kind,
                tcfg.seeds,
                hit,
                train.num_rows,
                cfg,
                float(np.mean(margins)),
                time.perf_counter() - started,
                details,
            )
        )
        result.correct[tcfg.kind] = hit
    if with_baselines:
        for name, hit in baselines(evaluation, seed=0).items():
            result.rows.append(_row(base, variant, f"baseline:{name}", [0], hit, train.num_rows, cfg, None, 0.0, None))
            result.correct[f"baseline:{name}"] = hit
    return result


def compare(done: Measured, reference_name: str, reference: Measured, bootstrap: int) -> None:
    """Fill each of ``done``'s rows with its difference against the same trainer's row of the
    ``reference`` variant, as a paired bootstrap over the (identical) evaluation pairs."""
    for row in done.rows:
        ref = reference.correct.get(row["trainer"])
        if ref is None or row["trainer"].startswith("baseline:"):
            continue
        diff, low, high = difference(done, reference, row["trainer"], bootstrap)
        row.update(reference=reference_name, difference=diff, difference_low=low, difference_high=high)


def difference(a: Measured, b: Measured, trainer: str, bootstrap: int) -> tuple[float, float, float]:
    """(a's accuracy - b's, low, high) for one trainer: the paired bootstrap on the same pairs."""
    return paired_difference(
        a.correct[trainer], b.correct[trainer], pair_ids_a=a.pair_ids, pair_ids_b=b.pair_ids, resamples=bootstrap, seed=0
    )


def _row(
    base: Mapping[str, Any],
    variant: str,
    trainer: str,
    seeds: Sequence[int],
    hit: np.ndarray,
    train_pairs: int,
    cfg: EvaluateConfig,
    mean_margin: float | None,
    seconds: float,
    details: dict[str, Any] | None,
) -> dict[str, Any]:
    accuracy, low, high = accuracy_ci(hit, resamples=cfg.bootstrap, seed=0)
    return {
        **base,
        "variant": variant,
        "trainer": trainer,
        "seeds": [str(s) for s in seeds],
        "eval_pairs": int(len(hit)),
        "train_pairs": int(train_pairs),
        "accuracy": float(accuracy),
        "ci_low": float(low),
        "ci_high": float(high),
        "mean_margin": mean_margin,
        "reference": None,
        "difference": None,
        "difference_low": None,
        "difference_high": None,
        "seconds": round(seconds, 3),
        "details": json.dumps(details) if details else None,
    }
