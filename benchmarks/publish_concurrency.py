"""Publishes per second and publish latency with 1, 4 and 8 concurrent publisher processes, for
each kind of catalog: PostgreSQL (``catalog: postgres``, a throwaway local server), the
DuckDB file catalog (a local folder, file locks) and the S3 object catalog (moto's S3 on
loopback, conditional writes).

Each publisher is its own process (spawned, imports done before the clock starts), waits for a
common start, then publishes ``--each`` versions of one small table (``--rows`` pairs) to one
shared dataset. Latency is one ``publish`` call, from the call to its return (staging, waiting
for other publishers, commit). A publish that gives up (``DatasetBusy`` after the store's
30 s lock timeout) is counted, not timed. Every run checks the versions it produced: all
there, consecutive, each with the previous one as its parent.

    .venv/bin/python benchmarks/publish_concurrency.py [--each 5] [--rows 2000]

Needs PostgreSQL's server binaries (install.sh installs Debian's postgresql as root) and moto.
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def _publisher(root: str, each: int, rows: int, tag: str, go: str, ready: mp.Queue, out: mp.Queue) -> None:
    from curation.store.catalog import DatasetBusy, DatasetStore
    from tests.store.test_catalog import META, pairs_table

    store = DatasetStore(root)
    table = pairs_table(range(rows))
    ready.put(tag)
    while not os.path.exists(go):
        time.sleep(0.001)
    results = []
    for i in range(each):
        t0 = time.perf_counter()
        try:
            store.publish("bench", {"pairs": table}, **META, run_id=f"{tag}-{i}")
            results.append(("ok", time.perf_counter() - t0))
        except DatasetBusy:
            results.append(("busy", time.perf_counter() - t0))
    out.put(results)


def one(root: str, publishers: int, each: int, rows: int) -> dict:
    """``publishers`` processes x ``each`` publishes into a fresh dataset under ``root``."""
    from curation.store.catalog import DatasetStore

    ctx = mp.get_context("spawn")
    ready, out = ctx.Queue(), ctx.Queue()
    go = tempfile.mktemp(prefix="curate-bench-go-")
    procs = [ctx.Process(target=_publisher, args=(root, each, rows, f"p{p}", go, ready, out)) for p in range(publishers)]
    for p in procs:
        p.start()
    for _ in procs:
        ready.get(timeout=300)
    t0 = time.perf_counter()
    Path(go).touch()
    results = [r for _ in procs for r in out.get(timeout=900)]
    wall = time.perf_counter() - t0
    for p in procs:
        p.join()
    os.unlink(go)
    ok = sorted(s for kind, s in results if kind == "ok")
    versions = DatasetStore(root).versions("bench")
    chained = [v.version for v in versions] == list(range(1, len(versions) + 1)) and all(
        v.parents == ([f"bench@{v.version - 1}"] if v.version > 1 else []) for v in versions
    )
    return {
        "publishes": len(ok),
        "busy": len(results) - len(ok),
        "per_s": len(ok) / wall,
        "p50": statistics.median(ok) if ok else float("nan"),
        "p95": ok[min(len(ok) - 1, int(round(0.95 * (len(ok) - 1))))] if ok else float("nan"),
        "versions_ok": chained and len(versions) == len(ok),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--each", type=int, default=5, help="publishes per publisher process")
    ap.add_argument("--rows", type=int, default=2000, help="pairs per published table")
    ap.add_argument("--publishers", default="1,4,8", help="comma-separated publisher counts")
    ap.add_argument("--catalogs", default="postgres,file,s3", help="comma-separated: postgres, file, s3")
    args = ap.parse_args()
    counts = [int(x) for x in args.publishers.split(",")]
    kinds = [k.strip() for k in args.catalogs.split(",")]

    from curation.store.catalog import DatasetStore
    from tests.support.postgres_server import start_postgres
    from tests.support.s3_server import S3Server

    pg = start_postgres() if "postgres" in kinds else None
    s3 = S3Server().start() if "s3" in kinds else None
    if pg is not None:
        os.environ["CURATE_PG_DSN"] = pg.dsn
    if s3 is not None:
        os.environ.update(s3.env)
        s3.create_bucket("bench")
    print(f"{os.cpu_count()} CPUs; {args.each} publishes per publisher, {args.rows:,} pairs each")
    print(f"{'catalog':<10} {'publishers':>10} {'publishes':>9} {'busy':>5} {'per s':>7} {'p50 s':>7} {'p95 s':>7}  versions")
    try:
        with tempfile.TemporaryDirectory(prefix="curate-bench-") as tmp:
            for kind in kinds:
                for n in counts:
                    if kind == "s3":
                        root = f"s3://bench/{kind}-{n}-{time.time_ns()}"
                    else:
                        root = str(Path(tmp) / f"{kind}-{n}")
                        if kind == "postgres":
                            DatasetStore(root, catalog="postgres").bind_catalog()
                    r = one(root, n, args.each, args.rows)
                    print(
                        f"{kind:<10} {n:>10} {r['publishes']:>9} {r['busy']:>5} {r['per_s']:>7.2f} {r['p50']:>7.2f} "
                        f"{r['p95']:>7.2f}  {'consecutive, parents right' if r['versions_ok'] else 'BROKEN'}",
                        flush=True,
                    )
    finally:
        if pg is not None:
            pg.close()
        if s3 is not None:
            s3.stop()


if __name__ == "__main__":
    main()
