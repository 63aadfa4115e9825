"""LLM judges on real HH-RLHF pairs: the position swap, strict parsing with retries, the rubric
means, template errors, the HTTP path against the OpenAI stub, and one real SmolLM2 run.

Scripted judges are tiny ``ModelBackend`` subclasses that decide from the rendered prompt (so
they see exactly what a model would) and go through the same JSON checking as real backends.
"""

from __future__ import annotations

import json
import re
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pyarrow as pa
import pytest

from curation.errors import ConfigError
from curation.models import BackendConfig, ModelBackend, SamplingParams, StructuredReply
from curation.models.base import parse_json_reply
from curation.records import PairDraft, response_text
from curation.stages.label import build_labeler
from curation.stages.label.base import VERDICTS, BackendPool, pair_views
from curation.stages.label.config import JudgePairwiseConfig, JudgeRubricConfig
from curation.stages.label.judge import (
    PAIRWISE_SCHEMA,
    PairwiseJudge,
    RubricJudge,
    combine_orders,
    fill,
    parse_pairwise,
    parse_rubric,
    render_conversation,
    rubric_schema,
)
from tests.helpers import LABEL_PAIRS_SCHEMA, first_hh_pairs, label_rows, labeler_pair
from tests.support.openai_stub import OpenAIStub

ASPECTS = ["instruction_following", "honesty", "truthfulness", "helpfulness"]


# --------------------------------------------------------------------------- real pairs


def real_pairs(hh_path: Path, n: int, *, max_chars: int = 800, multi_turn: bool | None = None) -> pa.Table:
    """The first ``n`` usable HH-RLHF pairs (both responses non-empty and different, short enough)."""

    def usable(d: PairDraft) -> bool:
        a, b = response_text(d.chosen), response_text(d.rejected)
        size = len(render_conversation(d.prompt)) + len(a) + len(b)
        if not a.strip() or not b.strip() or a == b or size > max_chars or len(a) == len(b):
            return False
        return multi_turn is None or (len(d.prompt) > 1) == multi_turn

    return pa.Table.from_pylist(first_hh_pairs(hh_path, n, usable), schema=LABEL_PAIRS_SCHEMA)


def swapped(pairs: pa.Table) -> pa.Table:
    """The same pairs with chosen and rejected exchanged (new pair ids)."""
    rows = [labeler_pair(r["prompt"], r["rejected"], r["chosen"]) for r in pairs.to_pylist()]
    return pa.Table.from_pylist(rows, schema=LABEL_PAIRS_SCHEMA)


@pytest.fixture(scope="module")
def pairs(hh_path: Path) -> pa.Table:
    return real_pairs(hh_path, 6)


# --------------------------------------------------------------------------- scripted judges


class FakeJudge(ModelBackend):
    """A judge whose reply text comes from ``decide(user_text, params, times_asked)``; the text
    is checked like a real backend checks it, so malformed replies come back with an error."""

    name = "fake"

    def __init__(self, decide: Callable[[str, SamplingParams, int], str], model: str = "fake-judge"):
        self.decide = decide
        self.model = model
        self.calls: list[tuple[int, SamplingParams]] = []
        self.asked: Counter[str] = Counter()
        self.seen: list[list[dict[str, str]]] = []

    def chat_json(self, conversations, schema, params):
        self.calls.append((len(conversations), params))
        self.seen.extend(conversations)
        replies = []
        for conv in conversations:
            user = conv[-1]["content"]
            text = self.decide(user, params, self.asked[user])
            self.asked[user] += 1
            value, error = parse_json_reply(text, schema)
            replies.append(StructuredReply(text=text, value=value, error=error))
        return replies


def slots(user: str) -> tuple[str, str]:
    """Responses A and B as the default pairwise template shows them."""
    a = re.search(r"\[The start of response A\]\n(.*)\n\[The end of response A\]", user, re.S)
    b = re.search(r"\[The start of response B\]\n(.*)\n\[The end of response B\]", user, re.S)
    assert a and b, user
    return a.group(1), b.group(1)


def verdict_json(verdict: str, reasoning: str = "because") -> str:
    return json.dumps({"reasoning": reasoning, "verdict": verdict})


def always_a(user: str, params: SamplingParams, asked: int) -> str:
    return verdict_json("A", "the first one")


