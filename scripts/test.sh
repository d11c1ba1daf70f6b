#!/usr/bin/env bash
# Set up the virtual environment and run the test suite. Extra arguments go to pytest,
# e.g. `scripts/test.sh -m "not slow"` to skip the real-model (SmolLM2) tests.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup_venv.sh
scripts/setup_debian.sh  # docker-registry and skopeo, for the OCI registry tests
exec .venv/bin/python -m pytest "$@"
