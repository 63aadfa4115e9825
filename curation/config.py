"""The recipe: a typed model loaded from YAML.

Everything that changes a dataset's content is in here, so ``config_hash`` plus the input
fingerprints identify a dataset version. Paths are resolved relative to the recipe file.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import ConfigDict, Field, ValidationError, field_validator, model_validator

from curation.errors import ConfigError, repeated
from curation.evaluate.config import EvaluateConfig
from curation.sources import SourceConfig, check_dataset_name
from curation.stages.filter.config import FilterConfig
from curation.stages.generate.config import GenerateConfig
from curation.stages.label.config import PROMPT_FILE_SUFFIXES, LabelConfig
from curation.strict import Strict


class ValidateConfig(Strict):
    max_row_bytes: int = Field(default=1_000_000, ge=1, description="rows larger than this are quarantined")
    raw_limit_bytes: int = Field(default=16_384, ge=0, description="raw text kept in quarantine per row")
    allowed_roles: list[str] = Field(default_factory=lambda: ["system", "user", "assistant", "tool"])
    allow_empty_prompt: bool = False


class DedupConfig(Strict):
    exact: bool = True


class IngestConfig(Strict):
    """How ingest runs. Not part of the config hash: both ways give the same rows."""

    columnar: bool = Field(
        default=True,
        description="parse JSONL in blocks with pyarrow and adapt them in columns where the adapter can (hh_rlhf); "
        "false reads every row through the row path",
    )
    staging_compression: Literal["none", "lz4", "zstd"] = Field(
        default="none",
        description="compression of the pairs file ingest hands to validate and dedup (deleted when the run ends): "
        "none is the fastest where there is disk to spare (about 1.2 GB per million HH pairs), lz4 or zstd halve it",
    )


class PublishConfig(Strict):
    dataset: str

    @field_validator("dataset")
    @classmethod
    def _dataset(cls, v: str) -> str:
        return check_dataset_name(v)


class OrchestrationConfig(Strict):
    """Where the flow's tasks run. Not part of the config hash: the same recipe gives the same
    dataset version on the local runner and on Ray."""

    task_runner: Literal["local", "ray"] = Field(
        default="local", description="local: Prefect's thread pool; ray: Prefect's Ray task runner"
    )
    ray_address: str | None = Field(
        default=None, description="ray: an existing cluster ('auto', 'ray://head:10001'); empty starts a local Ray instance for the run"
    )
    ray_init: dict[str, Any] = Field(default_factory=dict, description="ray: extra ray.init() arguments (num_cpus, runtime_env, ...)")


def is_url(root: str | Path) -> bool:
    """An object-store data root (s3://bucket/prefix) rather than a local folder."""
    return "://" in str(root)


class RunConfig(Strict):
    """A whole recipe: ``curate run recipe.yaml``."""

    sources: list[SourceConfig] = Field(default_factory=list, description="inputs (may be empty only with generate.prompts.from: file)")
    publish: PublishConfig
    validate_: ValidateConfig = Field(default_factory=ValidateConfig, alias="validate")
    dedup: DedupConfig = Field(default_factory=DedupConfig)
    ingest: IngestConfig = Field(default_factory=IngestConfig)
    generate: GenerateConfig | None = Field(default=None, description="generate candidates for the kept prompts (optional)")
    label: LabelConfig | None = Field(default=None, description="label the kept and generated pairs with AI labelers (optional)")
    filter: FilterConfig | None = Field(default=None, description="noise filters and human routing over the labelled pairs (optional)")
    evaluate: EvaluateConfig | None = Field(
        default=None, description="measure the curation: proxy models trained on the published pairs, tested on held-out human labels"
    )
    data_root: str = Field(
        default="data",
        description="where datasets live: a folder (relative to the working directory) or an object-store URL (s3://bucket/prefix)",
    )
    catalog: Literal["file", "postgres"] | None = Field(
        default=None,
        description="where the data root keeps its DuckLake catalogs: file (a DuckDB file per dataset, the default) or postgres "
        "(PostgreSQL, for many concurrent publishers; connection from CURATE_PG_DSN or the PG* variables, never from the recipe). "
        "The first run records the choice in the root (catalog.json); empty: whatever the root records (not part of the config hash)",
    )
    work_dir: str | None = Field(
        default=None,
        description="local folder for runs, caches and converted models; default: the data root when it is a folder, else ./data",
    )
    orchestration: OrchestrationConfig = Field(default_factory=OrchestrationConfig)
    allow_empty: bool = Field(
        default=False,
        description="publish even when a source yields no kept pair (every row quarantined or filtered); by default such a "
        "run stops, names the source and why its rows went, and publishes nothing (not part of the config hash)",
    )
    batch_size: int = Field(
        default=20_000,
        ge=1,
        description="pairs per batch in the vectorised stages: each Polars or Arrow call costs a fraction of a millisecond "
        "whatever its size, so batches of 20,000 do validate and dedup's work in about two thirds of the CPU time of 5,000",
    )
    threads: int = Field(
        default_factory=lambda: min(8, (os.cpu_count() or 1) + 1),
        ge=1,
        description="threads for the vectorised work of ingest, validate and dedup (not part of the config hash); "
        "one more than the cores by default, so a thread in a Python step leaves the cores to the others",
    )
    model_config = ConfigDict(extra="forbid", populate_by_name=True)

    @model_validator(mode="after")
    def _unique_sources(self) -> RunConfig:
        if dupes := repeated(s.name for s in self.sources):
            raise ValueError(f"source names must be unique, repeated: {', '.join(dupes)}")
        if not self.sources and (self.generate is None or self.generate.prompts.from_ != "file"):
            raise ValueError("sources: at least one source is needed (or generate.prompts.from: file)")
        return self

    def content_dict(self) -> dict[str, Any]:
        """What determines the dataset's content (not where it is written)."""
        d = self.model_dump(mode="json", by_alias=True)
        d.pop("data_root", None)
        d.pop("work_dir", None)
        d.pop("catalog", None)
        d.pop("orchestration", None)
        d.pop("allow_empty", None)
        d.pop("batch_size", None)
        d.pop("threads", None)
        d.pop("ingest", None)
        if d.get("generate") is None:
            d.pop("generate", None)  # recipes without generation keep the hash they had
        else:
            d["generate"].pop("cache_path", None)
            d["generate"].pop("chunk_size", None)
        if d.get("filter") is None:
            d.pop("filter", None)
        for step in (d.get("filter") or {}).get("steps", []):
            step.pop("batch_size", None)
        if d.get("evaluate") is None:
            d.pop("evaluate", None)
        if d.get("label") is None:
            d.pop("label", None)
        else:
            d["label"].pop("chunk_size", None)
        return d

    @property
    def work_root(self) -> str:
        """The local folder for staging, request caches and models (never an object store)."""
        if self.work_dir is not None:
            return self.work_dir
        return "data" if is_url(self.data_root) else self.data_root

    def config_hash(self) -> str:
        blob = json.dumps(self.content_dict(), sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(blob.encode()).hexdigest()[:16]


def _format_validation_error(where: str, err: ValidationError) -> str:
    lines = [f"invalid recipe {where}:"]
    for e in err.errors():
        loc = ".".join(str(p) for p in e["loc"]) or "(top level)"
        lines.append(f"  - {loc}: {e['msg']}")
    return "\n".join(lines)


def parse_config(data: Any, *, where: str = "(inline)", base_dir: Path | None = None) -> RunConfig:
    """Validate a recipe dict; relative paths are taken from ``base_dir``."""
    if not isinstance(data, dict):
        raise ConfigError(f"invalid recipe {where}: expected a mapping at the top level, got {type(data).__name__}")
    try:
        cfg = RunConfig.model_validate(data)
    except ValidationError as err:
        raise ConfigError(_format_validation_error(where, err)) from None
    except ConfigError as err:
        raise ConfigError(f"invalid recipe {where}: {err}") from None
    if base_dir is not None:
        _resolve_label_paths(cfg, base_dir)
        _resolve_benchmark_paths(cfg, base_dir)
        gen = cfg.generate
        if gen is not None and gen.prompts.path and not Path(gen.prompts.path).is_absolute():
            gen.prompts.path = str((base_dir / gen.prompts.path).resolve())
        for src in [*cfg.sources, *(cfg.evaluate.sources if cfg.evaluate else [])]:
            if src.format != "hf" and not Path(src.path).is_absolute() and not src.path.startswith(("hf://", "s3://")):
                src.path = str((base_dir / src.path).resolve())
    from curation.stages.ingest.adapters import check_options  # late: adapters import records only

    evaluation = cfg.evaluate.sources if cfg.evaluate else []
    for section, sources in (("sources", cfg.sources), ("evaluate.sources", evaluation)):
        for i, src in enumerate(sources):
            try:
                check_options(src.adapter, src.options)
            except ConfigError as err:
                raise ConfigError(f"invalid recipe {where}: {section}.{i} ({src.name}): {err}") from None
    clash = sorted({s.name for s in cfg.sources} & {s.name for s in evaluation})
    if clash:
        raise ConfigError(f"invalid recipe {where}: evaluate.sources and sources share the name(s) {', '.join(clash)}; name them apart")
    return cfg


def _resolve_label_paths(cfg: RunConfig, base_dir: Path) -> None:
    """Template files named in labeler sections are relative to the recipe, like sources."""
    if cfg.label is None:
        return
    for lab in cfg.label.labelers:
        template = getattr(lab, "template", None)
        if template and not Path(template).is_absolute():
            lab.template = str((base_dir / template).resolve())
        system = getattr(lab, "system_prompt", None)  # a file name or the prompt text itself
        if system and "\n" not in system and system.strip().endswith(PROMPT_FILE_SUFFIXES) and not Path(system.strip()).is_absolute():
            lab.system_prompt = str((base_dir / system.strip()).resolve())


def _resolve_benchmark_paths(cfg: RunConfig, base_dir: Path) -> None:
    """Benchmark files named in decontaminate steps are relative to the recipe, like sources."""
    for step in cfg.filter.steps if cfg.filter is not None else []:
        for bench in getattr(step, "benchmarks", None) or []:
            if not Path(bench.path).is_absolute():
                bench.path = str((base_dir / bench.path).resolve())


def load_config(path: str | Path, *, data_root: str | None = None) -> RunConfig:
    """Load a recipe file. Paths inside it are relative to the file's folder."""
    path = Path(path)
    if not path.exists():
        raise ConfigError(f"recipe not found: {path}")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (yaml.YAMLError, UnicodeDecodeError) as err:
        raise ConfigError(f"cannot parse recipe {path}: {err}") from None
    cfg = parse_config(data, where=str(path), base_dir=path.resolve().parent)
    if data_root is not None:
        cfg.data_root = data_root if is_url(data_root) else str(Path(data_root).resolve())
    return cfg
