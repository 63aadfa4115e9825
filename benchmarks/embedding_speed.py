"""Benchmark: the 5-member BT ensemble labelling the shared human-labelled sets end to end, and
the dtype choice (fp32 against bf16) for the embedder and for SmolLM2 log-prob scoring.

Pairs: HH-RLHF harmless test-dev-1200, PandaLM (majority of three, ties dropped) and OASST1 en
validation (all ordered sibling pairs), read as ``benchmarks/shared_sets.py`` reads them. Each
measurement runs in its own child process (a fresh embedding memo, its own peak RSS):

* ``e2e``: the label stage's ``run_labeler`` with the BT ensemble (5 members, the default
  MiniLM embedder, ``dtype: auto``) on every pair, into a fresh data root: wall time split
  into embedding (time inside ``embed``) and the rest (fitting the heads, writing rows), texts/s,
  peak RSS; then the same selection again (the run cache: no embedding, no training) and one
  pair fewer (retrained from the embeddings cached on disk).
* ``before``: the same labelling with the embedder as it was before this change (one
  ``SentenceTransformer.encode`` call per 256 texts, batches of 64 sorted by characters, no
  cache), for the comparison on the same machine and session.
* ``embedder``: texts/s of the embedder on the same sample in float32 and bfloat16.
* ``smollm2``: teacher-forced scoring tokens/s of SmolLM2 in float32 and bfloat16, and the
  largest log-prob difference between the two.

  .venv/bin/python benchmarks/embedding_speed.py                 # everything (about 10 min on 2 cores)
  .venv/bin/python benchmarks/embedding_speed.py --only e2e --threads 2
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

TARGET_PAIRS, TARGET_S, BEFORE_S = 4680, 60.0, 580.0  # the issue's figures
PAIRS_ENV = "EMBEDDING_SPEED_PAIRS"


def peak_rss_gb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / (1 << 20)  # KiB on Linux


def shared_pairs() -> Any:
    import pyarrow as pa

    from benchmarks.shared_sets import PAIRS_SCHEMA, SHARED, load_pairs

    per_set = int(os.environ.get(PAIRS_ENV) or 0) or None  # --pairs: a quick check on fewer pairs
    rows = [p for name in ("hh", "pandalm", "oasst") for p in load_pairs(name, SHARED)[:per_set]]
    return pa.Table.from_pylist(rows, schema=PAIRS_SCHEMA)


def _response_texts(pairs: Any) -> list[str]:
    from curation.records import response_text

    return sorted({response_text(m) for col in ("chosen", "rejected") for m in pairs[col].to_pylist()}, key=lambda t: (len(t), t))


class Timed:
    """An embedding backend that records the time spent in ``embed`` and the texts asked for."""

    def __init__(self, real: Any):
        self.real, self.name, self.model = real, real.name, real.model
        self.seconds, self.texts = 0.0, 0

    def embed(self, texts: Any) -> Any:
        started = time.perf_counter()
        try:
            return self.real.embed(texts)
        finally:
            self.seconds += time.perf_counter() - started
            self.texts += len(texts)

    def close(self) -> None:
        self.real.close()


class BeforeEmbedder:
    """The embedder as it was: ``encode`` on each call's texts, batch 64, no memo, no cache."""

    name = "sentence_transformers"

    def __init__(self, model: str, batch_size: int):
        from sentence_transformers import SentenceTransformer

        from curation.models.local_models import minilm_dir

        self.model, self.batch_size, self.load_seconds = model, batch_size, 0.0
        self._st = SentenceTransformer(str(minilm_dir(model)), device="cpu", local_files_only=True)

    def embed(self, texts: Any) -> Any:
        import numpy as np

        return np.asarray(
            self._st.encode(
                list(texts), batch_size=self.batch_size, normalize_embeddings=True, convert_to_numpy=True, show_progress_bar=False
            ),
            dtype=np.float32,
        )

    def close(self) -> None:
        pass


# --------------------------------------------------------------------------- children