def prefers_longer(user: str, params: SamplingParams, asked: int) -> str:
    a, b = slots(user)
    return verdict_json("A" if len(a) > len(b) else "B", "longer is better")


def pairwise(fake: ModelBackend, **cfg: Any) -> PairwiseJudge:
    config = JudgePairwiseConfig(name="judge", backend=BackendConfig(backend="openai", model=fake.model), **cfg)
    judge = build_labeler(config, BackendPool("unused", build=lambda c, root: fake))  # through the registry
    assert isinstance(judge, PairwiseJudge)
    return judge


def rubric(fake: ModelBackend, **cfg: Any) -> RubricJudge:
    config = JudgeRubricConfig(name="rubric", backend=BackendConfig(backend="openai", model=fake.model), **cfg)
    judge = build_labeler(config, BackendPool("unused", build=lambda c, root: fake))
    assert isinstance(judge, RubricJudge)
    return judge


# --------------------------------------------------------------------------- pairwise: position swap


def test_always_a_judge_is_caught_by_the_swap(pairs: pa.Table) -> None:
    fake = FakeJudge(always_a)
    rows = label_rows(pairwise(fake).label(pairs))
    assert [r["pair_id"] for r in rows] == pairs.column("pair_id").to_pylist()
    for r in rows:
        assert (r["verdict"], r["consistent"], r["score_a"], r["score_b"], r["margin"]) == ("tie", False, 1.0, 1.0, 0.0)
        assert r["details"]["verdict_ab"] == r["details"]["verdict_ba"] == "A"
        assert [len(r["raw"]["ab"]), len(r["raw"]["ba"])] == [1, 1]  # both answers kept
        assert r["raw"]["ab"][0]["text"] == r["raw"]["ba"][0]["text"] == verdict_json("A", "the first one")
        assert r["kind"] == "judge_pairwise" and r["models"] == ["fake-judge"] and r["error"] is None
    # one call on the whole batch, both orders of every pair
    assert [n for n, _ in fake.calls] == [2 * pairs.num_rows]


def test_length_judge_is_consistent_and_follows_length_in_both_slots(pairs: pa.Table) -> None:
    both = pa.concat_tables([pairs, swapped(pairs)])
    rows = label_rows(pairwise(FakeJudge(prefers_longer)).label(both))
    n = pairs.num_rows
    for view, r in zip(both.to_pylist(), rows):
        longer_is_a = len(response_text(view["chosen"])) > len(response_text(view["rejected"]))
        assert r["verdict"] == ("A" if longer_is_a else "B")
        assert r["consistent"] is True and r["confidence"] == 1.0
        assert (r["score_a"], r["score_b"]) == ((2.0, 0.0) if longer_is_a else (0.0, 2.0))
    assert [r["verdict"] for r in rows[:n]] == [{"A": "B", "B": "A"}[r["verdict"]] for r in rows[n:]]
    assert {r["verdict"] for r in rows} == {"A", "B"}  # the real pairs have longer responses in both slots


def test_the_swapped_order_shows_rejected_first(pairs: pa.Table) -> None:
    seen: list[tuple[str, str]] = []
    judge = pairwise(FakeJudge(lambda user, p, k: seen.append(slots(user)) or always_a(user, p, k)))
    judge.label(pairs.slice(0, 1))
    chosen, rejected = (response_text(pairs.column(c)[0].as_py()) for c in ("chosen", "rejected"))
    assert seen == [(chosen, rejected), (rejected, chosen)]


def test_combine_orders() -> None:
    assert combine_orders("A", "B") == (2.0, 0.0, "A", True)  # the swapped "B" is the chosen response
    assert combine_orders("B", "A") == (0.0, 2.0, "B", True)
    assert combine_orders("tie", "tie") == (1.0, 1.0, "tie", True)
    assert combine_orders("A", "A") == (1.0, 1.0, "tie", False)
    assert combine_orders("A", "tie") == (1.5, 0.5, "tie", False)


# --------------------------------------------------------------------------- pairwise: malformed output


