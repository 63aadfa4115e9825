"""Multi-reward-model voting (Secrets of RLHF II, arXiv 2401.06080): flip the pairs the voters
confidently disagree with, drop the ambiguous ones, keep every voted pair's strength.

Every labeler row selected by ``cfg.labelers`` is one voter (an ensemble group stands for its
members). For pair i and voter m, d_im is the voter's margin (> 0 agrees with the pair's label).
With ``standardise`` each voter's margins are divided by that voter's population std over all the
pairs it labelled here, so a voter on a scale ten times larger does not outvote the others; the
sign, and so "agrees with the label", is untouched. Per pair: mu_i = mean and sigma_i = population
std of d_im over its voters; pairs with fewer than ``min_votes`` voters get no decision.

Rules:

* ``quantile`` (the paper): sort by mu; pairs in the lowest ``flip_quantile`` fraction whose
  mu < 0 are flipped, the rest of the pairs below ``ambiguous_quantile`` are ambiguous. Bands are
  counted in pairs (k = floor(q * n) lowest), ties in mu broken by the pairs' order.
* ``threshold``: flipped when mu < ``flip_below`` (and sigma <= ``max_std`` when set); ambiguous
  when |mu| <= ``ambiguous_within`` or sigma > ``max_std``.
* ``confidence``: a test on the mean of the votes. Flipped when the voters' mean is below 0 by
  more than z standard errors: mu < 0 and |mu| > z * sigma / sqrt(M) with M the pair's voters;
  ambiguous when it is neither side of 0 by that much. Unlike the paper's fixed 20 % it flags
  more pairs where more labels are wrong. Members trained on overlapping data are correlated,
  so z is a tuning knob, not a calibrated test level.

Measured by ``benchmarks/label_noise.py`` (k % of real HH-RLHF / PandaLM labels swapped, the
10-member MiniLM BT ensemble trained on the noisy labels, 3 seeds): F1 of finding the swapped
pairs at k = 10 / 20 / 30, paper quantile rule 0.22 / 0.32 / 0.35 (HH) and 0.25 / 0.30 / 0.36
(PandaLM); confidence z = 0.5 0.24 / 0.38 / 0.45 and 0.24 / 0.38 / 0.45; cleanlab on the same
features 0.25 / 0.38 / 0.45 and 0.24 / 0.37 / 0.46. The paper's rule stays the default: the
confidence rule ties it at 10 % on PandaLM, and it flags twice as many pairs. With this weak
ensemble (held-out accuracy ~0.6) every rule's precision is below 0.5, so flipping breaks more
correct labels than it fixes; flip only with voters that are right far more often, or drop
(``flip_quantile: 0`` turns the whole band into ambiguous pairs).

Ambiguous pairs are filtered (reason ``ambiguous_strength``) when ``cfg.ambiguous == "drop"``,
else kept; either way their strength goes out as a soft label.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import polars as pl

from curation.decisions import decisions_frame
from curation.stages.filter.base import PairSource, StepContext, StepResult, in_sources, label_margins
from curation.stages.filter.config import VotingStep

FLIP_REASON = "ensemble_disagrees"
AMBIGUOUS_REASON = "ambiguous_strength"
AGREEMENT_BAND = 0.1  # the paper's check compares its strongest and weakest pairs; here the top and bottom 10 %


def voter_margins(labels: pl.DataFrame, names: list[str], pair_ids: pl.Series, standardise: bool) -> pl.DataFrame:
    """(pair_id, labeler, margin) for the given pairs, each voter's margins divided by that
    voter's population std over them when ``standardise`` (a voter with a constant margin keeps
    its margins: there is no scale to divide by)."""
    votes = label_margins(labels, names).filter(pl.col("pair_id").is_in(pair_ids.implode()))
    if standardise:
        scale = pl.col("margin").std(ddof=0).over("labeler")
        votes = votes.with_columns(margin=pl.when(scale > 0).then(pl.col("margin") / scale).otherwise(pl.col("margin")))
    return votes


def strengths(votes: pl.DataFrame) -> pl.DataFrame:
    """Per pair: mu (mean), sigma (population std), votes (M) and agree (votes with d > 0)."""
    return votes.group_by("pair_id").agg(
        mu=pl.col("margin").mean(),
        sigma=pl.col("margin").std(ddof=0),
        votes=pl.len().cast(pl.Int64),
        agree=(pl.col("margin") > 0).sum().cast(pl.Int64),
    )


def band_size(fraction: float, n: int) -> int:
    return min(n, math.floor(fraction * n + 1e-9))


def classify(cfg: VotingStep, mu: np.ndarray, sigma: np.ndarray, votes: np.ndarray) -> tuple[np.ndarray, np.ndarray, dict[str, Any]]:
    """Boolean masks (flipped, ambiguous) over pairs in their given order, and the cut-offs used.
    A pair is never both."""
    n = mu.size
    cutoffs: dict[str, Any] = {"rule": cfg.rule}
    if cfg.rule == "quantile":
        order = np.argsort(mu, kind="stable")
        rank = np.empty(n, dtype=np.int64)
        rank[order] = np.arange(n)
        n_flip, n_ambiguous = band_size(cfg.flip_quantile, n), band_size(max(cfg.ambiguous_quantile, cfg.flip_quantile), n)
        flipped = (rank < n_flip) & (mu < 0)
        ambiguous = (rank < n_ambiguous) & ~flipped
        cutoffs |= {
            "flip_band_pairs": n_flip,
            "ambiguous_band_pairs": n_ambiguous - n_flip,
            "flip_band_max_mu": float(mu[order[n_flip - 1]]) if n_flip else None,
            "ambiguous_band_max_mu": float(mu[order[n_ambiguous - 1]]) if n_ambiguous > n_flip else None,
        }
    elif cfg.rule == "threshold":
        spread_ok = np.ones(n, dtype=bool) if cfg.max_std is None else sigma <= cfg.max_std
        flipped = (mu < cfg.flip_below) & spread_ok
        ambiguous = ((np.abs(mu) <= cfg.ambiguous_within) | ~spread_ok) & ~flipped
        cutoffs |= {"flip_below": cfg.flip_below, "ambiguous_within": cfg.ambiguous_within, "max_std": cfg.max_std}
    else:
        bound = cfg.z * sigma / np.sqrt(votes)
        flipped = (mu < 0) & (-mu > bound)
        ambiguous = (np.abs(mu) <= bound) & ~flipped
        cutoffs |= {"z": cfg.z}
    if flipped.any():
        cutoffs["flipped_max_mu"] = float(mu[flipped].max())
    if ambiguous.any():
        cutoffs["ambiguous_mu_range"] = [float(mu[ambiguous].min()), float(mu[ambiguous].max())]
    return flipped, ambiguous, cutoffs


def agreement_check(mu: np.ndarray, votes: np.ndarray, agree: np.ndarray, band: float = AGREEMENT_BAND) -> dict[str, Any]:
    """The paper's sanity check: how often the voters' majority agrees with the pair's label in
    the strongest and in the weakest ``band`` of pairs by mu (the paper: 0.956 vs 0.164 against
    GPT-4 labels). A ratio near 1 in the top band and near 0 in the bottom one says the strength
    orders pairs the way the labels' reliability does."""
    n = band_size(band, mu.size) or min(1, mu.size)
    if not n:
        return {"band_pairs": 0, "strongest": None, "weakest": None}
    order = np.argsort(mu, kind="stable")
    majority = 2 * agree > votes
    return {
        "band_pairs": int(n),
        "strongest": float(majority[order[-n:]].mean()),
        "weakest": float(majority[order[:n]].mean()),
        "all": float(majority.mean()),
    }


