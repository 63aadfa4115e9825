"""Benchmark: near-duplicate and semantic-duplicate prompts in the shared real sets, and the
recall/precision of both against PandaLM's known prompt groups.

For each set of ../shared/data (HH-RLHF harmless 1,200 rows, PandaLM majority-vote pairs,
OASST1 validation sibling pairs, FineGrained-RLHF QA dev pairs) it prints the pairs, the
distinct exact prompts, and the prompt clusters (size > 1) and pairs filtered by the
``near_dedup`` step (MinHash LSH, on prompts) and the ``semantic_dedup`` step (MiniLM cosine, on
prompts), with each step's time per 1,000 distinct prompts (the semantic time includes
embedding, not the model load).

Recall check: PandaLM repeats each of its 170 prompts (instruction + input) across up to 10
model pairs (999 rows), which gives known prompt groups. Every row gets its own prompt id, so
the steps must find the groups from the texts alone; pairwise recall = the fraction of
same-prompt row pairs put in one cluster, precision = the fraction of co-clustered row pairs
that truly share the prompt. Two variants: the rows' texts as they are (repeats are exact, so
recall tests the LSH / search, precision tests false merges of different prompts), and each
row's text lightly edited with a seeded edit (a word changed, a punctuation mark changed, or
case and spacing changed), so every repeat is only a near-duplicate.

FineGrained QA pairs are built here (no adapter reads its pairwise ``preference``): the prompt
is the question alone (the passages are the same retrieval context for every output), and each
of the 6 output pairs with a preference (1 or 2, not 0) is a pair.

  .venv/bin/python benchmarks/near_duplicates.py
  .venv/bin/python benchmarks/near_duplicates.py --sets hh pandalm --no-semantic
"""

from __future__ import annotations

import argparse
import json
import random
import re
import sys
import time
from collections import Counter
from collections.abc import Callable
from itertools import combinations
from math import comb
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import polars as pl  # noqa: E402

from curation.errors import NoPairs, RowError  # noqa: E402
from curation.models import BackendConfig  # noqa: E402
from curation.records import PairDraft, content_ids  # noqa: E402
from curation.stages.filter.base import FramePairs, StepContext, StepResult  # noqa: E402
from curation.stages.filter.config import NearDedupStep, SemanticDedupStep  # noqa: E402
from curation.stages.filter.near_dedup import run as near_dedup  # noqa: E402
from curation.stages.filter.semantic_dedup import run as semantic_dedup  # noqa: E402
from curation.stages.ingest.adapters import build_adapter  # noqa: E402
from curation.stages.label.base import BackendPool  # noqa: E402

SHARED = REPO.parent / "shared" / "data"
PANDALM = {
    "prompt_fields": ["instruction", "input"],
    "response_a_field": "response1",
    "response_b_field": "response2",
    "vote_fields": ["annotator1", "annotator2", "annotator3"],
}
COLUMNS = ["pair_id", "prompt_id", "prompt", "chosen", "rejected", "source_dataset"]
Row = dict[str, Any]


def rows_of(drafts: list[PairDraft], source: str) -> list[Row]:
    """Pairs-table rows, first occurrence of each pair id (as ingest keeps them)."""
    rows, seen = [], set()
    for d in drafts:
        prompt_id, pair_id = content_ids(d.prompt, d.chosen, d.rejected)
        if pair_id not in seen:
            seen.add(pair_id)
            rows.append({"pair_id": pair_id, "prompt_id": prompt_id, "prompt": d.prompt, "chosen": d.chosen, "rejected": d.rejected})
    return [{**r, "source_dataset": source} for r in rows]


def row_drafts(adapter: str, options: dict, records: list[dict]) -> list[PairDraft]:
    adapt = build_adapter(adapter, options)
    drafts = []
    for i, record in enumerate(records):
        try:
            drafts.extend(adapt(record, f"row:{i}"))
        except (NoPairs, RowError):
            continue
    return drafts


def load_hh() -> list[Row]:
    path = SHARED / "hh-rlhf-harmless-base" / "test-dev-1200.jsonl"
    return rows_of(row_drafts("hh_rlhf", {}, [json.loads(line) for line in path.open(encoding="utf-8")]), "hh")


