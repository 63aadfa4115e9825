"""The filter stage: kept (and generated) pairs + their labels -> filtered, flipped, routed pairs.

Runs after labeling. The steps of the recipe's ``filter`` section run in order; each sees
the pairs the previous ones kept, oriented as they left them. The stage holds a small index
of every pair (id, source coordinates, alive, flipped, label provenance) and reads the text
columns a step asks for from the staged Parquet files in batches, so memory is bounded by
the index plus what one step needs.

Flips: a flipped pair is published with chosen and rejected swapped, so its content id
changes; its decisions row (pair_id = the id it came in with) names the published id in
``matched_pair_id``. Labels keep the ids the labelers saw; join them to published pairs
through that decisions row. Human labels from the dataset's inbox (``curate route import``)
are merged last and override AI labels.
"""

from __future__ import annotations

import importlib
import json
import time
from collections import Counter
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq

from curation.config import RunConfig
from curation.decisions import decision_rows, decisions_table
from curation.errors import ConfigError, CurationError
from curation.histograms import histogram
from curation.human import inbox
from curation.progress import NoProgress, Progress
from curation.records import content_ids
from curation.stages.base import APPEND, REPLACE, Stage, StageOutput, pair_files, staged_rows
from curation.stages.evaluation_set.stage import evaluation_file
from curation.stages.filter import step_function
from curation.stages.filter.base import STEP_LABEL_COLUMNS, PairSource, StepContext, StepResult, judge_entropy
from curation.stages.label.base import BackendPool
from curation.tables import count_rows
from schemas import arrow_schema

INDEX_COLUMNS = ["pair_id", "prompt_id", "label_source", "label_model", "source_dataset", "source_file", "source_row", "source_pair_index"]
TRACKED = ("label_source", "label_model")  # served from the index, not the files
HISTOGRAM_SCORES = {"margin", "strength_mean", "ches", "ln_ches", "route_score", "similarity"}
"""The step scores whose histograms the run report shows."""
SWAP = {"chosen": "rejected", "rejected": "chosen", "chosen_score": "rejected_score", "rejected_score": "chosen_score"}


def pair_dtypes(columns: list[str]) -> dict[str, pl.DataType]:
    """Polars dtypes of pairs-table columns, from the contract."""
    schema = pl.from_arrow(arrow_schema("pairs").empty_table()).schema
    return {c: schema[c] for c in columns}


