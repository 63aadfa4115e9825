"""Follow-up likelihood rewards (FLR): would a user thank the assistant, or complain?

A response is scored by how likely the model finds a satisfied user reaction after it, compared
with a dissatisfied one. The conversation [prompt..., assistant: y, user: f] is rendered with
the model's chat template and only the follow-up f's tokens are scored, as a user turn
(``score_logprobs(..., role="user")``). Why it works: a chat model has seen many conversations
in which users react to answers, so "That's wrong" is likelier after a wrong answer.

FLR(x, y) = mean over positive f of mean_t log p(f_t | x, y, f<t)
          - mean over negative f of mean_t log p(f_t | x, y, f<t)

Choices, where the paper's code (e0397123/FLR) leaves room:

* Its scoring code averages raw logits at one position, which looks like a bug; this is the
  quantity the paper describes (per-token mean log-prob of each follow-up, then means over the
  follow-ups), as ``TECHNIQUES.md`` asks.
* How the paper combines its six dimensions is not verified. The score here pools every
  distinct positive follow-up of all dimensions against every distinct negative one (a text
  listed twice counts once); each dimension's own score, positive and negative means are in
  ``details``. With equal list sizes per dimension (the defaults) the pooled score equals the
  mean of the dimension scores.
* The default lists (six dimensions, three reactions each way) are written for this project in
  the paper's spirit; the paper used ten each way. Cost grows with the list: each pair scores
  2 x (number of distinct follow-ups) texts, each after the full prompt and response.

Failures never become scores: an empty response or a scoring error for a pair makes that pair's
row invalid with the reason.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pyarrow as pa

from curation.errors import ConfigError
from curation.models.base import Conversation
from curation.stages.label.base import Labeler, PairView, pair_views
from curation.stages.label.config import FollowUpConfig, FollowUpLists
from curation.stages.label.logprobs import SLOTS, GroupScores, ScoreRequest, check_scoring_backend, mean, score_groups

DEFAULT_FOLLOW_UPS: dict[str, dict[str, list[str]]] = {
    "understanding": {
        "positive": ["You understood me perfectly.", "Yes, that's exactly what I meant.", "You got my question right."],
        "negative": ["You misunderstood what I was asking.", "That's not what I meant at all.", "You didn't get my question."],
    },
    "relevance": {
        "positive": ["That's right on point.", "That addresses my question directly.", "That's just what I was asking about."],
        "negative": ["That has nothing to do with my question.", "You're going off on a tangent.", "That doesn't address what I asked."],
    },
    "correctness": {
        "positive": ["Yes, that's correct.", "That's accurate, thank you.", "Right, those facts check out."],
        "negative": ["That's not true.", "Those facts are wrong.", "You made a mistake there."],
    },
    "engagingness": {
        "positive": ["That was fun to read!", "What an interesting way to put it.", "I enjoyed that, tell me more!"],
        "negative": ["That was dull.", "This is so boring.", "That reply was flat and lifeless."],
    },
    "informativeness": {
        "positive": ["That was really informative.", "Thanks, I learned something new.", "Lots of useful detail there, thanks."],
        "negative": ["That tells me nothing useful.", "That's too vague to help.", "You left out the details I need."],
    },
    "following": {
        "positive": ["You did exactly what I asked.", "Thanks for following my instructions.", "That's precisely the format I wanted."],
        "negative": ["You ignored my instructions.", "That's not what I told you to do.", "You didn't do what I asked."],
    },
}

# --------------------------------------------------------------------------- pure core


def follow_up_lists(cfg: FollowUpConfig) -> dict[str, FollowUpLists]:
    """The configured follow-ups (or the defaults), checked: configs built without validation
    reach here too, and an empty list would otherwise fail only at scoring time."""
    lists = cfg.follow_ups if cfg.follow_ups is not None else {d: FollowUpLists(**v) for d, v in DEFAULT_FOLLOW_UPS.items()}
    where = f"labeler {cfg.name!r}"
    if not lists:
        raise ConfigError(f"{where}: follow_ups is empty; give at least one dimension with positive and negative follow-ups")
    polarity: dict[str, str] = {}
    for dim, pair in lists.items():
        if not dim.strip():
            raise ConfigError(f"{where}: follow_ups has a dimension with an empty name")
        for side in ("positive", "negative"):
            texts = getattr(pair, side)
            if not texts:
                raise ConfigError(f"{where}: follow_ups.{dim}.{side} is empty; each dimension needs positive and negative follow-ups")
            if any(not t.strip() for t in texts):
                raise ConfigError(f"{where}: follow_ups.{dim}.{side} has an empty follow-up")
            for text in texts:
                if polarity.setdefault(text, side) != side:
                    raise ConfigError(f"{where}: the follow-up {text!r} is listed as both positive and negative")
    return dict(lists)


def distinct(texts: Sequence[str]) -> list[str]:
    return list(dict.fromkeys(texts))


def contrast(means: Mapping[str, float], positive: Sequence[str], negative: Sequence[str]) -> dict[str, float]:
    """Mean log-prob of the positive follow-ups minus that of the negative ones."""
    pos = mean([means[t] for t in distinct(positive)])
    neg = mean([means[t] for t in distinct(negative)])
    return {"score": pos - neg, "positive": pos, "negative": neg}


def flr(means: Mapping[str, float], lists: Mapping[str, FollowUpLists]) -> dict[str, Any]:
    """One response's FLR from each follow-up's mean token log-prob: pooled over all
    dimensions, and per dimension."""
    positive = [t for pair in lists.values() for t in pair.positive]
    negative = [t for pair in lists.values() for t in pair.negative]
    dimensions = {dim: contrast(means, pair.positive, pair.negative) for dim, pair in lists.items()}
    return {**contrast(means, positive, negative), "dimensions": dimensions}


# --------------------------------------------------------------------------- labeler


@dataclass(frozen=True)
class _Job:
    key: str  # the pair's position in the batch
    view: PairView


class FollowUpLikelihood(Labeler):
    kind = "follow_up"
    cfg: FollowUpConfig

    @classmethod
    def check(cls, cfg: FollowUpConfig, data_root: str | Path) -> None:
        follow_up_lists(cfg)
        check_scoring_backend(cfg.backend, data_root, f"labeler {cfg.name!r}")

    def models(self) -> list[str]:
        return [self.cfg.backend.model]

    def label(self, pairs: pa.Table) -> pa.Table:
        lists = follow_up_lists(self.cfg)  # before any model loads
        texts = distinct([t for pair in lists.values() for t in (*pair.positive, *pair.negative)])
        rows: list[dict[str, Any] | None] = []
        jobs: list[_Job] = []
        for i, view in enumerate(pair_views(pairs)):
            empty = [what for text, (_, what) in zip((view.response_a, view.response_b), SLOTS) if not text.strip()]
            if empty:
                rows.append(self.row(view.pair_id, None, None, verdict="invalid", error=f"the {empty[0]} is empty"))
            else:
                jobs.append(_Job(key=str(i), view=view))
                rows.append(None)
        if jobs:
            requests = [r for job in jobs for r in self._requests(job, texts)]
            scores = score_groups(self.backends.get(self.cfg.backend), requests, role="user")
            for job in jobs:
                rows[int(job.key)] = self._pair_row(job, scores[job.key], texts, lists)
        return self.table([r for r in rows if r is not None])

    @staticmethod
    def _requests(job: _Job, texts: list[str]) -> list[ScoreRequest]:
        out = []
        for response, (_, what) in zip((job.view.response_a, job.view.response_b), SLOTS):
            conversation: Conversation = [*job.view.prompt, {"role": "assistant", "content": response}]
            out.extend(ScoreRequest(job.key, conversation, f, f"follow-up {f!r} after the {what}") for f in texts)
        return out

    def _pair_row(self, job: _Job, scores: GroupScores, texts: list[str], lists: Mapping[str, FollowUpLists]) -> dict[str, Any]:
        pair_id = job.view.pair_id
        if scores.error:
            return self.row(pair_id, None, None, verdict="invalid", error=scores.error)
        n = len(texts)
        per_slot = {
            slot: flr(dict(zip(texts, (mean(lps) for lps in scores.values[k * n : (k + 1) * n]))), lists)
            for k, (slot, _) in enumerate(SLOTS)
        }
        details = {"pooling": "all dimensions' distinct follow-ups", "follow_ups": n, **per_slot}
        return self.row(pair_id, per_slot["a"]["score"], per_slot["b"]["score"], details=details)
