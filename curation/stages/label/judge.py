"""LLM judges: a pairwise judge (MT-Bench style) and a rubric judge (UltraFeedback style).

Both talk to a model only through ``ModelBackend.chat_json``, so the same judge runs on the
CPU model, a vLLM engine or any OpenAI-compatible server; the backend adds structured output
(a JSON schema, constrained decoding or a JSON instruction) where it can.

Why both orders (pairwise): LLM judges have a position bias; a noticeable share of verdicts
flip when the two answers swap places. Each pair is judged twice, chosen-first (A/B) and
rejected-first (B/A, the answer mapped back to slots). A verdict counts only when both orders
agree; disagreeing orders are a tie marked ``consistent=False`` with both answers in ``raw``,
so a judge that always says "A" produces ties, not labels, and the agreement report can
measure the position-consistency rate from the ``consistent`` column.

Why strict parsing: UltraFeedback's parser turned unparsable ratings into a default score and a
comparison bug once turned ratings of 1 into 10 for ~2k examples. Here a reply is accepted only
when it is a JSON object matching the schema (ratings integers in 1..5, every aspect present,
verdict A/B/tie) or, as a tolerant fallback over the reply text, such an object embedded in
prose or code fences, or one unambiguous MT-Bench verdict "[[A]]" / "[[B]]" / "[[C]]". Anything
else is malformed: it is asked again (``max_retries`` times, seed + attempt, sampling at
``retry_temperature`` at least, since a greedy re-ask would repeat itself) and then recorded as
verdict "invalid" with the error, never as a guessed or clipped score. Every attempt's text is
kept in ``raw``.

Small local models rarely write valid JSON (SmolLM2-135M: none in 32 attempts on real pairs).
For them ``verdict_by: logprobs`` asks for a single letter and reads the verdict off the
log-probs of the two possible answers "A" and "B" (teacher forcing, no sampling, nothing to
parse): P(A) = softmax over the two. Both orders are still asked and combined the same way;
the scores become the probability mass each slot got over the two orders, so the margin says
how sure the judge was.

The strict rule turns a judge with a strong position bias into all ties (SmolLM2 picks one slot
for 29 of 30 pairs). ``mode: calibrated`` keeps the signal under the bias instead: the verdict
comes from P(response A is better) averaged over both orders (log-prob verdicts: P("A") in the
first order and P("B") in the second; reply verdicts: the share of votes for A over both orders
and every sample, a tie counting half), a tie within ``tie_band`` of 0.5. A pure position bias
cancels (a judge answering "A" with the same probability in both orders gives p = 0.5, a tie);
a preference that survives the swap moves p. With ``samples: k`` each order is asked k times
and the entropy (bits) of the 2k verdicts over win / tie / lose is recorded (balanced position
calibration with human-in-the-loop, Wang et al. 2023): the router sends the pairs the judge is
least sure of to people first. For log-prob verdicts the entropy is that of the averaged
two-way distribution, the limit of infinitely many samples. Every pairwise row records its
first-slot picks (``first_slot``, of ``slot_picks`` non-tie answers; soft counts for log-prob
verdicts), so the agreement table can report each judge's position bias.

Prompts are plain-text template files a user can replace (``template``, ``system_prompt``).
Placeholders are substituted in one pass of the known names only, so braces in the data (code,
JSON) and placeholder-like text inside a response are left alone.
"""

from __future__ import annotations

import json
import math
import re
from abc import abstractmethod
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import pyarrow as pa

from curation.errors import ConfigError
from curation.models import check_backend
from curation.models.base import BackendError, Conversation, ModelBackend, SamplingParams, StructuredReply, schema_problem
from curation.records import render_conversation
from curation.stages.label.base import BackendPool, Labeler, PairView, pair_views, verdict_from_margin
from curation.stages.label.config import JudgePairwiseConfig, JudgeRubricConfig, looks_like_file

TEMPLATES_DIR = Path(__file__).parent / "templates"
PAIRWISE_PLACEHOLDERS = ("prompt", "response_a", "response_b")
RUBRIC_PLACEHOLDERS = ("prompt", "response", "aspects")

PAIRWISE_SCHEMA: dict[str, Any] = {
    "type": "object",
    # reasoning first: constrained decoders emit keys in this order, so the model argues before it decides
    "properties": {"reasoning": {"type": "string"}, "verdict": {"type": "string", "enum": ["A", "B", "tie"]}},
    "required": ["reasoning", "verdict"],
    "additionalProperties": False,
}

