"""Noise filters and routing: steps over the kept, labelled pairs, run in the recipe's order.

Each step is one module with a pure ``run(cfg, pairs, labels, ctx) -> StepResult`` (see
``base``), registered here by kind and imported lazily (CHES needs torch, the others do not).
"""

from __future__ import annotations

from collections.abc import Callable

from curation.registry import load

STEPS: dict[str, str] = {
    "margin": "curation.stages.filter.margin:run",
    "voting": "curation.stages.filter.voting:run",
    "ches": "curation.stages.filter.ches:run",
    "near_dedup": "curation.stages.filter.near_dedup:run",
    "semantic_dedup": "curation.stages.filter.semantic_dedup:run",
    "prompt_cap": "curation.stages.filter.prompt_cap:run",
    "length_balance": "curation.stages.filter.length_balance:run",
    "ai_label": "curation.stages.filter.ai_label:run",
    "decontaminate": "curation.stages.filter.decontaminate:run",
    "route": "curation.stages.filter.route:run",
}


def step_function(kind: str) -> Callable:
    return load(STEPS[kind])


__all__ = ["STEPS", "step_function"]