class StagedPairs(PairSource):
    """The alive pairs of the staged files, oriented as the steps so far left them."""

    def __init__(self, files: list[str]):
        self.files = files
        parts = []
        for i, path in enumerate(files):
            part = pl.read_parquet(path, columns=INDEX_COLUMNS).with_columns(
                _file=pl.lit(i, pl.Int32), _row=pl.int_range(pl.len(), dtype=pl.Int64)
            )
            parts.append(part)
        empty = pl.DataFrame(schema={**pair_dtypes(INDEX_COLUMNS), "_file": pl.Int32, "_row": pl.Int64})
        self.index = (pl.concat(parts) if parts else empty).with_columns(
            alive=pl.lit(True),
            flipped=pl.lit(False),
            preference_strength=pl.lit(None, pl.Float64),
            preference_strength_std=pl.lit(None, pl.Float64),
            flipped_by=pl.lit(None, pl.String),
        )
        dupes = self.index.height - self.index["pair_id"].n_unique()
        if dupes:
            raise CurationError(f"filter: {dupes} pair ids occur more than once in the staged pairs; dedup must run before filtering")

    def __len__(self) -> int:
        return int(self.index["alive"].sum())

    def frame(self, columns: list[str]) -> pl.DataFrame:
        parts = list(self.batches(columns, 100_000))
        if parts:
            return pl.concat(parts)
        return pl.DataFrame(schema=pair_dtypes(columns))

    def batches(self, columns: list[str], size: int) -> Iterator[pl.DataFrame]:
        wanted = [c for c in columns if c not in (*TRACKED, "alive", "flipped")]
        file_columns = list(dict.fromkeys(["pair_id", *wanted, *(SWAP[c] for c in wanted if c in SWAP)]))
        state = self.index.select("_file", "_row", "alive", "flipped", *TRACKED)
        buffer: list[pl.DataFrame] = []
        held = 0
        for i, path in enumerate(self.files):
            mine = state.filter(pl.col("_file") == i)
            offset = 0
            for batch in pq.ParquetFile(path).iter_batches(batch_size=max(size, 1024), columns=file_columns):
                df = pl.from_arrow(pa.Table.from_batches([batch]))
                info = mine.slice(offset, df.height)
                offset += df.height
                df = pl.concat([df, info.select("alive", "flipped", *TRACKED)], how="horizontal").filter(pl.col("alive"))
                if not df.height:
                    continue
                buffer.append(self._orient(df, columns))
                held += df.height
                while held >= size:
                    merged = pl.concat(buffer)
                    yield merged.slice(0, size)
                    rest = merged.slice(size)
                    buffer, held = ([rest] if rest.height else []), rest.height
        if held:
            yield pl.concat(buffer)

    @staticmethod
    def _orient(df: pl.DataFrame, columns: list[str]) -> pl.DataFrame:
        if "flipped" in df.columns:
            swaps = [
                pl.when(pl.col("flipped")).then(pl.col(other)).otherwise(pl.col(c)).alias(c) for c, other in SWAP.items() if c in columns
            ]
            df = df.with_columns(swaps)
        return df.select(columns)

    # ------------------------------------------------------------------ applying results

    def oriented_labels(self, labels: pl.DataFrame) -> pl.DataFrame:
        """Labels as the alive pairs now stand: a flipped pair's margins negated, A and B swapped."""
        if not labels.height:
            return labels
        state = self.index.filter(pl.col("alive")).select("pair_id", "flipped")
        joined = labels.join(state, on="pair_id", how="inner", maintain_order="left")
        f = pl.col("flipped")
        return joined.with_columns(
            margin=pl.when(f).then(-pl.col("margin")).otherwise(pl.col("margin")),
            score_a=pl.when(f).then(pl.col("score_b")).otherwise(pl.col("score_a")),
            score_b=pl.when(f).then(pl.col("score_a")).otherwise(pl.col("score_b")),
            verdict=pl.when(f & (pl.col("verdict") == "A"))
            .then(pl.lit("B"))
            .when(f & (pl.col("verdict") == "B"))
            .then(pl.lit("A"))
            .otherwise(pl.col("verdict")),
        ).drop("flipped")

    def apply(self, stage: str, result: StepResult) -> None:
        d = result.decisions.select("pair_id", "decision")
        unknown = d.join(self.index.filter(pl.col("alive")), on="pair_id", how="anti").height
        if unknown:
            raise CurationError(f"filter step {stage!r} decided on {unknown} pairs that are not alive (a step bug)")
        idx = self.index.join(d, on="pair_id", how="left", maintain_order="left")
        flip = pl.col("decision") == "flipped"
        idx = idx.with_columns(
            alive=pl.col("alive") & (pl.col("decision").is_null() | (pl.col("decision") != "filtered")),
            flipped=pl.when(flip).then(~pl.col("flipped")).otherwise(pl.col("flipped")),
            label_source=pl.when(flip).then(pl.lit("ai")).otherwise(pl.col("label_source")),
            label_model=pl.when(flip).then(pl.lit(stage)).otherwise(pl.col("label_model")),
            flipped_by=pl.when(flip).then(pl.lit(stage)).otherwise(pl.col("flipped_by")),
        ).drop("decision")
        if result.pair_values is not None and result.pair_values.height:
            values = result.pair_values
            settable = [c for c in values.columns if c != "pair_id"]
            bad = [c for c in settable if c not in ("preference_strength", "preference_strength_std", *TRACKED)]
            if bad:
                raise CurationError(f"filter step {stage!r} tried to set pair column(s) {bad}")
            renamed = values.rename({c: f"_new_{c}" for c in settable})
            idx = idx.join(renamed, on="pair_id", how="left", maintain_order="left").with_columns(
                [pl.coalesce(f"_new_{c}", c).alias(c) for c in settable]
            )
            idx = idx.drop([f"_new_{c}" for c in settable])
        self.index = idx

    def mark_human(self, pair_ids: set[str]) -> int:
        """Pairs that people already labeled (the inbox) count as human-labeled for routing."""
        hit = pl.col("pair_id").is_in(list(pair_ids)) & pl.col("alive")
        n = int(self.index.select(hit.sum()).item())
        self.index = self.index.with_columns(label_source=pl.when(hit).then(pl.lit("human")).otherwise(pl.col("label_source")))
        return n


