"""Batched log-prob scoring for the likelihood labelers (density ratio, follow-up likelihood).

Both labelers score many (conversation, text) requests per pair. They go to the backend in one
``score_logprobs`` call per chunk of pairs, since batching is where a CPU or GPU backend gets
its speed. A failure must not cost the whole chunk, though: when the batched call raises, each
pair is scored again on its own, so one bad pair (too long for the context, a template that
rejects its turns) becomes an invalid label with the error and the others are still scored.

What counts as fatal rather than per-pair: a ``ConfigError`` always; ``Unsupported`` only when
it hits every pair, because then the backend lacks the capability (an HTTP server without
prompt log-probs). Some backends also report a per-request rejection as ``Unsupported``, so a
single pair's ``Unsupported`` stays that pair's error.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from curation.errors import ConfigError
from curation.models import check_backend
from curation.models.base import Conversation, ModelBackend
from curation.models.config import BackendConfig
from curation.stages.label.base import isolate_failures

SCORING_BACKENDS = ("transformers", "vllm", "openai")
SLOTS = (("a", "chosen response"), ("b", "rejected response"))  # a pair's two scored texts, in label-row order


@dataclass(frozen=True)
class ScoreRequest:
    """One text to score after ``conversation``; ``group`` is the pair it belongs to and
    ``what`` names the text in error messages ("chosen response", "follow-up 3")."""

    group: str
    conversation: Conversation
    text: str
    what: str


@dataclass
class GroupScores:
    """Per-token log-probs of each of a group's requests (in request order), or why not."""

    values: list[list[float]]
    error: str | None = None


def check_scoring_backend(cfg: BackendConfig, data_root: str | Path, what: str) -> None:
    """A backend that can serve teacher-forced log-probs, checked without loading weights."""
    if cfg.backend not in SCORING_BACKENDS:
        raise ConfigError(f"{what}: backend {cfg.backend!r} cannot score log-probs; use one of {', '.join(SCORING_BACKENDS)}")
    if cfg.backend == "openai" and not cfg.tokenizer:
        raise ConfigError(
            f"{what}: the openai backend scores log-probs by rendering the chat template locally; "
            "set tokenizer (e.g. 'smollm2' or the served model's tokenizer folder)"
        )
    check_backend(cfg, data_root)


def score_groups(backend: ModelBackend, requests: Sequence[ScoreRequest], role: str = "assistant") -> dict[str, GroupScores]:
    """Every request scored, in one backend call when it succeeds; failures isolated per group
    (``isolate_failures``)."""
    groups: dict[str, list[ScoreRequest]] = {}
    for r in requests:
        groups.setdefault(r.group, []).append(r)

    def score(batch: Sequence[list[ScoreRequest]]) -> list[GroupScores]:
        flat = [r for group in batch for r in group]
        collected = _collect(flat, _call(backend, flat, role))
        return [collected[group[0].group] for group in batch]

    results = isolate_failures(list(groups.values()), score)
    return {g: r if isinstance(r, GroupScores) else GroupScores(values=[], error=r) for g, r in zip(groups, results)}


def _call(backend: ModelBackend, requests: Sequence[ScoreRequest], role: str) -> list[list[float]]:
    values = backend.score_logprobs([r.conversation for r in requests], [r.text for r in requests], role=role)
    if len(values) != len(requests):
        raise RuntimeError(f"the backend returned {len(values)} results for {len(requests)} texts")
    return values


def _collect(requests: Sequence[ScoreRequest], values: list[list[float]]) -> dict[str, GroupScores]:
    """Values grouped by pair; a text without tokens or with a non-finite log-prob fails its pair."""
    out: dict[str, GroupScores] = {}
    for request, lps in zip(requests, values):
        scores = out.setdefault(request.group, GroupScores(values=[]))
        if scores.error:
            continue
        if not lps:
            scores.error = f"the {request.what} has no tokens to score"
        elif not all(math.isfinite(v) for v in lps):
            scores.error = f"the {request.what} got a non-finite log-prob"
        else:
            scores.values.append([float(v) for v in lps])
    for scores in out.values():
        if scores.error:
            scores.values = []
    return out


def mean(values: Sequence[float]) -> float:
    return math.fsum(values) / len(values)