ASPECT_DEFINITIONS = {
    "instruction_following": "does the response do what the user asked, respecting the task's intent and restrictions?",
    "honesty": "does the response convey appropriate confidence, admit uncertainty or ignorance, and avoid deceiving the user?",
    "truthfulness": "is the response free of fabricated facts and of contradictions with the conversation or with itself?",
    "helpfulness": "is the response correct, informative, relevant and useful for the user's need, without needless repetition?",
}

# Slot points of one order's verdict: the two orders together give scores in [0, 2].
POINTS = {"A": (1.0, 0.0), "B": (0.0, 1.0), "tie": (0.5, 0.5)}
SWAP = {"A": "B", "B": "A", "tie": "tie"}
MT_BENCH_VERDICT = re.compile(r"\[\[\s*(A|B|C|tie)\s*\]\]", re.IGNORECASE)


# --------------------------------------------------------------------------- templates


def _read(path: Path, what: str) -> str:
    if not path.is_file():
        raise ConfigError(f"{what} file not found: {path}")
    try:
        return path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as err:
        raise ConfigError(f"cannot read {what} file {path}: {err}") from None


def load_template(path: str | None, default: Path, required: Sequence[str]) -> str:
    """The user-turn template, checked to contain every required placeholder."""
    file = Path(path).expanduser() if path else default
    text = _read(file, "judge template")
    missing = [f"{{{name}}}" for name in required if f"{{{name}}}" not in text]
    if missing:
        raise ConfigError(
            f"judge template {file} lacks the placeholder(s) {', '.join(missing)}; it needs {', '.join(f'{{{n}}}' for n in required)}"
        )
    return text


def load_system_prompt(value: str | None, default: Path) -> str:
    """``system_prompt`` is a file when it names one (or looks like a file name), else the text itself."""
    if not value:
        return _read(default, "judge system prompt").strip()
    if looks_like_file(value):
        return _read(Path(value.strip()).expanduser(), "judge system prompt").strip()
    return value.strip()


def fill(template: str, values: dict[str, str]) -> str:
    """Substitute ``{name}`` for the given names in one pass: a value's own text is never
    substituted again, and other braces stay as they are."""
    pattern = re.compile("|".join(re.escape(f"{{{name}}}") for name in values))
    return pattern.sub(lambda m: values[m.group(0)[1:-1]], template)


def chat(system: str, user: str) -> Conversation:
    return [{"role": "system", "content": system}, {"role": "user", "content": user}] if system else [{"role": "user", "content": user}]


# --------------------------------------------------------------------------- parsing


@dataclass(frozen=True)
class Parsed:
    """A reply accepted by a parser (``value``), or why it was not (``error``); ``how`` says
    which path accepted it: the backend's structured value, JSON found in the text, or MT-Bench."""

    value: Any | None
    error: str | None
    how: str | None = None


def json_objects(text: str) -> list[Any]:
    """Every JSON object that starts somewhere in ``text`` (prose, code fences and all), in order."""
    found, decoder = [], json.JSONDecoder()
    for match in re.finditer(r"\{", text):
        try:
            value, _ = decoder.raw_decode(text, match.start())
        except json.JSONDecodeError:
            continue
        if isinstance(value, dict):
            found.append(value)
    return found


def _verdict(value: Any) -> tuple[str | None, str | None]:
    """(verdict, None) for a pairwise JSON reply, or (None, why not). Case is forgiven, nothing else."""
    if not isinstance(value, dict) or "verdict" not in value:
        return None, "no 'verdict' key"
    raw = value["verdict"]
    if not isinstance(raw, str) or raw.strip().lower() not in ("a", "b", "tie"):
        return None, f"verdict {raw!r} is not one of 'A', 'B', 'tie'"
    if "reasoning" in value and not isinstance(value["reasoning"], str):
        return None, "reasoning is not a string"
    return {"a": "A", "b": "B", "tie": "tie"}[raw.strip().lower()], None