def write_pairs(staged: StagedPairs, path: Path, batch_size: int) -> dict[str, str]:
    """The alive pairs as they will be published; returns {original id: published id} of flipped ones."""
    schema = arrow_schema("pairs")
    moved: dict[str, str] = {}
    extra = ["preference_strength", "preference_strength_std", "flipped_by"]
    idx = staged.index.select("pair_id", *extra)
    with pq.ParquetWriter(path, schema, compression="zstd") as writer:
        for frame in staged.batches(
            [c for c in schema.names if c not in ("preference_strength", "preference_strength_std")] + ["flipped"], batch_size
        ):
            frame = frame.join(idx, on="pair_id", how="left", maintain_order="left")
            new_ids: dict[str, str] = {}
            new_meta: dict[str, str] = {}
            for r in frame.filter(pl.col("flipped")).iter_rows(named=True):
                new_ids[r["pair_id"]] = moved[r["pair_id"]] = content_ids(r["prompt"], r["chosen"], r["rejected"])[1]
                meta = json.loads(r["metadata"]) if r["metadata"] else {}
                meta["flipped"] = {"by": r["flipped_by"], "original_pair_id": r["pair_id"]}
                new_meta[r["pair_id"]] = json.dumps(meta, ensure_ascii=False)
            if new_ids:  # in place, so the published order is the staged order
                frame = frame.with_columns(
                    pl.col("pair_id").replace(new_ids),
                    pl.col("pair_id").replace_strict(new_meta, default=pl.col("metadata"), return_dtype=pl.String).alias("metadata"),
                )
            writer.write_table(frame.select(schema.names).to_arrow().cast(schema))
    return moved


def check(cfg: RunConfig) -> None:
    """Step configs that cannot work here (a CHES backend without hidden states, a labeler name
    no labeler has): before any work."""
    if cfg.filter is None:
        return
    labelers = {lab.name for lab in cfg.label.labelers} if cfg.label is not None else set()
    for step in cfg.filter.steps:
        for name in getattr(step, "labelers", []) or []:
            if name.split("/")[0] not in labelers:
                known = ", ".join(sorted(labelers)) or "none (the recipe has no label section)"
                raise ConfigError(f"filter step {step.stage_name!r}: unknown labeler {name!r}; labelers in this recipe: {known}")
        checker = getattr(importlib.import_module(step_function(step.kind).__module__), "check", None)
        if checker is not None:
            checker(step, cfg.work_root)


def score_histograms(result: StepResult) -> dict[str, Any]:
    """Histograms of the step's main scores for the run report; a step's single numeric
    threshold (``cut``, ``threshold`` or ``score_threshold`` in its summary) is drawn as a line."""
    cut = next((v for k in ("cut", "threshold", "score_threshold") if isinstance(v := result.summary.get(k), (int, float))), None)
    out = {}
    for name in result.scores:
        if name in HISTOGRAM_SCORES:
            h = histogram(
                result.decisions[name].to_list(), cut=cut if name == (result.summary.get("ranked_by") or result.scores[0]) else None
            )
            if h is not None:
                out[name] = h
    return out


def read_labels(labels_file: str | None) -> pl.DataFrame:
    """The labels columns the steps read, plus a judge's verdict ``entropy`` pulled out of ``details``."""
    if labels_file:
        return pl.scan_parquet(labels_file).select(*STEP_LABEL_COLUMNS, judge_entropy()).collect()
    schema = pl.from_arrow(arrow_schema("labels").empty_table()).schema
    return pl.DataFrame(schema={**{c: schema[c] for c in STEP_LABEL_COLUMNS}, "entropy": pl.Float64})


RunStep = Callable[[Any, PairSource, pl.DataFrame, StepContext], StepResult]


def run_step(step: Any, pairs: PairSource, labels: pl.DataFrame, ctx: StepContext) -> StepResult:
    """One step's pure function on the pairs as they stand."""
    return step_function(step.kind)(step, pairs, labels, ctx)


def evaluation_prompts(path: str | None) -> list[str] | None:
    """The prompt texts of the evaluation pairs file (None: the run evaluates nothing)."""
    if path is None:
        return None
    from curation.overlap import prompt_text

    return [prompt_text(p) for p in pq.read_table(path, columns=["prompt"]).column("prompt").to_pylist()]


