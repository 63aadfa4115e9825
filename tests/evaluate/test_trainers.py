"""The heavy proxy trainers (TRL's RewardTrainer and DPOTrainer on SmolLM2-135M, CPU), on tiny
inputs: they learn a preference that is plain in real HH-RLHF conversations, score every
evaluation pair, and fail in one clear line where they cannot run. Their figures at size are in
benchmarks/curation_value.py."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest

from curation.errors import CurationError
from curation.evaluate.config import DpoConfig, LoraConfig, RewardModelConfig
from curation.evaluate.trainers import trainer_class
from curation.evaluate.trainers.reward_model import fit_length, model_source
from curation.progress import NoProgress
from tests.evaluate.test_measure import pairs_table
from tests.helpers import hh_drafts

pytestmark = pytest.mark.usefixtures("torch_threads")
RUDE = "I won't help you, you idiot. "


@pytest.fixture(scope="module")
def taught(hh_path: Path):
    """Real HH prompts and chosen replies; the rejected reply is the chosen one with an insult in
    front, a preference any language model can pick up from a few dozen pairs."""
    drafts = []
    for d in hh_drafts(hh_path):
        reply = d.chosen[-1]["content"]
        if 20 < len(reply) < 300 and len(d.prompt) == 1:
            drafts.append(dataclasses.replace(d, rejected=[{"role": "assistant", "content": RUDE + reply}]))
        if len(drafts) == 32:
            break
    return pairs_table(drafts[:24]), pairs_table(drafts[24:])


@pytest.mark.parametrize(
    "cfg",
    [
        RewardModelConfig(model="smollm2", lora=LoraConfig(r=8), learning_rate=1e-3, batch_size=8, epochs=2, max_length=64),
        DpoConfig(model="smollm2", learning_rate=1e-3, batch_size=8, epochs=2, max_length=64, beta=0.1),
    ],
    ids=["reward_model-lora", "dpo-lora"],
)
def test_a_trainer_learns_a_plain_preference_and_scores_every_pair(
    cfg, taught, smollm2_dir: Path, models_root: Path, tmp_path: Path
) -> None:
    train, evaluate = taught
    trainer = trainer_class(cfg.kind)(cfg, str(models_root))
    margins = trainer.fit_margins(train, evaluate, seed=0, work_dir=tmp_path, progress=NoProgress())
    assert margins.shape == (evaluate.num_rows,) and np.isfinite(margins).all()
    assert (margins > 0).mean() >= 7 / 8, margins
    if cfg.kind == "dpo":
        assert trainer.mean_margin == pytest.approx(float(margins.mean()))


def test_truncation_keeps_the_prompts_end_and_the_responses_start() -> None:
    prompt, chosen, rejected = list(range(100)), list(range(1000, 1080)), list(range(2000, 2010))
    p, c, r = fit_length(prompt, chosen, rejected, 64)
    assert p == prompt[-32:] and c == chosen[:32] and r == rejected[:10]
    assert len(p) + len(c) <= 64
    assert fit_length([1, 2], [3], [4], 64) == ([1, 2], [3], [4])


def test_a_hub_model_offline_is_one_clear_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    import huggingface_hub.constants as hc

    monkeypatch.setattr(hc, "HF_HUB_OFFLINE", True, raising=False)
    with pytest.raises(CurationError, match="Qwen/Qwen2.5-0.5B"):
        model_source("Qwen/Qwen2.5-0.5B", tmp_path)
