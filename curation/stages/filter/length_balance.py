"""Length balance: drop the fewest pairs so that "the chosen response is the longer one" stops
being a shortcut.

Reward models and DPO learn length when the chosen response is usually the longer one (or the
shorter one: HH-RLHF's harmless split prefers short refusals). Per source, with ``L`` pairs
whose chosen response is longer and ``S`` whose chosen response is shorter, the share is
``L / (L + S)``. Pairs of equal length count on neither side: they teach no length preference,
and they are never dropped. A response's length is the characters (Unicode code points) of
its messages' contents, summed.

The share must end within ``[lo, hi] = [target - tolerance, target + tolerance]``. When it
is above ``hi``, exactly ``k = L - floor(hi * S / (1 - hi))`` chosen-longer pairs go: the
smallest ``k`` with ``(L - k) / (L - k + S) <= hi``, so the share lands on the upper edge, not
on the target. Below ``lo`` it is the mirror image: ``k = S - floor((1 - lo) * L / lo)``
chosen-shorter pairs go. The bounds are taken as the decimals written in the recipe
(``Fraction``), so the count is exact, never off by one through floating point. A source whose
pairs all lean one way can only be balanced by dropping that whole side (its equal-length
pairs stay); the summary shows it.

Only the over-represented side loses pairs, and the share moves in steps of about
``1 / pairs``. So a band narrower than one step (``tolerance: 0``, or a source with fewer than
about ``1 / (2 * tolerance)`` pairs of unequal length) can be jumped over: the share then ends
just past the edge it crossed, never back past the edge it started beyond, and the source's
summary says ``within_target: false`` (the step's ``off_target`` lists such sources).

Which pairs of the over-represented side go: those with the smallest
``sha256(seed, pair_id)``, so the choice depends on the seed and the pairs, not on their order
or the machine. Every judged pair gets a decisions row with the scores ``len_chosen`` and
``len_rejected``; dropped ones have reason ``length_balance_chosen_longer`` or
``length_balance_chosen_shorter``.
"""

from __future__ import annotations

import hashlib
from fractions import Fraction
from typing import Any

import polars as pl

from curation.decisions import decisions_frame
from curation.messages import message_chars
from curation.stages.filter.base import PairSource, StepContext, StepResult, in_sources
from curation.stages.filter.config import LengthBalanceStep

REASONS = {1: "length_balance_chosen_longer", -1: "length_balance_chosen_shorter"}
BATCH = 20_000
"""Pairs read at a time: only their lengths are kept."""


def lengths(pairs: PairSource, sources: list[str] | None = None) -> pl.DataFrame:
    """(pair_id, source_dataset, len_chosen, len_rejected, side) of the pairs, read in batches;
    ``side`` is 1 when the chosen response is longer, -1 when shorter, 0 when equal."""
    parts = [
        in_sources(batch, sources).select(
            "pair_id", "source_dataset", len_chosen=message_chars("chosen"), len_rejected=message_chars("rejected")
        )
        for batch in pairs.batches(["pair_id", "source_dataset", "chosen", "rejected"], BATCH)
    ]
    schema = {"pair_id": pl.String, "source_dataset": pl.String, "len_chosen": pl.Int64, "len_rejected": pl.Int64}
    frame = pl.concat(parts) if parts else pl.DataFrame(schema=schema)
    return frame.with_columns(side=(pl.col("len_chosen") - pl.col("len_rejected")).sign().cast(pl.Int8))


def excess(majority: int, minority: int, bound: Fraction) -> int:
    """The fewest ``majority`` pairs to drop so that ``majority / (majority + minority) <= bound``
    (0 < bound < 1): keep at most ``floor(bound * minority / (1 - bound))`` of them."""
    return max(0, majority - (bound * minority) // (1 - bound))


def bounds(target: float, tolerance: float) -> tuple[Fraction, Fraction]:
    """(lo, hi) as the decimals written in the recipe."""
    t, tol = Fraction(str(target)), Fraction(str(tolerance))
    return t - tol, t + tol


def to_drop(longer: int, shorter: int, target: float, tolerance: float) -> tuple[int, int]:
    """(side, count): how many pairs of which side (1 chosen-longer, -1 chosen-shorter) must go
    so that the share ``longer / (longer + shorter)`` is no longer above target + tolerance
    (or below target - tolerance); (0, 0) when it is within."""
    lo, hi = bounds(target, tolerance)
    if hi < 1 and (k := excess(longer, shorter, hi)):
        return 1, k
    if lo > 0 and (k := excess(shorter, longer, 1 - lo)):
        return -1, k
    return 0, 0


def share(longer: int, shorter: int) -> float | None:
    return longer / (longer + shorter) if longer + shorter else None


def seeded_rank(pair_id: str, seed: int) -> int:
    """A pair's place in the seeded order: the same on every machine and run (not ``hash()``)."""
    return int.from_bytes(hashlib.sha256(f"{seed}\x1f{pair_id}".encode()).digest()[:8], "big")


def run(cfg: LengthBalanceStep, pairs: PairSource, labels: pl.DataFrame, ctx: StepContext) -> StepResult:
    frame = lengths(pairs, cfg.sources)
    lo, hi = bounds(cfg.target, cfg.tolerance)
    dropped: dict[str, str] = {}
    per_source: dict[str, dict[str, Any]] = {}
    for source in frame["source_dataset"].unique(maintain_order=True).to_list():
        mine = frame.filter(pl.col("source_dataset") == source)
        counts = dict(mine.group_by("side").len().iter_rows())
        longer, shorter = counts.get(1, 0), counts.get(-1, 0)
        side, k = to_drop(longer, shorter, cfg.target, cfg.tolerance)
        if k:
            candidates = mine.filter(pl.col("side") == side)["pair_id"].to_list()
            for pid in sorted(candidates, key=lambda p: seeded_rank(p, cfg.seed))[:k]:
                dropped[pid] = REASONS[side]
        after = (longer - k, shorter) if side == 1 else (longer, shorter - k)
        within = sum(after) == 0 or lo <= Fraction(after[0], sum(after)) <= hi
        per_source[source] = {
            "pairs": mine.height,
            "chosen_longer": longer,
            "chosen_shorter": shorter,
            "equal_length": counts.get(0, 0),
            "share_before": share(longer, shorter),
            "share_after": share(*after),
            "filtered": k,
            "side_dropped": {1: "chosen_longer", -1: "chosen_shorter"}.get(side),
            "within_target": within,
        }
    reason = [dropped.get(pid) for pid in frame["pair_id"].to_list()]
    decisions = decisions_frame(
        frame["pair_id"],
        ["kept" if r is None else "filtered" for r in reason],
        reason,
        len_chosen=frame["len_chosen"],
        len_rejected=frame["len_rejected"],
    )
    summary = {
        "target": cfg.target,
        "tolerance": cfg.tolerance,
        "seed": cfg.seed,
        "sources": per_source,
        "pairs": frame.height,
        "filtered": len(dropped),
        "off_target": [name for name, s in per_source.items() if not s["within_target"]],
    }
    return StepResult(decisions=decisions, scores=["len_chosen", "len_rejected"], summary=summary)
