"""Benchmark: generation throughput (tokens/s) of each model backend on the same prompts.

The prompts are the first human turns of the first conversations of the shipped HH-RLHF
sample; every backend gets the same conversations and the same sampling settings (n samples
each, seeded). Each backend runs in its own child process so one's memory and threads do not
slow another, and because vLLM lives in its own environment:

  transformers  in this interpreter (the project's venv), via build_backend
  vllm          offline vllm.LLM, run by ``--vllm-python`` (the vLLM venv's python)
  openai        a running OpenAI-compatible server at ``--openai-url`` (e.g. vLLM's api_server)

Each child loads the model, warms up on one short request (first-call costs are not
throughput), then times one ``generate`` call over all prompts and prints its figures as JSON.

  .venv/bin/python benchmarks/generation.py --vllm-python .venv-vllm/bin/python
  python benchmarks/generation.py --only vllm            # a GPU box where only vLLM is installed
  .venv/bin/python benchmarks/generation.py --only openai --openai-url http://127.0.0.1:8000/v1
"""

from __future__ import annotations

import argparse
import json
import platform
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
SAMPLE = REPO / "data" / "samples" / "hh-rlhf-harmless-base" / "test-dev-1200.jsonl"
BACKENDS = ("transformers", "vllm", "openai")
MARKER = "GENERATION_BENCHMARK "
DEFAULT_VLLM_PYTHON = REPO / ".venv-vllm" / "bin" / "python"  # bash install.sh --with-vllm


def first_human_turns(n: int, path: Path = SAMPLE) -> list[str]:
    """The first human turn of each of the first ``n`` HH-RLHF rows."""
    prompts = []
    with path.open(encoding="utf-8") as fh:
        for line in fh:
            text = json.loads(line)["chosen"]
            human = text.split("\n\nHuman: ", 1)[1].split("\n\nAssistant:", 1)[0].strip()
            prompts.append(human)
            if len(prompts) == n:
                break
    return prompts


def device_name() -> str:
    """The GPU when torch sees one, else the CPU model from /proc/cpuinfo."""
    try:
        import torch

        if torch.cuda.is_available():
            return torch.cuda.get_device_name(0)
    except ImportError:
        pass
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def run_child(backend: str, args: argparse.Namespace) -> dict[str, Any]:
    """Build the backend, warm it up, time one generate over all prompts; return the figures."""
    sys.path.insert(0, str(REPO))
    from curation.models import BackendConfig, SamplingParams, build_backend

    extra: dict[str, Any] = {}
    if backend == "vllm":
        from curation.models.vllm_backend import set_cpu_env_defaults

        extra["env"] = set_cpu_env_defaults()  # ignored by GPU builds
    if backend == "openai":
        cfg = BackendConfig(backend="openai", model=args.openai_model or served_model(args.openai_url), base_url=args.openai_url)
    else:
        cfg = BackendConfig(backend=backend, model=args.model, dtype=args.dtype, batch_size=args.batch_size)
    conversations = [[{"role": "user", "content": p}] for p in first_human_turns(args.prompts)]
    params = SamplingParams(n=args.n, max_tokens=args.max_tokens, temperature=args.temperature, seed=0)

    started = time.perf_counter()
    model = build_backend(cfg, args.data_root)
    load_s = time.perf_counter() - started
    try:
        model.generate(conversations[:1], SamplingParams(max_tokens=4, temperature=0))  # warm-up
        started = time.perf_counter()
        results = model.generate(conversations, params)
        seconds = time.perf_counter() - started
    finally:
        model.close()
    gens = [g for r in results for g in r.generations]
    tokens = sum(g.completion_tokens for g in gens)
    return {
        "backend": backend,
        "device": args.openai_url if backend == "openai" else device_name(),
        "prompts": len(conversations),
        "samples": len(gens),
        "tokens": tokens,
        "seconds": round(seconds, 2),
        "tokens_per_s": round(tokens / seconds, 1),
        "load_s": round(load_s, 1),
        "finish_length": sum(g.finish_reason == "length" for g in gens),
        **extra,
    }


def served_model(base_url: str) -> str:
    """The first model the server lists (vLLM serves its --model path under that name)."""
    import urllib.request

    with urllib.request.urlopen(base_url.rstrip("/") + "/models", timeout=10) as reply:
        return json.loads(reply.read())["data"][0]["id"]


