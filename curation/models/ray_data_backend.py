"""Generation over a Ray cluster with Ray Data: the scale-out path for large generation.

``backend: ray_data`` wraps another backend (``ray_data.backend``: vLLM in production, one
engine per GPU actor; transformers or an OpenAI-compatible server elsewhere). Each ``generate``
call becomes one Ray Data job: the conversations are split into batches and mapped over
``ray_data.actors`` actors, each of which builds the inner backend once and keeps it loaded
(Ray Data's ``map_batches`` with a callable class, the documented shape for batch inference).

Why a backend and not a stage: the techniques (strategies, request cache, pairing) stay as
they are; only the recipe's backend section changes between a laptop and a cluster. The
request cache sits in front of this backend, so a rerun sends only what is missing, and the
cache keys are the inner model's (``identity``), so work done without Ray is reused with it.
Set ``generate.chunk_size`` large (thousands) so each Ray Data job has enough to spread.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from curation.errors import ConfigError
from curation.models.base import Conversation, Generation, GenerationResult, ModelBackend, SamplingParams, Usage
from curation.models.config import BackendConfig

RAY_MISSING = "backend ray_data needs Ray: `pip install -e '.[ray]'` (install.sh does)"


def inner_config(cfg: BackendConfig) -> BackendConfig:
    """The backend each actor runs: this section with the inner backend's name."""
    assert cfg.ray_data is not None
    return cfg.model_copy(update={"backend": cfg.ray_data.backend, "ray_data": None})


def result_to_json(r: GenerationResult) -> str:
    return json.dumps({"generations": [dataclasses.asdict(g) for g in r.generations], "usage": dataclasses.asdict(r.usage)})


def result_from_json(blob: str) -> GenerationResult:
    d = json.loads(blob)
    return GenerationResult([Generation(**g) for g in d["generations"]], Usage(**d["usage"]))


class GenerateActor:
    """One model replica on a Ray actor: builds the inner backend once, then serves batches."""

    def __init__(self, cfg: dict[str, Any], data_root: str, params: dict[str, Any]):
        from curation.models import build_backend

        self.backend = build_backend(BackendConfig.model_validate(cfg), data_root)
        self.params = SamplingParams(**{**params, "stop": tuple(params.get("stop") or ())})

    def __call__(self, batch: dict[str, Any]) -> dict[str, Any]:
        conversations = [json.loads(c) for c in batch["conversation"]]
        results = self.backend.generate(conversations, self.params)
        return {"index": batch["index"], "result": [result_to_json(r) for r in results]}


class RayDataBackend(ModelBackend):
    name = "ray_data"

    @classmethod
    def check(cls, cfg: BackendConfig, data_root: Any) -> None:
        if cfg.ray_data is None:
            raise ConfigError("backend ray_data needs a `ray_data:` section naming the inner backend (vllm, transformers or openai)")
        try:
            import ray  # noqa: F401
            import ray.data  # noqa: F401
        except ImportError:
            raise ConfigError(RAY_MISSING) from None
        from curation.models import backend_class

        inner = inner_config(cfg)
        backend_class(inner.backend).check(inner, Path(data_root))

    def __init__(self, cfg: BackendConfig, data_root: Path):
        assert cfg.ray_data is not None
        self.cfg, self.data_root, self.opts = cfg, Path(data_root).resolve(), cfg.ray_data
        self.model = cfg.model
        self._started_ray = False

    def describe(self) -> dict[str, Any]:
        return {"backend": self.name, "inner_backend": self.opts.backend, "model": self.model, "actors": self.opts.actors}

    def _ray(self) -> Any:
        import ray

        if not ray.is_initialized():
            kwargs: dict[str, Any] = {"address": self.opts.address} if self.opts.address else {"_node_ip_address": "127.0.0.1"}
            ray.init(include_dashboard=False, log_to_driver=False, **kwargs)
            self._started_ray = True
        return ray

    def generate(self, conversations: Sequence[Conversation], params: SamplingParams) -> list[GenerationResult]:
        if not conversations:
            return []
        ray = self._ray()
        rows = [{"index": i, "conversation": json.dumps(c)} for i, c in enumerate(conversations)]
        ds = ray.data.from_items(rows, override_num_blocks=min(len(rows), self.opts.actors * 4))
        out = ds.map_batches(
            GenerateActor,
            fn_constructor_kwargs={
                "cfg": inner_config(self.cfg).model_dump(),
                "data_root": str(self.data_root),
                "params": params.as_dict(),
            },
            batch_size=self.opts.batch_size,
            concurrency=self.opts.actors,
            num_gpus=self.opts.num_gpus_per_actor or None,
            batch_format="numpy",
        )
        by_index = {int(r["index"]): result_from_json(r["result"]) for r in out.take_all()}
        return [by_index[i] for i in range(len(conversations))]

    def close(self) -> None:
        if self._started_ray:
            import ray

            ray.shutdown()
            self._started_ray = False
