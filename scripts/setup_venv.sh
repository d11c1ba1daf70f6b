#!/usr/bin/env bash
# Create .venv and install Kiln with its extras. torch goes in first, pinned to the CPU wheel
# this workplace serves, so that nothing later pulls a multi-GB CUDA build.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv
fi
export PIP_DISABLE_PIP_VERSION_CHECK=1
.venv/bin/python -m pip install -q --upgrade pip
.venv/bin/python -m pip install -q "torch==${KILN_TORCH_VERSION:-2.13.0}"
.venv/bin/python -m pip install -q -e ".[torch,dev,s3,ray,signing]"
.venv/bin/python -c "import kiln, torch, transformers; print(f'kiln {kiln.__version__}, torch {torch.__version__}, transformers {transformers.__version__}')"