def parse_pairwise(reply: StructuredReply) -> Parsed:
    """Structured value first; then a JSON object in the text; then one MT-Bench verdict."""
    errors = [reply.error] if reply.error else []
    for how, candidates in (("structured", [reply.value] if reply.value is not None else []), ("json_in_text", json_objects(reply.text))):
        for value in candidates:
            verdict, err = _verdict(value)
            if verdict:
                return Parsed({"verdict": verdict, "reasoning": str(value.get("reasoning", ""))}, None, how)
            errors.append(err)
    marks = {m.upper() for m in MT_BENCH_VERDICT.findall(reply.text)}
    marks = {"tie" if m in ("C", "TIE") else m for m in marks}
    if len(marks) == 1:
        return Parsed({"verdict": marks.pop(), "reasoning": reply.text.strip()}, None, "mt_bench")
    if len(marks) > 1:
        errors.append(f"ambiguous MT-Bench verdicts {sorted(marks)}")
    return Parsed(None, "; ".join(dict.fromkeys(e for e in errors if e)) or "no verdict in the reply")


def rubric_schema(aspects: Sequence[str]) -> dict[str, Any]:
    item = {
        "type": "object",
        "properties": {"rationale": {"type": "string"}, "rating": {"type": "integer", "minimum": 1, "maximum": 5}},
        "required": ["rationale", "rating"],
        "additionalProperties": False,
    }
    return {"type": "object", "properties": {a: item for a in aspects}, "required": list(aspects), "additionalProperties": False}


def parse_rubric(reply: StructuredReply, schema: dict[str, Any]) -> Parsed:
    """A JSON object with every aspect rated by an integer in 1..5: the structured value, else
    one embedded in the text. Out of range, missing, fractional or string ratings are errors."""
    errors = [reply.error] if reply.error else []
    for how, candidates in (("structured", [reply.value] if reply.value is not None else []), ("json_in_text", json_objects(reply.text))):
        for value in candidates:
            problem = schema_problem(value, schema)
            if problem is None:
                aspects = schema["required"]
                return Parsed({a: {"rating": int(value[a]["rating"]), "rationale": value[a]["rationale"]} for a in aspects}, None, how)
            errors.append(problem)
    return Parsed(None, "; ".join(dict.fromkeys(e for e in errors if e)) or "no JSON object in the reply")


# --------------------------------------------------------------------------- asking, with retries


@dataclass
class Outcome:
    """Everything about one conversation's question: the accepted answer (or None), every attempt."""

    parsed: Parsed | None = None
    attempts: list[dict[str, Any]] = field(default_factory=list)
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cost_usd: float | None = None

    def record(self, seed: int, reply: StructuredReply, parsed: Parsed) -> None:
        self.attempts.append({"seed": seed, "text": reply.text, "error": parsed.error, "parsed_by": parsed.how})
        self.prompt_tokens += reply.usage.prompt_tokens
        self.completion_tokens += reply.usage.completion_tokens
        if reply.usage.cost_usd is not None:
            self.cost_usd = (self.cost_usd or 0.0) + reply.usage.cost_usd
        if parsed.value is not None:
            self.parsed = parsed

    @property
    def ok(self) -> bool:
        return self.parsed is not None

    @property
    def last_error(self) -> str:
        return self.attempts[-1]["error"] if self.attempts else "not asked"


def sampling(cfg: JudgePairwiseConfig | JudgeRubricConfig, attempt: int) -> SamplingParams:
    temperature = cfg.temperature if attempt == 0 else max(cfg.temperature, cfg.retry_temperature)
    return SamplingParams(max_tokens=cfg.max_tokens, temperature=temperature, seed=cfg.seed + attempt, n=1)


def ask(
    backend: ModelBackend,
    conversations: Sequence[Conversation],
    schema: dict[str, Any],
    parse: Callable[[StructuredReply], Parsed],
    cfg: JudgePairwiseConfig | JudgeRubricConfig,
) -> list[Outcome]:
    """One ``chat_json`` call per attempt over every conversation still malformed, up to
    ``max_retries`` re-asks; what is still malformed then stays without an answer."""
    outcomes = [Outcome() for _ in conversations]
    for attempt in range(cfg.max_retries + 1):
        pending = [i for i, o in enumerate(outcomes) if not o.ok]
        if not pending:
            break
        params = sampling(cfg, attempt)
        replies = backend.chat_json([conversations[i] for i in pending], schema, params)
        if len(replies) != len(pending):
            raise BackendError(f"backend {backend.name!r} returned {len(replies)} replies for {len(pending)} conversations")
        for i, reply in zip(pending, replies):
            outcomes[i].record(params.seed, reply, parse(reply))
    return outcomes


