#!/bin/sh
# The cost of the SDPA options on one device, measured side by side: each
# round runs every variant once (attn run, one untimed warm-up each), rounds
# alternate, and the medians over the rounds are compared with the plain run
# of the same shape. Usage: sh tools/bench-options.sh [device] [rounds]
#   window: S=8192 H=8 D=64 causal, plain vs --window 1024,0 (4.3x less work)
#   extras: S=4096 H=8 causal, D=64 and D=128, plain vs --softcap 30,
#           --alibi (slopes 2^-1 .. 2^-8) and --sinks
# Run from the build directory (it uses ./attn). SKIP_WINDOW=1 leaves out the
# S=8192 window set.
set -eu
dev=${1:-pocl}
rounds=${2:-5}
attn=./attn
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT

# A float32 [8] .npy of the 8 little-endian floats given as hex bytes.
npy8() {
  {
    printf '\223NUMPY\001\000\166\000'
    printf "{'descr': '<f4', 'fortran_order': False, 'shape': (8,), }"
    printf '%60s\n' ''
    printf "$2"
  } >"$1"
}
npy8 "$tmp/slopes.npy" '\0\0\0\77\0\0\200\76\0\0\0\76\0\0\200\75\0\0\0\75\0\0\200\74\0\0\0\74\0\0\200\73'
npy8 "$tmp/sinks.npy" '\0\0\0\77\0\0\0\77\0\0\0\77\0\0\0\77\0\0\0\77\0\0\0\77\0\0\0\77\0\0\0\77'

# ms of one run: attn run ARGS | "time X ms"
ms() { "$attn" run --device "$dev" --warmup 1 "$@" | sed -n 's/^time \([0-9.]*\) ms.*/\1/p'; }
median() { sort -n | awk '{v[NR]=$1} END {print (NR % 2) ? v[(NR+1)/2] : (v[NR/2]+v[NR/2+1])/2}'; }

run_set() { # name, common args, then variants separated by ';'
  name=$1 common=$2 variants=$3
  i=0
  while [ "$i" -lt "$rounds" ]; do
    n=0
    echo "$variants" | tr ';' '\n' | while IFS= read -r v; do
      # shellcheck disable=SC2086
      echo "$(ms $common $v)" >>"$tmp/$name.$n"
      n=$((n + 1))
    done
    i=$((i + 1))
  done
  base=$(median <"$tmp/$name.0")
  n=0
  echo "$variants" | tr ';' '\n' | while IFS= read -r v; do
    m=$(median <"$tmp/$name.$n")
    printf '%-28s %-26s median %9.2f ms  x%.3f of plain\n' "$name" "${v:-plain}" "$m" \
      "$(echo "$m $base" | awk '{print $1 / $2}')"
    n=$((n + 1))
  done
}

echo "device $dev, $rounds rounds; $(lscpu | sed -n 's/^Model name: *//p' | head -1)"
[ -n "${SKIP_WINDOW:-}" ] || run_set "S8192_D64_causal" "--heads 8 --seq 8192 --dim 64 --causal" \
  ";--window 1024,0"
for d in 64 128; do
  run_set "S4096_D${d}_causal" "--heads 8 --seq 4096 --dim $d --causal" \
    ";--softcap 30;--alibi $tmp/slopes.npy;--sinks $tmp/sinks.npy"
done