def pandalm_records() -> list[dict]:
    return json.loads((SHARED / "pandalm-testset" / "testset-v1.json").read_text(encoding="utf-8"))


def load_pandalm() -> list[Row]:
    return rows_of(row_drafts("shp", PANDALM, pandalm_records()), "pandalm")


def load_oasst() -> list[Row]:
    path = SHARED / "oasst1-en-validation" / "en-validation.jsonl"
    result = build_adapter("oasst", {})([json.loads(line) for line in path.open(encoding="utf-8")])
    return rows_of([d for pos in sorted(result.pairs) for d in result.pairs[pos]], "oasst")


def load_finegrained() -> list[Row]:
    drafts = []
    for q in json.loads((SHARED / "finegrained-rlhf-qa-dev" / "dev_feedback.json").read_text(encoding="utf-8")):
        preference = json.loads(q["preference"]) if isinstance(q["preference"], str) else q["preference"]
        prompt = [{"role": "user", "content": q["question"]}]
        for (a, b), pref in zip(combinations(range(1, 5), 2), preference):
            if pref not in (1, 2):
                continue
            chosen, rejected = (a, b) if pref == 1 else (b, a)
            drafts.append(
                PairDraft(
                    prompt=prompt,
                    chosen=[{"role": "assistant", "content": q[f"prediction {chosen}"]}],
                    rejected=[{"role": "assistant", "content": q[f"prediction {rejected}"]}],
                )
            )
    return rows_of(drafts, "finegrained_qa")


SETS: dict[str, Callable[[], list[Row]]] = {"hh": load_hh, "pandalm": load_pandalm, "oasst": load_oasst, "finegrained_qa": load_finegrained}


def timed(step: Callable, cfg: Any, rows: list[Row], ctx: StepContext) -> tuple[StepResult, float]:
    pairs = FramePairs(pl.DataFrame([{k: r[k] for k in COLUMNS} for r in rows]))
    started = time.perf_counter()
    result = step(cfg, pairs, pl.DataFrame(), ctx)
    return result, time.perf_counter() - started


def pairwise(truth: list[Any], clusters: list[Any]) -> tuple[float, float]:
    """(recall, precision) of the co-clustered row pairs against the true groups."""
    together = sum(comb(n, 2) for n in Counter(zip(truth, clusters)).values())
    true_pairs = sum(comb(n, 2) for n in Counter(truth).values())
    found_pairs = sum(comb(n, 2) for n in Counter(clusters).values())
    return together / true_pairs if true_pairs else float("nan"), together / found_pairs if found_pairs else float("nan")


def light_edit(rng: random.Random, text: str) -> str:
    """One seeded light edit: a word changed, a punctuation mark changed, or case and spacing."""
    kind = rng.choice(["word", "punct", "case"])
    if kind == "word":
        words = text.split(" ")
        i = rng.randrange(len(words))
        words[i] = "really" if words[i] != "really" else "truly"
        return " ".join(words)
    if kind == "punct":
        marks = [m.start() for m in re.finditer(r"[.?!,]", text)]
        if not marks:
            return text + "!"
        i = rng.choice(marks)
        return text[:i] + {".": "!", "?": "?!", "!": ".", ",": ";"}[text[i]] + text[i + 1 :]
    return text.upper().replace(" ", "  ", 3)


