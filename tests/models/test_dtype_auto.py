"""``dtype: auto``: bf16 where the CPU has fast bf16 matmuls (AMX-BF16, AVX512-BF16), else fp32,
and bf16 log-probs that stay close enough to fp32 to rank responses the same way.

The flags come from ``$CURATION_CPU_FLAGS`` here, so the tests mean the same on every machine.
The real-model test runs SmolLM2 in both dtypes on a few short responses: on a CPU without
AMX bf16 is emulated (~10x slower than fp32 here), so the texts are kept short.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from curation.models import BackendConfig, build_backend, check_backend
from curation.models.config import CPU_FLAGS_ENV, auto_dtype, cpu_flags

AVX2_EPYC = "fpu sse2 avx avx2 fma bmi2 sha_ni"  # the AMD EPYC these tests were written on
SAPPHIRE_RAPIDS = "fpu avx2 avx512f avx512_bf16 amx_bf16 amx_tile amx_int8"


@pytest.fixture
def flags(monkeypatch: pytest.MonkeyPatch) -> Iterator[object]:
    def set_flags(value: str) -> None:
        monkeypatch.setenv(CPU_FLAGS_ENV, value)

    yield set_flags


def test_auto_is_bf16_only_for_cpu_backends_on_a_cpu_with_fast_bf16(flags) -> None:  # noqa: ANN001 - fixture
    flags(SAPPHIRE_RAPIDS)
    assert "amx_bf16" in cpu_flags()
    assert BackendConfig(backend="transformers", model="smollm2").resolved_dtype() == "bfloat16"
    assert BackendConfig(backend="sentence_transformers", model="all-MiniLM-L6-v2").resolved_dtype() == "bfloat16"
    assert BackendConfig(backend="ray_data", model="smollm2", ray_data={"backend": "transformers"}).resolved_dtype() == "bfloat16"
    # vLLM: float32 whatever the CPU, resolved when the config is read (never "auto" into vllm.LLM)
    assert BackendConfig(backend="vllm", model="smollm2").dtype == "float32"
    assert BackendConfig(backend="ray_data", model="smollm2", ray_data={"backend": "vllm"}).dtype == "float32"
    assert BackendConfig(backend="openai", model="m", base_url="http://127.0.0.1:1/v1").resolved_dtype() == "float32"

    flags("fpu avx2 avx512f avx512_bf16")  # AVX512-BF16 alone (e.g. Cooper Lake, Zen 4) counts too
    assert auto_dtype("transformers") == "bfloat16"

    for without in (AVX2_EPYC, "avx512f avx512_vnni amx_int8", ""):  # no bf16 instructions: float32
        flags(without)
        assert BackendConfig(backend="transformers", model="smollm2").resolved_dtype() == "float32", without
        assert BackendConfig(backend="sentence_transformers", model="all-MiniLM-L6-v2").resolved_dtype() == "float32"
    flags("amx_bf16,amx_tile")  # commas work as separators too
    assert auto_dtype("transformers") == "bfloat16"


def test_an_explicit_dtype_overrides_auto(flags) -> None:  # noqa: ANN001 - fixture
    flags(SAPPHIRE_RAPIDS)
    assert BackendConfig(backend="transformers", model="smollm2", dtype="float32").resolved_dtype() == "float32"
    assert BackendConfig(backend="vllm", model="smollm2", dtype="bfloat16").dtype == "bfloat16"
    flags(AVX2_EPYC)
    assert BackendConfig(backend="transformers", model="smollm2", dtype="bfloat16").resolved_dtype() == "bfloat16"
    assert auto_dtype("transformers", frozenset({"amx_bf16"})) == "bfloat16"  # explicit flags win over the machine's


def test_the_machine_flags_come_from_proc_cpuinfo(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(CPU_FLAGS_ENV, raising=False)
    real = cpu_flags()
    if Path("/proc/cpuinfo").is_file():
        assert real and "fpu" in real  # every x86 CPU has it; other architectures list other flags
    assert auto_dtype("transformers") == ("bfloat16" if {"amx_bf16", "avx512_bf16"} & real else "float32")


def test_auto_and_the_cache_identity(flags, tmp_path: Path) -> None:  # noqa: ANN001 - fixture
    """The model's identity in cache keys ignores the dtype, as it did for explicit dtypes (the
    same model on vLLM, transformers or a server shares cached work); the check accepts auto."""
    flags(SAPPHIRE_RAPIDS)
    bf16 = BackendConfig(backend="transformers", model="smollm2")
    flags(AVX2_EPYC)
    fp32 = BackendConfig(backend="transformers", model="smollm2")
    assert bf16.identity() == fp32.identity() == BackendConfig(backend="transformers", model="smollm2", dtype="float32").identity()
    check_backend(BackendConfig(backend="transformers", model="smollm2", dtype="auto"), tmp_path)


# ------------------------------------------------------------------ bf16 against fp32, real model

CONVERSATIONS = [
    [{"role": "user", "content": "What is the capital of France?"}],
    [{"role": "user", "content": "What is the capital of France?"}],
    [{"role": "system", "content": "You are terse."}, {"role": "user", "content": "Name a primary colour."}],
    [{"role": "system", "content": "You are terse."}, {"role": "user", "content": "Name a primary colour."}],
]
RESPONSES = [
    "The capital of France is Paris.",
    "I like turtles and the colour green.",
    "Red.",
    "The capital of France is Paris.",
]
# Measured on these four responses (24 scored tokens), SmolLM2-135M, torch 2.13 CPU, on an AMD
# EPYC without AMX (bf16 emulated; 2026-12-08): the largest per-token difference 0.167 nats, of
# a response's mean log-prob 0.030, of its summed log-prob 0.21. On 772 tokens of 16 longer HH
# responses: per token at most 0.30 (99th percentile 0.175, mean 0.036), mean log-prob per
# response at most 0.014, summed at most 0.88 (0.5% of it), and the preferred response of all 8
# pairs unchanged. The tolerances leave about 2x margin over the figures on these texts.
TOKEN_TOL = 0.35
MEAN_TOL = 0.06
SUM_TOL = 0.5


@pytest.fixture(scope="module")
def scored(smollm2_dir: Path, models_root: Path) -> dict[str, list[list[float]]]:
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    out = {}
    try:
        for dtype in ("float32", "bfloat16"):
            backend = build_backend(BackendConfig(backend="transformers", model="smollm2", dtype=dtype, batch_size=8), models_root)
            assert backend.describe()["dtype"] == dtype
            out[dtype] = backend.score_logprobs(CONVERSATIONS, RESPONSES)
            backend.close()
    finally:
        torch.set_num_threads(before)
    return out


def test_bf16_log_probs_stay_within_the_measured_tolerance_of_fp32(scored: dict[str, list[list[float]]]) -> None:
    fp32, bf16 = scored["float32"], scored["bfloat16"]
    assert [len(r) for r in fp32] == [len(r) for r in bf16] and all(fp32)
    token_diff = max(float(np.abs(np.subtract(a, b)).max()) for a, b in zip(fp32, bf16))
    mean_diff = max(abs(float(np.mean(a)) - float(np.mean(b))) for a, b in zip(fp32, bf16))
    sum_diff = max(abs(sum(a) - sum(b)) for a, b in zip(fp32, bf16))
    assert token_diff <= TOKEN_TOL and mean_diff <= MEAN_TOL and sum_diff <= SUM_TOL, (token_diff, mean_diff, sum_diff)
    assert token_diff > 0  # really two dtypes, not the same model twice

    # The preference the log-probs express is the same: per pair, the better response first.
    for i in range(0, len(RESPONSES), 2):
        assert (np.mean(fp32[i]) > np.mean(fp32[i + 1])) == (np.mean(bf16[i]) > np.mean(bf16[i + 1]))
