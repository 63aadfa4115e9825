"""The offline vLLM backend's tests, run in vLLM's own venv from the pipeline's test suite.

vLLM's CPU build cannot share an environment with Prefect, so ``bash install.sh --with-vllm``
(the README's test command) puts it in ``.venv-vllm``. This test converts SmolLM2 here (that
venv lacks what the GGUF conversion needs), then runs every test marked ``vllm`` there on the
same models root and requires them all to pass: none may skip.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
VLLM_PYTHON = REPO / ".venv-vllm" / "bin" / "python"
VLLM_TESTS = ["tests/models/test_vllm_backend.py", "tests/stages/label/test_reward_model.py"]


@pytest.mark.slow
@pytest.mark.skipif(not VLLM_PYTHON.exists(), reason=f"no vLLM venv at {VLLM_PYTHON}: install it with `bash install.sh --with-vllm`")
def test_vllm_backend_tests_pass_in_their_venv(smollm2_dir: Path, models_root: Path) -> None:
    env = {**os.environ, "CURATION_TEST_MODELS": str(models_root), "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    cmd = [str(VLLM_PYTHON), "-m", "pytest", "-q", "-p", "no:cacheprovider", "-m", "vllm", "-rs", *VLLM_TESTS]
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=1200)
    out = proc.stdout + proc.stderr
    sys.stdout.write(out[-3000:])  # shown with -s, and kept in the report on failure
    summary = out.strip().splitlines()[-1] if out.strip() else ""
    passed = int(m.group(1)) if (m := re.search(r"(\d+) passed", summary)) else 0
    assert proc.returncode == 0, f"vLLM tests failed in {VLLM_PYTHON}:\n{out[-4000:]}"
    assert "skipped" not in summary, f"vLLM tests skipped in their own venv: {summary}"
    assert passed >= 7, summary
