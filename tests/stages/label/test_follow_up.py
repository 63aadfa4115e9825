"""Follow-up likelihood (FLR) rewards with the real SmolLM2-135M-Instruct.

What the 135M model can and cannot tell apart, measured before writing these tests (single
positive "Thank you, that's exactly what I needed!", single negative "That's wrong and doesn't
answer my question."): a correct answer beats a non-answer ("I don't know." or a curt refusal)
on 8 of 8 simple factual questions, FLR margins +0.15 to +0.36; it does not separate a correct
answer from a wrong or off-topic one (margins -0.36 to +0.01). The ranking test therefore pins
the first, real property; the second would be a test of a bigger model.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pyarrow as pa
import pytest
from pydantic import ValidationError

from curation.errors import ConfigError
from curation.models import BackendConfig, ModelBackend, Unsupported
from curation.stages.label import build_labeler, check_labeler
from curation.stages.label.base import BackendPool
from curation.stages.label.config import FollowUpConfig, FollowUpLists
from curation.stages.label.follow_up import DEFAULT_FOLLOW_UPS, flr, follow_up_lists
from tests.helpers import label_rows

SMOLLM2 = {"backend": "transformers", "model": "smollm2", "threads": 1, "batch_size": 8}
THANKS = "Thank you, that's exactly what I needed!"
COMPLAINT = "That's wrong and doesn't answer my question."
REFUSAL = "I'm not going to tell you. Figure it out yourself."
ONE_EACH = {"satisfaction": {"positive": [THANKS], "negative": [COMPLAINT]}}


pytestmark = pytest.mark.usefixtures("torch_threads")  # tests/model_fixtures.py


@pytest.fixture(scope="module")
def pool(smollm2_dir: Path, models_root: Path) -> Iterator[BackendPool]:
    backends = BackendPool(models_root)
    yield backends
    backends.close()


def pair(pid: str, question: str, chosen: str, rejected: str) -> dict[str, Any]:
    return {
        "pair_id": pid,
        "prompt": [{"role": "user", "content": question}],
        "chosen": [{"role": "assistant", "content": chosen}],
        "rejected": [{"role": "assistant", "content": rejected}],
        "label_source": "human",
        "source_dataset": "handwritten",
    }


def labeler(pool: BackendPool, follow_ups: dict | None = ONE_EACH, backend: dict = SMOLLM2) -> Any:
    cfg = FollowUpConfig(name="flr", backend=backend, follow_ups=follow_ups)
    return build_labeler(cfg, pool)


# --------------------------------------------------------------------------- real model


def test_a_thank_you_is_likelier_after_an_answer_than_after_a_non_answer(pool: BackendPool) -> None:
    pairs = pa.Table.from_pylist(
        [
            pair("france", "What is the capital of France?", "The capital of France is Paris.", "I don't know."),
            pair("spider", "How many legs does a spider have?", "A spider has eight legs.", REFUSAL),
            pair("romeo", "Who wrote Romeo and Juliet?", "William Shakespeare wrote Romeo and Juliet.", "I don't know."),
        ]
    )
    rows = label_rows(labeler(pool).label(pairs))
    assert [r["pair_id"] for r in rows] == ["france", "spider", "romeo"]
    for r in rows:
        assert r["verdict"] == "A", r
        assert r["margin"] > 0.1  # measured +0.35, +0.15, +0.32
        assert r["models"] == ["smollm2"] and r["kind"] == "follow_up"


def test_details_hold_each_dimension_scored_as_a_user_turn(pool: BackendPool) -> None:
    follow_ups = {
        "relevance": {"positive": [THANKS], "negative": ["That has nothing to do with my question."]},
        "correctness": {"positive": ["Yes, that's correct.", THANKS], "negative": [COMPLAINT]},
    }
    question, answer = "What is the capital of France?", "The capital of France is Paris."
    (row,) = label_rows(labeler(pool, follow_ups).label(pa.Table.from_pylist([pair("p", question, answer, "I don't know.")])))
    details = row["details"]
    assert details["follow_ups"] == 4  # THANKS is scored once, used by both dimensions
    assert set(details["a"]["dimensions"]) == {"relevance", "correctness"}

    # independent of the labeler: each follow-up's mean token log-prob as the next user turn
    backend = pool.get(BackendConfig(**SMOLLM2))
    texts = [THANKS, "That has nothing to do with my question.", "Yes, that's correct.", COMPLAINT]
    conversation = [{"role": "user", "content": question}, {"role": "assistant", "content": answer}]
    lps = backend.score_logprobs([conversation] * 4, texts, role="user")
    m = {t: sum(lp) / len(lp) for t, lp in zip(texts, lps)}
    a = details["a"]
    assert a["dimensions"]["relevance"]["positive"] == pytest.approx(m[THANKS], abs=1e-4)
    assert a["dimensions"]["correctness"]["positive"] == pytest.approx((m["Yes, that's correct."] + m[THANKS]) / 2, abs=1e-4)
    assert a["dimensions"]["correctness"]["negative"] == pytest.approx(m[COMPLAINT], abs=1e-4)
    pooled = (m[THANKS] + m["Yes, that's correct."]) / 2 - (m[COMPLAINT] + m["That has nothing to do with my question."]) / 2
    assert row["score_a"] == a["score"] == pytest.approx(pooled, abs=1e-4)
    for dim in a["dimensions"].values():
        assert dim["score"] == pytest.approx(dim["positive"] - dim["negative"], abs=1e-12)


def test_bad_pairs_are_invalid_rows_and_the_rest_is_scored(pool: BackendPool) -> None:
    pairs = pa.Table.from_pylist(
        [
            pair("empty", "What is the capital of France?", "The capital of France is Paris.", ""),
            pair("long", "word " * 9000, "Yes.", "No."),  # over SmolLM2's 8192-token context
            pair("ok", "What is the capital of France?", "The capital of France is Paris.", "I don't know."),
        ]
    )
    rows = label_rows(labeler(pool).label(pairs))
    assert [r["verdict"] for r in rows] == ["invalid", "invalid", "A"]
    assert rows[0]["error"] == "the rejected response is empty"
    assert rows[1]["error"].startswith("scoring failed: BackendError") and "context" in rows[1]["error"]
    assert rows[0]["score_a"] is None and rows[1]["margin"] is None and rows[2]["margin"] > 0.1


# --------------------------------------------------------------------------- config


class NoBuild:
    """A backend factory that fails the test if anything is built."""

    def __call__(self, cfg: BackendConfig, data_root: Any) -> Any:
        raise AssertionError(f"a model was loaded: {cfg.model}")


def test_empty_follow_up_lists_are_config_errors_before_work(tmp_path: Path) -> None:
    with pytest.raises(ValidationError, match="follow_ups is empty"):
        FollowUpConfig(name="flr", backend=SMOLLM2, follow_ups={})
    with pytest.raises(ValidationError, match=r"follow_ups\.relevance\.positive"):
        FollowUpConfig(name="flr", backend=SMOLLM2, follow_ups={"relevance": {"positive": [], "negative": ["No."]}})

    # configs built without validation (e.g. in code) are caught by check() and by label(), before any model
    base = FollowUpConfig(name="flr", backend=SMOLLM2)
    bad = {
        "follow_ups is empty": {},
        r"follow_ups\.relevance\.negative is empty": {"relevance": FollowUpLists.model_construct(positive=["Thanks."], negative=[])},
        r"follow_ups\.x\.positive has an empty follow-up": {"x": FollowUpLists(positive=["  "], negative=["No."])},
        "both positive and negative": {
            "x": FollowUpLists(positive=["Ok."], negative=["No."]),
            "y": FollowUpLists(positive=["No."], negative=["Bad."]),
        },
    }
    table = pa.Table.from_pylist([pair("p", "Hi", "Hello!", "Go away.")])
    for message, follow_ups in bad.items():
        cfg = base.model_copy(update={"follow_ups": follow_ups})
        with pytest.raises(ConfigError, match=message):
            check_labeler(cfg, tmp_path)
        with pytest.raises(ConfigError, match=message):
            build_labeler(cfg, BackendPool(tmp_path, build=NoBuild())).label(table)
    assert not (tmp_path / "models").exists()


def test_check_needs_a_log_prob_backend(tmp_path: Path) -> None:
    check_labeler(FollowUpConfig(name="flr", backend={"backend": "transformers", "model": "smollm2"}), tmp_path)
    with pytest.raises(ConfigError, match="cannot score log-probs"):
        check_labeler(FollowUpConfig(name="flr", backend={"backend": "sentence_transformers", "model": "all-MiniLM-L6-v2"}), tmp_path)
    with pytest.raises(ConfigError, match="set tokenizer"):
        check_labeler(
            FollowUpConfig(name="flr", backend={"backend": "openai", "model": "m", "base_url": "http://127.0.0.1:9/v1"}), tmp_path
        )
    assert not (tmp_path / "models").exists()


class NoLogprobs(ModelBackend):
    """A backend without log-probs for anything: a missing capability, not a bad pair."""

    name = "fake"
    model = "no-logprobs"

    def score_logprobs(self, conversations: Any, responses: Any, *, role: str = "assistant") -> list[list[float]]:
        raise Unsupported("no prompt log-probs here")


def test_a_backend_without_log_probs_stops_the_labeler(tmp_path: Path) -> None:
    pool = BackendPool(tmp_path, build=lambda cfg, root: NoLogprobs())
    table = pa.Table.from_pylist([pair("p", "Hi", "Hello!", "Go away."), pair("q", "Hey", "Hi!", "Leave.")])
    with pytest.raises(Unsupported, match="no prompt log-probs"):
        labeler(pool).label(table)


# --------------------------------------------------------------------------- pure core


def test_default_follow_ups_cover_six_dimensions() -> None:
    lists = follow_up_lists(FollowUpConfig(name="flr", backend=SMOLLM2))
    assert list(lists) == ["understanding", "relevance", "correctness", "engagingness", "informativeness", "following"]
    assert list(DEFAULT_FOLLOW_UPS) == list(lists)
    texts = [t for p in lists.values() for t in (*p.positive, *p.negative)]
    assert len(texts) == len(set(texts)) == 36 and all(len(p.positive) == len(p.negative) == 3 for p in lists.values())


def test_pooled_score_counts_each_distinct_follow_up_once() -> None:
    lists = {
        "x": FollowUpLists(positive=["p1", "p2"], negative=["n1"]),
        "y": FollowUpLists(positive=["p2"], negative=["n2", "n3", "n3"]),
    }
    means = {"p1": -1.0, "p2": -2.0, "n1": -3.0, "n2": -4.0, "n3": -6.0}
    out = flr(means, lists)
    assert out["positive"] == -1.5 and out["negative"] == pytest.approx(-13.0 / 3)
    assert out["score"] == pytest.approx(-1.5 + 13.0 / 3)
    assert out["dimensions"]["x"] == {"score": 1.5, "positive": -1.5, "negative": -3.0}
    assert out["dimensions"]["y"] == {"score": 3.0, "positive": -2.0, "negative": -5.0}
    # unequal dimensions: the pooled score is not the mean of the dimension scores
    assert out["score"] != pytest.approx((1.5 + 3.0) / 2)
