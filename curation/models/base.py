"""The narrow model interfaces every technique uses, independent of any backend.

Techniques (generation strategies, judges, rewards, CHES) call only these methods, so a
recipe moves from a laptop CPU to a GPU box by changing its backend section. A backend
implements the capabilities it can serve; the others raise ``Unsupported`` with a message
that names the backend and the capability, before any work is sent.

Conversations are lists of ``{"role", "content"}`` messages, as in the pairs table.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from curation.errors import CurationError

Message = dict[str, str]
Conversation = list[Message]


class Unsupported(CurationError):
    """The configured backend cannot serve this capability (e.g. hidden states over HTTP)."""


class BackendError(CurationError):
    """A backend failed for good (after retries): unreachable server, bad model, bad reply."""


@dataclass(frozen=True)
class SamplingParams:
    """Backend-independent sampling settings; they are part of every cache key.

    ``seed`` seeds the whole request: the i-th of the ``n`` samples is reproducible only
    together with the others (backends draw all n from one seeded generator).
    """

    max_tokens: int = 256
    temperature: float = 0.7
    top_p: float = 1.0
    seed: int = 0
    n: int = 1
    stop: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if self.n < 1:
            raise CurationError(f"n must be at least 1, got {self.n}")
        if self.max_tokens < 1:
            raise CurationError(f"max_tokens must be at least 1, got {self.max_tokens}")
        if self.temperature < 0:
            raise CurationError(f"temperature must be >= 0, got {self.temperature}")
        if not 0 < self.top_p <= 1:
            raise CurationError(f"top_p must be in (0, 1], got {self.top_p}")

    def as_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["stop"] = list(self.stop)
        return d


@dataclass
class Usage:
    """Token usage and cost of one call (cost only where prices are configured)."""

    prompt_tokens: int = 0
    completion_tokens: int = 0
    cost_usd: float | None = None
    attempts: int = 1
    seconds: float = 0.0


@dataclass
class Generation:
    """One sampled response. ``index`` is its position among the n samples of its request."""

    text: str
    index: int
    completion_tokens: int
    finish_reason: str  # "stop" | "length" | backend-specific
    seed: int
    prompt_tokens: int = 0


@dataclass
class GenerationResult:
    """The n samples for one conversation, plus what the call cost."""

    generations: list[Generation]
    usage: Usage = field(default_factory=Usage)


@dataclass
class PooledHidden:
    """Last-layer hidden states at the positions that predict a response's tokens, pooled two
    ways (CHES needs both: raw CHES the sum, length-normalised CHES the mean).

    The positions run from the last prompt token to the second-to-last response token: the
    hidden state at position t produces the logits of token t + 1, so these are the states
    whose log-probs a preference loss pushes on (CHES's premise), as in the canonical CHES code.
    ``n_tokens`` is the response's token count, which is also the number of summed positions;
    ``mean = sum / n_tokens``. An empty response: ``n_tokens == 0``, zero sum, NaN mean.
    """

    sum: np.ndarray
    mean: np.ndarray
    n_tokens: int


@dataclass
class StructuredReply:
    """A chat reply that should be JSON matching a schema.

    ``value`` is the parsed JSON when it parsed and matched; otherwise ``error`` says why and
    ``value`` is None. Callers record failures as invalid, never as a default score.
    """

    text: str
    value: Any | None
    error: str | None
    usage: Usage = field(default_factory=Usage)


class ModelBackend:
    """Base of every backend. Subclasses override the capabilities they serve.

    ``name`` is the backend kind ("transformers", "openai", "vllm"), ``model`` the model
    identifier recorded in provenance.
    """

    name: str = "base"
    model: str = ""

    @classmethod
    def check(cls, cfg: Any, data_root: Any) -> None:
        """Raise a clear ``CurationError`` if this backend cannot serve ``cfg`` here
        (package missing, model not found, server unreachable). Must not load weights."""

    def describe(self) -> dict[str, Any]:
        """What provenance records about this backend (no secrets)."""
        return {"backend": self.name, "model": self.model}

    def _unsupported(self, capability: str) -> Unsupported:
        return Unsupported(f"backend {self.name!r} (model {self.model!r}) does not support {capability}")

    def generate(self, conversations: Sequence[Conversation], params: SamplingParams) -> list[GenerationResult]:
        """n sampled responses for each conversation, in input order."""
        raise self._unsupported("generate")

    def score_logprobs(
        self, conversations: Sequence[Conversation], responses: Sequence[str], *, role: str = "assistant"
    ) -> list[list[float]]:
        """Per-token log-probs of each response given its conversation (teacher forcing).

        The response is rendered as the next turn of ``role`` after the conversation with the
        model's chat template (``render_turn_prefix``); only the response's tokens are scored.
        ``role="user"`` scores a user's follow-up turn (follow-up-likelihood rewards).
        """
        raise self._unsupported("log-prob scoring")

    def choice_logprobs(self, conversations: Sequence[Conversation], choices: Sequence[str]) -> list[list[float]]:
        """log P(choice) as the whole assistant reply, for every conversation and choice (e.g. a
        judge's "A" / "B"): ``out[i][j]`` is choice j's summed token log-probs after
        conversation i. This default scores every (conversation, choice) with one
        ``score_logprobs`` call; backends that can read several choices off one forward pass
        override it."""
        flat = self.score_logprobs([c for c in conversations for _ in choices], [ch for _ in conversations for ch in choices])
        k = len(choices)
        return [[sum(flat[i * k + j]) for j in range(k)] for i in range(len(conversations))]

    def hidden_states(self, conversations: Sequence[Conversation], responses: Sequence[str]) -> list[PooledHidden]:
        """Last-layer hidden states at the positions that predict each response's tokens (the
        prompt's last token up to the response's second-to-last), summed and mean-pooled: CHES's
        definition (see ``PooledHidden``)."""
        raise self._unsupported("hidden states")

    def embed(self, texts: Sequence[str]) -> np.ndarray:
        """Vectors (n, d), float32, L2-normalised so a dot product is a cosine similarity."""
        raise self._unsupported("embeddings")

    def reward(self, conversations: Sequence[Conversation], responses: Sequence[str]) -> list[float]:
        """A reward model's scalar score of each response as the assistant's reply to its
        conversation (the single logit of a sequence-classification model over the chat
        template's rendering), in input order. Batching never changes a score beyond rounding."""
        raise self._unsupported("reward scoring")

    def chat_json(self, conversations: Sequence[Conversation], schema: dict, params: SamplingParams) -> list[StructuredReply]:
        """One reply per conversation, asked to be JSON matching ``schema`` (a JSON Schema)."""
        raise self._unsupported("structured chat")

    def close(self) -> None:
        """Free resources (servers, models). Safe to call twice."""

    def __enter__(self) -> ModelBackend:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def with_system(conversation: Conversation, system_prompt: str | None) -> Conversation:
    """The conversation with ``system_prompt`` first (replacing an existing system turn)."""
    if not system_prompt:
        return list(conversation)
    rest = [m for m in conversation if m.get("role") != "system"]
    return [{"role": "system", "content": system_prompt}, *rest]


TURN_MARK = "CURATIONTURNMARK7F3A"


def render_turn_prefix(tokenizer: Any, conversation: Conversation, role: str = "assistant") -> str:
    """The chat-template text of ``conversation`` up to where a new ``role`` turn's content
    starts. For the assistant that is the template's generation prompt; for another role the
    template is rendered with a marker as that turn's content and cut at the marker, so any
    template works without knowing its turn syntax."""
    messages = [{"role": m["role"], "content": m["content"]} for m in conversation]
    if role == "assistant":
        return str(tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True))
    marked = str(tokenizer.apply_chat_template([*messages, {"role": role, "content": TURN_MARK}], tokenize=False))
    cut = marked.find(TURN_MARK)
    if cut < 0:
        raise BackendError(f"the chat template drops the content of a {role!r} turn; cannot score a {role} turn with it")
    return marked[:cut]


JSON_INSTRUCTION = "Answer only with one JSON object that matches this JSON Schema, and no other text:\n{schema}"


def with_json_instruction(conversation: Conversation, schema: dict) -> Conversation:
    """The conversation with the JSON instruction added to its system turn, or as a new one:
    added, not replaced, so a judge's own system prompt still applies."""
    import json

    instruction = JSON_INSTRUCTION.format(schema=json.dumps(schema, ensure_ascii=False))
    turns = [{"role": m["role"], "content": m["content"]} for m in conversation]
    if turns and turns[0]["role"] == "system":
        return [{"role": "system", "content": f"{turns[0]['content']}\n\n{instruction}"}, *turns[1:]]
    return [{"role": "system", "content": instruction}, *turns]


def parse_json_reply(text: str, schema: dict) -> tuple[Any | None, str | None]:
    """Strict JSON parsing for structured replies: the first JSON object in ``text``.

    Checks the schema's top-level ``required`` keys and property types (the subset of JSON
    Schema judges use); anything else is an error, never a silent default.
    """
    import json

    start = text.find("{")
    if start < 0:
        return None, "no JSON object in the reply"
    try:
        value, _ = json.JSONDecoder().raw_decode(text[start:])
    except json.JSONDecodeError as err:
        return None, f"invalid JSON: {err.msg} at char {err.pos}"
    problem = schema_problem(value, schema)
    return (None, problem) if problem else (value, None)


_JSON_TYPES: dict[str, tuple[type, ...]] = {
    "object": (dict,),
    "array": (list,),
    "string": (str,),
    "integer": (int,),
    "number": (int, float),
    "boolean": (bool,),
}


def schema_problem(value: Any, schema: dict, path: str = "$") -> str | None:
    """First mismatch between ``value`` and a (small) JSON Schema, or None."""
    kind = schema.get("type")
    if kind in _JSON_TYPES:
        ok = isinstance(value, _JSON_TYPES[kind]) and not (kind in ("integer", "number") and isinstance(value, bool))
        if not ok:
            return f"{path}: expected {kind}, got {type(value).__name__}"
    if "enum" in schema and value not in schema["enum"]:
        return f"{path}: {value!r} is not one of {schema['enum']}"
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        if "minimum" in schema and value < schema["minimum"]:
            return f"{path}: {value} < minimum {schema['minimum']}"
        if "maximum" in schema and value > schema["maximum"]:
            return f"{path}: {value} > maximum {schema['maximum']}"
    if isinstance(value, dict):
        for key in schema.get("required", []):
            if key not in value:
                return f"{path}: missing required key {key!r}"
        for key, sub in schema.get("properties", {}).items():
            if key in value and (p := schema_problem(value[key], sub, f"{path}.{key}")):
                return p
    if isinstance(value, list) and isinstance(schema.get("items"), dict):
        if "minItems" in schema and len(value) < schema["minItems"]:
            return f"{path}: {len(value)} items < minItems {schema['minItems']}"
        for i, item in enumerate(value):
            if p := schema_problem(item, schema["items"], f"{path}[{i}]"):
                return p
    return None
