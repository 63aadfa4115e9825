"""A reward model: a sequence classifier (one output) fine-tuned with TRL's ``RewardTrainer``.

The margin of a pair is r(prompt + chosen) - r(prompt + rejected), the quantity the
Bradley-Terry loss trains. Inputs are the tokenizer's chat template over the prompt and the
response, tokenized here (not by TRL) so that training and scoring see the very same tokens,
and truncated here too: TRL's reward trainer *drops* pairs longer than ``max_length``, which on
multi-turn data would silently train on short conversations only. ``fit_length`` keeps the
prompt's end (the last user turn, what the response answers) and the responses' starts.

Also the helpers the DPO trainer shares (model resolution, chat tokens, truncation, training
arguments, progress): both train a Hugging Face model on the same pairs with TRL.

Nothing leaves the machine: models load from local folders (``smollm2`` converted once under
``DATA_ROOT/models``; a hub name only where the hub is reachable), ``report_to`` is ``none``,
TRL's usage ping is off, no checkpoint is saved; scratch output goes under ``work_dir``.
"""

from __future__ import annotations

import importlib
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np
import pyarrow as pa

from curation.errors import CurationError
from curation.evaluate.config import HfTrainerConfig, LoraConfig, RewardModelConfig
from curation.models.local_models import missing_model, resolve_model_dir, shipped_model
from curation.progress import Progress

TRAIN_EXTRA_HINT = "install the project's train extra: pip install -e '.[train]' (trl and peft, pinned)"
SCORE_BATCH_PAIRS = 8  # evaluation pairs per forward pass (2 sequences each)


# --------------------------------------------------------------------------- shared with dpo


def require(module: str, what: str) -> ModuleType:
    """Import ``module`` (trl, peft) or say which extra brings it: they are not core dependencies."""
    try:
        return importlib.import_module(module)
    except ImportError:
        raise CurationError(f"trainer {what} needs the package {module!r}; {TRAIN_EXTRA_HINT}") from None


def hub_offline() -> bool:
    from huggingface_hub import constants

    return bool(constants.is_offline_mode())


def model_source(model: str, work_root: str | Path) -> tuple[str, bool]:
    """(what ``from_pretrained`` loads, local only?): a shipped model's converted folder, a local
    folder, or a hub name where the hub is reachable; offline, a hub name is a clear error."""
    if shipped_model(model) is not None or Path(model).expanduser().is_dir():
        return str(resolve_model_dir(model, work_root)), True
    if hub_offline():
        raise missing_model(model)
    return model, False


def load_pretrained(auto_cls: Any, source: str, local_only: bool, **kwargs: Any) -> Any:
    try:
        return auto_cls.from_pretrained(source, local_files_only=local_only, **kwargs)
    except OSError as err:
        raise CurationError(f"cannot load {source!r} with {auto_cls.__name__}: {err}") from None


def load_tokenizer(source: str, local_only: bool) -> Any:
    """The model's tokenizer, with a pad token (its EOS where it has none) and a chat template."""
    from transformers import AutoTokenizer

    tokenizer = load_pretrained(AutoTokenizer, source, local_only)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    if not tokenizer.chat_template:
        raise CurationError(f"the tokenizer of {source!r} has no chat template; the proxy trainers format pairs as chat turns")
    return tokenizer


def chat_tokens(tokenizer: Any, prompt: list[dict], response: list[dict]) -> tuple[list[int], list[int]]:
    """(prompt tokens, response tokens) of the chat template over prompt + response: the prompt
    part is the template's generation prompt, the response part is what the full conversation
    adds to it (the response's text and its end-of-turn), as TRL splits them."""
    prompt = [{"role": m["role"], "content": m["content"]} for m in prompt]
    response = [{"role": m["role"], "content": m["content"]} for m in response]
    head = str(tokenizer.apply_chat_template(prompt, tokenize=False, add_generation_prompt=True))
    full = str(tokenizer.apply_chat_template(prompt + response, tokenize=False))
    if not full.startswith(head):
        raise CurationError("the chat template renders the prompt differently once a response follows; cannot split prompt and response")
    prompt_ids = tokenizer(head, add_special_tokens=False)["input_ids"]
    response_ids = tokenizer(full[len(head) :], add_special_tokens=False)["input_ids"]
    return list(prompt_ids), list(response_ids)