def test_garbage_then_valid_is_retried_only_where_malformed(pairs: pa.Table) -> None:
    first_prompt = render_conversation(pairs.column("prompt")[0].as_py())

    def flaky(user: str, params: SamplingParams, asked: int) -> str:
        if first_prompt in user and asked == 0:
            return "Well, both responses have merits and I would rather not say."
        return prefers_longer(user, params, asked)

    fake = FakeJudge(flaky)
    rows = label_rows(pairwise(fake, max_retries=2, seed=5).label(pairs))
    assert all(r["verdict"] in ("A", "B") and r["consistent"] for r in rows)
    first = rows[0]["raw"]
    for order in ("ab", "ba"):
        assert [a["seed"] for a in first[order]] == [5, 6]
        assert first[order][0]["error"] and first[order][0]["text"].startswith("Well, both")
        assert first[order][1]["error"] is None and first[order][1]["parsed_by"] == "structured"
    assert all(len(r["raw"]["ab"]) == len(r["raw"]["ba"]) == 1 for r in rows[1:])
    # attempt 0 on the whole batch, the re-ask only for the malformed one, hotter than greedy
    assert [(n, p.seed, p.temperature) for n, p in fake.calls] == [(12, 5, 0.0), (2, 6, 0.7)]
    assert rows[0]["details"]["usage"]["attempts"] == 4


def test_always_garbage_is_invalid_after_max_retries_plus_one(pairs: pa.Table) -> None:
    fake = FakeJudge(lambda user, p, k: f"Response A, I suppose (try {k}).")
    rows = label_rows(pairwise(fake, max_retries=2).label(pairs.slice(0, 2)))
    for r in rows:
        assert r["verdict"] == "invalid"
        assert r["score_a"] is r["score_b"] is r["margin"] is r["confidence"] is r["consistent"] is None
        assert [len(r["raw"]["ab"]), len(r["raw"]["ba"])] == [3, 3]
        assert [a["text"] for a in r["raw"]["ab"]] == [f"Response A, I suppose (try {k})." for k in range(3)]
        assert "order A/B: malformed judge reply after 3 attempt(s)" in r["error"] and "order B/A" in r["error"]
    assert [n for n, _ in fake.calls] == [4, 4, 4]


def test_mt_bench_verdicts_in_prose_are_parsed(pairs: pa.Table) -> None:
    def bracketed(user: str, params: SamplingParams, asked: int) -> str:
        a, b = slots(user)
        return f"Assistant {'A' if len(a) > len(b) else 'B'} gives more detail.\n\nFinal verdict: [[{'A' if len(a) > len(b) else 'B'}]]"

    rows = label_rows(pairwise(FakeJudge(bracketed)).label(pairs))
    for view, r in zip(pairs.to_pylist(), rows):
        assert r["verdict"] == ("A" if len(response_text(view["chosen"])) > len(response_text(view["rejected"])) else "B")
        assert r["consistent"] is True and r["details"]["parsed_by"] == {"ab": "mt_bench", "ba": "mt_bench"}


@pytest.mark.parametrize(
    ("text", "verdict", "how"),
    [
        ("After comparing, [[C]]", "tie", "mt_bench"),
        ("[[ b ]]", "B", "mt_bench"),
        ('Sure! ```json\n{"reasoning": "B is kinder", "verdict": "b"}\n```', "B", "json_in_text"),
        ('{"reasoning": "same", "verdict": "tie"}', "tie", "structured"),
        ("[[A]] or maybe [[B]]", None, None),
        ('{"reasoning": "?", "verdict": "A>B"}', None, None),
        ("Response A is better.", None, None),
    ],
)
def test_parse_pairwise(text: str, verdict: str | None, how: str | None) -> None:
    value, error = parse_json_reply(text, PAIRWISE_SCHEMA)
    parsed = parse_pairwise(StructuredReply(text=text, value=value, error=error))
    assert (parsed.value["verdict"] if parsed.value else None, parsed.how) == (verdict, how)
    assert (parsed.error is None) == (verdict is not None)


# --------------------------------------------------------------------------- rubric


def rating_of(response: str, aspect: str) -> int:
    """The scripted rubric judge's rule: differs by response and by aspect, always 1..5."""
    return 1 + (len(response) + 3 * ASPECTS.index(aspect)) % 5


def rubric_reply(user: str, rating: Callable[[str, str], int] = rating_of) -> str:
    response = re.search(r"\[The start of the response\]\n(.*)\n\[The end of the response\]", user, re.S)
    assert response, user
    return json.dumps({a: {"rationale": f"{a} looks fine", "rating": rating(response.group(1), a)} for a in ASPECTS})


