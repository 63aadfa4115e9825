"""Exported pairs go through TRL 1.16's own DPO data preparation and a short DPO run.

``DPOTrainer.__init__`` prepares the data (``_prepare_dataset``: ``is_conversational``,
then for strings an EOS is appended, then ``tokenize_fn`` gives ``prompt_ids`` /
``chosen_ids`` / ``rejected_ids``) and ``DataCollatorForPreference`` batches them. We use
a tiny, randomly initialised Llama with the real SmolLM2 tokenizer: nothing is downloaded.
"""

from __future__ import annotations

import copy
import math
from pathlib import Path

import pyarrow as pa
import pytest

from curation.export.trl import export_trl
from tests.export.test_trl import hh_pairs_table

N_ROWS = 40


@pytest.fixture(scope="module")
def tokenizer():
    from curation.models.tokenizers import smollm2_tokenizer

    return smollm2_tokenizer()


@pytest.fixture(scope="module")
def hh_small(hh_path: Path) -> pa.Table:
    return hh_pairs_table(hh_path).slice(0, N_ROWS)


def _tiny_model(vocab_size: int):
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=vocab_size,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=4,
        max_position_embeddings=2048,
    )
    return LlamaForCausalLM(config)


def _trainer(dataset, tokenizer, out: Path, **config):
    from trl import DPOConfig, DPOTrainer

    args = DPOConfig(
        output_dir=str(out),
        use_cpu=True,
        bf16=False,
        report_to="none",
        save_strategy="no",
        gradient_checkpointing=False,
        disable_tqdm=True,
        seed=0,
        **config,
    )
    model = _tiny_model(len(tokenizer))
    # TRL would reload the reference from the model's hub id; a random model has none, so pass a copy.
    ref_model = copy.deepcopy(model)
    return DPOTrainer(model=model, ref_model=ref_model, args=args, train_dataset=dataset, processing_class=tokenizer)


@pytest.mark.slow
@pytest.mark.parametrize("style", ["conversational", "standard"])
def test_trl_prepares_exported_pairs(style: str, hh_small: pa.Table, tokenizer, tmp_path: Path) -> None:
    from datasets import load_from_disk

    export_trl(hh_small, tmp_path / "export", style=style, chat_template_tokenizer=tokenizer, test_size=0.2)
    train = load_from_disk(str(tmp_path / "export" / "hf"))["train"]
    trainer = _trainer(train, tokenizer, tmp_path / "dpo", max_length=None)
    prepared = trainer.train_dataset
    assert prepared.num_rows == train.num_rows  # nothing dropped
    assert {"prompt_ids", "chosen_ids", "rejected_ids", "pair_id"} <= set(prepared.column_names)

    source = {r["pair_id"]: r for r in hh_small.to_pylist()}
    exported_rows = {r["pair_id"]: r for r in train}
    clean_prompt = 0
    for row in prepared:
        assert row["prompt_ids"] and row["chosen_ids"] and row["rejected_ids"]
        assert max(row["prompt_ids"] + row["chosen_ids"]) < len(tokenizer)
        src = source[row["pair_id"]]
        decode = tokenizer.decode
        if style == "conversational":
            want_prompt = tokenizer.apply_chat_template(src["prompt"], tokenize=False, add_generation_prompt=True)
            want_chosen = tokenizer.apply_chat_template(src["prompt"] + src["chosen"], tokenize=False)
            want_rejected = tokenizer.apply_chat_template(src["prompt"] + src["rejected"], tokenize=False)
        else:
            # TRL appends the EOS token to string completions that do not end with it; ChatML completions end
            # "<|im_end|>\n", so they get a second "<|im_end|>" (TRL's behaviour for any standard ChatML data).
            exported = exported_rows[row["pair_id"]]
            assert row["chosen"] == exported["chosen"] + tokenizer.eos_token
            assert row["chosen"].endswith("<|im_end|>\n<|im_end|>")
            want_prompt = exported["prompt"]
            want_chosen = exported["prompt"] + exported["chosen"] + tokenizer.eos_token
            want_rejected = exported["prompt"] + exported["rejected"] + tokenizer.eos_token
        assert decode(row["prompt_ids"] + row["chosen_ids"]) == want_chosen
        assert decode(row["prompt_ids"] + row["rejected_ids"]) == want_rejected
        assert src["chosen"][0]["content"] in decode(row["chosen_ids"])
        clean_prompt += decode(row["prompt_ids"]) == want_prompt
    assert clean_prompt >= 0.9 * prepared.num_rows  # the prompt/completion boundary is a token boundary

    # The collator gets whole rows (extra columns such as pair_id included) and ignores what it does not need.
    batch = trainer.data_collator([prepared[0], prepared[1]])
    assert batch["input_ids"].shape[0] == 4 and batch["completion_mask"].sum() > 0


@pytest.mark.slow
def test_short_dpo_run_on_export(hh_small: pa.Table, tokenizer, tmp_path: Path) -> None:
    from datasets import load_from_disk

    export_trl(hh_small, tmp_path / "export", test_size=0.2, keep_columns=("pair_id", "source_row"))
    ds = load_from_disk(str(tmp_path / "export" / "hf"))
    trainer = _trainer(
        ds["train"],
        tokenizer,
        tmp_path / "dpo",
        max_steps=2,
        per_device_train_batch_size=1,
        logging_steps=1,
        learning_rate=1e-3,
        max_length=256,  # the 49k-word LM head dominates the CPU time
    )
    result = trainer.train()
    assert trainer.state.global_step == 2
    assert math.isfinite(result.training_loss)
    losses = [h["loss"] for h in trainer.state.log_history if "loss" in h]
    assert len(losses) == 2 and all(math.isfinite(x) for x in losses)