def fit_length(prompt: list[int], chosen: list[int], rejected: list[int], max_length: int) -> tuple[list[int], list[int], list[int]]:
    """Truncate so prompt + each response fits ``max_length`` tokens. The prompt keeps its *end*
    (the last turns), the responses their *start*; the prompt keeps at least half the budget when
    it needs it, as a response is only judged against what it answers. The same prompt tokens
    serve both responses, so the two are compared in the same context."""
    keep = min(len(prompt), max(max_length - max(len(chosen), len(rejected)), max_length // 2))
    budget = max_length - keep
    return prompt[len(prompt) - keep :], chosen[:budget], rejected[:budget]


def pair_tokens(tokenizer: Any, table: pa.Table, max_length: int) -> list[tuple[list[int], list[int], list[int]]]:
    """(prompt, chosen, rejected) token ids per pair, in order, truncated to ``max_length``."""
    out = []
    for prompt, chosen, rejected in zip(*(table.column(c).to_pylist() for c in ("prompt", "chosen", "rejected"))):
        p, c = chat_tokens(tokenizer, prompt, chosen)
        p_r, r = chat_tokens(tokenizer, prompt, rejected)
        if p_r != p:
            raise CurationError("the chat template tokenizes the same prompt differently for two responses")
        out.append(fit_length(p, c, r, max_length))
    return out


def seeded_sample(table: pa.Table, limit: int | None, seed: int) -> pa.Table:
    """At most ``limit`` pairs, a seeded sample kept in table order (the trainer shuffles)."""
    if limit is None or table.num_rows <= limit:
        return table
    rng = np.random.default_rng(seed)
    return table.take(np.sort(rng.choice(table.num_rows, size=limit, replace=False)))


def peft_lora(lora: LoraConfig | None, task_type: str, what: str) -> Any:
    """The peft LoRA config, or None; ``target_modules`` None lets peft pick the attention
    projections it knows for the architecture (q_proj and v_proj for Llama-family models)."""
    if lora is None:
        return None
    peft = require("peft", what)
    return peft.LoraConfig(
        task_type=task_type, r=lora.r, lora_alpha=lora.alpha, lora_dropout=lora.dropout, target_modules=lora.target_modules
    )


def use_bf16() -> bool:
    """bf16 mixed precision only where it is fast: a GPU that supports it, or a CPU with AMX
    (on CPUs without AMX bf16 is slower than fp32, ../shared/NOTES.md)."""
    import torch

    if torch.cuda.is_available():
        return bool(torch.cuda.is_bf16_supported())
    try:
        return "amx_bf16" in Path("/proc/cpuinfo").read_text()
    except OSError:
        return False


def training_args(cfg: HfTrainerConfig, seed: int, work_dir: Path) -> dict[str, Any]:
    """The ``TrainingArguments`` both trainers share: seeded, nothing saved, nothing reported."""
    return dict(
        output_dir=str(work_dir),
        seed=seed,
        data_seed=seed,
        num_train_epochs=cfg.epochs,
        learning_rate=cfg.learning_rate,
        per_device_train_batch_size=cfg.batch_size,
        per_device_eval_batch_size=cfg.batch_size,
        max_length=None,  # truncated by fit_length already
        bf16=use_bf16(),
        activation_checkpointing=False,  # small models: memory is not the limit, time is (TRL defaults it on)
        save_strategy="no",
        report_to="none",
        disable_tqdm=True,
        logging_strategy="steps",
        logging_steps=10,
        dataloader_num_workers=0,
        dataloader_pin_memory=False,
    )


def progress_callback(progress: Progress, what: str) -> Any:
    """A ``TrainerCallback`` that reports optimiser steps through ``progress``."""
    from transformers import TrainerCallback

    class StepProgress(TrainerCallback):
        def on_train_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
            progress.start(what, total=int(state.max_steps) or None)

        def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
            progress.advance(1)

        def on_train_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
            progress.finish()

    return StepProgress()


def quiet(trainer_cls: type) -> type:
    """``trainer_cls`` without TRL's usage ping (sent on construction unless the hub is offline)."""
    return type(trainer_cls.__name__, (trainer_cls,), {"_send_telemetry": lambda self: None})


def batches(n: int, size: int) -> list[range]:
    return [range(start, min(start + size, n)) for start in range(0, n, size)]


@dataclass
class Prepared:
    """What both TRL trainers start from: the library, the model's source, its tokenizer, the
    LoRA config (or None) and the truncated (prompt, chosen, rejected) tokens of both tables."""

    trl: ModuleType
    source: str
    local_only: bool
    tokenizer: Any
    lora: Any
    train: list[tuple[list[int], list[int], list[int]]]
    evaluate: list[tuple[list[int], list[int], list[int]]]


def prepare(cfg: HfTrainerConfig, kind: str, task_type: str, train: pa.Table, evaluate: pa.Table, seed: int, work_root: str) -> Prepared:
    """Everything before the model is loaded; clear errors (no trl, no pairs, no model) first."""
    trl = require("trl", kind)
    train = seeded_sample(train, cfg.max_train_pairs, seed)
    if train.num_rows == 0:
        raise CurationError(f"trainer {kind}: no training pairs")
    lora = peft_lora(cfg.lora, task_type, kind)
    source, local_only = model_source(cfg.model, work_root)
    tokenizer = load_tokenizer(source, local_only)
    return Prepared(
        trl,
        source,
        local_only,
        tokenizer,
        lora,
        pair_tokens(tokenizer, train, cfg.max_length),
        pair_tokens(tokenizer, evaluate, cfg.max_length),
    )


# --------------------------------------------------------------------------- the trainer


class RewardModelTrainer:
    kind = "reward_model"

    def __init__(self, cfg: RewardModelConfig, work_root: str):
        self.cfg, self.work_root = cfg, work_root

    def fit_margins(self, train: pa.Table, evaluate: pa.Table, *, seed: int, work_dir: Path, progress: Progress) -> np.ndarray:
        """Fine-tune on (a seeded sample of) ``train``, return reward(chosen) - reward(rejected)
        per ``evaluate`` pair. The seed fixes the sample, the new head's initialisation, the LoRA
        initialisation and the batch order: the same seed gives the same margins on a CPU."""
        import torch
        from datasets import Dataset
        from transformers import AutoModelForSequenceClassification, set_seed

        prep = prepare(self.cfg, self.kind, "SEQ_CLS", train, evaluate, seed, self.work_root)
        source, local_only, tokenizer = prep.source, prep.local_only, prep.tokenizer
        train_items = [{"chosen_ids": p + c, "rejected_ids": p + r} for p, c, r in prep.train]
        eval_items = [{"chosen_ids": p + c, "rejected_ids": p + r} for p, c, r in prep.evaluate]

        set_seed(seed)  # before the load: the score head is initialised randomly there
        from trl.trainer.reward_trainer import suppress_seqcls_warning

        with suppress_seqcls_warning():  # "score.weight newly initialised": expected, it is what we train
            model = load_pretrained(AutoModelForSequenceClassification, source, local_only, num_labels=1, dtype=torch.float32)
        model.config.pad_token_id = tokenizer.pad_token_id
        work_dir.mkdir(parents=True, exist_ok=True)
        args = prep.trl.RewardConfig(**training_args(self.cfg, seed, work_dir), disable_dropout=True)
        trainer = quiet(prep.trl.RewardTrainer)(
            model=model,
            args=args,
            train_dataset=Dataset.from_list(train_items),
            processing_class=tokenizer,
            peft_config=prep.lora,
            callbacks=[progress_callback(progress, f"{self.kind}: train")],
        )
        trainer.train()
        return score_rewards(trainer.model, trainer.data_collator, eval_items, progress, f"{self.kind}: score")


def score_rewards(model: Any, collate: Any, items: Sequence[dict[str, list[int]]], progress: Progress, what: str) -> np.ndarray:
    """reward(chosen) - reward(rejected) per item, batched, without gradients."""
    import torch

    model.eval()
    device = next(model.parameters()).device
    margins: list[np.ndarray] = []
    progress.start(what, total=len(items))
    try:
        with torch.no_grad():
            for batch in batches(len(items), SCORE_BATCH_PAIRS):
                inputs = collate([items[i] for i in batch])
                logits = model(input_ids=inputs["input_ids"].to(device), attention_mask=inputs["attention_mask"].to(device)).logits
                chosen, rejected = logits.squeeze(-1).float().chunk(2)
                margins.append((chosen - rejected).cpu().numpy())
                progress.advance(len(batch))
    finally:
        progress.finish()
    return np.concatenate(margins) if margins else np.zeros(0)
