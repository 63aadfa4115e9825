"""Model access: narrow interfaces (``base``) and pluggable backends.

Backends are looked up by name here and imported lazily, so a machine without vLLM (or
without torch) can still run the parts that do not need it. Adding a backend means adding
a module and a line in ``BACKENDS``; no technique changes.
"""

from __future__ import annotations

from pathlib import Path

from curation.errors import ConfigError
from curation.models.base import (
    BackendError,
    Conversation,
    Generation,
    GenerationResult,
    Message,
    ModelBackend,
    PooledHidden,
    SamplingParams,
    StructuredReply,
    Unsupported,
    Usage,
)
from curation.models.config import BackendConfig
from curation.registry import load

BACKENDS: dict[str, str] = {
    "transformers": "curation.models.transformers_backend:TransformersBackend",
    "sentence_transformers": "curation.models.embedder:SentenceTransformerBackend",
    "openai": "curation.models.openai_backend:OpenAIBackend",
    "vllm": "curation.models.vllm_backend:VLLMBackend",
    "ray_data": "curation.models.ray_data_backend:RayDataBackend",
}


def backend_class(name: str) -> type[ModelBackend]:
    if name not in BACKENDS:
        raise ConfigError(f"unknown backend {name!r}; known backends: {', '.join(BACKENDS)}")
    return load(BACKENDS[name])


def check_backend(cfg: BackendConfig, data_root: str | Path = "data") -> None:
    """Fail fast, before any work: unknown backend, missing model, missing package,
    unreachable server. Cheap: loads no weights."""
    backend_class(cfg.backend).check(cfg, Path(data_root))


def build_backend(cfg: BackendConfig, data_root: str | Path = "data") -> ModelBackend:
    """The backend object for ``cfg`` (loads the model or opens the client)."""
    cls = backend_class(cfg.backend)
    cls.check(cfg, Path(data_root))
    return cls(cfg, Path(data_root))


__all__ = [
    "BACKENDS",
    "BackendConfig",
    "BackendError",
    "Conversation",
    "Generation",
    "GenerationResult",
    "Message",
    "ModelBackend",
    "PooledHidden",
    "SamplingParams",
    "StructuredReply",
    "Unsupported",
    "Usage",
    "backend_class",
    "build_backend",
    "check_backend",
]