def filter_pairs(
    cfg: RunConfig,
    run_dir: str | Path,
    pair_files: list[str],
    labels_file: str | None,
    progress: Progress | None = None,
    runner: RunStep = run_step,
    evaluation_file: str | None = None,
) -> StageOutput:
    """Run the recipe's filter steps over the staged pairs; write pairs, decisions, routing.
    ``runner`` calls each step (the Prefect flow passes one that runs it as a task);
    ``evaluation_file``: the run's evaluation pairs, whose prompts a step may keep out of the
    training pairs (``decontaminate``)."""
    if cfg.filter is None:
        raise CurationError("the recipe has no filter section")
    progress = progress or NoProgress()
    started = time.perf_counter()
    run_dir = Path(run_dir)
    staged = StagedPairs([f for f in pair_files if f])
    labels = read_labels(labels_file)
    pairs_in = staged.index.height
    pool = BackendPool(cfg.work_root)
    # read only for the step that matches against them: most filter runs have none
    wanted = evaluation_file if any(step.kind == "decontaminate" for step in cfg.filter.steps) else None
    ctx = StepContext(backends=pool, progress=progress, data_root=str(cfg.work_root), evaluation_prompts=evaluation_prompts(wanted))
    steps: dict[str, Any] = {}
    decision_parts: list[pl.DataFrame] = []
    extra_tables: dict[str, pl.DataFrame] = {}
    human = inbox.read_inbox(inbox.inbox_root(cfg), cfg.publish.dataset)
    known_human = 0  # alive pairs the inbox already labels: not routed again
    try:
        for step in cfg.filter.steps:
            stage = step.stage_name
            if step.kind == "route" and human.height:
                known_human = staged.mark_human(set(human["pair_id"].to_list()))
            t0 = time.perf_counter()
            alive_before = len(staged)
            result: StepResult = runner(step, staged, staged.oriented_labels(labels), ctx)
            result.check(stage)
            decision_parts.append(decision_rows(stage, result.decisions, staged.index, result.scores))
            staged.apply(stage, result)
            counts = Counter(result.decisions["decision"].to_list())
            reasons = Counter(r for r in result.decisions["reason"].to_list() if r)
            steps[stage] = {
                "kind": step.kind,
                "pairs_in": alive_before,
                "judged": result.decisions.height,
                **{k: counts.get(k, 0) for k in ("kept", "filtered", "flipped", "routed")},
                "reasons": dict(reasons),
                "pairs_out": len(staged),
                "seconds": round(time.perf_counter() - t0, 3),
                "summary": result.summary,
                "histograms": score_histograms(result),
            }
            extra_tables.update(result.tables)
    finally:
        pool.close()
    pairs_path = run_dir / "filtered.parquet"
    moved = write_pairs(staged, pairs_path, cfg.batch_size)
    decisions = pl.concat(decision_parts) if decision_parts else None
    if decisions is not None and moved:
        fix = pl.DataFrame({"pair_id": list(moved), "_moved": list(moved.values())})
        decisions = (
            decisions.join(fix, on="pair_id", how="left", maintain_order="left")
            .with_columns(
                matched_pair_id=pl.when(pl.col("decision") == "flipped").then(pl.col("_moved")).otherwise(pl.col("matched_pair_id"))
            )
            .drop("_moved")
        )
    files = {"pairs": str(pairs_path)}
    merged: dict[str, Any] = {}
    if human.height:
        merged = inbox.merge_into_file(pairs_path, human, run_dir)
        files["human_labels"] = merged["human_labels_file"]
        if merged["decisions"].height:
            rows = decision_rows(inbox.STAGE, merged["decisions"], merged["coordinates"])
            decisions = pl.concat([decisions, rows]) if decisions is not None else rows
    dec_path = run_dir / "decisions-filter.parquet"
    pq.write_table(
        decisions_table(decisions) if decisions is not None else arrow_schema("decisions").empty_table(), dec_path, compression="zstd"
    )
    files["decisions"] = str(dec_path)
    for name, table in extra_tables.items():
        if moved and "pair_id" in table.columns:
            table = table.with_columns(pl.col("pair_id").replace(moved))
        path = run_dir / f"{name}.parquet"
        pq.write_table(table.to_arrow().cast(arrow_schema(name)), path, compression="zstd")
        files[name] = str(path)
    pairs_out = pq.ParquetFile(pairs_path).metadata.num_rows
    by_reason: dict[str, dict[str, int]] = {}
    if decisions is not None:
        dropped = decisions.filter(pl.col("decision") == "filtered")
        for (stage, reason), n in Counter(zip(dropped["stage"].to_list(), dropped["reason"].to_list())).items():
            by_reason.setdefault(stage, {})[reason] = n
    counts = {
        "pairs_in": pairs_in,
        "pairs_out": pairs_out,
        "filtered": sum(n for reasons in by_reason.values() for n in reasons.values()),
        "filtered_by_reason": by_reason,
        "flipped": int(staged.index["flipped"].sum()),
        "routed": sum(s["routed"] for s in steps.values()),
        "steps": steps,
        **(
            {"human_labels": {k: v for k, v in merged.items() if k not in ("decisions", "coordinates", "human_labels_file")}}
            if merged
            else {}
        ),
        **({"human_labels_known_at_routing": known_human} if known_human else {}),
    }
    if pairs_in != pairs_out + counts["filtered"]:
        raise CurationError(
            f"filter accounting: {pairs_in} pairs in != {pairs_out} out + {counts['filtered']} filtered; nothing was published"
        )
    return StageOutput("filter", files, counts, time.perf_counter() - started)


