"""Density-ratio rewards (CDR): how much more an aligned model likes a response than a less
aligned one.

r(x, y) = sum_t log p_strong(y_t | x, y<t) - sum_t log p_weak(y_t | x, y<t), over the
response's tokens only. Why it works: alignment moves probability mass towards preferred
responses, so the ratio of an aligned model over its less aligned parent acts as an implicit
reward (the DPO reward with beta = 1 when strong is a DPO policy and weak its reference). The
paper's best pair is a DPO model over its SFT parent; a bigger alignment gap helps. On the CPU
default that is SmolLM2-135M-Instruct (aligned) over Gemma-3-270M base.

Choices, where the official code (gx-ai-architect/CDR-preference-annotation) leaves room:

* Each model renders the conversation with its own chat template and tokenizer (through
  ``score_logprobs``); the official code feeds one formatted text to two models that share a
  tokenizer, which two different model families cannot do. The ratio is still over the same
  response text, each side summing its own tokens.
* The official code sums; ``length_normalize`` switches to per-token means,
  ``mean_strong - mean_weak`` (each over its own token count). Both variants and the raw sums
  and counts are recorded in ``details`` either way.
* Customisation goes to the strong model only (the weak model always scores the plain
  conversation): ``criteria_system_prompt`` replaces the strong side's system prompt (as the
  official code replaces an existing one), and with ``exemplars`` one exemplar, drawn per pair
  from ``seed`` and the pair id (the same for both responses of a pair, reproducible), is put
  into the last user turn as the paper does: ``"<exemplar>\\n<query>\\nGood Assistant:"``
  (``exemplar_cue`` sets or drops the last line). Note: the official scripts build one
  customised prompt and score it with both models; here the weak side stays plain, so the
  customisation's effect on the strong model is what moves the reward.
* The paper's prompt classifier (SAFETY / REASONING / CHAT) is not reproduced: give the labeler
  the exemplar pool that fits the data, or run one labeler per domain.

Failures never become scores: an empty response or a scoring error for a pair makes that
pair's row invalid with the reason (see ``curation.stages.label.logprobs`` for how one bad pair is
isolated from its batch).
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pyarrow as pa

from curation.errors import ConfigError
from curation.models.base import Conversation, with_system
from curation.models.config import BackendConfig
from curation.models.local_models import shipped_model
from curation.stages.label.base import Labeler, PairView, pair_views
from curation.stages.label.config import DensityRatioConfig
from curation.stages.label.logprobs import SLOTS, GroupScores, ScoreRequest, check_scoring_backend, score_groups

# --------------------------------------------------------------------------- pure core


def log_ratio(strong: Sequence[float], weak: Sequence[float]) -> dict[str, float | int]:
    """One response's density ratio, summed and per-token, with the parts it comes from."""
    strong_sum, weak_sum = math.fsum(strong), math.fsum(weak)
    return {
        "sum": strong_sum - weak_sum,
        "mean": strong_sum / len(strong) - weak_sum / len(weak),
        "strong_sum": strong_sum,
        "weak_sum": weak_sum,
        "strong_tokens": len(strong),
        "weak_tokens": len(weak),
    }


def same_model(a: BackendConfig, b: BackendConfig) -> bool:
    """Whether two backend sections name one model: the same identity, alias of one shipped
    model ("smollm2" and "HuggingFaceTB/SmolLM2-135M-Instruct") or the same local folder."""
    if a.identity() == b.identity():
        return True
    shipped_a, shipped_b = shipped_model(a.model), shipped_model(b.model)
    if shipped_a or shipped_b:
        return shipped_a == shipped_b
    return Path(a.model).expanduser().resolve() == Path(b.model).expanduser().resolve()


def exemplar_index(seed: int, pair_id: str, n: int) -> int | None:
    """Which exemplar a pair gets: a hash of (seed, pair id), so the draw depends on nothing
    else (not the batch, not the process) and both responses of the pair share it."""
    if n == 0:
        return None
    digest = hashlib.sha256(f"{seed}\x00{pair_id}".encode()).digest()
    return int.from_bytes(digest[:8], "big") % n


def strong_conversation(prompt: Conversation, system: str | None, exemplar: str | None, cue: str) -> Conversation:
    """The prompt as the strong model sees it: the criteria system prompt, and the exemplar in
    front of the last user turn (the query the responses answer)."""
    conversation = with_system(prompt, system)
    if exemplar is None:
        return conversation
    last = max((i for i, m in enumerate(conversation) if m["role"] == "user"), default=None)
    if last is None:
        raise ValueError("the prompt has no user turn to put the exemplar in")
    query = "\n".join(part for part in (exemplar, conversation[last]["content"], cue) if part)
    return [*conversation[:last], {"role": "user", "content": query}, *conversation[last + 1 :]]


