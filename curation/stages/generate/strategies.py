"""Candidate sampling strategies: i.i.d. and three negatively-correlated ones.

Negatively-correlated sampling (Community Alignment, arXiv 2507.09650) makes a prompt's
candidate set deliberately diverse, so that comparisons between its members say something
about values and approach rather than about sampling noise:

- ``sequential``: each new candidate sees the earlier ones and is asked to differ from them;
- ``one_call``: one request asks for K clearly different responses, parsed into K (the
  paper's variant); a reply that does not parse is topped up with i.i.d. samples and the
  candidates say so in their metadata;
- ``persona``: each candidate is conditioned on a persona / value profile sampled from a
  configurable list.

Each strategy only builds requests and reads results; all model calls go through a
``CachedGenerator``, so interrupted runs resume and nothing is generated twice.
"""

from __future__ import annotations

import random
import re
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any

from curation.models.base import Conversation, SamplingParams, with_system
from curation.stages.generate.cache import CachedGenerator
from curation.stages.generate.prompts import Prompt

MAX_SHOWN_CHARS = 1_200  # earlier candidates shown to the sequential strategy, each cut to this

SEQUENTIAL_INSTRUCTION = (
    "Other answers to this conversation have already been written:\n\n{previous}\n\n"
    "Write a new answer that differs substantially from all of them: take a different stance, reflect "
    "different values, use a different format or a different approach. Do not mention the other answers."
)
ONE_CALL_INSTRUCTION = (
    "Write {k} clearly different responses to the user's last message. Each one should reflect a different "
    "perspective or set of values and differ from the others in stance, format or approach; do not name the "
    "perspectives. Use exactly this layout:\n### Response 1\n<text>\n### Response 2\n<text>\n(and so on up to {k})"
)
PERSONA_INSTRUCTION = "Answer as {persona} would. Do not say who you are and do not name your values."
RESPONSE_HEADER = re.compile(
    r"^[ \t]*(?:#{1,6}[ \t]*|\*\*)?Response[ \t]*(\d+)[ \t]*(?:\*\*)?[ \t]*[:.]?[ \t]*(?:\*\*)?[ \t]*$", re.I | re.M
)


@dataclass
class Candidate:
    """One generated candidate with everything the candidates table records."""

    prompt: Prompt
    text: str
    strategy: str
    index: int
    params: SamplingParams
    request: Conversation
    finish_reason: str
    cache_key: str
    prompt_tokens: int | None = None
    completion_tokens: int | None = None
    persona: str | None = None
    metadata: dict[str, Any] = field(default_factory=dict)
    candidate_id: str = ""  # set by the stage, which knows the model


def _system(base: str | None, extra: str) -> str:
    return f"{base}\n\n{extra}" if base else extra


def iid(gen: CachedGenerator, prompts: list[Prompt], params: SamplingParams, n: int, system: str | None, **_: Any) -> list[Candidate]:
    """Baseline: n independent samples from one seeded request per prompt."""
    p = replace(params, n=n)
    requests = [(with_system(pr.conversation, system), p) for pr in prompts]
    out = []
    for pr, (conv, _), (key, res) in zip(prompts, requests, gen.generate(requests)):
        for g in res.generations[:n]:
            out.append(Candidate(pr, g.text, "iid", g.index, p, conv, g.finish_reason, key, g.prompt_tokens, g.completion_tokens))
    return out


def sequential(
    gen: CachedGenerator, prompts: list[Prompt], params: SamplingParams, n: int, system: str | None, **_: Any
) -> list[Candidate]:
    """Round k sends every prompt once, with the k earlier candidates in the system prompt."""
    sets: list[list[Candidate]] = [[] for _ in prompts]
    for k in range(n):
        p = replace(params, n=1, seed=params.seed + k)
        requests = []
        for pr, earlier in zip(prompts, sets):
            if earlier:
                shown = "\n\n".join(f"[Answer {i + 1}]\n{c.text.strip()[:MAX_SHOWN_CHARS]}" for i, c in enumerate(earlier))
                sys_prompt = _system(system, SEQUENTIAL_INSTRUCTION.format(previous=shown))
            else:
                sys_prompt = system
            requests.append((with_system(pr.conversation, sys_prompt), p))
        for pr, earlier, (conv, _), (key, res) in zip(prompts, sets, requests, gen.generate(requests)):
            g = res.generations[0]
            earlier.append(
                Candidate(
                    pr, g.text, "sequential", k, p, conv, g.finish_reason, key, g.prompt_tokens, g.completion_tokens, metadata={"round": k}
                )
            )
    return [c for s in sets for c in s]


