#!/bin/sh
# Install the Debian 12 packages libattn builds and tests with (clang and its
# runtime only for the fuzzers of tests/ci-hardening.sh; clang-15, llvm-15
# and libclc-15 for the GPU code-generator check, tests/gpu-codegen.sh), only those
# that are missing (so it is quick and offline-safe when all are there).
# Run as root. Used by the README's two commands and by .ci/run.
set -eu
pkgs="build-essential autoconf automake libtool pkg-config libcmocka-dev libcjson-dev
      ocl-icd-opencl-dev opencl-headers pocl-opencl-icd libclblast-dev clinfo
      clang libclang-rt-14-dev clang-15 llvm-15 libclc-15"
missing=""
for p in $pkgs; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "ok installed" || missing="$missing $p"
done
if [ -z "$missing" ]; then
  echo "install-deps: all packages present"
  exit 0
fi
if [ "$(id -u)" != 0 ]; then
  echo "install-deps: missing packages:$missing (run as root, or install them yourself)" >&2
  exit 1
fi
echo "install-deps: installing:$missing"
export DEBIAN_FRONTEND=noninteractive
apt-get update -q
# shellcheck disable=SC2086
apt-get install -y -q --no-install-recommends $missing
