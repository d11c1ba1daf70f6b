#!/usr/bin/env bash
# The torch-aoti CUDA path on a machine with an NVIDIA GPU, torch (CUDA) and transformers already
# installed, and no network: installs Kiln alone (`pip install --no-deps -e .`), builds a tiny
# engine with device=cuda, checks its greedy tokens against eager on the GPU, times decode, and
# prints one summary line (scripts/gpu_check.py). A few minutes; exit 0 pass, 1 tokens differ,
# 2 this machine cannot run it, 3 the build failed (after a crash, scripts/aoti_load_probe.py
# runs too), 4 the check failed outside the build. Extra arguments go to gpu_check.py (--json,
# --new-tokens N, --keep-logs DIR, --no-probe).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
export PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_INDEX=1  # no network: nothing may be downloaded
# --no-build-isolation: an isolated build would fetch setuptools from an index; use the installed one.
if ! "$PY" -m pip install -q --no-deps --no-build-isolation -e . ; then
  echo "gpu_check: \`pip install --no-deps -e .\` failed (is setuptools installed in $("$PY" -c 'import sys; print(sys.prefix)')?)" >&2
  exit 2
fi
exec "$PY" scripts/gpu_check.py "$@"