def child_e2e(threads: int | None, before: bool) -> dict[str, Any]:
    import pyarrow.parquet as pq

    from curation.models import build_backend
    from curation.models.config import minilm
    from curation.progress import NoProgress
    from curation.stages.label import build_labeler
    from curation.stages.label.base import BackendPool
    from curation.stages.label.cache import cache_root, open_cache
    from curation.stages.label.config import BTEnsembleConfig, LabelConfig
    from curation.stages.label.stage import run_labeler
    from schemas import arrow_schema

    started = time.perf_counter()
    pairs = shared_pairs()
    embedder_cfg = minilm().model_copy(update={"threads": threads})
    label_cfg = LabelConfig(labelers=[BTEnsembleConfig(name="bt-minilm", members=5, embedder=embedder_cfg)])
    work = Path(tempfile.mkdtemp(prefix="embedding-speed-"))
    pairs_file = work / "pairs.parquet"
    pq.write_table(pairs, pairs_file)
    timed: list[Timed] = []

    def build(cfg: Any, root: Any) -> Timed:
        t0 = time.perf_counter()
        backend = BeforeEmbedder(cfg.model, cfg.batch_size) if before else build_backend(cfg, root)
        if before:
            import torch

            torch.set_num_threads(cfg.cpu_threads())
        timed.append(Timed(backend))
        timed[-1].seconds = time.perf_counter() - t0  # building counts as embedding (before: the model loads here)
        if before:
            backend.load_seconds = timed[-1].seconds
        return timed[-1]

    def label(table_file: Path, cached: bool) -> dict[str, Any]:
        pool = BackendPool(work, build=build)
        labeler = build_labeler(label_cfg.labelers[0], pool)
        cache = open_cache(cache_root(work), labeler) if cached else None
        t0 = time.perf_counter()
        with pq.ParquetWriter(work / "labels.parquet", arrow_schema("labels")) as writer:
            counts = run_labeler(labeler, label_cfg, [str(table_file)], writer, NoProgress(), cache)
        wall = time.perf_counter() - t0
        embed_s = sum(t.seconds for t in timed)
        load_s = sum(getattr(t.real, "load_seconds", 0.0) for t in timed)
        computed = sum(getattr(t.real, "computed", 0) for t in timed)
        pool.close()
        timed.clear()
        return {"wall_s": wall, "embed_s": embed_s, "load_s": load_s, "computed": computed, "counts": counts}

    out: dict[str, Any] = {"pairs": pairs.num_rows, "texts": len(_response_texts(pairs)), "setup_s": time.perf_counter() - started}
    try:
        out["first"] = label(pairs_file, cached=not before)
        import torch

        out["threads"] = torch.get_num_threads()
        out["dtype"] = "float32" if before else embedder_cfg.resolved_dtype()
        out["peak_rss_gb"] = peak_rss_gb()
        if not before:
            out["rerun"] = label(pairs_file, cached=True)
            fewer = work / "fewer.parquet"
            pq.write_table(pairs.slice(0, pairs.num_rows - 1), fewer)
            from curation.models.memo import EMBEDDINGS

            EMBEDDINGS.clear()  # a new process: the embeddings come from disk
            out["retrain"] = label(fewer, cached=True)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return out


