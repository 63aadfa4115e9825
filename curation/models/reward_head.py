"""Is a local model folder a reward model? Answered from config.json alone, before any weights load.

A Hugging Face reward model is a ``*ForSequenceClassification`` model with one label: its single
logit at the end of the rendered conversation is the reward. Backends load such a folder with
its classification head instead of a causal LM, and the reward labeler's recipe check rejects any
other folder up front.
"""

from __future__ import annotations

import json
from pathlib import Path

from curation.errors import ConfigError


def classifier_head(folder: str | Path) -> tuple[str, int] | None:
    """(architecture, num_labels) when ``folder`` holds a ``*ForSequenceClassification`` model,
    else None (a causal LM, a model alias, or no folder). ``num_labels`` follows transformers:
    the size of ``id2label`` when saved, else 2."""
    path = Path(folder).expanduser() / "config.json"
    if not path.is_file():
        return None
    try:
        config = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as err:
        raise ConfigError(f"cannot read {path}: {err}") from None
    arch = next((str(a) for a in config.get("architectures") or [] if str(a).endswith("ForSequenceClassification")), None)
    if arch is None:
        return None
    labels = config.get("id2label")
    return arch, len(labels) if isinstance(labels, dict) else int(config.get("num_labels", 2))


def reward_head_problem(folder: str | Path) -> str | None:
    """Why ``folder`` cannot serve as a reward model, or None when it can."""
    head = classifier_head(folder)
    if head is None:
        return (
            f"model {str(folder)!r} is not a *ForSequenceClassification model (architectures in its config.json), "
            "so it has no reward head; a reward model is a local Hugging Face sequence-classification folder with num_labels 1"
        )
    arch, labels = head
    if labels != 1:
        return f"model {str(folder)!r} is a {arch} with {labels} labels; a reward model has exactly one output (num_labels 1)"
    return None
