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
from curation.models.base import Conversation, ModelBackend, Unsupported
from curation.models.config import BackendConfig

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
    """Every request scored, in one backend call when it succeeds; failures isolated per group."""
    if not requests:
        return {}
    groups = list(dict.fromkeys(r.group for r in requests))
    try:
        return _collect(requests, _call(backend, requests, role))
    except ConfigError:
        raise
    except Exception as err:  # noqa: BLE001 - any backend failure: find the pair(s) that caused it
        if len(groups) > 1:
            return _one_by_one(backend, requests, groups, role)
        if isinstance(err, Unsupported):
            raise
        return {groups[0]: GroupScores(values=[], error=_failure(err))}


def _call(backend: ModelBackend, requests: Sequence[ScoreRequest], role: str) -> list[list[float]]:
    values = backend.score_logprobs([r.conversation for r in requests], [r.text for r in requests], role=role)
    if len(values) != len(requests):
        raise RuntimeError(f"the backend returned {len(values)} results for {len(requests)} texts")
    return values


def _one_by_one(backend: ModelBackend, requests: Sequence[ScoreRequest], groups: list[str], role: str) -> dict[str, GroupScores]:
    out: dict[str, GroupScores] = {}
    unsupported: list[Unsupported] = []
    for group in groups:
        mine = [r for r in requests if r.group == group]
        try:
            out.update(_collect(mine, _call(backend, mine, role)))
        except ConfigError:
            raise
        except Exception as err:  # noqa: BLE001 - recorded as this pair's error, never a score
            if isinstance(err, Unsupported):
                unsupported.append(err)
            out[group] = GroupScores(values=[], error=_failure(err))
    if len(unsupported) == len(groups):
        raise unsupported[0]
    return out


def _failure(err: Exception) -> str:
    return f"scoring failed: {type(err).__name__}: {err}"


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
