"""The validate stage: the recipe's content rules over the ingested pairs; failing pairs go
to quarantine (stage ``validate``).

The rules themselves are in ``rules`` (one pair at a time, which words the error); ``fast``
flags the pairs that can fail, in columns, so only those are checked one by one.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa

from curation.config import RunConfig
from curation.errors import RowError
from curation.parallel import ordered_map
from curation.progress import NoProgress, Progress
from curation.records import quarantine_row
from curation.stages.base import APPEND, Stage, StageOutput, staged_rows
from curation.stages.validate.fast import suspect_rows
from curation.stages.validate.rules import check_content, pair_as_raw
from curation.tables import TableWriter, iter_batches, link_or_copy, write_positions
from schemas import arrow_schema


def validate(cfg: RunConfig, work_dir: str | Path, ingested: StageOutput, progress: Progress | None = None) -> StageOutput:
    """Apply the recipe's content rules; failing pairs go to quarantine (stage 'validate').

    A vectorised pre-check flags the pairs that fail (see ``validate_fast``); only those are
    checked row by row, which words the error. Validation removes pairs and changes none, so the stage
    hands on the ingested pairs file as it is (hard-linked into its folder) with the
    positions it excluded (``excluded``), instead of writing the pairs again: at a million
    pairs that write was a third of the spine's time. ``selected_batches`` reads the two.
    """
    progress = progress or NoProgress()
    work = Path(work_dir)
    started = time.perf_counter()
    rules = cfg.validate_
    roles = frozenset(rules.allowed_roles)
    by_code: Counter[str] = Counter()
    schema = arrow_schema("pairs")
    progress.start("validate", ingested.counts["pairs_out"])
    excluded: list[int] = []
    offset = 0
    with TableWriter(work / "quarantine-validate.parquet", "quarantine", batch_size=cfg.batch_size) as quar_w:

        def flagged(batch: pa.RecordBatch) -> tuple[pa.RecordBatch, np.ndarray]:
            return batch, suspect_rows(batch.cast(schema), allowed_roles=roles, allow_empty_prompt=rules.allow_empty_prompt)

        for batch, suspect in ordered_map(flagged, iter_batches(ingested.files["pairs"], batch_size=cfg.batch_size), cfg.threads):
            for i in np.flatnonzero(suspect).tolist():
                pair = batch.slice(i, 1).to_pylist()[0]
                try:
                    check_content(pair, allowed_roles=roles, allow_empty_prompt=rules.allow_empty_prompt)
                except RowError as err:
                    by_code[err.code] += 1
                    excluded.append(offset + i)
                    raw, size = pair_as_raw(pair, rules.raw_limit_bytes)
                    quar_w.append(
                        quarantine_row(
                            pair["source_dataset"],
                            pair["source_file"],
                            pair["source_row"],
                            "validate",
                            err,
                            raw,
                            size,
                            pair["source_pair_index"],
                        )
                    )
            offset += batch.num_rows
            progress.advance(batch.num_rows)
    progress.finish()
    pairs = link_or_copy(ingested.files["pairs"], work / ("validated" + Path(ingested.files["pairs"]).suffix))
    excluded_path = write_positions(excluded, work / "validated-excluded.parquet")
    counts = {"pairs_in": ingested.counts["pairs_out"], "valid": offset - len(excluded), "quarantined": dict(by_code)}
    files = {"pairs": str(pairs), "excluded": str(excluded_path), "quarantine": str(quar_w.path)}
    return StageOutput("validate", files, counts, time.perf_counter() - started)


class ValidateStage(Stage):
    """The recipe's content rules (see the module docstring)."""

    name = "validate"
    sections = ("validate",)
    upstream = ("ingest",)
    publishes = {"quarantine": APPEND}

    def run(self, cfg: RunConfig, run_dir: str | Path, upstream: Mapping[str, StageOutput], progress: Progress) -> StageOutput:
        return self.marked(validate(cfg, run_dir, upstream["ingest"], progress))

    def funnel(self, out: StageOutput) -> dict[str, Any]:
        quarantined = dict(out.counts["quarantined"])
        return {"pairs_quarantined": sum(quarantined.values()), "quarantined_by_error": {"validate": quarantined}}

    def audit(self, out: StageOutput, funnel: dict[str, Any], upstream: Mapping[str, StageOutput]) -> list[str]:
        return staged_rows({"validate quarantine": (out.files["quarantine"], funnel["pairs_quarantined"])})
