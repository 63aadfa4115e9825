"""``curate eval``: proxy models trained on several variants of a dataset, measured on the same
held-out human preferences, with paired intervals of their differences.

A variant is a version's pairs (``NAME@V``) or, for ``--ablate``, the pairs a recipe's filter
stage keeps with one step left out (``flows/ablate.py`` builds those from the stage cache).
Every variant is measured on the same evaluation pairs: the set's human-labelled pairs whose
prompt no variant trained on (``curation.evaluate.leakage``), so a difference is paired.

Long evaluations resume: each finished variant's rows and per-pair correctness are kept under
``WORK_ROOT/evals/EVALUATION_ID/``, and a rerun with the same variants, set and trainers
measures only the variants not finished. The results are appended to the dataset's
evaluation log (``DATASET/evaluations/EVALUATION_ID.parquet``, beside its versions, which
never change), queryable as ``evaluation_log`` in ``curate sql``.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from curation.evaluate.config import EvaluateConfig
from curation.evaluate.measure import Measured, compare, evaluation_pairs, measure
from curation.progress import NoProgress, Progress
from curation.store.catalog import DatasetStore
from schemas import arrow_schema

LOG = "evaluations"


@dataclass
class Variant:
    """Something to train on: a name and a way to get its pairs (read only when measured)."""

    name: str
    pairs: Callable[[], pa.Table]
    version: int | None = None


def evaluation_id(parts: Any) -> str:
    blob = json.dumps(parts, sort_keys=True, default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:16]


def _slug(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.@-]+", "_", name)[:80] + "-" + hashlib.sha256(name.encode()).hexdigest()[:6]


def _load(folder: Path, variant: str) -> Measured | None:
    path = folder / f"{_slug(variant)}.json"
    if not path.exists():
        return None
    saved = json.loads(path.read_text())
    return Measured(saved["rows"], {k: np.asarray(v) for k, v in saved["correct"].items()}, saved["pair_ids"])


def _save(folder: Path, variant: str, result: Measured) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{_slug(variant)}.json"
    tmp = path.with_suffix(f".{os.getpid()}.tmp")  # two evaluations of the same variants at once each write their own
    saved = {"rows": result.rows, "correct": {k: v.tolist() for k, v in result.correct.items()}, "pair_ids": result.pair_ids}
    tmp.write_text(json.dumps(saved))
    tmp.replace(path)


def content_of(table: pa.Table) -> str:
    """A fingerprint of the pairs a variant trains on: their content ids (which change when a
    pair is flipped) and labels, in order."""
    sha = hashlib.sha256()
    for column in ("pair_id", "label_source"):
        sha.update("\n".join(map(str, table.column(column).to_pylist())).encode() + b"\0")
    return sha.hexdigest()[:16]


def run_evaluation(
    dataset: str,
    variants: Sequence[Variant],
    evaluation: pa.Table,
    eval_set: str,
    cfg: EvaluateConfig,
    *,
    work_root: str,
    progress: Progress | None = None,
    on_variant: Callable[[str, bool], None] | None = None,
) -> tuple[str, list[dict[str, Any]], dict[str, Measured]]:
    """Measure every variant on the same pairs; (evaluation id, rows, each variant's results).
    The first variant is the reference of every difference. The id hashes what makes two
    evaluations the same (each variant's name and pairs, the evaluation pairs, the config): a
    rerun with the same resumes from the variants finished before. ``on_variant`` hears each
    variant's name and whether it was taken from an earlier, killed run."""
    progress = progress or NoProgress()
    trainings = [v.pairs() for v in variants]
    identity = [[v.name, content_of(t)] for v, t in zip(variants, trainings)]
    eid = evaluation_id([identity, eval_set, content_of(evaluation), cfg.model_dump(mode="json")])
    folder = Path(work_root) / "evals" / eid
    pairs, leaked_out = evaluation_pairs(evaluation, trainings, cfg)
    rows: list[dict[str, Any]] = []
    measured: dict[str, Measured] = {}
    reference: Measured | None = None
    made: dict[str, Any] = {}  # trainer objects shared by the variants (cached embeddings)
    for i, (variant, train) in enumerate(zip(variants, trainings)):
        done = _load(folder, variant.name)
        if on_variant is not None:
            on_variant(variant.name, done is not None)
        if done is None:
            base = {
                "evaluation_id": eid,
                "dataset": dataset,
                "version": variant.version,
                "eval_set": eval_set,
                "leaked_excluded": leaked_out,
            }
            work = folder / "work" / _slug(variant.name)
            done = measure(
                variant.name,
                train,
                pairs,
                cfg,
                work_dir=work,
                work_root=work_root,
                base=base,
                with_baselines=i == 0,
                progress=progress,
                made=made,
            )
            _save(folder, variant.name, done)
        if reference is None:
            reference = done
        else:
            compare(done, variants[0].name, reference, cfg.bootstrap)
        rows += done.rows
        measured[variant.name] = done
    return eid, rows, measured


def write_log(data_root: str, dataset: str, eid: str, rows: list[dict[str, Any]]) -> str:
    """Append the rows to the dataset's evaluation log (one Parquet file per evaluation)."""
    store = DatasetStore(data_root)
    with tempfile.TemporaryDirectory(prefix="curate-eval-") as tmp:
        path = Path(tmp) / f"{eid}.parquet"
        pq.write_table(pa.Table.from_pylist(rows, schema=arrow_schema("evaluations")), path, compression="zstd")
        return store.put_files(dataset, LOG, Path(tmp))


def version_variants(data_root: str, refs: Sequence[tuple[str, int | None]]) -> list[Variant]:
    """A variant per ``NAME@V`` (latest when no version), its pairs read when measured."""
    store = DatasetStore(data_root)
    out = []
    for name, version in refs:
        info = store.version(name, version)
        out.append(Variant(info.ref, lambda name=name, v=info.version: store.read(name, "pairs", version=v), info.version))
    return out


def evaluation_set(
    spec: str | None, adapter: str | None, first: Variant | None, data_root: str, progress: Progress | None = None
) -> tuple[pa.Table, str, EvaluateConfig | None]:
    """The pairs to measure on, a description, and the recipe's evaluate section if ``spec`` is
    a recipe: ``None``, the first variant's version's own ``evaluation_pairs``; a recipe, its
    ``evaluate.sources`` (read with its rules); a data file, read with ``adapter``."""
    from curation.config import load_config, parse_config
    from curation.errors import ConfigError, CurationError
    from curation.sources import SourceConfig
    from curation.stages.evaluation_set.stage import read_source_pairs

    progress = progress or NoProgress()
    if spec is None:
        assert first is not None, "no evaluation set and no version to take it from"
        name, _, _ = first.name.partition("@")
        info = DatasetStore(data_root).version(name, first.version)
        if "evaluation_pairs" not in info.tables:
            raise CurationError(
                f"{info.ref} has no evaluation pairs (its recipe has no evaluate section): pass --set RECIPE (its evaluate.sources) "
                "or --set FILE --adapter ADAPTER"
            )
        return DatasetStore(data_root).read(name, "evaluation_pairs", version=info.version), f"{info.ref} evaluation pairs", None
    path = Path(spec)
    if path.suffix in (".yaml", ".yml"):
        cfg = load_config(path, data_root=data_root)
        if cfg.evaluate is None or not cfg.evaluate.sources:
            raise ConfigError(f"{spec} has no evaluate.sources to measure on")
        sources, described, section = cfg.evaluate.sources, f"evaluate.sources of {path.name}", cfg.evaluate
    else:
        if adapter is None:
            raise ConfigError(f"--set {spec}: a data file needs --adapter (hh_rlhf, trl, rated, shp, oasst, mapping)")
        source = SourceConfig(name="evaluation", path=str(path.resolve()), adapter=adapter)
        cfg = parse_config({"publish": {"dataset": "evaluation"}, "sources": [source.model_dump()], "data_root": data_root})
        sources, described, section = [source], f"{path.name} ({adapter})", None
    with tempfile.TemporaryDirectory(prefix="curate-eval-set-") as tmp:
        return pq.read_table(read_source_pairs(cfg, sources, Path(tmp), progress)), described, section


def settings(section: EvaluateConfig | None, trainers: Sequence[str] | None = None, seeds: str | None = None) -> EvaluateConfig:
    """The recipe's evaluate section (or the defaults), with the command line's trainers
    (``--trainer``, by kind) and seeds (``--seeds 0,1,2``) in place of its own."""
    from pydantic import ValidationError

    from curation.errors import CurationError

    base: dict[str, Any] = section.model_dump() if section is not None else {"holdout_fraction": 0.5}
    if trainers:
        base["trainers"] = [{"kind": k} for k in trainers]
    if seeds:
        try:
            values = [int(s) for s in seeds.split(",") if s.strip()]
        except ValueError:
            raise CurationError(f"--seeds {seeds!r}: give integers separated by commas, e.g. 0,1,2") from None
        base["trainers"] = [{**t, "seeds": values} for t in base.get("trainers", [{"kind": "bt_embed"}])]
    try:
        return EvaluateConfig.model_validate(base)
    except ValidationError as err:
        first = err.errors()[0]
        raise CurationError(f"evaluation settings: {'.'.join(map(str, first['loc']))}: {first['msg']}") from None