def usage(*outcomes: Outcome) -> dict[str, Any]:
    costs = [o.cost_usd for o in outcomes if o.cost_usd is not None]
    return {
        "attempts": sum(len(o.attempts) for o in outcomes),
        "prompt_tokens": sum(o.prompt_tokens for o in outcomes),
        "completion_tokens": sum(o.completion_tokens for o in outcomes),
        "cost_usd": sum(costs) if costs else None,
    }


def failures(outcomes: dict[str, Outcome], max_retries: int) -> str | None:
    """Why the label is invalid (one clause per failed request, named), or None if every
    request parsed: both judges ask twice per pair and fail the pair on either."""
    which = [
        f"{what}: malformed judge reply after {len(o.attempts)} attempt(s) (max_retries={max_retries}): {o.last_error}"
        for what, o in outcomes.items()
        if not o.ok
    ]
    return "; ".join(which) if which else None


# --------------------------------------------------------------------------- both judges

Letters = tuple[float, float]  # (log P("A"), log P("B")) as the whole answer to one conversation


class _Judge(Labeler):
    """What both judges share, written once so a fix to one reaches the other: the prompts
    read (and checked) at construction, one chat backend, and the shape of ``label``: two
    questions per pair, all pairs' questions asked in one batch, each pair's two answers made
    into one row.

    A judge says which two questions (``conversations``), how a reply is read (``schema``,
    ``parse``), and what two parsed answers mean (``judged_row``); ``questions`` names the two
    in ``raw`` and in the error of a pair whose answer stayed malformed."""

    cfg: JudgePairwiseConfig | JudgeRubricConfig
    schema: dict[str, Any]
    questions: ClassVar[tuple[tuple[str, str], tuple[str, str]]]  # (key in raw, name in errors) of each question

    def __init__(self, cfg: JudgePairwiseConfig | JudgeRubricConfig, backends: BackendPool):
        super().__init__(cfg, backends)
        self.template, self.system = self.prompts(cfg)

    @staticmethod
    @abstractmethod
    def prompts(cfg: Any) -> tuple[str, str]:
        """(user template, system prompt), or ``ConfigError`` for a template that cannot work."""

    @classmethod
    def check(cls, cfg: JudgePairwiseConfig | JudgeRubricConfig, data_root: str | Path) -> None:
        cls.prompts(cfg)  # template errors first: they need no model and no server
        check_backend(cfg.backend, data_root)

    def models(self) -> list[str]:
        return [self.cfg.backend.model]

    @abstractmethod
    def conversations(self, view: PairView) -> tuple[Conversation, Conversation]:
        """The two questions asked about one pair."""

    @abstractmethod
    def parse(self, reply: StructuredReply) -> Parsed:
        """One reply read against ``schema``."""

    @abstractmethod
    def judged_row(self, view: PairView, first: Parsed, second: Parsed, details: dict[str, Any], raw: Any) -> dict[str, Any]:
        """The row of a pair whose two answers both parsed (``details`` holds the usage so far)."""

    def label(self, pairs: pa.Table) -> pa.Table:
        views = pair_views(pairs)
        if not views:
            return self.table([])
        backend = self.backends.get(self.cfg.backend)
        # both questions of every pair in one call per attempt: a local model decodes them in
        # one batch instead of two, a server gets twice the requests in flight
        asked = [conversation for view in views for conversation in self.conversations(view)]
        answers = self.answers(backend, asked)
        return self.table([self.pair_row(view, answers[2 * i], answers[2 * i + 1]) for i, view in enumerate(views)])

    def answers(self, backend: ModelBackend, asked: list[Conversation]) -> Sequence[Any]:
        """One answer per conversation: its ``Outcome`` (the parsed reply after any re-asks)."""
        return ask(backend, asked, self.schema, self.parse, self.cfg)

    def pair_row(self, view: PairView, first: Outcome, second: Outcome) -> dict[str, Any]:
        """Invalid, naming each question still malformed, unless both answers parsed."""
        (key_1, name_1), (key_2, name_2) = self.questions
        raw = {key_1: first.attempts, key_2: second.attempts}
        details: dict[str, Any] = {"usage": usage(first, second)}
        if error := failures({name_1: first, name_2: second}, self.cfg.max_retries):
            return self.row(view.pair_id, None, None, verdict="invalid", details=details, raw=raw, error=error)
        assert first.parsed is not None and second.parsed is not None
        return self.judged_row(view, first.parsed, second.parsed, details, raw)


