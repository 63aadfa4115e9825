"""What every filter step shares: the pairs it reads, the result it returns.

A step is a pure function ``run(cfg, pairs, labels, ctx) -> StepResult``. It never writes
files and never imports Prefect: the stage (``curation.stages.filter.stage``) feeds it the pairs
still alive after the previous steps, applies its decisions (drop, flip, route) and writes
one decisions row per pair it judged. A notebook can call a step on any Polars frame.

Orientation: ``pairs`` and ``labels`` are given as the stage currently holds them. When an
earlier step flipped a pair (swapped chosen and rejected), the stage swaps the pair's
columns and negates its label margins before the next step sees it, so every step can
assume "chosen is what the pair currently says is better" and "margin > 0 agrees with it".
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any, Protocol

import polars as pl

from curation.progress import NoProgress, Progress
from curation.stages.label.base import BackendPool
from schemas import DECISIONS

# The pair columns a step may ask for (the pairs table's, plus what the stage tracks); more than
# the label stage's ``LABELER_PAIR_COLUMNS``.
STEP_PAIR_COLUMNS = [
    "pair_id",
    "prompt_id",
    "prompt",
    "chosen",
    "rejected",
    "chosen_score",
    "rejected_score",
    "label_source",
    "label_model",
    "source_dataset",
    "metadata",
]
# The labels columns every step reads (``labels`` as ``run`` gets it).
STEP_LABEL_COLUMNS = ["pair_id", "labeler", "labeler_group", "kind", "score_a", "score_b", "margin", "verdict", "confidence", "consistent"]


def judge_entropy() -> pl.Expr:
    """``entropy``: a calibrated pairwise judge's entropy over its verdicts (from ``details``;
    null for every other row), which the router reads as a feature."""
    value = pl.col("details").str.json_path_match("$.entropy").cast(pl.Float64)
    return pl.when(pl.col("kind") == "judge_pairwise").then(value).alias("entropy")


class PairSource(Protocol):
    """The alive pairs, in a stable order (recipe source order, then file order)."""

    def __len__(self) -> int: ...
    def frame(self, columns: list[str]) -> pl.DataFrame: ...
    def batches(self, columns: list[str], size: int) -> Iterator[pl.DataFrame]: ...


class FramePairs:
    """A ``PairSource`` over an in-memory frame (tests, notebooks)."""

    def __init__(self, frame: pl.DataFrame):
        self._frame = frame

    def __len__(self) -> int:
        return self._frame.height

    def frame(self, columns: list[str]) -> pl.DataFrame:
        return self._frame.select(columns)

    def batches(self, columns: list[str], size: int) -> Iterator[pl.DataFrame]:
        for start in range(0, self._frame.height, size):
            yield self._frame.slice(start, size).select(columns)


@dataclass
class StepContext:
    """What a step may use besides its inputs: model backends (shared by the run), progress, and
    the run's evaluation prompts (``evaluation_prompts``: the texts of the held-out and
    evaluation pairs' prompts, which no training pair may contain; None when the recipe
    evaluates nothing)."""

    backends: BackendPool | None = None
    progress: Progress = field(default_factory=NoProgress)
    data_root: str = "data"
    evaluation_prompts: list[str] | None = None


@dataclass
class StepResult:
    """A step's verdict on every pair it judged.

    ``decisions``: one row per judged pair with ``pair_id``, ``decision`` (kept | filtered |
    flipped | routed), ``reason`` (null when kept), ``matched_pair_id`` (the pair a duplicate
    matched, else null), plus the Float64 columns named in ``scores``; they become the
    decisions table's ``scores`` map (null values are left out of the map).
    Pairs a step did not judge (out of its ``sources``/``limit``) have no row and stay alive.
    ``pair_values``: ``pair_id`` plus columns to set on the pairs table (voting's
    ``preference_strength`` / ``preference_strength_std``), or None.
    ``summary``: JSON-able figures for the run report (thresholds used, counts, clusters).
    ``tables``: extra tables to publish with the version, by contract name (the route step's
    ``routing``); a ``pair_id`` column is remapped to published ids for flipped pairs.
    """

    decisions: pl.DataFrame
    scores: list[str] = field(default_factory=list)
    summary: dict[str, Any] = field(default_factory=dict)
    pair_values: pl.DataFrame | None = None
    tables: dict[str, pl.DataFrame] = field(default_factory=dict)

    def check(self, step: str) -> None:
        need = {"pair_id", "decision", "reason", "matched_pair_id", *self.scores}
        missing = need - set(self.decisions.columns)
        if missing:
            raise ValueError(f"filter step {step!r} returned decisions without column(s) {sorted(missing)}")
        bad = set(self.decisions["decision"].unique().to_list()) - set(DECISIONS)
        if bad:
            raise ValueError(f"filter step {step!r} returned unknown decision(s) {sorted(bad)}")
        if self.decisions["pair_id"].n_unique() != self.decisions.height:
            raise ValueError(f"filter step {step!r} returned more than one decision for some pairs")


def label_margins(labels: pl.DataFrame, names: list[str]) -> pl.DataFrame:
    """Valid margins of the named labelers: rows (pair_id, labeler, margin) whose labeler or
    labeler_group is in ``names`` (a group stands for all its members, each one vote)."""
    return (
        labels.filter((pl.col("labeler").is_in(names) | pl.col("labeler_group").is_in(names)) & pl.col("margin").is_not_null())
        .filter(pl.col("margin").is_finite())
        .select("pair_id", "labeler", "labeler_group", "margin")
    )


def pair_margins(labels: pl.DataFrame, names: list[str]) -> pl.DataFrame:
    """(pair_id, margin): the mean valid margin per pair over the named labelers."""
    return label_margins(labels, names).group_by("pair_id").agg(pl.col("margin").mean())


def in_sources(frame: pl.DataFrame, sources: list[str] | None) -> pl.DataFrame:
    """The rows of a step's ``sources`` (all rows when it names none)."""
    return frame if sources is None else frame.filter(pl.col("source_dataset").is_in(sources))
