#!/usr/bin/env bash
# Debian packages the tests use, installed when missing (as root, with apt-get):
#   docker-registry  a real OCI registry (CNCF distribution) for the oci:// remote tests
#   skopeo           a standard OCI tool that must read what Kiln pushes
# Elsewhere it says what is missing and returns 0: those tests then skip, saying why.
set -uo pipefail
missing=()
command -v docker-registry >/dev/null 2>&1 || command -v registry >/dev/null 2>&1 || missing+=(docker-registry)
command -v skopeo >/dev/null 2>&1 || missing+=(skopeo)
[ ${#missing[@]} -eq 0 ] && exit 0
if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
  export DEBIAN_FRONTEND=noninteractive
  apt-get install -y -qq "${missing[@]}" >/dev/null 2>&1 \
    || { apt-get update -qq >/dev/null 2>&1 && apt-get install -y -qq "${missing[@]}" >/dev/null 2>&1; } \
    || echo "setup_debian: could not install ${missing[*]} with apt-get; the OCI registry tests will skip" >&2
  # The package's own service is not wanted: tests start their registries on free loopback ports.
  if command -v service >/dev/null 2>&1; then service docker-registry stop >/dev/null 2>&1 || true; fi
else
  echo "setup_debian: missing ${missing[*]} (Debian: apt-get install ${missing[*]}); the OCI registry tests will skip" >&2
fi
exit 0