# --------------------------------------------------------------------------- pairwise


def combine_orders(first: str, second_swapped: str) -> tuple[float, float, str, bool]:
    """(score_a, score_b, verdict, consistent) from the A/B verdict and the B/A verdict as the
    judge gave it (its "A" is the pair's slot B). Disagreeing orders are a tie."""
    second = SWAP[second_swapped]
    score_a = POINTS[first][0] + POINTS[second][0]
    score_b = POINTS[first][1] + POINTS[second][1]
    consistent = first == second
    return score_a, score_b, (first if consistent else "tie"), consistent


def entropy_bits(weights: Sequence[float]) -> float:
    """Shannon entropy (bits) of a distribution given by non-negative weights."""
    total = sum(weights)
    if total <= 0:
        return 0.0
    return max(0.0, -sum(w / total * math.log2(w / total) for w in weights if w > 0))


def calibrated_verdict(p_a: float, tie_band: float) -> str:
    """A / B when P(slot A is better) leaves the tie band around 0.5, else a tie."""
    if p_a > 0.5 + tie_band:
        return "A"
    if p_a < 0.5 - tie_band:
        return "B"
    return "tie"


def majority(votes: Sequence[str]) -> str:
    """The slot most votes of one order picked (a tie when A and B are level)."""
    share = sum(POINTS[v][0] for v in votes) / len(votes)
    return "A" if share > 0.5 else "B" if share < 0.5 else "tie"


@dataclass(frozen=True)
class Sampled:
    """One conversation asked ``samples`` times: each sample's outcome, in order."""

    outcomes: tuple[Outcome, ...]


def first_slot_counts(answers: Sequence[str]) -> dict[str, float]:
    """The judge's own answers ("A" = the response shown first): first-slot picks of the non-tie ones."""
    picks = [a for a in answers if a in ("A", "B")]
    return {"first_slot": float(sum(a == "A" for a in picks)), "slot_picks": float(len(picks))}


