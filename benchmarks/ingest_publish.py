"""Benchmark: ingest -> validate -> dedup -> publish against a plain pyarrow read + write.

Builds N realistic comparisons by resampling the real HH-RLHF sample (each row made
unique by a row tag in its first turn, with ~1% exact repeats so dedup has work), then
runs, each in its own child process so peak RSS is measured separately:
  1. the pipeline (library, no Prefect): rows/s and peak RSS;
  2. the baseline: pyarrow.json.read_json of the same file + pyarrow.parquet.write_table.
Prints rows/s, peak RSS and the time ratio pipeline / baseline (target <= 2.0; RSS under
1.5 GB at 1M rows). On a shared VM whose speed drifts, ``--repeat 3`` alternates the two
and reports medians (and each run's ratio).

  .venv/bin/python benchmarks/ingest_publish.py --rows 1000000 --repeat 3
"""

from __future__ import annotations

import argparse
import json
import random
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SAMPLE = REPO / "data" / "samples" / "hh-rlhf-harmless-base" / "test-dev-1200.jsonl"


def build_input(path: Path, n: int, seed: int = 0) -> int:
    rows = [json.loads(line) for line in SAMPLE.open()]
    rng = random.Random(seed)
    written = 0
    line = ""
    with path.open("w", encoding="utf-8") as fh:
        for i in range(n):
            base = rows[rng.randrange(len(rows))]
            if i and rng.random() < 0.01:  # ~1% exact repeats of the previous row
                fh.write(line)
                written += 1
                continue
            marker = "\n\nHuman: "
            row = {k: v.replace(marker, f"{marker}[{i}] ", 1) for k, v in base.items()}
            line = json.dumps(row, ensure_ascii=False) + "\n"
            fh.write(line)
            written += 1
    return written


def child_pipeline(input_path: str, root: str) -> None:
    sys.path.insert(0, str(REPO))
    from curation.config import parse_config
    from curation.run.runner import curate

    cfg = parse_config(
        {
            "publish": {"dataset": "bench"},
            "sources": [{"name": "hh", "path": input_path, "adapter": "hh_rlhf"}],
            "data_root": root,
        }
    )
    t0 = time.perf_counter()
    result = curate(cfg, force=True)
    secs = time.perf_counter() - t0
    print(
        json.dumps(
            {
                "rss_mb": _self_rss_mb(),
                "seconds": secs,
                **_cpu_seconds(),
                "funnel": {
                    k: result.funnel[k] for k in ("rows_in", "pairs_out", "kept", "rows_quarantined", "pairs_quarantined", "pairs_filtered")
                },
                "timings": result.timings,
            }
        )
    )


def child_baseline(input_path: str, out: str) -> None:
    import pyarrow.json as pj
    import pyarrow.parquet as pq

    t0 = time.perf_counter()
    table = pj.read_json(input_path, read_options=pj.ReadOptions(block_size=64 << 20))
    pq.write_table(table, out, compression="zstd")
    print(json.dumps({"rss_mb": _self_rss_mb(), "seconds": time.perf_counter() - t0, "rows": table.num_rows, **_cpu_seconds()}))


def _cpu_seconds() -> dict[str, float]:
    """User and kernel CPU of the whole child: on these VMs the baseline's kernel time (page
    faults of its ~3 GB) swings between runs while its user time does not."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return {"user_s": usage.ru_utime, "sys_s": usage.ru_stime}


def _self_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB


def run_child(*args: str) -> tuple[dict, float]:
    """Run this script as a child; return its JSON line and its own peak RSS in MB."""
    proc = subprocess.run([sys.executable, __file__, *args], capture_output=True, text=True)
    if proc.returncode != 0:
        raise SystemExit(f"child {args[1]} failed:\n{proc.stderr[-4000:]}")
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    return out, out["rss_mb"]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rows", type=int, default=100_000)
    ap.add_argument("--workdir", default=None, help="where to put the input and outputs, kept (default: a temp dir, removed at the end)")
    ap.add_argument(
        "--repeat", type=int, default=1, help="run baseline and pipeline this many times, alternating which goes first; report medians"
    )
    ap.add_argument("--child", choices=["pipeline", "baseline"], help=argparse.SUPPRESS)
    ap.add_argument("--input", help=argparse.SUPPRESS)
    ap.add_argument("--out", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child == "pipeline":
        return child_pipeline(args.input, args.out)
    if args.child == "baseline":
        return child_baseline(args.input, args.out)

    if args.workdir:
        Path(args.workdir).mkdir(parents=True, exist_ok=True)
        return measure(Path(args.workdir), args)
    with tempfile.TemporaryDirectory(prefix="bench-ingest-") as tmp:  # a 1M-row input is 1.4 GB
        return measure(Path(tmp), args)


def measure(work: Path, args: argparse.Namespace) -> None:
    input_path = work / "input.jsonl"
    t0 = time.perf_counter()
    n = build_input(input_path, args.rows)
    size_mb = input_path.stat().st_size / 1e6
    print(f"input: {n:,} rows, {size_mb:,.0f} MB JSONL (built in {time.perf_counter() - t0:.1f} s) at {input_path}")

    bases, pipes = [], []
    for i in range(args.repeat):
        root = work / f"root-{i}"
        shutil.rmtree(root, ignore_errors=True)
        order = ("baseline", "pipeline") if i % 2 == 0 else ("pipeline", "baseline")  # drift falls on both
        for which in order:
            if which == "baseline":
                bases.append(run_child("--child", "baseline", "--input", str(input_path), "--out", str(work / "baseline.parquet")))
            else:
                pipes.append(run_child("--child", "pipeline", "--input", str(input_path), "--out", str(root)))
        shutil.rmtree(root, ignore_errors=True)
        if args.repeat > 1:
            b, p = bases[-1][0]["seconds"], pipes[-1][0]["seconds"]
            cpu = [f"{x[0]['user_s']:.1f} user + {x[0]['sys_s']:.1f} sys" for x in (bases[-1], pipes[-1])]
            print(f"run {i + 1}     baseline {b:.1f} s ({cpu[0]}), pipeline {p:.1f} s ({cpu[1]}), ratio {p / b:.2f}")
    base_s = statistics.median(b["seconds"] for b, _ in bases)
    pipe_s = statistics.median(p["seconds"] for p, _ in pipes)
    base_rss, pipe_rss = max(r for _, r in bases), max(r for _, r in pipes)
    what = "median of " + str(args.repeat) + " runs, " if args.repeat > 1 else ""
    print(f"baseline  pyarrow read_json + write_parquet: {base_s:.1f} s ({what}{n / base_s:,.0f} rows/s), peak RSS {base_rss:,.0f} MB")
    print(f"pipeline  ingest+validate+dedup+publish:     {pipe_s:.1f} s ({what}{n / pipe_s:,.0f} rows/s), peak RSS {pipe_rss:,.0f} MB")
    stages = pipes[0][0]["timings"]
    print("stages    " + ", ".join(f"{k} {statistics.median(p['timings'][k] for p, _ in pipes):.1f} s" for k in stages))
    print(f"funnel    {pipes[0][0]['funnel']}")
    print(f"ratio     pipeline / baseline = {pipe_s / base_s:.2f} (target <= 2.0)")
    if args.repeat > 1:
        ratios = sorted(p["seconds"] / b["seconds"] for (b, _), (p, _) in zip(bases, pipes))
        print(f"          per run: {', '.join(f'{r:.2f}' for r in ratios)}")


if __name__ == "__main__":
    main()
