"""Turn each prompt's candidates into unlabeled pairs for the labelers.

The order inside a pair is arbitrary until a labeler decides it, so these pairs carry
``label_source = "unlabeled"``. Pairs that could never be labeled (identical or empty
texts) are filtered with a reason instead of being emitted.
"""

from __future__ import annotations

import itertools
import json
import random
from collections.abc import Iterator
from typing import Any, Literal

from curation.records import content_ids
from curation.stages.generate.strategies import Candidate

GENERATED_SOURCE = "generated"


def candidate_pairs(n: int, mode: Literal["all", "sample"], k: int, seed: int, prompt_id: str) -> list[tuple[int, int]]:
    """Index pairs (i < j): all of them, or k sampled without replacement, seeded per prompt."""
    every = list(itertools.combinations(range(n), 2))
    if mode == "all" or k >= len(every):
        return every
    return sorted(random.Random(f"{seed}:{prompt_id}").sample(every, k))


def pair_rows(
    sets: list[list[Candidate]], mode: Literal["all", "sample"], k: int, seed: int
) -> Iterator[tuple[dict[str, Any] | None, dict[str, Any]]]:
    """(pair row or None, decision row) for every pair considered, prompt by prompt."""
    for ordinal, cands in enumerate(sets):
        if not cands:
            continue
        prompt = cands[0].prompt
        strategy = cands[0].strategy
        for index, (i, j) in enumerate(candidate_pairs(len(cands), mode, k, seed, prompt.prompt_id)):
            a, b = cands[i], cands[j]
            chosen = [{"role": "assistant", "content": a.text}]
            rejected = [{"role": "assistant", "content": b.text}]
            pid, pair_id = content_ids(prompt.conversation, chosen, rejected)
            coords = {
                "source_dataset": GENERATED_SOURCE,
                "source_file": f"candidates/{strategy}",
                "source_row": ordinal,
                "source_pair_index": index,
            }
            reason = None
            if not a.text.strip() or not b.text.strip():
                reason = "empty_candidate"
            elif a.text.strip() == b.text.strip():
                reason = "identical_candidates"
            decision = {"pair_id": pair_id, **coords, "stage": "generate", "decision": "filtered" if reason else "kept", "reason": reason}
            if reason:
                yield None, decision
                continue
            meta = {"strategy": strategy, "candidate_ids": [a.candidate_id, b.candidate_id], "order": "arbitrary (unlabeled)"}
            row = {
                "pair_id": pair_id,
                "prompt_id": pid,
                "prompt": prompt.conversation,
                "chosen": chosen,
                "rejected": rejected,
                "label_source": "unlabeled",
                **coords,
                "metadata": json.dumps(meta),
            }
            yield row, decision
