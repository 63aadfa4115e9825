"""Reward-model scoring (the ``reward`` capability) and the reward-model labeler.

No real reward model ships offline, so the tests build tiny random ones: a Llama with a
one-logit classification head and the SmolLM2 tokenizer (its real chat template), saved with
``save_pretrained`` like any downloaded reward model. Random weights still score every text
differently, which is all that batching, ordering and pooling checks need.

The vLLM test runs only where vLLM is installed (its own venv, see tests/models/test_vllm_backend.py);
there, run ``VENV/bin/python -m pytest -q -p no:cacheprovider -m vllm tests/stages/label/test_reward_model.py``.
"""

from __future__ import annotations

import importlib.util
import json
import math
from pathlib import Path
from typing import Any

import pytest

from curation.errors import ConfigError
from curation.models import BackendConfig, SamplingParams, Unsupported, build_backend
from curation.records import PairDraft
from tests.helpers import first_hh_pairs

HAS_VLLM = importlib.util.find_spec("vllm") is not None

CONVERSATIONS = [
    [{"role": "user", "content": "Hi"}],
    [{"role": "user", "content": "How do I boil an egg?"}],
    [
        {"role": "system", "content": "You are terse."},
        {"role": "user", "content": "Name a fruit."},
        {"role": "assistant", "content": "Apple."},
        {"role": "user", "content": "Another one, and tell me why you like it so much, in detail?"},
    ],
    [{"role": "user", "content": "Tell me a joke about cats."}],
    [{"role": "user", "content": "What is 2 + 2?"}],
]
RESPONSES = ["Hello!", "Put it in boiling water for nine minutes, then cool it in cold water.", "Pear.", "", "4"]


def save_tiny(
    folder: Path, tokenizer_dir: Path, *, head: str = "seq_cls", num_labels: int = 1, pad: bool = True, template: str | None = None
) -> Path:
    """A tiny random Llama (reward head or LM head) with SmolLM2's tokenizer, saved as a HF folder."""
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM, LlamaForSequenceClassification

    tok = AutoTokenizer.from_pretrained(str(tokenizer_dir), local_files_only=True)
    if template is not None:
        tok.chat_template = template
    config = LlamaConfig(
        vocab_size=len(tok),
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=1,  # head_dim 64: vLLM's CPU attention has no kernel for tiny head sizes
        num_key_value_heads=1,
        max_position_embeddings=256,
        initializer_range=0.5,  # logits spread over several units, so rounding is negligible next to them
        num_labels=num_labels,
        pad_token_id=tok.pad_token_id if pad else None,
    )
    torch.manual_seed(0)
    model = LlamaForSequenceClassification(config) if head == "seq_cls" else LlamaForCausalLM(config)
    model.save_pretrained(folder)
    tok.save_pretrained(folder)
    return folder


def reference(folder: Path, conversations: list, responses: list[str]) -> list[float]:
    """What a reward model card does: one unpadded conversation at a time through the model."""
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(folder), local_files_only=True)
    model = AutoModelForSequenceClassification.from_pretrained(str(folder), local_files_only=True).eval()
    out = []
    with torch.inference_mode():
        for conv, resp in zip(conversations, responses):
            text = tok.apply_chat_template([*conv, {"role": "assistant", "content": resp}], tokenize=False)
            ids = tok(text, add_special_tokens=False)["input_ids"]
            out.append(model(input_ids=torch.tensor([ids])).logits[0, 0].item())
    return out


def transformers_cfg(folder: Path, batch_size: int = 3) -> BackendConfig:
    return BackendConfig(backend="transformers", model=str(folder), threads=1, batch_size=batch_size)


@pytest.fixture(scope="module")
def rm_dir(tmp_path_factory: pytest.TempPathFactory, smollm2_dir: Path) -> Path:
    return save_tiny(tmp_path_factory.mktemp("rm"), smollm2_dir)


@pytest.fixture(scope="module")
def rm(rm_dir: Path):
    backend = build_backend(transformers_cfg(rm_dir))
    yield backend
    backend.close()