# --------------------------------------------------------------------------- labeler


@dataclass(frozen=True)
class _Job:
    """One pair ready to score (``key``: its position in the batch): the conversation the strong
    model sees and the exemplar drawn."""

    key: str
    view: PairView
    strong_prompt: Conversation
    exemplar: int | None


class DensityRatio(Labeler):
    kind = "density_ratio"
    cfg: DensityRatioConfig

    @classmethod
    def check(cls, cfg: DensityRatioConfig, data_root: str | Path) -> None:
        if same_model(cfg.strong, cfg.weak):
            raise ConfigError(
                f"labeler {cfg.name!r}: strong and weak are the same model ({cfg.strong.model!r}); "
                "a density ratio of a model over itself is 0 for every response. Use an aligned model over a less aligned one"
            )
        if cfg.criteria_system_prompt is not None and not cfg.criteria_system_prompt.strip():
            raise ConfigError(f"labeler {cfg.name!r}: criteria_system_prompt is empty; leave it out for the plain ratio")
        if any(not e.strip() for e in cfg.exemplars):
            raise ConfigError(f"labeler {cfg.name!r}: exemplars must not be empty strings")
        check_scoring_backend(cfg.strong, data_root, f"labeler {cfg.name!r} (strong)")
        check_scoring_backend(cfg.weak, data_root, f"labeler {cfg.name!r} (weak)")

    def models(self) -> list[str]:
        return [self.cfg.strong.model, self.cfg.weak.model]

    def label(self, pairs: pa.Table) -> pa.Table:
        rows: list[dict[str, Any] | None] = []
        jobs: list[_Job] = []
        for i, view in enumerate(pair_views(pairs)):
            try:
                jobs.append(self._job(str(i), view))
                rows.append(None)
            except ValueError as err:
                rows.append(self.row(view.pair_id, None, None, verdict="invalid", error=str(err)))
        if jobs:
            strong = score_groups(self.backends.get(self.cfg.strong), self._requests(jobs, strong=True))
            scorable = [job for job in jobs if not strong[job.key].error]  # the weak side of a failed pair is not needed
            weak = score_groups(self.backends.get(self.cfg.weak), self._requests(scorable, strong=False)) if scorable else {}
            for job in jobs:
                rows[int(job.key)] = self._pair_row(job, strong[job.key], weak.get(job.key))
        return self.table([r for r in rows if r is not None])

    def _job(self, key: str, view: PairView) -> _Job:
        for text, what in ((view.response_a, "chosen"), (view.response_b, "rejected")):
            if not text.strip():
                raise ValueError(f"the {what} response is empty; a log-prob of nothing is not a reward")
        index = exemplar_index(self.cfg.seed, view.pair_id, len(self.cfg.exemplars))
        exemplar = None if index is None else self.cfg.exemplars[index]
        prompt = strong_conversation(view.prompt, self.cfg.criteria_system_prompt, exemplar, self.cfg.exemplar_cue)
        return _Job(key=key, view=view, strong_prompt=prompt, exemplar=index)

    @staticmethod
    def _requests(jobs: list[_Job], *, strong: bool) -> list[ScoreRequest]:
        return [
            ScoreRequest(job.key, job.strong_prompt if strong else job.view.prompt, text, what)
            for job in jobs
            for text, (_, what) in zip((job.view.response_a, job.view.response_b), SLOTS)
        ]

    def _pair_row(self, job: _Job, strong: GroupScores, weak: GroupScores | None) -> dict[str, Any]:
        pair_id = job.view.pair_id
        if strong.error or weak is None:
            return self.row(pair_id, None, None, verdict="invalid", error=f"strong model: {strong.error}")
        if weak.error:
            return self.row(pair_id, None, None, verdict="invalid", error=f"weak model: {weak.error}")
        ratios = {slot: log_ratio(s, w) for (slot, _), s, w in zip(SLOTS, strong.values, weak.values)}
        key = "mean" if self.cfg.length_normalize else "sum"
        details = {"reward": key, "exemplar": job.exemplar, **ratios}
        return self.row(pair_id, float(ratios["a"][key]), float(ratios["b"][key]), details=details)
