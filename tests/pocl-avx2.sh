#!/bin/sh
# make check: the pocl backend's AVX2 kernels (vector width 8: float8 rows in
# kernels/sdpa.cl, float8 along k in kernels/linear.cl) on any x86 machine.
# POCL is made to compile for an AVX2-only CPU (POCL_KERNELLIB_NAME=avx2:
# haswell code, and a device named "pthread-haswell-..."), from which the
# backend reads width 8 as it would on a Zen 3 or a Haswell; the pocl suites
# then run again. On an AVX2-only machine this is its own native setting.
# Run from the build directory (automake runs tests there). Skipped (77)
# without a pocl device.
set -u
export POCL_KERNELLIB_NAME=avx2
show=$(ATTN_CACHE=0 ./attn tune --device pocl --show 2>&1) || {
  echo "$show"
  echo "pocl-avx2: no pocl device: skipped"
  exit 77
}
echo "$show"
# A POCL built without Debian's per-CPU kernel libraries ignores
# POCL_KERNELLIB_NAME: nothing here can then make it compile AVX2 code.
case $show in
*pthread-haswell-* | *cpu-haswell-*) ;;
*)
  echo "pocl-avx2: POCL did not take POCL_KERNELLIB_NAME=avx2 (no haswell device): skipped"
  exit 77
  ;;
esac
fail=0
# The width must be read off the device, not forced; and POCL's AVX-512
# variant (skylake-avx512, whose name starts with the AVX2-only "skylake")
# must keep 16. --show opens a context and compiles nothing, so this runs on
# any CPU.
if ! echo "$show" | grep -q 'vector_width *8 *device'; then
  echo "== FAILED: POCL for haswell did not give vector width 8 from the device"
  fail=1
fi
show512=$(POCL_KERNELLIB_NAME=avx512 ATTN_CACHE=0 ./attn tune --device pocl --show 2>&1)
echo "$show512"
if echo "$show512" | grep -q 'skylake-avx512' &&
  ! echo "$show512" | grep -q 'vector_width *16 *device'; then
  echo "== FAILED: POCL for skylake-avx512 did not give vector width 16 from the device"
  fail=1
fi
run() {
  echo "== pocl avx2: $*"
  if ! env ATTN_TEST_DEVICES=pocl "$@"; then
    echo "== FAILED: $*"
    fail=1
  fi
}
# ATTN_AVX2_QUICK=1 (tests/ci-hardening.sh's sanitizer run): test_sdpa and
# test_tune, which reach every host path of the width; the others add only
# kernel variants, which the sanitizers do not see.
if [ -n "${ATTN_AVX2_QUICK:-}" ]; then
  run ./tests/test_sdpa
  run ./tests/test_tune
  exit $fail
fi
for t in test_sdpa test_dtype test_pocl_dtype test_pocl_decode test_mha test_tune test_layers; do
  run "./tests/$t"
done
exit $fail
