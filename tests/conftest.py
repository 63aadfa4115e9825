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
# dtype "auto" would pick bf16 on a CPU with AMX / AVX512-BF16: the tests' fp32 tolerances hold
# on every machine with the flags pinned empty; tests/models/test_dtype_auto.py sets its own and
# compares real bf16 log-probs against fp32.
os.environ.setdefault("CURATION_CPU_FLAGS", "")

# Session fixtures for the converted SmolLM2 folder (one conversion per test session).
pytest_plugins = ["tests.model_fixtures"]

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"
SAMPLE_DATA = REPO / "data" / "samples"


IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")
EXPECTED_SKIPS = (
    "vLLM is not installed in this venv",  # these run in .venv-vllm through tests/models/test_vllm_env.py
    "root can read any file",  # a permission check that cannot fail as root
    "qwen extra not installed",  # optional models (install.sh --with-qwen): a 1.6 GB download CI does not make
)
"""Skips that CI accepts; any other skip fails a CI run (``pytest_sessionfinish``)."""


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """The real human-labelled sets; tests that need them say so when they are absent, and
    fail in CI, where the folder must be there."""
    if not SHARED_DATA.is_dir():
        message = f"real data not found at {SHARED_DATA} (it sits beside the repo in CI)"
        if IN_CI:
            pytest.fail(message)
        pytest.skip(message)
    return SHARED_DATA


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    """In CI (``CI=true``), a skip not in ``EXPECTED_SKIPS`` fails the run: a missing tool or
    data folder must not turn tests into silent passes."""
    if not IN_CI:
        return
    reporter = session.config.pluginmanager.get_plugin("terminalreporter")
    skipped = reporter.stats.get("skipped", []) if reporter else []
    unexpected = []
    for report in skipped:
        reason = str(report.longrepr[2] if isinstance(report.longrepr, tuple) else report.longrepr)
        if not any(ok in reason for ok in EXPECTED_SKIPS):
            unexpected.append(f"{report.nodeid}: {reason}")
    if unexpected:
        reporter.write_line(f"CI: {len(unexpected)} unexpected skip(s), failing the run:", red=True)
        for line in unexpected:
            reporter.write_line(f"  {line}", red=True)
        session.exitstatus = pytest.ExitCode.TESTS_FAILED


@pytest.fixture(scope="session")
def hh_path(shared_data: Path) -> Path:
    return shared_data / "hh-rlhf-harmless-base" / "test-dev-1200.jsonl"


@pytest.fixture(scope="session")
def pg_server():
    """One real PostgreSQL server for the session (tests/support/postgres_server.py); each test
    keeps its catalogs apart in its own data root (its own schema namespace). Cannot start:
    skipped here with the reason, a failure in CI (the skip is not an expected one)."""
    from tests.support.postgres_server import PostgresUnavailable, start_postgres

    try:
        server = start_postgres()
    except PostgresUnavailable as err:
        pytest.skip(f"PostgreSQL server cannot start: {err}")
    yield server
    server.close()


@pytest.fixture
def pg_env(pg_server, monkeypatch: pytest.MonkeyPatch):
    """This process talks to the session's server: ``CURATE_PG_DSN`` set, ``PG*`` cleared."""
    for name in [k for k in os.environ if k.startswith("PG")]:
        monkeypatch.delenv(name)
    monkeypatch.setenv("CURATE_PG_DSN", pg_server.dsn)
    return pg_server