def child_command(backend: str, python: str, args: argparse.Namespace) -> list[str]:
    cmd = [python, str(Path(__file__).resolve()), "--child", backend]
    for flag in ("prompts", "n", "max_tokens", "temperature", "model", "dtype", "batch_size", "data_root", "openai_url", "openai_model"):
        value = getattr(args, flag)
        if value is not None:
            cmd += [f"--{flag.replace('_', '-')}", str(value)]
    return cmd


def measure(backend: str, python: str, args: argparse.Namespace) -> dict[str, Any]:
    """Run one backend's child, pass its log lines on to stderr and read its JSON line."""
    result = None
    with subprocess.Popen(child_command(backend, python, args), cwd=REPO, stdout=subprocess.PIPE, text=True) as proc:
        assert proc.stdout is not None
        for line in proc.stdout:
            if line.startswith(MARKER):
                result = json.loads(line[len(MARKER) :])
            else:
                sys.stderr.write(line)
    if proc.returncode != 0 or result is None:
        return {"backend": backend, "error": f"child exited {proc.returncode}; see its log above"}
    return result


COLUMNS = (
    ("backend", "backend"),
    ("device", "device"),
    ("prompts", "prompts"),
    ("samples", "samples"),
    ("tokens", "gen tokens"),
    ("seconds", "seconds"),
    ("tokens_per_s", "tokens/s"),
    ("load_s", "load s"),
)


def print_table(rows: list[dict[str, Any]]) -> None:
    cells = [[h for _, h in COLUMNS]]
    for row in rows:
        if "error" in row:
            cells.append([row["backend"], row["error"]] + [""] * (len(COLUMNS) - 2))
        else:
            cells.append([str(row.get(k, "")) for k, _ in COLUMNS])
    widths = [max(len(r[i]) for r in cells) for i in range(len(COLUMNS))]
    for j, r in enumerate(cells):
        print("  ".join(c.ljust(w) if i < 2 else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths))))
        if j == 0:
            print("  ".join("-" * w for w in widths))


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--only", action="append", choices=BACKENDS, help="run only this backend (repeatable)")
    ap.add_argument(
        "--vllm-python", default=None, help=f"python of the vLLM venv (default {DEFAULT_VLLM_PYTHON} if present, else this one)"
    )
    ap.add_argument("--openai-url", default=None, help="OpenAI-compatible server, e.g. http://127.0.0.1:8000/v1 (adds the openai row)")
    ap.add_argument("--openai-model", default=None, help="served model name (default: the server's first)")
    ap.add_argument("--prompts", type=int, default=8)
    ap.add_argument("--n", type=int, default=4)
    ap.add_argument("--max-tokens", type=int, default=64)
    ap.add_argument("--temperature", type=float, default=0.8)
    ap.add_argument("--model", default="smollm2")
    ap.add_argument("--dtype", default="float32")
    ap.add_argument("--batch-size", type=int, default=8, help="conversations per batch (transformers, vllm)")
    ap.add_argument("--data-root", default=str(REPO / "data"))
    ap.add_argument("--json", type=Path, default=None, help="also write the rows to this file")
    ap.add_argument("--child", choices=BACKENDS, help=argparse.SUPPRESS)
    return ap.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    if args.child:
        print(MARKER + json.dumps(run_child(args.child, args)), flush=True)
        return
    chosen = args.only or [b for b in BACKENDS if b != "openai" or args.openai_url]
    if "openai" in chosen and not args.openai_url:
        sys.exit("--only openai needs --openai-url")
    vllm_python = args.vllm_python or (str(DEFAULT_VLLM_PYTHON) if DEFAULT_VLLM_PYTHON.exists() else sys.executable)
    rows = []
    for backend in chosen:
        python = vllm_python if backend == "vllm" else sys.executable
        print(f"--- {backend} ({python})", file=sys.stderr, flush=True)
        rows.append(measure(backend, python, args))
    print(f"\n{args.prompts} prompts x n={args.n}, max_tokens={args.max_tokens}, temperature={args.temperature}, model {args.model}\n")
    print_table(rows)
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
