"""A policy trained with TRL's ``DPOTrainer``; its implicit reward gives the margin.

DPO's reward of a response is beta * log(pi(y|x) / ref(y|x)), so the margin of a pair is
beta * ((log pi(chosen) - log ref(chosen)) - (log pi(rejected) - log ref(rejected))), the
log-probs summed over the response's tokens (its text and end-of-turn, as TRL scores them).
It is computed with TRL's own code paths (the fused LM head for the policy,
``compute_ref_log_probs`` for the reference), so it is the quantity the loss trained.

LoRA by default: with peft adapters the frozen base model, adapters switched off, *is* the
reference, so one copy of the weights serves both (``lora: null`` trains the full model
against a second, frozen copy). Pairs are tokenized and truncated here, as for the reward model
(``reward_model.pair_tokens``): TRL's own truncation keeps a sequence's start, which on long
multi-turn prompts cuts the response away and leaves nothing to train on.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa

from curation.evaluate.config import DpoConfig
from curation.evaluate.trainers.reward_model import (
    batches,
    load_pretrained,
    prepare,
    progress_callback,
    quiet,
    training_args,
)
from curation.progress import Progress

SCORE_BATCH_PAIRS = 4  # evaluation pairs per forward pass (2 sequences each, policy and reference)


def implicit_margins(policy: tuple[Any, Any], reference: tuple[Any, Any], beta: float) -> np.ndarray:
    """beta * ((pi(c) - ref(c)) - (pi(r) - ref(r))) from summed log-probs (chosen, rejected)."""
    (pi_c, pi_r), (ref_c, ref_r) = policy, reference
    return (beta * ((pi_c - ref_c) - (pi_r - ref_r))).float().cpu().numpy()


class DpoTrainer:
    """After ``fit_margins``, ``mean_margin`` holds the mean implicit margin over the evaluation
    pairs (TRL's ``rewards/margins`` on them): how far the policy moved, in the loss's own units,
    which accuracy alone does not show."""

    kind = "dpo"

    def __init__(self, cfg: DpoConfig, work_root: str):
        self.cfg, self.work_root = cfg, work_root
        self.mean_margin: float | None = None

    def fit_margins(self, train: pa.Table, evaluate: pa.Table, *, seed: int, work_dir: Path, progress: Progress) -> np.ndarray:
        """Train the policy on (a seeded sample of) ``train``, return the implicit margin per
        ``evaluate`` pair. The seed fixes the sample, the LoRA initialisation and the batch
        order: the same seed gives the same margins on a CPU."""
        import torch
        from datasets import Dataset
        from transformers import AutoModelForCausalLM, set_seed

        prep = prepare(self.cfg, self.kind, "CAUSAL_LM", train, evaluate, seed, self.work_root)
        trl, source, local_only, tokenizer, lora = prep.trl, prep.source, prep.local_only, prep.tokenizer, prep.lora
        train_items, eval_items = items(prep.train), items(prep.evaluate)

        set_seed(seed)
        model = load_pretrained(AutoModelForCausalLM, source, local_only, dtype=torch.float32)
        ref_model = None if lora is not None else load_pretrained(AutoModelForCausalLM, source, local_only, dtype=torch.float32)
        work_dir.mkdir(parents=True, exist_ok=True)
        args = trl.DPOConfig(**training_args(self.cfg, seed, work_dir), beta=self.cfg.beta, disable_dropout=True)
        trainer = pretokenized(quiet(trl.DPOTrainer))(
            model=model,
            ref_model=ref_model,
            args=args,
            train_dataset=Dataset.from_list(train_items),
            processing_class=tokenizer,
            peft_config=lora,
            callbacks=[progress_callback(progress, f"{self.kind}: train")],
        )
        trainer.train()
        margins = score_margins(trainer, eval_items, self.cfg.beta, progress, f"{self.kind}: score")
        self.mean_margin = float(margins.mean()) if margins.size else None
        return margins


def items(tokens: Sequence[tuple[list[int], list[int], list[int]]]) -> list[dict[str, list[int]]]:
    return [{"prompt_ids": p, "chosen_ids": c, "rejected_ids": r} for p, c, r in tokens]


def pretokenized(trainer_cls: type) -> type:
    """``trainer_cls`` taking datasets already tokenized (``prompt_ids``, ``chosen_ids``,
    ``rejected_ids``) as they are: TRL 1.16's DPO trainer always re-tokenizes from text, with
    its own truncation. Overrides TRL's ``_prepare_dataset`` (trl is pinned; a tested seam)."""
    return type(trainer_cls.__name__, (trainer_cls,), {"_prepare_dataset": lambda self, dataset, *args, **kwargs: dataset})


def score_margins(trainer: Any, items: Sequence[dict[str, list[int]]], beta: float, progress: Progress, what: str) -> np.ndarray:
    """The implicit margin of every item, batched, without gradients."""
    import torch

    model = trainer.model
    model.eval()
    device = trainer.accelerator.device
    margins: list[np.ndarray] = []
    progress.start(what, total=len(items))
    try:
        with torch.no_grad():
            for batch in batches(len(items), SCORE_BATCH_PAIRS):
                inputs = {k: v.to(device) for k, v in trainer.data_collator([items[i] for i in batch]).items()}
                margins.append(implicit_margins(policy_log_probs(model, inputs), trainer.compute_ref_log_probs(model, inputs), beta))
                progress.advance(len(batch))
    finally:
        progress.finish()
    return np.concatenate(margins) if margins else np.zeros(0)


def policy_log_probs(model: Any, inputs: dict[str, Any]) -> tuple[Any, Any]:
    """Summed log-probs of the completion tokens under the policy, (chosen, rejected), as TRL's
    loss computes them (the fused LM head returns 0 where the label is masked)."""
    labels = inputs["input_ids"].masked_fill(inputs["completion_mask"] == 0, -100)
    out = model(input_ids=inputs["input_ids"], attention_mask=inputs["attention_mask"], labels=labels, use_cache=False, fused_lm_head=True)
    logps = out.log_probs[:, -(inputs["completion_mask"].size(1) - 1) :].sum(dim=1)
    return logps.chunk(2, dim=0)
