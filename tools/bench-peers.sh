#!/bin/sh
# libattn against PyTorch's CPU SDPA at issue 12's shapes, side by side:
# every round runs each shape once on each side (libattn's `attn run`, then
# PyTorch's F.scaled_dot_product_attention in one Python process per shape),
# each process timing the median of 5 calls after 2 warm-up calls; rounds
# alternate, and the medians and spreads of those over the rounds are printed
# with their ratio. fp32, B=1, H=8, 2 threads on both sides; GFLOP/s counts
# 4*B*H*Sq*Skv*D, halved when causal (as attn run and attn bench do).
#
#   sh tools/bench-peers.sh [device] [rounds]      (from the build directory)
#
# PyTorch is for benchmarking only (no test needs it): it is installed with
# pip into a virtual environment, $VENV (default ./.venv-peers), unless that
# already has it (the CPU wheel from download.pytorch.org, else PyPI's).
# KV=bf16 also stores libattn's K/V and PyTorch's q/k/v as bf16.
#
# ISA=avx2 runs both sides with AVX2 code on an AVX-512 machine: POCL
# compiles for haswell (POCL_KERNELLIB_NAME=avx2, so libattn picks its
# float8 kernels as on an AVX2-only CPU), PyTorch's kernels and MKL's GEMMs
# take their AVX2 paths (ATEN_CPU_CAPABILITY=avx2, MKL_ENABLE_INSTRUCTIONS=AVX2).
# The instruction set is then AVX2's, the core still this one.
set -eu
dev=${1:-pocl}
rounds=${2:-5}
venv=${VENV:-./.venv-peers}
kv=${KV:-f32}
isa=${ISA:-native}
attn=./attn
if ! "$venv/bin/python" -c 'import torch' 2>/dev/null; then
  python3 -m venv "$venv"
  "$venv/bin/pip" install -q --index-url https://download.pytorch.org/whl/cpu torch numpy ||
    "$venv/bin/pip" install -q torch numpy
fi
case $isa in
native) ;;
avx2)
  export POCL_KERNELLIB_NAME=avx2 ATEN_CPU_CAPABILITY=avx2 MKL_ENABLE_INSTRUCTIONS=AVX2
  ;;
*)
  echo "bench-peers.sh: ISA=$isa: not native or avx2" >&2
  exit 2
  ;;
esac
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
cat >"$tmp/sdpa.py" <<'PY'
import sys, time, torch, torch.nn.functional as F
torch.set_num_threads(2)
hq, hkv, sq, skv, d, causal, dt = (int(x) for x in sys.argv[1:8])
dtype = torch.bfloat16 if dt else torch.float32
g = torch.Generator().manual_seed(1)
r = lambda *s: (torch.rand(*s, generator=g) * 2 - 1).to(dtype)
q, k, v = r(1, hq, sq, d), r(1, hkv, skv, d), r(1, hkv, skv, d)
# PyTorch's is_causal is aligned top-left: a decode row (Sq < Skv) would see
# one key. libattn's causal is bottom-right, under which the last rows see
# every key: so causal goes to PyTorch only for square shapes.
causal = bool(causal) and sq == skv
with torch.inference_mode():
    for _ in range(2):
        F.scaled_dot_product_attention(q, k, v, is_causal=causal, enable_gqa=hq != hkv)
    t = []
    for _ in range(5):
        t0 = time.perf_counter()
        F.scaled_dot_product_attention(q, k, v, is_causal=causal, enable_gqa=hq != hkv)
        t.append((time.perf_counter() - t0) * 1e3)
    print("%.4f" % sorted(t)[2])
PY

# name hq hkv sq skv d causal
shapes='S512_D64 8 8 512 512 64 0
S1024_D64 8 8 1024 1024 64 0
S2048_D64 8 8 2048 2048 64 0
S4096_D64 8 8 4096 4096 64 0
S2048_D128 8 8 2048 2048 128 0
causal_S4096_D64 8 8 4096 4096 64 1
gqa8/2_S2048_D64 8 2 2048 2048 64 0
decode_Hq32_Hkv8_D128_Skv8192 32 8 1 8192 128 1'

