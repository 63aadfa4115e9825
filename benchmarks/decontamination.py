"""Benchmark: ``curation.overlap.OverlapIndex`` matching many training prompts against benchmark prompts.

Builds N training prompts by resampling the real HH-RLHF sample's prompts (each made unique by a
row tag, as benchmarks/ingest_publish.py does) and M benchmark prompts: the real prompts of
../shared/data (OASST prompter turns, PandaLM instructions, FineGrainedRLHF questions) plus
synthetic ones drawn from their vocabulary. A few hundred training prompts are planted overlaps
of known benchmark items, three ways:
  exact   the benchmark prompt in other case and spacing;
  ngram   an HH prompt followed by 60-100% of a benchmark prompt's words (a contiguous piece);
  edited  a benchmark prompt with one word in 12 changed and its punctuation changed.
Each configuration runs in its own child process (peak RSS measured there, inputs read from
Parquet): the default matcher (exact + 8-gram + MinHash) and the same without MinHash. Prints
the index build time, prompts/s of ``match``, peak RSS, and precision / recall on the planted
prompts (a hit is the planted row matched to its planted item).

  .venv/bin/python benchmarks/decontamination.py --train 1000000 --bench 10000 --planted 300
"""

from __future__ import annotations

import argparse
import json
import random
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
SAMPLE = REPO / "data" / "samples" / "hh-rlhf-harmless-base" / "test-dev-1200.jsonl"
SHARED = REPO.parent / "shared" / "data"
KINDS = ("exact", "ngram", "edited")


def hh_prompts() -> list[str]:
    from curation.errors import RowError
    from curation.overlap import prompt_text
    from curation.stages.ingest.adapters import build_adapter

    adapt = build_adapter("hh_rlhf", {})
    out: dict[str, None] = {}
    for i, line in enumerate(SAMPLE.open(encoding="utf-8")):
        try:
            for d in adapt(json.loads(line), f"hh:{i}"):
                out.setdefault(prompt_text(d.prompt))
        except RowError:
            continue
    return list(out)


def real_benchmark_prompts() -> list[str]:
    oasst = [json.loads(line) for line in (SHARED / "oasst1-en-validation" / "en-validation.jsonl").open()]
    pandalm = json.loads((SHARED / "pandalm-testset" / "testset-v1.json").read_text())
    qa = json.loads((SHARED / "finegrained-rlhf-qa-dev" / "dev_feedback.json").read_text())
    texts = [m["text"] for m in oasst if m["role"] == "prompter"]
    texts += [f"{r['instruction']}\n{r['input']}".strip() for r in pandalm] + [r["question"] for r in qa]
    return list(dict.fromkeys(texts))


def benchmark(n: int, rng: random.Random) -> list[str]:
    real = real_benchmark_prompts()
    rng.shuffle(real)
    vocab = sorted({w for t in real for w in t.split()})
    synthetic = [" ".join(rng.choices(vocab, k=rng.randint(6, 60))) + "?" for _ in range(max(0, n - len(real)))]
    out = list(dict.fromkeys(real[:n] + synthetic))
    rng.shuffle(out)
    return out


def edit(text: str, rng: random.Random) -> str:
    words = [w.strip(".,?!:;") or w for w in text.split()]
    return " ".join("really" if i % 12 == 6 else (w.upper() if rng.random() < 0.2 else w) for i, w in enumerate(words))


def training(n: int, planted: int, bench: list[str], rng: random.Random) -> tuple[list[str], dict[int, tuple[str, int]]]:
    """N tagged HH prompts, ``planted`` of them replaced by overlaps: row -> (kind, benchmark item)."""
    hh = hh_prompts()
    texts = [f"[{i}] {hh[rng.randrange(len(hh))]}" for i in range(n)]
    long_items = [i for i, t in enumerate(bench) if len(t.split()) >= 16]
    items = rng.sample(long_items, planted)
    truth = {}
    for k, (row, item) in enumerate(zip(rng.sample(range(n), planted), items)):
        kind, ref = KINDS[k % 3], bench[item]
        if kind == "exact":
            texts[row] = "  ".join(ref.upper().split())
        elif kind == "ngram":
            words = ref.split()
            keep = rng.randint(int(0.6 * len(words)) + 1, len(words))
            start = rng.randint(0, len(words) - keep)
            texts[row] = f"{rng.choice(hh)}\n{' '.join(words[start : start + keep])}"
        else:
            texts[row] = edit(ref, rng)
        truth[row] = (kind, item)
    return texts, truth