def test_batched_scores_equal_one_by_one_and_the_model_card_way(rm, rm_dir: Path) -> None:
    batched = rm.reward(CONVERSATIONS, RESPONSES)  # batch_size 3: two padded batches of mixed lengths
    singles = [rm.reward([c], [r])[0] for c, r in zip(CONVERSATIONS, RESPONSES)]
    expected = reference(rm_dir, CONVERSATIONS, RESPONSES)
    assert max(expected) - min(expected) > 0.5  # scores differ by far more than the tolerance below
    assert batched == pytest.approx(singles, abs=1e-4)
    assert batched == pytest.approx(expected, abs=1e-4)
    # Order follows the input, whatever order the batches ran in.
    assert rm.reward(CONVERSATIONS[::-1], RESPONSES[::-1]) == pytest.approx(batched[::-1], abs=1e-4)
    # The conversation matters, not only the response.
    assert rm.reward([CONVERSATIONS[0]], [RESPONSES[1]])[0] != pytest.approx(batched[1], abs=1e-3)


def test_model_without_pad_token_pools_at_the_last_token(tmp_path: Path, smollm2_dir: Path) -> None:
    """No pad token in the config and a template ending in <|im_end|> (the tokenizer's pad id):
    padding with that id, declared the pad, would pool one token early on every row."""
    template = (
        "{% for m in messages %}{{ '<|im_start|>' + m['role'] + '\\n' + m['content'] + '<|im_end|>' }}{% endfor %}"
        "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
    )
    folder = save_tiny(tmp_path / "nopad", smollm2_dir, pad=False, template=template)
    assert json.loads((folder / "config.json").read_text()).get("pad_token_id") is None
    backend = build_backend(transformers_cfg(folder, batch_size=8))
    try:
        assert backend.reward(CONVERSATIONS, RESPONSES) == pytest.approx(reference(folder, CONVERSATIONS, RESPONSES), abs=1e-4)
    finally:
        backend.close()


def test_reward_model_serves_rewards_only(rm) -> None:
    with pytest.raises(Unsupported, match="is a reward model .*LlamaForSequenceClassification"):
        rm.generate(CONVERSATIONS[:1], SamplingParams(max_tokens=4))
    with pytest.raises(Unsupported, match="reward model"):
        rm.score_logprobs(CONVERSATIONS[:1], ["Hello"])


@pytest.fixture(scope="module")
def lm_dir(tmp_path_factory: pytest.TempPathFactory, smollm2_dir: Path) -> Path:
    return save_tiny(tmp_path_factory.mktemp("lm"), smollm2_dir, head="causal")


@pytest.fixture(scope="module")
def two_labels_dir(tmp_path_factory: pytest.TempPathFactory, smollm2_dir: Path) -> Path:
    return save_tiny(tmp_path_factory.mktemp("two"), smollm2_dir, num_labels=2)


def test_causal_lm_has_no_reward(lm_dir: Path) -> None:
    backend = build_backend(transformers_cfg(lm_dir))
    try:
        assert backend.generate(CONVERSATIONS[:1], SamplingParams(max_tokens=2, temperature=0))[0].generations  # a working LM
        with pytest.raises(Unsupported, match="does not support reward scoring: .*not a \\*ForSequenceClassification model"):
            backend.reward(CONVERSATIONS[:1], ["Hello"])
    finally:
        backend.close()


def test_classifier_with_two_labels_is_refused(two_labels_dir: Path) -> None:
    with pytest.raises(ConfigError, match="LlamaForSequenceClassification with 2 labels; a reward model has exactly one output"):
        build_backend(transformers_cfg(two_labels_dir))


def test_labeler_check_refuses_what_is_not_a_reward_model(lm_dir: Path, two_labels_dir: Path, rm_dir: Path, tmp_path: Path) -> None:
    pytest.importorskip("pyarrow")
    from curation.stages.label.config import RewardModelConfig
    from curation.stages.label.reward_model import RewardModel

    def check(backend: BackendConfig) -> None:
        RewardModel.check(RewardModelConfig(name="rm", backend=backend), tmp_path)

    check(transformers_cfg(rm_dir))
    with pytest.raises(ConfigError, match="labeler 'rm': .*not a \\*ForSequenceClassification model"):
        check(transformers_cfg(lm_dir))
    with pytest.raises(ConfigError, match="2 labels"):
        check(transformers_cfg(two_labels_dir))
    with pytest.raises(ConfigError, match="cannot run a reward model"):
        check(BackendConfig(backend="sentence_transformers", model="all-MiniLM-L6-v2"))