class PairwiseJudge(_Judge):
    """Which of the two responses is better, asked chosen-first and rejected-first."""

    kind = "judge_pairwise"
    cfg: JudgePairwiseConfig
    schema = PAIRWISE_SCHEMA
    questions = (("ab", "order A/B"), ("ba", "order B/A"))

    @staticmethod
    def prompts(cfg: JudgePairwiseConfig) -> tuple[str, str]:
        template = load_template(cfg.template, TEMPLATES_DIR / "pairwise_user.txt", PAIRWISE_PLACEHOLDERS)
        system = "pairwise_letter_system.txt" if cfg.verdict_by == "logprobs" else "pairwise_system.txt"
        return template, load_system_prompt(cfg.system_prompt, TEMPLATES_DIR / system)

    @property
    def calibrated(self) -> bool:
        return self.cfg.mode == "calibrated"

    def conversation(self, view: PairView, swapped: bool) -> Conversation:
        first, second = (view.response_b, view.response_a) if swapped else (view.response_a, view.response_b)
        user = fill(self.template, {"prompt": render_conversation(view.prompt), "response_a": first, "response_b": second})
        return chat(self.system, user)

    def conversations(self, view: PairView) -> tuple[Conversation, Conversation]:
        return self.conversation(view, False), self.conversation(view, True)

    def parse(self, reply: StructuredReply) -> Parsed:
        return parse_pairwise(reply)

    def answers(self, backend: ModelBackend, asked: list[Conversation]) -> Sequence[Outcome] | Sequence[Letters] | Sequence[Sampled]:
        """``verdict_by: logprobs`` reads each answer off two log-probs instead of a reply;
        ``samples: k`` asks every conversation k times (seeds apart by 1000 per sample)."""
        if self.cfg.verdict_by == "logprobs":
            return letter_probabilities(backend, asked)
        if self.cfg.samples == 1:
            return super().answers(backend, asked)
        rounds = [
            ask(backend, asked, self.schema, self.parse, self.cfg.model_copy(update={"seed": self.cfg.seed + 1000 * k}))
            for k in range(self.cfg.samples)
        ]
        return [Sampled(tuple(r[i] for r in rounds)) for i in range(len(asked))]

    def pair_row(self, view: PairView, ab: Any, ba: Any) -> dict[str, Any]:
        if isinstance(ab, tuple) and isinstance(ba, tuple):  # verdict_by: logprobs
            return self.letter_row(view, ab, ba)
        if isinstance(ab, Sampled) and isinstance(ba, Sampled):
            return self.sampled_row(view, ab, ba)
        assert isinstance(ab, Outcome) and isinstance(ba, Outcome)
        return super().pair_row(view, ab, ba)

    def judged_row(self, view: PairView, ab: Parsed, ba: Parsed, details: dict[str, Any], raw: Any) -> dict[str, Any]:
        v_ab, v_ba = ab.value["verdict"], ba.value["verdict"]
        details.update(
            verdict_ab=v_ab,
            verdict_ba=v_ba,
            verdict_ba_as_slots=SWAP[v_ba],
            reasoning_ab=ab.value["reasoning"],
            reasoning_ba=ba.value["reasoning"],
            parsed_by={"ab": ab.how, "ba": ba.how},
        )
        if self.calibrated:
            return self.vote_row(view, [v_ab], [v_ba], details, raw)
        score_a, score_b, verdict, consistent = combine_orders(v_ab, v_ba)
        details.update(first_slot_counts([v_ab, v_ba]))
        confidence = abs(score_a - score_b) / 2
        return self.row(
            view.pair_id, score_a, score_b, verdict=verdict, confidence=confidence, consistent=consistent, details=details, raw=raw
        )

    def vote_row(self, view: PairView, votes_ab: list[str], votes_ba: list[str], details: dict[str, Any], raw: Any) -> dict[str, Any]:
        """Calibrated: P(slot A better) = the share of slot-A votes over both orders (ties half);
        the entropy of all votes over win / tie / lose says how sure the judge was."""
        slots = votes_ab + [SWAP[v] for v in votes_ba]
        p_a = sum(POINTS[v][0] for v in slots) / len(slots)
        counts = [sum(v == w for v in slots) for w in ("A", "tie", "B")]
        details.update(
            p_a_better=p_a,
            votes_ab=votes_ab,
            votes_ba=votes_ba,
            entropy=entropy_bits(counts),
            **first_slot_counts(votes_ab + votes_ba),
        )
        return self.row(
            view.pair_id,
            2 * p_a,
            2 * (1 - p_a),
            verdict=calibrated_verdict(p_a, self.cfg.tie_band),
            confidence=abs(2 * p_a - 1),
            consistent=majority(votes_ab) == majority([SWAP[v] for v in votes_ba]),
            details=details,
            raw=raw,
        )

    def sampled_row(self, view: PairView, ab: Sampled, ba: Sampled) -> dict[str, Any]:
        """Every parsed sample of both orders votes; an order with no parsed sample leaves the
        position bias uncorrected, so the pair is invalid (naming the order)."""
        raw = {"ab": [o.attempts for o in ab.outcomes], "ba": [o.attempts for o in ba.outcomes]}
        details: dict[str, Any] = {"usage": usage(*ab.outcomes, *ba.outcomes), "samples": self.cfg.samples}
        votes = {key: [o.parsed.value["verdict"] for o in side.outcomes if o.parsed] for key, side in (("ab", ab), ("ba", ba))}
        missing = [
            f"{name}: no parsed verdict in {self.cfg.samples} samples: {side.outcomes[-1].last_error}"
            for (key, name), side in zip(self.questions, (ab, ba))
            if not votes[key]
        ]
        if missing:
            return self.row(view.pair_id, None, None, verdict="invalid", details=details, raw=raw, error="; ".join(missing))
        details["invalid_samples"] = 2 * self.cfg.samples - len(votes["ab"]) - len(votes["ba"])
        return self.vote_row(view, votes["ab"], votes["ba"], details, raw)

    def letter_row(self, view: PairView, ab: Letters, ba: Letters) -> dict[str, Any]:
        """Scores = probability mass each slot got over both orders (in [0, 2]). Strict: the
        verdict of each order is its likelier letter, combined as for generated verdicts.
        Calibrated: P(slot A better) = the mean of P("A") first and P("B") swapped."""
        p_a_ab, p_a_ba = _softmax2(*ab), _softmax2(*ba)  # P("A") in each order
        v_ab, v_ba = verdict_from_margin(p_a_ab - 0.5), verdict_from_margin(p_a_ba - 0.5)
        _, _, verdict, consistent = combine_orders(v_ab, v_ba)
        score_a, score_b = p_a_ab + (1 - p_a_ba), (1 - p_a_ab) + p_a_ba
        details = {
            "verdict_ab": v_ab,
            "verdict_ba": v_ba,
            "p_letter_a_ab": p_a_ab,
            "p_letter_a_ba": p_a_ba,
            # soft position counts: the probability the judge put on the first slot, per order
            "first_slot": p_a_ab + p_a_ba,
            "slot_picks": 2.0,
        }
        if self.calibrated:
            p_a = score_a / 2
            verdict = calibrated_verdict(p_a, self.cfg.tie_band)
            details.update(p_a_better=p_a, entropy=entropy_bits([p_a, 1 - p_a]))
        raw = {"ab": {"logprob_A": ab[0], "logprob_B": ab[1]}, "ba": {"logprob_A": ba[0], "logprob_B": ba[1]}}
        return self.row(
            view.pair_id,
            score_a,
            score_b,
            verdict=verdict,
            confidence=abs(score_a - score_b) / 2,
            consistent=consistent,
            details=details,
            raw=raw,
        )