def test_rubric_scores_are_aspect_means(pairs: pa.Table) -> None:
    fake = FakeJudge(lambda user, p, k: rubric_reply(user))
    rows = label_rows(rubric(fake).label(pairs))
    assert [n for n, _ in fake.calls] == [2 * pairs.num_rows]  # both responses of every pair in one call
    for view, r in zip(pairs.to_pylist(), rows):
        a, b = response_text(view["chosen"]), response_text(view["rejected"])
        mean_a = sum(rating_of(a, x) for x in ASPECTS) / 4
        mean_b = sum(rating_of(b, x) for x in ASPECTS) / 4
        assert (r["score_a"], r["score_b"]) == pytest.approx((mean_a, mean_b))
        assert r["margin"] == pytest.approx(mean_a - mean_b)
        assert r["verdict"] == ("A" if mean_a > mean_b else "B" if mean_b > mean_a else "tie")
        assert r["confidence"] == pytest.approx(abs(mean_a - mean_b) / 4) and r["consistent"] is None
        assert r["details"]["a"]["honesty"] == {"rating": rating_of(a, "honesty"), "rationale": "honesty looks fine"}
        assert r["details"]["b"]["helpfulness"]["rating"] == rating_of(b, "helpfulness")
        assert len(r["raw"]["a"]) == len(r["raw"]["b"]) == 1
    assert len({r["margin"] for r in rows}) > 1


def test_rubric_out_of_range_rating_is_malformed_never_clipped(pairs: pa.Table) -> None:
    seven = FakeJudge(lambda user, p, k: rubric_reply(user, lambda resp, a: 7 if a == "honesty" else 4))
    rows = label_rows(rubric(seven, max_retries=1).label(pairs.slice(0, 2)))
    for r in rows:
        assert r["verdict"] == "invalid" and r["score_a"] is None and r["score_b"] is None and r["margin"] is None
        assert "$.honesty.rating: 7 > maximum 5" in r["error"] and "after 2 attempt(s)" in r["error"]
        assert len(r["raw"]["a"]) == len(r["raw"]["b"]) == 2

    # the re-ask gets a valid reply: the label uses it, not the 7
    fixed = FakeJudge(lambda user, p, k: rubric_reply(user, lambda resp, a: 7 if k == 0 else 3))
    (row,) = label_rows(rubric(fixed, max_retries=1).label(pairs.slice(0, 1)))
    assert (row["verdict"], row["score_a"], row["score_b"]) == ("tie", 3.0, 3.0)


@pytest.mark.parametrize(
    ("value", "problem"),
    [
        ({a: {"rationale": "ok", "rating": 3} for a in ASPECTS[:3]}, "missing required key 'helpfulness'"),
        ({a: {"rationale": "ok", "rating": 0} for a in ASPECTS}, "0 < minimum 1"),
        ({a: {"rationale": "ok", "rating": 4.5} for a in ASPECTS}, "expected integer, got float"),
        ({a: {"rationale": "ok", "rating": "5"} for a in ASPECTS}, "expected integer, got str"),
        ({a: {"rationale": "ok"} for a in ASPECTS}, "missing required key 'rating'"),
    ],
)
def test_parse_rubric_is_strict(value: dict, problem: str) -> None:
    schema = rubric_schema(ASPECTS)
    text = "Here are my ratings:\n" + json.dumps(value)
    parsed = parse_rubric(StructuredReply(text=text, value=None, error="no JSON object in the reply"), schema)
    assert parsed.value is None and problem in parsed.error


def test_parse_rubric_finds_json_in_prose_and_fences() -> None:
    schema = rubric_schema(["honesty", "helpfulness"])
    body = {"honesty": {"rationale": "candid", "rating": 5}, "helpfulness": {"rationale": "vague {sic}", "rating": 2}}
    text = f"I rate it {{as follows}}:\n```json\n{json.dumps(body, indent=2)}\n```\nHope this helps."
    value, error = parse_json_reply(text, schema)
    assert value is None and error  # the backend's strict first-object parse fails on the prose
    parsed = parse_rubric(StructuredReply(text=text, value=None, error=error), schema)
    assert parsed.how == "json_in_text" and parsed.value == body


# --------------------------------------------------------------------------- templates