def pandalm_rows_per_record(edit: bool, seed: int) -> tuple[list[Row], list[tuple[str, str]]]:
    """One row per PandaLM record with its own prompt id, and each record's true prompt."""
    rng = random.Random(seed)
    rows, truth = [], []
    for i, r in enumerate(pandalm_records()):
        text = "\n\n".join(p for p in (r["instruction"], r["input"]) if isinstance(p, str) and p.strip())
        if edit:
            text = light_edit(rng, text)
        prompt = [{"role": "user", "content": text}]
        row = {"pair_id": f"pandalm-{i}", "prompt_id": f"pandalm-{i}", "prompt": prompt, "source_dataset": "pandalm"}
        rows.append({**row, "chosen": [{"role": "assistant", "content": str(r["response1"])}], "rejected": []})
        truth.append((r["instruction"], r["input"]))
    return rows, truth


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sets", nargs="+", choices=list(SETS), default=list(SETS), help="which shared sets to count")
    parser.add_argument("--minhash-threshold", type=float, default=0.8, help="near_dedup Jaccard threshold")
    parser.add_argument("--cosine-threshold", type=float, default=0.95, help="semantic_dedup cosine threshold")
    parser.add_argument("--no-semantic", action="store_true", help="skip the MiniLM runs (no embedding model load)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads for MiniLM")
    parser.add_argument("--seed", type=int, default=5, help="seed of the light edits in the recall check")
    parser.add_argument("--recall-minhash", type=float, nargs="*", default=[0.5], help="extra MinHash thresholds for the recall check")
    parser.add_argument("--recall-cosine", type=float, nargs="*", default=[0.9], help="extra cosine thresholds for the recall check")
    args = parser.parse_args()
    if not SHARED.is_dir():
        sys.exit(f"shared data not found at {SHARED}")

    near_cfg = NearDedupStep(threshold=args.minhash_threshold)
    sem_cfg = SemanticDedupStep(
        threshold=args.cosine_threshold,
        embedder=BackendConfig(backend="sentence_transformers", model="all-MiniLM-L6-v2", batch_size=64, threads=args.threads),
    )
    ctx = StepContext(backends=BackendPool(REPO / "data"))
    if not args.no_semantic:
        started = time.perf_counter()
        ctx.backends.get(sem_cfg.embedder).embed(["warm-up"])
        print(f"MiniLM load: {time.perf_counter() - started:.1f} s (not counted below)")

    header = f"{'set':<15}{'pairs':>7}{'prompts':>9} | {'minhash clusters':>16}{'filtered':>9}{'ms/1k':>8} |"
    header += f" {'semantic clusters':>17}{'filtered':>9}{'ms/1k':>9}"
    print(f"\nnear_dedup: MinHash threshold {near_cfg.threshold}, {near_cfg.num_perm} perms, {near_cfg.shingle}-word shingles;")
    print(f"semantic_dedup: MiniLM cosine >= {sem_cfg.threshold}; both on distinct prompts; ms/1k = per 1,000 distinct prompts\n")
    print(header)
    print("-" * len(header))
    for name in args.sets:
        rows = SETS[name]()
        near, near_s = timed(near_dedup, near_cfg, rows, ctx)
        items, clusters, filtered = (near.summary[k] for k in ("items", "clusters", "filtered"))
        line = f"{name:<15}{len(rows):>7}{items:>9} | {clusters:>16}{filtered:>9}{1e6 * near_s / items:>8.0f} |"
        if not args.no_semantic:
            sem, sem_s = timed(semantic_dedup, sem_cfg, rows, ctx)
            line += f" {sem.summary['clusters']:>17}{sem.summary['filtered']:>9}{1e6 * sem_s / items:>9.0f}"
        print(line, flush=True)

    print("\nPandaLM recall check: 999 rows, each with its own prompt id; truth = the 170 (instruction, input) groups")
    print(f"{'variant':<22}{'method':<10}{'threshold':>10}{'clusters':>9}{'recall':>8}{'precision':>10}")
    methods = [("minhash", near_dedup, near_cfg.model_copy(update={"threshold": t})) for t in [near_cfg.threshold, *args.recall_minhash]]
    if not args.no_semantic:
        methods += [
            ("semantic", semantic_dedup, sem_cfg.model_copy(update={"threshold": t})) for t in [sem_cfg.threshold, *args.recall_cosine]
        ]
    for edit in (False, True):
        rows, truth = pandalm_rows_per_record(edit, args.seed)
        assert len(set(truth)) == 170, len(set(truth))
        variant = "lightly edited rows" if edit else "texts as they are"
        for method, step, cfg in methods:
            result, _ = timed(step, cfg, rows, ctx)
            clusters = result.decisions["cluster_id"].to_list()
            recall, precision = pairwise(truth, clusters)
            print(f"{variant:<22}{method:<10}{cfg.threshold:>10}{len(set(clusters)):>9}{recall:>8.3f}{precision:>10.3f}", flush=True)
    ctx.backends.close()


if __name__ == "__main__":
    main()
