#!/usr/bin/env bash
# Test Kiln's light core as a serving container installs it: `pip install kiln-engines[s3,signing]` and no
# torch, transformers, safetensors or numpy. Creates .venv-light (core + what the tests need)
# and runs the lookup / fetch / ensure / push / pull tests there, against a local store, a
# filesystem remote and an S3-protocol server (moto) on loopback.
# Extra arguments go to pytest (e.g. -q, -x). Exits with pytest's status.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
VENV=.venv-light
export PIP_DISABLE_PIP_VERSION_CHECK=1

if [ ! -x "$VENV/bin/python" ]; then
  "$PY" -m venv "$VENV"
fi
"$VENV/bin/python" -m pip install -q --upgrade pip
scripts/setup_debian.sh  # docker-registry and skopeo, for the OCI registry tests
# The core and the S3 remote, plus the test tools (as in the dev extra); nothing heavy.
"$VENV/bin/python" -m pip install -q -e ".[s3,signing]" "pytest>=8" "pytest-timeout>=2.3" "pytest-xdist>=3.5" "jsonschema>=4.20" "moto[server]>=5"

# The point of this run: none of these may be importable (something pulled one in otherwise).
for mod in torch transformers safetensors numpy; do
  if "$VENV/bin/python" -c "import $mod" 2>/dev/null; then
    echo "test_light: '$mod' is importable in $VENV, which must hold only Kiln's light core" \
         "(remove $VENV and find what pulled it in: $VENV/bin/pip show -f $mod)" >&2
    exit 1
  fi
done

# tests/cli: the tests marked `light`. tests/remote and tests/cache have no marker; these are
# their lookup / fetch / ensure / push / pull tests (gc and publish-side tests stay out). A
# node id that no longer exists is an error, so a rename cannot silently drop coverage.
SELECTED=(
  tests/remote/test_roundtrip.py
  tests/remote/test_oci.py
  tests/remote/test_concurrency.py
  tests/remote/test_faults.py
  tests/remote/test_push_crash.py
  tests/remote/test_credentials.py::test_credentials_never_appear_in_output_files_or_bucket
  tests/remote/test_bounded_transfers.py
  tests/cli/test_fetch_by_key.py
  tests/trust/test_signed_deploy.py
  tests/cache/test_materialize.py
  tests/cache/test_store_corruption.py::test_damaged_blob_is_a_loud_miss
  tests/cache/test_store_corruption.py::test_corrupt_manifest_blob_is_a_loud_miss
  tests/cache/test_store_corruption.py::test_tamper_that_restores_mtime_is_still_detected
  tests/cache/test_store_corruption.py::test_corruption_after_fetch_does_not_reach_the_next_fetch
)
collected=$("$VENV/bin/python" -m pytest --collect-only -q -p no:cacheprovider -m light tests/cli)
mapfile -t CLI_LIGHT < <(printf '%s\n' "$collected" | grep '::')
if [ "${#CLI_LIGHT[@]}" -eq 0 ]; then
  echo "test_light: no test in tests/cli is marked light" >&2
  exit 1
fi

echo "test_light: $VENV ($("$VENV/bin/python" -c 'import kiln, sys; print(f"kiln {kiln.__version__}, Python {sys.version.split()[0]}")'), no torch)"
set +e
"$VENV/bin/python" -m pytest "${CLI_LIGHT[@]}" "${SELECTED[@]}" "$@"
rc=$?
set -e
echo "test_light: exit $rc after ${SECONDS}s (venv set-up included)"
exit "$rc"
