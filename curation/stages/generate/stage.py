"""The generate stage: prompts -> candidates (every configured strategy) -> unlabeled pairs.

Runs after dedup on the kept pairs' prompts (or on a prompt file). Writes three staged
tables: ``candidates`` (all strategies, for the diversity comparison), the generated
``pairs`` (the published strategy only, label_source "unlabeled") and their ``decisions``.
The run's numbers, including per-strategy diversity, go into the stage counts and from
there into the run report.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from curation.config import RunConfig
from curation.models import build_backend, check_backend
from curation.models.base import ModelBackend, SamplingParams
from curation.progress import NoProgress, Progress
from curation.stages.base import APPEND, Stage, StageOutput, pair_files, staged_rows
from curation.stages.generate.cache import CachedGenerator, RequestCache
from curation.stages.generate.config import GenerateConfig
from curation.stages.generate.diversity import strategy_diversity
from curation.stages.generate.pairing import pair_rows
from curation.stages.generate.prompts import Prompt, from_file, from_pairs
from curation.stages.generate.strategies import STRATEGIES, Candidate
from curation.tables import TableWriter


def check(cfg: RunConfig) -> None:
    """Fail before any work if a configured backend cannot serve here."""
    if cfg.generate is not None:
        check_backend(cfg.generate.generator, cfg.work_root)
        check_backend(cfg.generate.embedder, cfg.work_root)


def cache_path(cfg: RunConfig) -> Path:
    gen = cfg.generate
    assert gen is not None
    return Path(gen.cache_path) if gen.cache_path else Path(cfg.work_root) / "cache" / "requests.sqlite"


def load_prompts(gen: GenerateConfig, kept_pairs: str | None) -> list[Prompt]:
    if gen.prompts.from_ == "file":
        assert gen.prompts.path
        return from_file(gen.prompts.path, gen.prompts.limit)
    return from_pairs(kept_pairs, gen.prompts.limit) if kept_pairs else []


def candidate_id(c: Candidate, model: str) -> str:
    blob = json.dumps([c.prompt.prompt_id, c.strategy, model, c.params.as_dict(), c.persona, c.index], separators=(",", ":"))
    return hashlib.blake2b(blob.encode(), digest_size=16).hexdigest()


def candidate_row(c: Candidate, backend: ModelBackend, model: str) -> dict[str, Any]:
    return {
        "candidate_id": c.candidate_id,
        "prompt_id": c.prompt.prompt_id,
        "prompt": c.prompt.conversation,
        "response": c.text,
        "strategy": c.strategy,
        "candidate_index": c.index,
        "model": model,
        "backend": backend.name,
        "params": json.dumps(c.params.as_dict()),
        "seed": c.params.seed,
        "persona": c.persona,
        "request": c.request,
        "finish_reason": c.finish_reason,
        "prompt_tokens": c.prompt_tokens,
        "completion_tokens": c.completion_tokens,
        "cache_key": c.cache_key,
        "metadata": json.dumps(c.metadata) if c.metadata else None,
    }


def run_strategies(
    gen_cfg: GenerateConfig, backend: ModelBackend, cache: RequestCache, prompts: list[Prompt], progress: Progress
) -> tuple[dict[str, list[Candidate]], dict[str, dict[str, Any]]]:
    """Candidates per strategy, and per strategy what it cost (sent vs reused requests)."""
    params = SamplingParams(
        max_tokens=gen_cfg.max_tokens, temperature=gen_cfg.temperature, top_p=gen_cfg.top_p, seed=gen_cfg.seed, stop=tuple(gen_cfg.stop)
    )
    by_strategy: dict[str, list[Candidate]] = {}
    costs: dict[str, dict[str, Any]] = {}
    for name in gen_cfg.strategies:
        cached = CachedGenerator(backend, gen_cfg.generator.identity(), cache, chunk_size=gen_cfg.chunk_size)
        progress.start(f"generate {name}")
        cached.on_chunk = progress.advance
        t0 = time.perf_counter()
        cands = STRATEGIES[name](cached, prompts, params, gen_cfg.n, gen_cfg.system_prompt, personas=gen_cfg.personas)
        progress.finish()
        for c in cands:
            c.candidate_id = candidate_id(c, gen_cfg.generator.model)
        by_strategy[name] = cands
        u = cached.usage
        costs[name] = {
            "candidates": len(cands),
            "fallback": sum(1 for c in cands if c.metadata.get("parse") == "fallback_iid"),
            "requests_sent": cached.sent,
            "requests_reused": cached.reused,
            "prompt_tokens": u.prompt_tokens,
            "completion_tokens": u.completion_tokens,
            "cost_usd": u.cost_usd,
            "seconds": round(time.perf_counter() - t0, 2),
        }
    return by_strategy, costs


def group_by_prompt(cands: list[Candidate], prompts: list[Prompt]) -> list[list[Candidate]]:
    sets: dict[str, list[Candidate]] = {p.prompt_id: [] for p in prompts}
    for c in cands:
        sets[c.prompt.prompt_id].append(c)
    return [sorted(s, key=lambda c: c.index) for s in sets.values()]


def generate(cfg: RunConfig, work_dir: str | Path, kept_pairs: str | None, progress: Progress | None = None) -> StageOutput:
    """Generate, pair and measure; see the module docstring."""
    gen_cfg = cfg.generate
    assert gen_cfg is not None, "generate stage called without a generate section"
    progress = progress or NoProgress()
    work = Path(work_dir)
    started = time.perf_counter()
    prompts = load_prompts(gen_cfg, kept_pairs)
    cache = RequestCache(cache_path(cfg))
    backend = build_backend(gen_cfg.generator, cfg.work_root)
    try:
        by_strategy, costs = run_strategies(gen_cfg, backend, cache, prompts, progress)
        describe = backend.describe()
    finally:
        backend.close()
        cache.close()
    cand_w = TableWriter(work / "candidates.parquet", "candidates")
    pairs_w = TableWriter(work / "pairs-generated.parquet", "pairs")
    dec_w = TableWriter(work / "decisions-generate.parquet", "decisions")
    filtered: dict[str, int] = {}
    with cand_w, pairs_w, dec_w:
        for name in gen_cfg.strategies:
            for c in by_strategy[name]:
                cand_w.append(candidate_row(c, backend, gen_cfg.generator.model))
        sets = group_by_prompt(by_strategy[gen_cfg.strategy], prompts)
        p = gen_cfg.pairing
        for row, decision in pair_rows(sets, p.mode, p.k, p.seed):
            dec_w.append(decision)
            if row is None:
                filtered[decision["reason"]] = filtered.get(decision["reason"], 0) + 1
            else:
                pairs_w.append(row)
    diversity = measure_diversity(gen_cfg, cfg.work_root, by_strategy, prompts, progress)
    counts = {
        "prompts": len(prompts),
        "strategy": gen_cfg.strategy,
        "strategies": costs,
        "candidates": cand_w.rows_written,
        "pairs_considered": dec_w.rows_written,
        "pairs_kept": pairs_w.rows_written,
        "filtered": filtered,
        "diversity": diversity,
        "backend": describe,
        "params": {k: getattr(gen_cfg, k) for k in ("n", "max_tokens", "temperature", "top_p", "seed", "system_prompt")},
    }
    files = {"candidates": str(cand_w.path), "pairs": str(pairs_w.path), "decisions": str(dec_w.path)}
    return StageOutput("generate", files, counts, time.perf_counter() - started)


def measure_diversity(
    gen_cfg: GenerateConfig, data_root: str, by_strategy: dict[str, list[Candidate]], prompts: list[Prompt], progress: Progress
) -> dict[str, dict[str, Any]]:
    if not any(by_strategy.values()):
        return {}
    progress.start("diversity")
    embedder = build_backend(gen_cfg.embedder, data_root)
    try:
        out = {}
        for name, cands in by_strategy.items():
            out[name] = strategy_diversity([[c.text for c in s] for s in group_by_prompt(cands, prompts)], embedder.embed)
            progress.advance(len(cands))
    finally:
        embedder.close()
        progress.finish()
    return out


class GenerateStage(Stage):
    """Candidates for the kept prompts (or a prompt file), paired into unlabeled pairs."""

    name = "generate"
    sections = ("generate",)
    upstream = ("dedup", "evaluation_set")
    publishes = {"pairs": APPEND, "decisions": APPEND, "candidates": APPEND}
    uses_models = True
    retry = "api"

    def enabled(self, cfg: RunConfig) -> bool:
        return cfg.generate is not None

    def check(self, cfg: RunConfig) -> None:
        check(cfg)

    def run(self, cfg: RunConfig, run_dir: str | Path, upstream: Mapping[str, StageOutput], progress: Progress) -> StageOutput:
        kept = pair_files(upstream)
        return self.marked(generate(cfg, run_dir, kept[0] if kept else None, progress))

    def funnel(self, out: StageOutput) -> dict[str, Any]:
        """Generated pairs are not input rows, so they get their own line of accounting:
        pairs_considered = pairs_kept + filtered."""
        return {"generated": dict(out.counts)}

    def audit(self, out: StageOutput, funnel: dict[str, Any], upstream: Mapping[str, StageOutput]) -> list[str]:
        g = funnel["generated"]
        problems = []
        if g["pairs_considered"] != g["pairs_kept"] + sum(g["filtered"].values()):
            problems.append(f"generated: {g['pairs_considered']} pairs considered != {g['pairs_kept']} kept + {g['filtered']} filtered")
        return problems + staged_rows(
            {
                "candidates": (out.files["candidates"], g["candidates"]),
                "generated pairs": (out.files["pairs"], g["pairs_kept"]),
                "generate decisions": (out.files["decisions"], g["pairs_considered"]),
            }
        )
