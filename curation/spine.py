"""The spine: every stage of a curation run, in the order they run. Written here and nowhere else.

ingest -> validate -> dedup -> [evaluation_set] -> [generate] -> [label] -> [filter] -> [evaluate] -> publish

The local runner (``curation.run.runner.curate``), the Prefect flow (``flows/curate.py``),
the stage cache keys (``flows/caching.py``), the funnel and the row-accounting checks
(``curation.run.accounting``) iterate ``SPINE``, reading what each stage declares about
itself (``curation.stages.base.Stage``). A new stage is one module with a ``Stage`` subclass
and one entry below.
"""

from __future__ import annotations

from curation.config import RunConfig
from curation.stages.base import Stage
from curation.stages.dedup.stage import DedupStage
from curation.stages.evaluate.stage import EvaluateStage
from curation.stages.evaluation_set.stage import EvaluationSetStage
from curation.stages.filter.stage import FilterStage
from curation.stages.generate.stage import GenerateStage
from curation.stages.ingest.stage import IngestStage
from curation.stages.label.stage import LabelStage
from curation.stages.validate.stage import ValidateStage

SPINE: tuple[Stage, ...] = (
    IngestStage(),
    ValidateStage(),
    DedupStage(),
    EvaluationSetStage(),
    GenerateStage(),
    LabelStage(),
    FilterStage(),
    EvaluateStage(),
)


def _check_order(stages: tuple[Stage, ...]) -> None:
    """Upstream stages come first, and the flow can cache a stage only if it caches its upstream."""
    seen: dict[str, Stage] = {}
    for s in stages:
        for u in s.upstream:
            if u not in seen:
                raise RuntimeError(f"stage {s.name!r} reads {u!r}, which does not run before it")
            if s.cached and not seen[u].cached:
                raise RuntimeError(f"stage {s.name!r} is cached but its upstream {u!r} is not")
        seen[s.name] = s


_check_order(SPINE)
BY_NAME = {s.name: s for s in SPINE}


def stage(name: str) -> Stage:
    return BY_NAME[name]


def active(cfg: RunConfig) -> list[Stage]:
    """The stages this recipe runs, in order."""
    return [s for s in SPINE if s.enabled(cfg)]