def test_missing_placeholder_is_a_config_error_before_any_model(tmp_path: Path) -> None:
    template = tmp_path / "my_judge.txt"
    template.write_text("Question: {prompt}\nFirst: {response_a}\nWhich is better?")
    never = BackendConfig(backend="transformers", model=str(tmp_path / "no-such-model"))
    cfg = JudgePairwiseConfig(name="j", backend=never, template=str(template))
    with pytest.raises(ConfigError, match=r"my_judge\.txt lacks the placeholder\(s\) \{response_b\}"):
        PairwiseJudge.check(cfg, tmp_path)
    with pytest.raises(ConfigError, match=r"\{response_b\}"):
        PairwiseJudge(cfg, BackendPool(tmp_path, build=lambda c, root: pytest.fail("no backend may be built")))
    # with the template fixed, the same config fails on the model, so the order above was the template check's
    template.write_text("{prompt} {response_a} {response_b}")
    with pytest.raises(ConfigError, match="no-such-model"):
        PairwiseJudge.check(cfg, tmp_path)

    rubric_template = tmp_path / "rubric.txt"
    rubric_template.write_text("{prompt}\n{response}")
    with pytest.raises(ConfigError, match=r"rubric\.txt lacks the placeholder\(s\) \{aspects\}"):
        RubricJudge.check(JudgeRubricConfig(name="r", backend=never, template=str(rubric_template)), tmp_path)
    with pytest.raises(ConfigError, match=r"judge template file not found: .*absent\.txt"):
        PairwiseJudge.check(JudgePairwiseConfig(name="j", backend=never, template=str(tmp_path / "absent.txt")), tmp_path)
    with pytest.raises(ConfigError, match=r"system prompt file not found: .*sys\.txt"):
        PairwiseJudge.check(JudgePairwiseConfig(name="j", backend=never, system_prompt=str(tmp_path / "sys.txt")), tmp_path)
    with pytest.raises(ConfigError, match="aspects repeated: honesty"):
        RubricJudge.check(JudgeRubricConfig(name="r", backend=never, aspects=["honesty", "honesty"]), tmp_path)


def test_custom_template_and_system_prompt_with_braces(pairs: pa.Table, tmp_path: Path) -> None:
    template = tmp_path / "t.txt"
    template.write_text('Judge as JSON {"x": 1}.\n<q>{prompt}</q>\n<1>{response_a}</1>\n<2>{response_b}</2>')
    system = tmp_path / "system.txt"
    system.write_text("You are a strict judge.\n")
    prompt = [{"role": "user", "content": "Fill in {response_b} for me, and {name}."}]
    tricky = pa.Table.from_pylist(
        [labeler_pair(prompt, [{"role": "assistant", "content": "Sure: {response_a}"}], [{"role": "assistant", "content": "no"}])],
        schema=LABEL_PAIRS_SCHEMA,
    )
    fake = FakeJudge(lambda user, p, k: verdict_json("tie"))
    rows = label_rows(pairwise(fake, template=str(template), system_prompt=str(system)).label(tricky))
    assert rows[0]["verdict"] == "tie" and rows[0]["consistent"] is True
    assert fake.seen[0] == [
        {"role": "system", "content": "You are a strict judge."},
        {
            "role": "user",
            "content": 'Judge as JSON {"x": 1}.\n<q>Fill in {response_b} for me, and {name}.</q>\n<1>Sure: {response_a}</1>\n<2>no</2>',
        },
    ]
    assert fake.seen[1][1]["content"].endswith("<1>no</1>\n<2>Sure: {response_a}</2>")
    # a system prompt given as text is used as is
    judge = pairwise(fake, system_prompt="Prefer the safer answer.")
    assert judge.conversation(pair_views(tricky)[0], False)[0] == {"role": "system", "content": "Prefer the safer answer."}


def test_fill_is_one_pass() -> None:
    assert fill("{a}|{b}|{c}", {"a": "{b}", "b": "x"}) == "{b}|x|{c}"


def test_multi_turn_prompt_is_rendered_with_roles(hh_path: Path) -> None:
    table = real_pairs(hh_path, 1, max_chars=3000, multi_turn=True)
    prompt = table.column("prompt")[0].as_py()
    text = render_conversation(prompt)
    assert text.startswith(f"User: {prompt[0]['content']}")
    assert f"Assistant: {prompt[1]['content']}" in text and text.endswith(prompt[-1]["content"])
    assert text.count("User: ") >= 2
    one = [{"role": "user", "content": "Just this?"}]
    assert render_conversation(one) == "Just this?"


# --------------------------------------------------------------------------- through HTTP