def child(work: str, minhash: bool) -> None:
    import polars as pl

    from curation.overlap import OverlapIndex

    train = pl.read_parquet(f"{work}/train.parquet")["text"]
    bench = pl.read_parquet(f"{work}/bench.parquet")["text"].to_list()
    t0 = time.perf_counter()
    index = OverlapIndex({"bench": bench}, minhash_threshold=0.8 if minhash else None)
    build = time.perf_counter() - t0
    t0 = time.perf_counter()
    found = index.match(train)
    secs = time.perf_counter() - t0
    hits = [(row, m.item, m.kind, m.overlap) for row, m in enumerate(found) if m is not None]
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(json.dumps({"build_s": build, "match_s": secs, "rss_mb": rss, "hits": hits}))


def report(name: str, out: dict, n: int, truth: dict[int, tuple[str, int]]) -> None:
    hits = {row: (item, kind, ov) for row, item, kind, ov in out["hits"]}
    right = {row for row, (item, _, _) in hits.items() if truth.get(row, (None, -1))[1] == item}
    precision = len(right) / len(hits) if hits else 1.0
    print(
        f"{name}: index {out['build_s']:.2f} s, match {out['match_s']:.1f} s = {n / out['match_s']:,.0f} prompts/s, "
        f"peak RSS {out['rss_mb']:,.0f} MB; {len(hits)} matched, precision {precision:.3f}, recall {len(right) / len(truth):.3f}"
    )
    for kind in KINDS:
        rows = [r for r, (k, _) in truth.items() if k == kind]
        found: dict[str, int] = {}
        for r in rows:
            if r in right:
                found[hits[r][1]] = found.get(hits[r][1], 0) + 1
        print(f"  planted {kind:6} {len(rows):4}: recall {sum(found.values()) / len(rows):.3f}, matched as {found}")
    wrong = sorted(set(hits) - right)
    if wrong:
        print(f"  {len(wrong)} other matches, e.g. rows {wrong[:5]} (planted: {[truth.get(r) for r in wrong[:5]]})")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--train", type=int, default=100_000)
    ap.add_argument("--bench", type=int, default=10_000)
    ap.add_argument("--planted", type=int, default=300)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--child", choices=["minhash", "no-minhash"], help=argparse.SUPPRESS)
    ap.add_argument("--work", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        return child(args.work, args.child == "minhash")

    import polars as pl

    rng = random.Random(args.seed)
    t0 = time.perf_counter()
    bench = benchmark(args.bench, rng)
    train, truth = training(args.train, args.planted, bench, rng)
    print(
        f"inputs: {len(train):,} training prompts, {len(bench):,} benchmark prompts, {len(truth)} planted ({time.perf_counter() - t0:.1f} s)"
    )
    with tempfile.TemporaryDirectory(prefix="bench-decon-") as work:
        pl.DataFrame({"text": train}).write_parquet(f"{work}/train.parquet")
        pl.DataFrame({"text": bench}).write_parquet(f"{work}/bench.parquet")
        del train
        for mode in ("minhash", "no-minhash"):
            proc = subprocess.run([sys.executable, __file__, "--child", mode, "--work", work], capture_output=True, text=True)
            if proc.returncode != 0:
                raise SystemExit(f"child {mode} failed:\n{proc.stderr[-4000:]}")
            report(mode, json.loads(proc.stdout.strip().splitlines()[-1]), args.train, truth)


if __name__ == "__main__":
    main()