def run(cfg: VotingStep, pairs: PairSource, labels: pl.DataFrame, ctx: StepContext) -> StepResult:
    """Decisions for every pair with at least ``min_votes`` voters, and ``pair_values`` with its
    strength (``preference_strength`` = mu, ``preference_strength_std`` = sigma).

    The strength is oriented as the pair will be published: the stage swaps chosen and rejected
    of a flipped pair, so its ``preference_strength`` is -mu (positive: the voters prefer what
    becomes its chosen response); kept and ambiguous pairs get mu as is.
    """
    frame = in_sources(pairs.frame(["pair_id", "source_dataset"]), cfg.sources)
    per_pair = strengths(voter_margins(labels, cfg.labelers, frame["pair_id"], cfg.standardise))
    voted = frame.select("pair_id").join(per_pair, on="pair_id", how="inner", maintain_order="left")
    voted = voted.filter(pl.col("votes") >= cfg.min_votes)

    mu, sigma = voted["mu"].to_numpy().astype(np.float64), voted["sigma"].to_numpy().astype(np.float64)
    votes, agree = voted["votes"].to_numpy(), voted["agree"].to_numpy()
    flipped, ambiguous, cutoffs = classify(cfg, mu, sigma, votes)

    decision = np.where(flipped, "flipped", np.where(ambiguous & (cfg.ambiguous == "drop"), "filtered", "kept"))
    reason = np.where(flipped, FLIP_REASON, np.where(decision == "filtered", AMBIGUOUS_REASON, None))
    decisions = decisions_frame(
        voted["pair_id"],
        decision.tolist(),
        reason.tolist(),
        strength_mean=mu.tolist(),
        strength_std=sigma.tolist(),
        votes=votes.astype(np.float64).tolist(),
    )
    pair_values = pl.DataFrame(
        {
            "pair_id": voted["pair_id"],
            "preference_strength": pl.Series(np.where(flipped, -mu, mu), dtype=pl.Float64),
            "preference_strength_std": pl.Series(sigma, dtype=pl.Float64),
        }
    )
    summary = {
        "labelers": cfg.labelers,
        "standardise": cfg.standardise,
        "judged": int(voted.height),
        "too_few_votes": int(frame.height - voted.height),
        "flipped": int(flipped.sum()),
        "ambiguous": int(ambiguous.sum()),
        "ambiguous_decision": "filtered" if cfg.ambiguous == "drop" else "kept",
        "kept": int((decision == "kept").sum()),
        "filtered": int((decision == "filtered").sum()),
        "cutoffs": cutoffs,
        "agreement": agreement_check(mu, votes, agree),
    }
    return StepResult(decisions=decisions, scores=["strength_mean", "strength_std", "votes"], summary=summary, pair_values=pair_values)