def child_embedder(threads: int | None, sample: int, bf16_sample: int) -> dict[str, Any]:
    import random

    import numpy as np

    from curation.models import build_backend
    from curation.models.config import minilm
    from curation.models.memo import EMBEDDINGS

    texts = _response_texts(shared_pairs())
    random.Random(0).shuffle(texts)
    texts = texts[:sample]
    out: dict[str, Any] = {"sample": len(texts)}
    root = Path(tempfile.mkdtemp(prefix="embedding-speed-"))
    before = BeforeEmbedder("all-MiniLM-L6-v2", 64)
    vectors: dict[str, list[Any]] = {}
    for name, dtype, n in (("fp32", "float32", sample), ("bf16", "bfloat16", bf16_sample), ("fp32 before", None, sample)):
        part = texts[:n]
        if dtype is None:
            import torch

            torch.set_num_threads(minilm().model_copy(update={"threads": threads}).cpu_threads())
            backend: Any = before
        else:
            backend = build_backend(minilm().model_copy(update={"threads": threads, "dtype": dtype}), root / dtype)
            backend.embed(["warm-up: load the model"])
        EMBEDDINGS.clear()
        started = time.perf_counter()
        for start in range(0, len(part), 256):
            vectors.setdefault(name, []).append(backend.embed(part[start : start + 256]))
        seconds = time.perf_counter() - started
        out[name] = {"texts": len(part), "seconds": seconds, "texts_per_s": len(part) / seconds}
    shutil.rmtree(root, ignore_errors=True)
    fp32, bf16 = np.concatenate(vectors["fp32"]), np.concatenate(vectors["bf16"])
    out["bf16_min_cosine"] = float((fp32[: len(bf16)] * bf16).sum(axis=1).min())
    out["before_max_abs_diff"] = float(np.abs(np.concatenate(vectors["fp32 before"]) - fp32).max())
    return out


def child_smollm2(threads: int | None, n: int) -> dict[str, Any]:
    import numpy as np

    from benchmarks.logprob_scoring import real_pairs
    from curation.models import BackendConfig, build_backend

    conversations, responses = real_pairs(n)
    out: dict[str, Any] = {"responses": len(responses)}
    scores = {}
    for dtype in ("float32", "bfloat16"):
        backend = build_backend(BackendConfig(backend="transformers", model="smollm2", dtype=dtype, threads=threads), REPO / "data")
        backend.score_logprobs(conversations[:1], responses[:1])  # warm-up
        forced = backend._forced(conversations, responses)
        tokens = sum(len(p) + len(r) for p, r in forced)
        started = time.perf_counter()
        scores[dtype] = backend.score_logprobs(conversations, responses)
        seconds = time.perf_counter() - started
        out[dtype] = {"tokens": tokens, "seconds": seconds, "tok_per_s": tokens / seconds}
        backend.close()
    diffs = [np.abs(np.subtract(a, b)).max() for a, b in zip(scores["float32"], scores["bfloat16"]) if a]
    means = [abs(np.mean(a) - np.mean(b)) for a, b in zip(scores["float32"], scores["bfloat16"]) if a]
    out["max_token_diff"], out["max_mean_diff"] = float(max(diffs)), float(max(means))
    return out


# --------------------------------------------------------------------------- report