def hh_pairs(hh_path: Path, n: int, max_chars: int = 600) -> list[dict[str, Any]]:
    """The first ``n`` HH-RLHF pairs short enough for the tiny model's context, as pairs-table rows."""

    def short(d: PairDraft) -> bool:
        return sum(len(m["content"]) for m in (*d.prompt, *d.chosen, *d.rejected)) <= max_chars

    return first_hh_pairs(hh_path, n, short, source_dataset="hh")


def test_labeler_margins_are_reward_differences(rm, rm_dir: Path, hh_path: Path, tmp_path: Path) -> None:
    pa = pytest.importorskip("pyarrow")
    from curation.stages.label.base import BackendPool, pair_views
    from curation.stages.label.config import RewardModelConfig
    from curation.stages.label.reward_model import RewardModel
    from schemas import arrow_schema

    rows = hh_pairs(hh_path, 6)
    too_long = {**rows[2], "chosen": [{"role": "assistant", "content": "word " * 400}], "pair_id": "too-long"}
    schema = pa.schema([arrow_schema("pairs").field(name) for name in rows[0]])
    pairs = pa.Table.from_pylist([*rows[:2], too_long, *rows[2:]], schema=schema)
    cfg = RewardModelConfig(name="tiny-rm", backend=transformers_cfg(rm_dir))
    RewardModel.check(cfg, tmp_path)
    pool = BackendPool(tmp_path, build=lambda c, root: rm)  # the module's backend: same model, loaded once
    labels = RewardModel(cfg, pool).label(pairs).to_pylist()

    assert [r["pair_id"] for r in labels] == pairs.column("pair_id").to_pylist()
    bad = labels.pop(2)
    assert bad["verdict"] == "invalid" and bad["score_a"] is None and "longer than the model's context" in bad["error"]
    views = [v for v in pair_views(pairs) if v.pair_id != "too-long"]
    chosen = rm.reward([v.prompt for v in views], [v.response_a for v in views])
    rejected = rm.reward([v.prompt for v in views], [v.response_b for v in views])
    for row, a, b in zip(labels, chosen, rejected):
        assert (row["score_a"], row["score_b"]) == (pytest.approx(a, abs=1e-4), pytest.approx(b, abs=1e-4))
        assert row["margin"] == pytest.approx(row["score_a"] - row["score_b"])
        assert row["verdict"] == ("A" if row["margin"] > 0 else "B")
        assert row["confidence"] == pytest.approx(1 / (1 + math.exp(-abs(row["margin"]))))
        assert (row["labeler"], row["labeler_group"], row["kind"], row["models"]) == ("tiny-rm", "tiny-rm", "reward_model", [str(rm_dir)])
    assert {r["verdict"] for r in labels} == {"A", "B"}  # random weights: both directions occur


@pytest.mark.vllm
@pytest.mark.skipif(
    not HAS_VLLM, reason="vLLM is not installed in this venv; this test runs in .venv-vllm through tests/models/test_vllm_env.py"
)
def test_vllm_pooling_runner_scores_like_transformers(rm_dir: Path) -> None:
    from curation.models import vllm_backend

    vllm_backend.set_cpu_env_defaults()
    backend = build_backend(BackendConfig(backend="vllm", model=str(rm_dir), batch_size=2))
    try:
        scores = backend.reward(CONVERSATIONS, RESPONSES)
        with pytest.raises(Unsupported, match="reward model"):
            backend.generate(CONVERSATIONS[:1], SamplingParams(max_tokens=2))
    finally:
        backend.close()
    assert scores == pytest.approx(reference(rm_dir, CONVERSATIONS, RESPONSES), abs=1e-3)