def parse_numbered(text: str, k: int) -> list[str]:
    """The responses of a '### Response i' reply, in order, empty ones dropped."""
    heads = list(RESPONSE_HEADER.finditer(text))
    parts = []
    for h, nxt in zip(heads, heads[1:] + [None]):
        body = text[h.end() : nxt.start() if nxt else len(text)].strip()
        if body:
            parts.append(body)
    return parts[:k]


def one_call(gen: CachedGenerator, prompts: list[Prompt], params: SamplingParams, n: int, system: str | None, **_: Any) -> list[Candidate]:
    """One request per prompt asks for n different responses; short replies are topped up."""
    p = replace(params, n=1, max_tokens=params.max_tokens * n)
    sys_prompt = _system(system, ONE_CALL_INSTRUCTION.format(k=n))
    requests = [(with_system(pr.conversation, sys_prompt), p) for pr in prompts]
    out: list[Candidate] = []
    short: list[tuple[Prompt, int]] = []
    for pr, (conv, _), (key, res) in zip(prompts, requests, gen.generate(requests)):
        g = res.generations[0]
        parts = parse_numbered(g.text, n)
        meta = {"parsed": len(parts), "asked": n, "reply_tokens": g.completion_tokens, "reply_finish_reason": g.finish_reason}
        for i, text in enumerate(parts):
            out.append(
                Candidate(pr, text, "one_call", i, p, conv, "parsed", key, g.prompt_tokens, None, metadata={**meta, "parse": "parsed"})
            )
        if len(parts) < n:
            short.append((pr, len(parts)))
    if short:
        fill_p = replace(params, n=n)
        fill = [(with_system(pr.conversation, system), fill_p) for pr, _ in short]
        for (pr, got), (conv, _), (key, res) in zip(short, fill, gen.generate(fill)):
            for j, g in enumerate(res.generations[: n - got]):
                out.append(
                    Candidate(
                        pr, g.text, "one_call", got + j, fill_p, conv, g.finish_reason, key, g.prompt_tokens, g.completion_tokens,
                        metadata={"parse": "fallback_iid", "parsed": got, "asked": n},
                    )
                )  # fmt: skip
    order = {pr.prompt_id: i for i, pr in enumerate(prompts)}
    return sorted(out, key=lambda c: (order[c.prompt.prompt_id], c.index))


def pick_personas(personas: list[str], prompt_id: str, n: int, seed: int) -> list[str]:
    """n personas for one prompt: without replacement while the list lasts, seeded per prompt."""
    rng = random.Random(f"{seed}:{prompt_id}")
    picked: list[str] = []
    while len(picked) < n:
        picked += rng.sample(personas, min(len(personas), n - len(picked)))
    return picked


def persona(
    gen: CachedGenerator,
    prompts: list[Prompt],
    params: SamplingParams,
    n: int,
    system: str | None,
    personas: list[str] | None = None,
    **_: Any,
) -> list[Candidate]:
    """Each candidate answers as a different persona / value profile."""
    assert personas, "persona strategy needs a list of personas"
    requests, owners = [], []
    for pr in prompts:
        for i, who in enumerate(pick_personas(personas, pr.prompt_id, n, params.seed)):
            p = replace(params, n=1, seed=params.seed + i)
            requests.append((with_system(pr.conversation, _system(system, PERSONA_INSTRUCTION.format(persona=who))), p))
            owners.append((pr, i, who))
    out = []
    for (pr, i, who), (conv, p), (key, res) in zip(owners, requests, gen.generate(requests)):
        g = res.generations[0]
        out.append(Candidate(pr, g.text, "persona", i, p, conv, g.finish_reason, key, g.prompt_tokens, g.completion_tokens, persona=who))
    return out


STRATEGIES: dict[str, Callable[..., list[Candidate]]] = {"iid": iid, "sequential": sequential, "one_call": one_call, "persona": persona}