def run_child(args: list[str]) -> dict[str, Any]:
    proc = subprocess.run([sys.executable, __file__, "--child", *args], capture_output=True, text=True)
    if proc.returncode:
        sys.stderr.write(proc.stderr[-4000:])
        raise SystemExit(f"child {args} failed")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def report_e2e(label: str, r: dict[str, Any]) -> None:
    f = r["first"]
    rest = f["wall_s"] - f["embed_s"]
    texts = f["computed"] or r["texts"]
    print(f"{label}: {r['pairs']:,} pairs, {r['texts']:,} distinct responses, dtype {r['dtype']}, torch threads {r['threads']}")
    print(
        f"  labelled in {f['wall_s']:.1f} s: embedding {f['embed_s']:.1f} s (model load {f['load_s']:.1f} s of it), "
        f"training + rows {rest:.1f} s; {texts / max(1e-9, f['embed_s'] - f['load_s']):.1f} texts/s; "
        f"peak RSS {r['peak_rss_gb']:.2f} GB; reading the sets {r['setup_s']:.1f} s before that"
    )
    scaled = f["wall_s"] * TARGET_PAIRS / r["pairs"]
    print(f"  scaled to {TARGET_PAIRS:,} pairs: {scaled:.0f} s (target <= {TARGET_S:.0f} s: {'met' if scaled <= TARGET_S else 'missed'})")
    if "rerun" in r:
        again, retrain = r["rerun"], r["retrain"]
        print(
            f"  same inputs again: {again['wall_s']:.2f} s ({again['counts']['labels_reused']:,} pairs reused, "
            f"{again['computed']} texts embedded)"
        )
        print(
            f"  one pair fewer (retrained, embeddings from the disk cache): {retrain['wall_s']:.1f} s "
            f"({retrain['computed']} texts embedded, {retrain['embed_s']:.1f} s reading vectors)"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--only", choices=["e2e", "before", "embedder", "smollm2"], action="append")
    parser.add_argument("--threads", type=int, action="append", help="torch threads of the e2e runs (default: 1 and 2)")
    parser.add_argument("--sample", type=int, default=256, help="texts for the embedder fp32 timing")
    parser.add_argument("--bf16-sample", type=int, default=64, help="texts for the embedder bf16 timing (slow without AMX)")
    parser.add_argument("--smollm2-responses", type=int, default=8)
    parser.add_argument("--pairs", type=int, default=None, help="at most N pairs of each set (a quick check; default: all)")
    parser.add_argument("--child", nargs=argparse.REMAINDER, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.pairs:
        os.environ[PAIRS_ENV] = str(args.pairs)

    if args.child:
        kind, threads = args.child[0], (int(args.child[1]) if args.child[1] != "default" else None)
        if kind in ("e2e", "before"):
            result = child_e2e(threads, before=kind == "before")
        elif kind == "embedder":
            result = child_embedder(threads, int(args.child[2]), int(args.child[3]))
        else:
            result = child_smollm2(threads, int(args.child[2]))
        print(json.dumps(result))
        return

    from curation.models.config import BF16_CPU_FLAGS, cpu_flags

    only = set(args.only or ["e2e", "before", "embedder", "smollm2"])
    threads = args.threads or [1, 2]
    fast_bf16 = sorted(BF16_CPU_FLAGS & cpu_flags())
    print(
        f"machine: {os.cpu_count()} cores, bf16 CPU flags: {', '.join(fast_bf16) or 'none'} (dtype auto -> {'bfloat16' if fast_bf16 else 'float32'})"
    )
    print(f"target: {TARGET_PAIRS:,} pairs labelled in <= {TARGET_S:.0f} s on 2 cores (issue: ~{BEFORE_S:.0f} s before)")
    if "e2e" in only:
        for t in threads:
            report_e2e(f"BT ensemble, now, {t} thread(s)", run_child(["e2e", str(t)]))
    if "before" in only:
        report_e2e(f"BT ensemble, embedder as before, {threads[0]} thread(s)", run_child(["before", str(threads[0])]))
    if "embedder" in only:
        r = run_child(["embedder", str(threads[0]), str(args.sample), str(args.bf16_sample)])
        print(f"MiniLM embedder, {threads[0]} thread(s), random responses of the shared sets:")
        for name in ("fp32", "fp32 before", "bf16"):
            print(f"  {name:12s} {r[name]['texts_per_s']:7.1f} texts/s ({r[name]['texts']} texts, {r[name]['seconds']:.1f} s)")
        print(
            f"  bf16 vs fp32: smallest cosine {r['bf16_min_cosine']:.5f}; before vs now: largest difference {r['before_max_abs_diff']:.1e}"
        )
    if "smollm2" in only:
        r = run_child(["smollm2", str(threads[0]), str(args.smollm2_responses)])
        print(f"SmolLM2-135M teacher-forced scoring, {r['responses']} HH responses, {threads[0]} thread(s):")
        for dtype in ("float32", "bfloat16"):
            print(f"  {dtype:9s} {r[dtype]['tok_per_s']:7.0f} tok/s ({r[dtype]['tokens']} tokens, {r[dtype]['seconds']:.1f} s)")
        print(
            f"  bf16 vs fp32: largest per-token log-prob difference {r['max_token_diff']:.3f}, of a mean log-prob {r['max_mean_diff']:.4f}"
        )


if __name__ == "__main__":
    main()