i=0
while [ "$i" -lt "$rounds" ]; do
  echo "$shapes" | while read -r name hq hkv sq skv d causal; do
    c=""
    [ "$causal" = 1 ] && c="--causal"
    kvopt=""
    [ "$kv" = bf16 ] && kvopt="--kv-dtype bf16"
    # shellcheck disable=SC2086
    "$attn" run --device "$dev" --heads "$hq" --kv-heads "$hkv" --seq "$sq" --kv-seq "$skv" \
      --dim "$d" $c $kvopt --warmup 2 --repeat 5 | sed -n 's/^time \([0-9.]*\) ms.*/\1/p' \
      >>"$tmp/attn.$i.$(echo "$name" | tr / _)"
    # A shape PyTorch cannot run (its bf16 SDPA under ATEN_CPU_CAPABILITY=avx2
    # on an AVX-512 CPU: "pack_vnni2 is only supported when avx512 is
    # supported") is reported, once per round, and left out of its column.
    "$venv/bin/python" "$tmp/sdpa.py" "$hq" "$hkv" "$sq" "$skv" "$d" "$causal" \
      "$([ "$kv" = bf16 ] && echo 1 || echo 0)" >>"$tmp/torch.$i.$(echo "$name" | tr / _)" \
      2>"$tmp/err" || echo "PyTorch failed at $name: $(tail -n 1 "$tmp/err")" >&2
  done
  i=$((i + 1))
done

stats() { sort -n | awk '{v[NR]=$1} END {m=(NR%2)?v[(NR+1)/2]:(v[NR/2]+v[NR/2+1])/2; print m, v[1], v[NR]}'; }
echo "device $dev vs PyTorch $("$venv/bin/python" -c 'import torch; print(torch.__version__, torch.backends.cpu.get_cpu_capability())'), $rounds rounds, k/v $kv, ISA $isa"
echo "CPU: $(lscpu | sed -n 's/^Model name: *//p' | head -1); flags: $(grep -o -w 'avx2\|avx512f\|amx_tile' /proc/cpuinfo | sort -u | tr '\n' ' ')"
printf '%-32s %24s %24s %8s\n' shape "libattn ms (min-max)" "PyTorch ms (min-max)" "speedup"
echo "$shapes" | while read -r name hq hkv sq skv d causal; do
  f=$(echo "$name" | tr / _)
  fl=$(echo "$hq $sq $skv $d $causal" | awk '{f = 4 * $1 * $2 * $3 * $4; if ($5 && $2 == $3) f /= 2; print f}')
  if [ -z "$(cat "$tmp"/torch.*."$f")" ]; then
    set -- $(cat "$tmp"/attn.*."$f" | stats)
    printf '%-32s %8.2f (%6.2f-%6.2f) %24s %8s   %6.1f GFLOP/s\n' "$name" "$1" "$2" "$3" \
      "PyTorch failed" "-" "$(echo "$fl $1" | awk '{print $1 / $2 / 1e6}')"
    continue
  fi
  set -- $(cat "$tmp"/attn.*."$f" | stats) $(cat "$tmp"/torch.*."$f" | stats)
  fl=$(echo "$hq $sq $skv $d $causal" | awk '{f = 4 * $1 * $2 * $3 * $4; if ($5 && $2 == $3) f /= 2; print f}')
  printf '%-32s %8.2f (%6.2f-%6.2f) %8.2f (%6.2f-%6.2f) %7.2fx   %6.1f vs %6.1f GFLOP/s\n' "$name" \
    "$1" "$2" "$3" "$4" "$5" "$6" "$(echo "$4 $1" | awk '{print $1 / $2}')" \
    "$(echo "$fl $1" | awk '{print $1 / $2 / 1e6}')" "$(echo "$fl $4" | awk '{print $1 / $2 / 1e6}')"
done
