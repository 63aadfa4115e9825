"""The stage contract: what every stage of the spine declares and does.

A stage is a small object with a pure core: ``run`` reads the files its upstream stages handed
on and writes its own into a folder, returning a ``StageOutput`` (file paths and counts, never
tables). What the runner and the Prefect flow need to know about a stage is *declared* on it,
not written into them: its name, the recipe sections it reads (its stage-cache key), the
stages whose outputs it reads, whether the flow may reuse a cached output, and the tables it
contributes to the published version. ``curation.spine`` lists the stages in order; the
local runner (``curation.run.runner``), the flow (``flows/curate.py``), the stage cache
(``flows/caching.py``) and the row accounting (``curation.run.accounting``) all iterate that
list, so adding a stage is one module and one entry there.

Published tables: a stage contributes its files to tables of the version either by
``APPEND`` (added after what earlier stages contributed: decisions, quarantine, pairs from
dedup and generation) or ``REPLACE`` (the table becomes this stage's file: the filter stage's
pairs supersede the ones it read). The pairs a stage works on are the ``pairs`` table as its
upstream stages leave it (``pair_files``).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Literal

from curation.config import RunConfig
from curation.progress import Progress
from curation.tables import count_rows

APPEND = "append"
REPLACE = "replace"
PublishMode = Literal["append", "replace"]


@dataclass
class StageOutput:
    """What a stage hands on: its files (table name -> path), its counts and its time.

    ``publishes``: which of ``files`` go into the published version, and how (``APPEND`` or
    ``REPLACE``); ``inputs``: fingerprints of the files the stage read from outside the run.
    """

    stage: str
    files: dict[str, str]
    counts: dict[str, Any]
    seconds: float
    inputs: list[dict] = field(default_factory=list)
    publishes: dict[str, str] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


class Stage:
    """One stage of the spine; subclasses set the class attributes and implement ``run``."""

    name: ClassVar[str]
    sections: ClassVar[tuple[str, ...]] = ()
    """Recipe sections (dotted paths into ``RunConfig.content_dict()``) whose values change
    what the stage writes: with the upstream keys they make its stage-cache key."""
    reads_sources: ClassVar[bool] = False
    """The stage reads the recipe's source files: their fingerprints are in its cache key."""
    upstream: ClassVar[tuple[str, ...]] = ()
    """Stages whose outputs ``run`` reads (those the recipe runs), in spine order."""
    cached: ClassVar[bool] = True
    """The flow reuses the stage's output when its cache key is unchanged."""
    publishes: ClassVar[Mapping[str, PublishMode]] = {}
    """Tables of the published version the stage contributes to, and how."""
    uses_models: ClassVar[bool] = False
    """The stage calls model backends (its flow task carries the model-server tag)."""
    retry: ClassVar[Literal["io", "api"] | None] = None
    """Which of the flow's retry policies fits the stage's failures (``flows/retries.py``)."""

    def enabled(self, cfg: RunConfig) -> bool:
        """Whether the recipe runs this stage (the optional ones have a section)."""
        return True

    def check(self, cfg: RunConfig) -> None:
        """Fail before any work when the recipe's settings cannot work here."""

    def run(self, cfg: RunConfig, run_dir: str | Path, upstream: Mapping[str, StageOutput], progress: Progress) -> StageOutput:
        raise NotImplementedError

    def funnel(self, out: StageOutput) -> dict[str, Any]:
        """The stage's part of the run's funnel (merged in spine order)."""
        return {}

    def audit(self, out: StageOutput, funnel: dict[str, Any], upstream: Mapping[str, StageOutput]) -> list[str]:
        """Row-accounting problems in the stage's counts and staged files (empty: none)."""
        return []

    def with_step_runner(self, runner: Callable[..., Any]) -> Stage:
        """The stage as the Prefect flow runs it when it is not cached: a stage made of steps
        returns a copy that hands each step to ``runner`` (a Prefect task each); others, itself."""
        return self

    def marked(self, out: StageOutput) -> StageOutput:
        """``out`` with the files it contributes to the published version marked as declared
        (``run`` ends with it; the core functions a notebook calls return unmarked outputs)."""
        out.publishes = {t: mode for t, mode in self.publishes.items() if t in out.files}
        return out


def pair_files(upstream: Mapping[str, StageOutput]) -> list[str]:
    """The pairs the upstream stages hand on, in spine order: the ``pairs`` table as it stands
    after them (dedup's kept pairs, less any held out for evaluation, then the generated ones;
    after the filter stage, its pairs)."""
    return published_files(upstream).get("pairs", [])


def published_files(outs: Mapping[str, StageOutput]) -> dict[str, list[str]]:
    """Table -> the staged files that make it up in the version, from every stage's marks."""
    tables: dict[str, list[str]] = {}
    for out in outs.values():
        for table, mode in out.publishes.items():
            tables[table] = [out.files[table]] if mode == REPLACE else [*tables.get(table, []), out.files[table]]
    return tables


def staged_rows(checks: dict[str, tuple[str, int]]) -> list[str]:
    """Problems where a staged file's row count differs from the count the stage reported."""
    problems = []
    for what, (path, expected) in checks.items():
        found = count_rows(path)
        if found != expected:
            problems.append(f"{what}: {found} rows staged, {expected} counted")
    return problems
