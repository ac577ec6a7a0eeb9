#!/bin/sh
# make check: the clblast backend's fused kernel (kernels/gpu_flash.cl, the
# path it takes on GPUs) through the SDPA suites on the CPU devices POCL
# gives, since no test machine has a GPU. The kernel's work-group shape is
# a GPU's (256 work-items, barriers, local memory), slow on a CPU but run
# there all the same:
#   1. the default tiles, with ATTN_CLBLAST_SDPA=fused (the CPU default is
#      the GEMM path, which the plain suites keep covering);
#   2. every problem without weights split over key chunks
#      (ATTN_CLBLAST_FLASH_SPLIT=3, split-key decoding's path);
#   3. other tiles: 64 work-items, 16-key tiles and head-dim chunks of 16, so
#      that D = 80 takes 5 chunks and the micro-tiles another shape.
# Run from the build directory (automake runs tests there).
set -u
fail=0
run() { # label, then env assignments and the suite
  label=$1
  shift
  echo "== clblast fused: $label: $*"
  if ! env ATTN_TEST_DEVICES=clblast ATTN_CLBLAST_SDPA=fused "$@"; then
    echo "== FAILED: $label: $*"
    fail=1
  fi
}
# ATTN_FUSED_QUICK=1 (tests/ci-hardening.sh's sanitizer run, where every
# pass costs several times more): the default tiles through test_sdpa and
# test_clblast_dtype only, which reach all of flash.c.
if [ -n "${ATTN_FUSED_QUICK:-}" ]; then
  run "default tiles" ./tests/test_sdpa
  run "default tiles" ./tests/test_clblast_dtype
  exit $fail
fi
for t in test_sdpa test_clblast test_clblast_dtype test_dtype; do
  run "default tiles" "./tests/$t"
done
run "split keys" ATTN_CLBLAST_FLASH_SPLIT=3 ./tests/test_sdpa
run "small tiles" ATTN_CLBLAST_FLASH=64,32,16,16 ./tests/test_sdpa
exit $fail