def stub_judge(stub: OpenAIStub, **cfg: Any) -> tuple[PairwiseJudge, BackendPool]:
    from curation.models.openai_backend import OpenAIBackend

    def build(c: BackendConfig, root: Any) -> OpenAIBackend:
        backend = OpenAIBackend(c, Path(root))
        backend.backoff_base_s = 0.01
        return backend

    backend_cfg = BackendConfig(backend="openai", model=stub.model, base_url=stub.base_url, timeout_s=5.0, max_concurrency=1)
    pool = BackendPool("data", build=build)
    return PairwiseJudge(JudgePairwiseConfig(name="http-judge", backend=backend_cfg, **cfg), pool), pool


def test_pairwise_over_http_on_real_pairs(pairs: pa.Table) -> None:
    three = pairs.slice(0, 3)
    with OpenAIStub() as stub:
        judge, pool = stub_judge(stub)
        PairwiseJudge.check(judge.cfg, "data")  # reaches the stub's /v1/models
        try:
            rows = label_rows(judge.label(three))
        finally:
            pool.close()
        sent = [body for path, body in stub.bodies if path == "/v1/chat/completions"]
    # the stub answers the schema's first example, {"verdict": "A"}: an always-A judge, caught by the swap
    assert [(r["verdict"], r["consistent"]) for r in rows] == [("tie", False)] * 3
    assert len(sent) == 6 and all(b["response_format"]["json_schema"]["schema"] == PAIRWISE_SCHEMA for b in sent)
    assert all(b["temperature"] == 0.0 and b["seed"] == 0 and b["max_tokens"] == 256 for b in sent)
    for view in three.to_pylist():
        chosen, rejected = response_text(view["chosen"]), response_text(view["rejected"])
        shown = [slots(b["messages"][-1]["content"]) for b in sent if render_conversation(view["prompt"]) in b["messages"][-1]["content"]]
        assert sorted(shown) == sorted([(chosen, rejected), (rejected, chosen)])
        assert all(b["messages"][0]["role"] == "system" and "impartial judge" in b["messages"][0]["content"] for b in sent)


def test_http_retries_and_fallbacks(pairs: pa.Table) -> None:
    with OpenAIStub() as stub:
        # attempt 0: order A/B garbage, order B/A an MT-Bench "[[A]]" (its A is the pair's rejected
        # response); attempt 1 re-asks order A/B only, which now says B
        stub.script_replies("I cannot decide.", "Both are fine, but [[A]]", verdict_json("B", "B is safer"))
        judge, pool = stub_judge(stub, max_retries=1)
        try:
            (row,) = label_rows(judge.label(pairs.slice(0, 1)))
        finally:
            pool.close()
        sent = [body for path, body in stub.bodies if path == "/v1/chat/completions"]
    assert (row["verdict"], row["consistent"], row["score_b"]) == ("B", True, 2.0)
    assert [a["text"] for a in row["raw"]["ab"]] == ["I cannot decide.", verdict_json("B", "B is safer")]
    assert row["details"]["parsed_by"] == {"ab": "structured", "ba": "mt_bench"}
    assert [(b["seed"], b["temperature"]) for b in sent] == [(0, 0.0), (0, 0.0), (1, 0.7)]

    with OpenAIStub(reject_response_format=True) as stub:  # no structured output: the stub answers prose
        judge, pool = stub_judge(stub, max_retries=1)
        try:
            rows = label_rows(judge.label(pairs.slice(0, 2)))
        finally:
            pool.close()
    for r in rows:
        assert r["verdict"] == "invalid" and "after 2 attempt(s)" in r["error"]
        assert all(a["text"].startswith("Reply 0 ") for order in ("ab", "ba") for a in r["raw"][order])


def test_rubric_over_http(pairs: pa.Table) -> None:
    backend_cfg = BackendConfig(backend="openai", model="stub-model", timeout_s=5.0)
    with OpenAIStub() as stub:
        cfg = JudgeRubricConfig(name="http-rubric", backend=backend_cfg.model_copy(update={"base_url": stub.base_url}), aspects=ASPECTS[:2])
        pool = BackendPool("data")
        try:
            rows = label_rows(RubricJudge(cfg, pool).label(pairs.slice(0, 2)))
        finally:
            pool.close()
        sent = [body for path, body in stub.bodies if path == "/v1/chat/completions"]
    # the stub's schema example rates every aspect at the minimum, 1
    assert [(r["verdict"], r["score_a"], r["score_b"]) for r in rows] == [("tie", 1.0, 1.0)] * 2
    assert rows[0]["details"]["a"] == {a: {"rating": 1, "rationale": "ok"} for a in ASPECTS[:2]}
    assert len(sent) == 4 and all(b["response_format"]["json_schema"]["schema"] == rubric_schema(ASPECTS[:2]) for b in sent)
    assert all("- honesty: " in b["messages"][-1]["content"] for b in sent)