def ran(config: dict[str, Any]) -> bool:
    """Whether a version's recipe (its stored config) has a filter stage, which merges human labels."""
    return bool(config.get("filter"))


def with_human_labels(funnel: dict[str, Any], pairs_out: int, merged: dict[str, int]) -> dict[str, Any]:
    """A version's funnel after ``curate route import`` merged human labels into its pairs."""
    if "filter" not in funnel:
        return dict(funnel)
    fc = funnel["filter"]
    return {**funnel, "filter": {**fc, "pairs_out": pairs_out, "filtered": fc["filtered"] + merged["filtered"], "human_labels": merged}}


@dataclass(frozen=True)
class FilterStage(Stage):
    """The recipe's filter steps in order, then the inbox of human labels (see the module docstring).

    Not cached: it is what a recipe changes most, and it is cheap next to the model stages
    before it. ``step_runner`` calls each step; the Prefect flow runs the stage in its body
    with one that submits every step as a task of its own (``with_step_runner``)."""

    name = "filter"
    upstream = ("dedup", "evaluation_set", "generate", "label")
    cached = False
    publishes = {"pairs": REPLACE, "decisions": APPEND, "routing": REPLACE, "human_labels": REPLACE}
    step_runner: RunStep = run_step

    def enabled(self, cfg: RunConfig) -> bool:
        return cfg.filter is not None

    def check(self, cfg: RunConfig) -> None:
        check(cfg)

    def with_step_runner(self, runner: RunStep) -> FilterStage:
        return FilterStage(step_runner=runner)

    @staticmethod
    def with_steps(cfg: RunConfig, steps: list[Any]) -> RunConfig:
        """``cfg`` with its filter section's steps replaced (an ablation's variant)."""
        assert cfg.filter is not None
        return cfg.model_copy(update={"filter": cfg.filter.model_copy(update={"steps": steps})})

    @staticmethod
    def inputs(upstream: Mapping[str, StageOutput]) -> tuple[list[str], str | None, str | None]:
        """(pair files, labels file or None, evaluation pairs file or None): what the filter core
        reads from the upstream stages (``curate eval --ablate`` reruns the core on them)."""
        labelled = upstream.get("label")
        return pair_files(upstream), labelled.files["labels"] if labelled is not None else None, evaluation_file(upstream)

    def run(self, cfg: RunConfig, run_dir: str | Path, upstream: Mapping[str, StageOutput], progress: Progress) -> StageOutput:
        files, labels, evaluation = self.inputs(upstream)
        out = filter_pairs(cfg, run_dir, files, labels, progress, runner=self.step_runner, evaluation_file=evaluation)
        out.inputs = inbox.fingerprints(inbox.inbox_root(cfg), cfg.publish.dataset)  # completed human labels are inputs too
        return self.marked(out)

    def funnel(self, out: StageOutput) -> dict[str, Any]:
        return {"filter": dict(out.counts)}

    def audit(self, out: StageOutput, funnel: dict[str, Any], upstream: Mapping[str, StageOutput]) -> list[str]:
        """The pairs entering = the pairs the upstream stages handed on; in = out + filtered."""
        fc = funnel["filter"]
        entering = sum(count_rows(f) for f in pair_files(upstream))
        problems = []
        if fc["pairs_in"] != entering:
            problems.append(f"filter: {fc['pairs_in']} pairs in, but {entering} were kept and generated")
        if fc["pairs_in"] != fc["pairs_out"] + fc["filtered"]:
            problems.append(f"filter: {fc['pairs_in']} pairs in != {fc['pairs_out']} out + {fc['filtered']} filtered")
        return problems + staged_rows({"filtered pairs": (out.files["pairs"], fc["pairs_out"])})
