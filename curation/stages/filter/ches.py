"""CHES (Razin et al., "Unintentional Unalignment"): drop the pairs most prone to likelihood displacement.

DPO-style training can lower the likelihood of the *chosen* response when it is too similar
to the rejected one in the policy's representation space: the gradient that pushes the
rejected response down then drags the chosen one with it. CHES measures that similarity from
the policy's last-layer hidden states, summed over the positions that predict each response's
tokens (``ModelBackend.hidden_states``; S+ for chosen, S- for rejected):

    CHES    = <S+, S->            - ||S+||^2
    LN-CHES = <S+, S->/(|y+||y-|) - ||S+||^2/|y+|^2       (|y| = the response's token count)

Higher means more similar, hence more displacement. The step ranks the scored pairs and drops
the top ``drop_fraction`` (the paper's safety run kept only the 5 % with the lowest LN-CHES,
i.e. ``drop_fraction: 0.95``). The scores only make sense for the model that will be trained,
so ``backend`` should be the policy; only the in-process transformers backend serves hidden
states (HTTP servers do not return them), which ``check`` enforces before any work.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl

from curation.decisions import decisions_frame
from curation.errors import ConfigError
from curation.models.base import BackendError, ModelBackend, PooledHidden
from curation.records import response_text
from curation.stages.filter.base import PairSource, StepContext, StepResult, in_sources
from curation.stages.filter.config import ChesStep

REASON = "ches_displacement"
HIDDEN_STATE_BACKENDS = ("transformers",)
QUANTILES = {"min": 0.0, "q05": 0.05, "q25": 0.25, "median": 0.5, "q75": 0.75, "q95": 0.95, "max": 1.0}


# ----------------------------------------------------------------------------- pure core


def ches_scores(
    sum_chosen: np.ndarray, sum_rejected: np.ndarray, n_chosen: Sequence[int] | np.ndarray, n_rejected: Sequence[int] | np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """CHES and LN-CHES of every pair, from the summed hidden states (n, d) and token counts (n,).

    Computed in float64: ``||S+||^2`` and ``<S+, S->`` are large (sums of hundreds of vectors)
    and CHES is their difference, so float32 would lose the digits that rank close pairs.
    A pair with an empty response (count 0) gets NaN in both: nothing was measured for it
    (raw CHES of an empty chosen would be 0 by accident, not by similarity).
    """
    sp = np.asarray(sum_chosen, dtype=np.float64)
    sm = np.asarray(sum_rejected, dtype=np.float64)
    if sp.ndim != 2 or sp.shape != sm.shape:
        raise ValueError(f"sum_chosen and sum_rejected must both be (n, d); got {sp.shape} and {sm.shape}")
    np_ = np.asarray(n_chosen, dtype=np.float64)
    nm = np.asarray(n_rejected, dtype=np.float64)
    if np_.shape != (sp.shape[0],) or nm.shape != (sp.shape[0],):
        raise ValueError(f"token counts must be ({sp.shape[0]},); got {np_.shape} and {nm.shape}")
    cross = np.einsum("ij,ij->i", sp, sm)
    own = np.einsum("ij,ij->i", sp, sp)
    empty = (np_ <= 0) | (nm <= 0)
    with np.errstate(divide="ignore", invalid="ignore"):
        ches = cross - own
        ln_ches = cross / (np_ * nm) - own / (np_ * np_)
    ches[empty] = np.nan
    ln_ches[empty] = np.nan
    return ches, ln_ches


def n_to_drop(drop_fraction: float, n: int) -> int:
    """Pairs to drop out of ``n`` scored ones: ``drop_fraction * n`` rounded down (0.1 of 5
    drops none), so a step never drops more than it was asked to. The product is rounded to
    9 decimals first so float artefacts (0.29 * 100 = 28.999999999999996) do not lose a pair."""
    return min(n, math.floor(round(drop_fraction * n, 9)))


def top_indices(scores: np.ndarray, k: int) -> np.ndarray:
    """Indices of the ``k`` highest finite scores; ties broken by position (pair order), so the
    choice is deterministic."""
    finite = np.flatnonzero(np.isfinite(scores))
    order = finite[np.argsort(-scores[finite], kind="stable")]
    return order[:k]


def quantiles(values: np.ndarray) -> dict[str, float] | None:
    finite = values[np.isfinite(values)]
    if finite.size == 0:
        return None
    return {name: float(np.quantile(finite, q)) for name, q in QUANTILES.items()}


# ----------------------------------------------------------------------------- the step


def check(cfg: ChesStep, data_root: str | Path) -> None:
    """Fail before any work when the configured backend cannot give CHES its hidden states."""
    backend = cfg.backend
    if backend.backend not in HIDDEN_STATE_BACKENDS:
        raise ConfigError(
            f"filter step {cfg.stage_name!r}: CHES needs the policy model's last-layer hidden states, which only the "
            f"transformers backend serves (backend {backend.backend!r} cannot: servers do not return hidden states). "
            "Use `backend: transformers` with `model:` the local folder of the policy model you will train "
            "(or 'smollm2' for the shipped SmolLM2)"
        )
    from curation.models import check_backend
    from curation.models.reward_head import classifier_head

    if head := classifier_head(backend.model):
        raise ConfigError(
            f"filter step {cfg.stage_name!r}: model {backend.model!r} is a reward model ({head[0]}), not a causal LM; "
            "CHES needs the policy model (the causal LM you will train)"
        )
    check_backend(backend, data_root)


def selected(frame: pl.DataFrame, sources: list[str] | None, limit: int | None) -> pl.DataFrame:
    """The (pair_id, source_dataset) rows the step scores: only ``sources`` when given, and at
    most the first ``limit`` pairs of each source in pair order."""
    frame = in_sources(frame, sources)
    if limit is not None:
        frame = frame.filter(pl.int_range(pl.len()).over("source_dataset") < limit)
    return frame


def run(cfg: ChesStep, pairs: PairSource, labels: pl.DataFrame, ctx: StepContext) -> StepResult:
    """Score the selected pairs with the policy's hidden states and drop the most displacing.

    ``labels`` is not used: CHES looks at the policy, not at any labeler."""
    wanted = selected(pairs.frame(["pair_id", "source_dataset"]), cfg.sources, cfg.limit)["pair_id"]
    ids: list[str] = []
    pooled: list[tuple[PooledHidden, PooledHidden] | None] = []
    failures: list[str] = []
    ctx.progress.start(f"filter: {cfg.stage_name}", len(wanted))
    try:
        if len(wanted):
            if ctx.backends is None:
                raise ConfigError(f"filter step {cfg.stage_name!r}: CHES needs a model backend, but the step was given none")
            backend = ctx.backends.get(cfg.backend)
            for block in _blocks(pairs, wanted, cfg.batch_size):
                ids.extend(block["pair_id"].to_list())
                pooled.extend(_pool(backend, block, failures))
                ctx.progress.advance(block.height)
    finally:
        ctx.progress.finish()
    return _decide(cfg, ids, pooled, failures)


def _blocks(pairs: PairSource, wanted: pl.Series, size: int) -> Iterator[pl.DataFrame]:
    """The wanted pairs in pair order, ``size`` at a time, streamed (the texts of all pairs are
    never held at once; a ``limit`` over a big table still reads only batches)."""
    buffer: list[pl.DataFrame] = []
    held = 0
    for batch in pairs.batches(["pair_id", "prompt", "chosen", "rejected"], size):
        part = batch.filter(pl.col("pair_id").is_in(wanted.implode()))
        if part.height:
            buffer.append(part)
            held += part.height
        while held >= size:
            block = pl.concat(buffer)
            yield block.head(size)
            rest = block.slice(size)
            buffer, held = ([rest] if rest.height else []), rest.height
    if held:
        yield pl.concat(buffer)


def _conversation(prompt: list[dict[str, Any]] | None) -> list[dict[str, str]]:
    return [{"role": m["role"], "content": m["content"]} for m in prompt or []]


def _pool(backend: ModelBackend, block: pl.DataFrame, failures: list[str]) -> list[tuple[PooledHidden, PooledHidden] | None]:
    """Pooled hidden states of (chosen, rejected) per pair, in one model call for the block:
    chosen and rejected go together so the backend can sort all of them by length (less
    padding). A block the backend rejects (a pair longer than the context) is retried pair by
    pair, so one bad pair costs only itself: it gets None and its error is kept."""
    convs = [_conversation(p) for p in block["prompt"].to_list()]
    chosen = [response_text(r) for r in block["chosen"].to_list()]
    rejected = [response_text(r) for r in block["rejected"].to_list()]
    try:
        states = backend.hidden_states(convs + convs, chosen + rejected)
        return [(states[i], states[len(convs) + i]) for i in range(len(convs))]
    except BackendError as err:
        if block.height == 1:
            failures.append(f"{block['pair_id'][0]}: {err}")
            return [None]
    return [p for i in range(block.height) for p in _pool(backend, block.slice(i, 1), failures)]


def _decide(cfg: ChesStep, ids: list[str], pooled: list[tuple[PooledHidden, PooledHidden] | None], failures: list[str]) -> StepResult:
    n = len(ids)
    if failures and len(failures) == n:
        raise BackendError(f"filter step {cfg.stage_name!r}: no pair could be scored; first error: {failures[0]}")
    ches = np.full(n, np.nan)
    ln_ches = np.full(n, np.nan)
    ok = [i for i, p in enumerate(pooled) if p is not None]
    if ok:
        sp = np.stack([pooled[i][0].sum for i in ok])  # type: ignore[index]
        sm = np.stack([pooled[i][1].sum for i in ok])  # type: ignore[index]
        counts_p = np.array([pooled[i][0].n_tokens for i in ok])  # type: ignore[index]
        counts_m = np.array([pooled[i][1].n_tokens for i in ok])  # type: ignore[index]
        ches[ok], ln_ches[ok] = ches_scores(sp, sm, counts_p, counts_m)
        empty = int(((counts_p == 0) | (counts_m == 0)).sum())
    else:
        empty = 0
    rank_by = ln_ches if cfg.normalised else ches
    scored = int(np.isfinite(rank_by).sum())
    k = n_to_drop(cfg.drop_fraction, scored)
    drop = top_indices(rank_by, k)
    decision = ["kept"] * n
    reason: list[str | None] = [None] * n
    for i in drop:
        decision[i], reason[i] = "filtered", REASON
    out = decisions_frame(ids, decision, reason, ches=_nullable(ches), ln_ches=_nullable(ln_ches))
    summary: dict[str, Any] = {
        "model": cfg.backend.model,
        "ranked_by": "ln_ches" if cfg.normalised else "ches",
        "drop_fraction": cfg.drop_fraction,
        "judged": n,
        "scored": scored,
        "dropped": k,
        "threshold": float(rank_by[drop].min()) if k else None,
        "unscored_empty_response": empty,
        "unscored_errors": len(failures),
        "quantiles": {"ches": quantiles(ches), "ln_ches": quantiles(ln_ches)},
    }
    if failures:
        summary["errors"] = failures[:5]
    return StepResult(out, scores=["ches", "ln_ches"], summary=summary)


def _nullable(values: np.ndarray) -> list[float | None]:
    return [float(v) if np.isfinite(v) else None for v in values]