# --------------------------------------------------------------------------- a real model


@pytest.mark.slow
def test_smollm2_judges_real_pairs(hh_path: Path, smollm2_dir: Path, models_root: Path) -> None:
    two = real_pairs(hh_path, 2, max_chars=400)
    backend = BackendConfig(backend="transformers", model="smollm2", threads=1, batch_size=4)
    cfg = JudgePairwiseConfig(name="smol-judge", backend=backend, max_tokens=32, max_retries=0)
    PairwiseJudge.check(cfg, models_root)
    pool = BackendPool(models_root)
    started = time.perf_counter()
    try:
        rows = label_rows(PairwiseJudge(cfg, pool).label(two))
    finally:
        pool.close()
    seconds = time.perf_counter() - started
    assert [r["pair_id"] for r in rows] == two.column("pair_id").to_pylist()
    for r in rows:
        assert r["verdict"] in VERDICTS and r["models"] == ["smollm2"]
        assert [len(r["raw"]["ab"]), len(r["raw"]["ba"])] == [1, 1]
        assert all(a["text"].startswith("{") for order in ("ab", "ba") for a in r["raw"][order])  # prefilled JSON
        if r["verdict"] == "invalid":
            assert r["error"] and r["score_a"] is None and r["consistent"] is None
        else:
            assert isinstance(r["consistent"], bool) and r["score_a"] + r["score_b"] == 2.0
    print(f"smollm2 judged 2 pairs in {seconds:.1f} s: {[(r['verdict'], r['error']) for r in rows]}")


# --------------------------------------------------------------------------- pairwise: verdict from letter log-probs


class LetterScorer(ModelBackend):
    """Log-probs of the one-letter answers: ``bias`` toward "A" plus ``per_char`` times the
    length of the response shown in that slot (a length-loving judge when per_char > 0)."""

    name = "fake"
    model = "fake-letters"

    def __init__(self, bias: float, per_char: float):
        self.bias, self.per_char = bias, per_char
        self.calls = 0

    def score_logprobs(self, conversations, responses, *, role="assistant"):
        self.calls += 1
        out = []
        for conv, letter in zip(conversations, responses):
            a, b = slots(conv[-1]["content"])
            logit = self.per_char * (len(a) if letter == "A" else len(b)) + (self.bias if letter == "A" else 0.0)
            out.append([logit - 10.0])
        return out


def test_letter_verdicts_catch_position_bias_and_keep_a_soft_margin(pairs: pa.Table) -> None:
    rows = label_rows(pairwise(LetterScorer(bias=3.0, per_char=0.0), verdict_by="logprobs").label(pairs))
    for r in rows:
        assert (r["verdict"], r["consistent"]) == ("tie", False)
        assert r["margin"] == pytest.approx(0.0)  # a pure position bias cancels between the orders
        assert r["details"]["p_letter_a_ab"] == pytest.approx(r["details"]["p_letter_a_ba"])
        assert r["details"]["p_letter_a_ab"] > 0.9


def test_letter_verdicts_follow_the_judge_in_both_slots(pairs: pa.Table) -> None:
    fake = LetterScorer(bias=0.5, per_char=0.05)
    both = pa.concat_tables([pairs, swapped(pairs)])
    rows = label_rows(pairwise(fake, verdict_by="logprobs").label(both))
    assert fake.calls == 1  # both orders, both letters, every pair: one scoring call
    for view, r in zip(both.to_pylist(), rows):
        a, b = len(response_text(view["chosen"])), len(response_text(view["rejected"]))
        if abs(a - b) * 0.05 > 1.0:  # the length preference beats the position bias
            assert r["verdict"] == ("A" if a > b else "B") and r["consistent"] is True
            assert (r["margin"] > 0) == (a > b)
        assert 0.0 <= r["score_a"] <= 2.0 and r["score_a"] + r["score_b"] == pytest.approx(2.0)
