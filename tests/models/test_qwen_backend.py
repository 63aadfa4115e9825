"""The optional qwen2.5-coder-0.5b through the transformers backend, with the real weights.

Runs only where the ``qwen`` extra is installed (``bash install.sh --with-qwen``); elsewhere the
module is skipped with the reason below. That skip is not silent in CI: tests/conftest.py fails
a CI run on any skip whose reason it does not list, so CI must either install the extra or list
``QWEN_SKIP`` there. The first run converts the GGUF (~2-3 min on two cores, ~2 GB in the models
root; ``CURATION_TEST_MODELS`` keeps it between sessions), then the model loads in seconds.
"""

from __future__ import annotations

import importlib.util
import math
from collections.abc import Iterator
from pathlib import Path

import pytest

from curation.models import BackendConfig, build_backend
from curation.models.local_models import QWEN_05B_GGUF, QWEN_INSTALL_HINT, resolve_model_dir
from curation.models.transformers_backend import TransformersBackend

QWEN_SKIP = "qwen extra not installed"
INSTALLED = all(importlib.util.find_spec(part.module) is not None for part in QWEN_05B_GGUF.parts)
QUESTION = [{"role": "user", "content": "Write a Python function that returns the square of x."}]
GOOD = "def square(x):\n    return x * x"
BAD = "The capital of France is Paris, and bananas are yellow."

pytestmark = [
    pytest.mark.skipif(not INSTALLED, reason=f"{QWEN_SKIP} ({QWEN_INSTALL_HINT})"),
    pytest.mark.slow,
    pytest.mark.usefixtures("torch_threads"),  # tests/model_fixtures.py
]


@pytest.fixture(scope="module")
def qwen(models_root: Path) -> Iterator[TransformersBackend]:
    folder = resolve_model_dir("qwen2.5-coder-0.5b", models_root)  # a failing conversion fails, never skips
    assert (folder / "model.safetensors").is_file() and not list(folder.glob("*.gguf"))
    backend = build_backend(BackendConfig(backend="transformers", model="qwen2.5-coder-0.5b", batch_size=2), models_root)
    assert isinstance(backend, TransformersBackend) and backend.model_dir == folder
    yield backend
    backend.close()


def test_qwen_scores_a_short_text(qwen: TransformersBackend) -> None:
    good, bad = qwen.score_logprobs([QUESTION, QUESTION], [GOOD, BAD])
    assert len(good) == len(qwen.tokenizer(GOOD, add_special_tokens=False).input_ids)
    assert all(math.isfinite(v) and v <= 0 for v in good + bad)
    assert sum(good) / len(good) > sum(bad) / len(bad) + 1  # the code answer is far likelier per token
    assert qwen.lm.config.get_text_config().vocab_size == 151_936
    im_end = qwen.tokenizer.convert_tokens_to_ids("<|im_end|>")
    assert im_end in qwen.eos_ids  # the chat turn's end stops generation
