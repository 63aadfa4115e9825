"""Shared fixtures. Real data lives in ../shared/data (see its README)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
# The ephemeral server logs "Stopping temporary server" at exit, after pytest closed stdout.
os.environ.setdefault("PREFECT_LOGGING_LEVEL", "WARNING")
# Prefect's 20 s default for starting the ephemeral server ran out once on the loaded 2-core VM.
os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "120")

# Session fixtures for the converted SmolLM2 folder (one conversion per test session).
pytest_plugins = ["tests.model_fixtures"]

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"
SAMPLE_DATA = REPO / "data" / "samples"


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """The real human-labelled sets; tests that need them say so when they are absent."""
    if not SHARED_DATA.is_dir():
        pytest.skip(f"real data not found at {SHARED_DATA} (it sits beside the repo in CI)")
    return SHARED_DATA


@pytest.fixture(scope="session")
def hh_path(shared_data: Path) -> Path:
    return shared_data / "hh-rlhf-harmless-base" / "test-dev-1200.jsonl"