def _softmax2(logp_a: float, logp_b: float) -> float:
    """P(first) when only the two answers are allowed."""
    top = max(logp_a, logp_b)
    ea, eb = math.exp(logp_a - top), math.exp(logp_b - top)
    return ea / (ea + eb)


def letter_probabilities(backend: ModelBackend, conversations: Sequence[Conversation]) -> list[Letters]:
    """(log P("A"), log P("B")) as the judge's whole answer to each conversation, in one
    ``choice_logprobs`` call (one forward pass per conversation where the backend can)."""
    return [(a, b) for a, b in backend.choice_logprobs(conversations, ["A", "B"])]


# --------------------------------------------------------------------------- rubric


def check_aspects(aspects: Sequence[str]) -> None:
    bad = [a for a in aspects if not re.fullmatch(r"[A-Za-z][A-Za-z0-9_-]{0,63}", a)]
    if bad:
        raise ConfigError(
            f"rubric aspects must be names of letters, digits, _ and -, got {bad}; they are the keys of the judge's JSON reply"
        )
    dupes = sorted({a for a in aspects if list(aspects).count(a) > 1})
    if dupes:
        raise ConfigError(f"rubric aspects repeated: {', '.join(dupes)}")


def render_aspects(aspects: Sequence[str]) -> str:
    return "\n".join(f"- {a}: {ASPECT_DEFINITIONS[a]}" if a in ASPECT_DEFINITIONS else f"- {a}" for a in aspects)


class RubricJudge(_Judge):
    """Each response rated 1-5 per aspect on its own; a response's score is its mean rating."""

    kind = "judge_rubric"
    cfg: JudgeRubricConfig
    questions = (("a", "response A"), ("b", "response B"))

    def __init__(self, cfg: JudgeRubricConfig, backends: BackendPool):
        super().__init__(cfg, backends)  # checks the aspects before they become the schema's keys
        self.schema = rubric_schema(cfg.aspects)

    @staticmethod
    def prompts(cfg: JudgeRubricConfig) -> tuple[str, str]:
        check_aspects(cfg.aspects)
        template = load_template(cfg.template, TEMPLATES_DIR / "rubric_user.txt", RUBRIC_PLACEHOLDERS)
        return template, load_system_prompt(cfg.system_prompt, TEMPLATES_DIR / "rubric_system.txt")

    def conversation(self, view: PairView, response: str) -> Conversation:
        values = {"prompt": render_conversation(view.prompt), "response": response, "aspects": render_aspects(self.cfg.aspects)}
        return chat(self.system, fill(self.template, values))

    def conversations(self, view: PairView) -> tuple[Conversation, Conversation]:
        return self.conversation(view, view.response_a), self.conversation(view, view.response_b)

    def parse(self, reply: StructuredReply) -> Parsed:
        return parse_rubric(reply, self.schema)

    def judged_row(self, view: PairView, a: Parsed, b: Parsed, details: dict[str, Any], raw: Any) -> dict[str, Any]:
        score_a, score_b = (sum(r["rating"] for r in p.value.values()) / len(p.value) for p in (a, b))
        details.update(a=a.value, b=b.value, parsed_by={"a": a.how, "b": b.how})
        # the largest possible margin is 4 (all 5s against all 1s)
        return self.row(view.pair_id, score_a, score_b, confidence=abs(score_a - score_b) / 4, details=details, raw=raw)
