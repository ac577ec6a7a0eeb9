#!/bin/sh
# The GPU kernels on real GPU code generators, without a GPU (issue 11).
#
# Every kernel file of kernels/ (with the prelude kernels/common.cl in front,
# as the runtime builds it) is compiled by clang-15 for NVIDIA (nvptx64,
# linked with libclc, llc-15 for sm_80, ptxas for sm_80 and sm_90) and AMD
# (amdgcn, libclc, llc-15 for gfx90a and gfx1100): once with no -D option
# (each file's defaults) and, for kernels/gpu_flash.cl, the fused kernel of
# the clblast backend's GPU path, with every build-option variant that path
# uses (the tiles backends/clblast/flash.c picks for these devices, each head
# dim and each storage type). For gpu_flash.cl it asserts:
#   - no spill: ptxas's spill stores/loads and stack frame are 0; llc's
#     VGPR spills and scratch are 0 (SGPR spills go to VGPR lanes, not to
#     memory: reported, not failed);
#   - at least 2 work-groups per SM / CU, from the registers and local
#     memory each work-group uses;
# and that every other kernel compiles. Prints one table row per kernel and
# target (the table of BENCHMARKS.md). Exits 77 (skipped) when a tool is
# missing: "skipped: no ptxas" covers only the NVIDIA half.
#
# Usage: tests/gpu-codegen.sh [kernels dir]   (a make check test)
set -u
KDIR=${1:-${srcdir:-.}/kernels}
[ -f "$KDIR/gpu_flash.cl" ] || KDIR=$(dirname "$0")/../kernels
PTXAS=$(command -v ptxas || echo /usr/local/cuda/bin/ptxas)
CLC=/usr/lib/clc
have() { command -v "$1" >/dev/null 2>&1; }
for t in clang-15 llvm-link-15 llc-15; do
  have $t || { echo "gpu-codegen: skipped: no $t (Debian: clang-15, llvm-15)"; exit 77; }
done
[ -f $CLC/nvptx64--nvidiacl.bc ] && [ -f $CLC/amdgcn--amdhsa.bc ] ||
  { echo "gpu-codegen: skipped: no libclc (Debian: libclc-15)"; exit 77; }
NV=1
[ -x "$PTXAS" ] || { NV=0; echo "gpu-codegen: NVIDIA targets skipped: no ptxas (the CUDA toolkit)"; }

W=$(mktemp -d "${TMPDIR:-/tmp}/gpu-codegen.XXXXXX") || exit 1
trap 'rm -rf "$W"' EXIT INT TERM
FAIL=0
ROWS=0

# The tiles flash.c chooses (clb_flash_params_init, tiles_for): 256
# work-items, 32 query rows (16 from head dim 256 up), 32-key tiles, and the
# largest head-dim chunk DC of 64, 32, 16 whose work-group fits the local
# memory the device reports (NVIDIA's OpenCL: 48 KiB; AMD's: 64 KiB).
# micro_rows and local_bytes mirror flash.c's functions of those names.
NT=256 BK=32
micro_rows() { # nt bq cols
  for m in 4 2 1 8; do
    [ $(($2 % m)) = 0 ] && [ $(($2 * $3 % ($1 * m))) = 0 ] || continue
    n=$(($2 * $3 / ($1 * m)))
    [ "$n" -ge 1 ] && [ $(($3 % n)) = 0 ] && { echo $m; return; }
  done
  echo 0
}
local_bytes() { # nt bq bk dc
  tms=$(micro_rows "$1" "$2" "$3"); cgs=$(($3 / ($2 * $3 / ($1 * tms))))
  echo $((4 * (($2 + $3) * ($4 + 1) + $2 * ($3 + 1) + $2 * cgs + 5 * $2) + 4))
}
pick_dc() { # local memory the device reports
  for dc in 64 32 16; do
    [ "$(local_bytes $NT 32 $BK $dc)" -le "$1" ] && { echo $dc; return; }
  done
  echo 16
}
DC_NV=$(pick_dc 49152)
DC_AMD=$(pick_dc 65536)

# compile SRC TRIPLE CPU OPTS -> $W/l.bc (linked with libclc); 1 on error
compile() {
  case $2 in nvptx*) lib=$CLC/nvptx64--nvidiacl.bc; extra="" ;; *) lib=$CLC/amdgcn--amdhsa.bc; extra="-nogpulib -mcpu=$3" ;; esac
  # shellcheck disable=SC2086
  clang-15 -x cl -cl-std=CL1.2 -target "$2" $extra -Xclang -finclude-default-header -O3 $4 \
    -emit-llvm -c "$1" -o "$W/k.bc" 2>"$W/err" &&
    llvm-link-15 "$W/k.bc" "$lib" -o "$W/l.bc" 2>>"$W/err.link"
}

# NVIDIA: one row per kernel function. check = 1 asserts no spill, >= 2 groups/SM.
nv_report() { # file variant-label opts check [work-group size, default NT]
  compile "$W/src.cl" nvptx64-nvidia-nvcl sm_80 "$3" || { echo "FAIL compile $1 [$2] nvptx"; cat "$W/err"; FAIL=1; return; }
  llc-15 -mcpu=sm_80 "$W/l.bc" -o "$W/k.ptx" 2>"$W/err" || { echo "FAIL llc $1 [$2] sm_80"; cat "$W/err"; FAIL=1; return; }
  [ $NV = 1 ] || return
  for sm in sm_80 sm_90; do
    "$PTXAS" -arch=$sm -v "$W/k.ptx" -o "$W/k.cubin" >"$W/ptxas" 2>&1 ||
      { echo "FAIL ptxas $1 [$2] $sm"; cat "$W/ptxas"; FAIL=1; continue; }
    # smem per SM: sm_80 164 KiB, sm_90 228 KiB; 65536 registers, 64 warps.
    smem_sm=167936; [ $sm = sm_90 ] && smem_sm=233472
    awk -v f="$1" -v var="$2" -v sm=$sm -v check="$4" -v nt="${5:-$NT}" -v smem_sm=$smem_sm '
      /Compiling entry function/ { fn = $0; gsub(/.*function .|. for .*/, "", fn); stack = 0; spill = 0 }
      /bytes stack frame/ { stack = $1 + 0; spill = $5 + $9 }
      /Used [0-9]+ registers/ {
        regs = $0; sub(/.*Used /, "", regs); regs += 0; smem = 0
        if ($0 ~ /bytes smem/) { smem = $0; sub(/ bytes smem.*/, "", smem); sub(/.*, /, "", smem); smem += 0 }
        if (fn ~ /^attn_id_/) next
        w = nt / 32; rpw = int((regs * 32 + 255) / 256) * 256
        g = int(int(65536 / rpw) / w); if (int(64 / w) < g) g = int(64 / w)
        if (smem > 0 && int(smem_sm / smem) < g) g = int(smem_sm / smem)
        bad = ""
        if (check == 1 && fn ~ /^gpu_flash/ && (stack > 0 || spill > 0)) bad = " FAIL: spills"
        if (check == 1 && fn == "gpu_flash" && g < 2) bad = bad " FAIL: under 2 work-groups per SM"
        printf "| %s | %s | %s | %s | %d regs | %d B | %d B stack, %d B spill | %d |%s\n", f, fn, var, sm, regs, smem, stack, spill, g, bad
      }' "$W/ptxas" >"$W/rows"
    cat "$W/rows"
    ROWS=$((ROWS + $(wc -l <"$W/rows")))
    grep -q FAIL "$W/rows" && FAIL=1
  done
}

# AMD: llc's kernel-resource-usage remarks.
amd_report() { # file variant-label opts check cpu [work-group size, default NT]
  compile "$W/src.cl" amdgcn-amd-amdhsa "$5" "$3" || { echo "FAIL compile $1 [$2] $5"; cat "$W/err"; FAIL=1; return; }
  llc-15 -march=amdgcn -mcpu="$5" -filetype=obj -pass-remarks-analysis=kernel-resource-usage \
    "$W/l.bc" -o "$W/k.o" >"$W/llc" 2>&1 || { echo "FAIL llc $1 [$2] $5"; cat "$W/llc"; FAIL=1; return; }
  # gfx90a: wave64, 4 SIMDs and 64 KiB LDS per CU; gfx1100: wave32, 2 SIMDs
  # and 64 KiB LDS per CU (CU mode).
  wave=64 simds=4; [ "$5" = gfx1100 ] && wave=32 simds=2
  awk -v f="$1" -v var="$2" -v cpu="$5" -v check="$4" -v nt="${6:-$NT}" -v wave=$wave -v simds=$simds '
    function flush() {
      if (fn == "" || fn ~ /^attn_id_/) return
      w = int((nt + wave - 1) / wave); g = int(occ * simds / w)
      if (lds > 0 && int(65536 / lds) < g) g = int(65536 / lds)
      bad = ""
      if (check == 1 && fn ~ /^gpu_flash/ && (vspill > 0 || scratch > 0)) bad = " FAIL: spills"
      if (check == 1 && fn == "gpu_flash" && g < 2) bad = bad " FAIL: under 2 work-groups per CU"
      printf "| %s | %s | %s | %s | %d VGPRs, %d SGPRs | %d B | %d VGPR spill, %d SGPR to VGPR lanes, %d B scratch | %d |%s\n", f, fn, var, cpu, vgpr, sgpr, lds, vspill, sspill, scratch, g, bad
    }
    /Function Name:/ { flush(); fn = $NF; vgpr = sgpr = lds = vspill = sspill = scratch = occ = 0 }
    /  VGPRs:/ { vgpr = $NF }
    /  SGPRs:/ { sgpr = $NF }
    /ScratchSize/ { scratch = $NF }
    /Occupancy/ { occ = $NF }
    /SGPRs Spill:/ { sspill = $NF }
    /VGPRs Spill:/ { vspill = $NF }
    /LDS Size/ { lds = $NF }
    END { flush() }' "$W/llc" >"$W/rows"
  cat "$W/rows"
  ROWS=$((ROWS + $(wc -l <"$W/rows")))
  grep -q FAIL "$W/rows" && FAIL=1
}

echo "| file | kernel | variant | target | registers | local memory | spills | work-groups per SM/CU |"
echo "|---|---|---|---|---|---|---|---|"
# Every kernel file with its own defaults.
for f in "$KDIR"/*.cl; do
  name=$(basename "$f" .cl)
  [ "$name" = common ] && continue
  cat "$KDIR/common.cl" "$f" >"$W/src.cl"
  # Work-groups of 64 for the others (their usual size on GPUs) in the table.
  check=0 nt=64; [ "$name" = gpu_flash ] && check=1 nt=$NT
  nv_report "$name.cl" defaults "" $check $nt
  amd_report "$name.cl" defaults "" $check gfx90a $nt
  amd_report "$name.cl" defaults "" $check gfx1100 $nt
done

# gpu_flash.cl as flash.c builds it: each head dim (DC = min(DC_dev, hd),
# NQ = NCH = hd / DC for D = Dv = hd) and storage type (q, k, v, out and the
# mask all f32, all f16 or all bf16: the type changes only loads and stores).
cat "$KDIR/common.cl" "$KDIR/gpu_flash.cl" >"$W/src.cl"
for hd in 16 32 64 128 256 512; do
  BQ=32; [ $hd -ge 256 ] && BQ=16
  for types in "" "-DQT=1 -DKT=1 -DVT=1 -DOT=1 -DMT=1" "-DQT=2 -DKT=2 -DVT=2 -DOT=2 -DMT=2"; do
    label="D=$hd"
    case $types in *QT=1*) label="$label f16" ;; *QT=2*) label="$label bf16" ;; *KT=2*) label="$label bf16 kv" ;; *) label="$label f32" ;; esac
    variant() { # dc
      echo "-DNT=$NT -DBQ=$BQ -DBK=$BK -DDC=$1 -DNQ=$((hd / $1)) -DNCH=$((hd / $1))" \
        "-DTMS=$(micro_rows $NT $BQ $BK) -DTMO=$(micro_rows $NT $BQ $1) $types"
    }
    dc=$DC_NV; [ "$hd" -lt "$dc" ] && dc=$hd
    nv_report gpu_flash.cl "$label" "$(variant $dc)" 1
    dc=$DC_AMD; [ "$hd" -lt "$dc" ] && dc=$hd
    for cpu in gfx90a gfx1100; do
      amd_report gpu_flash.cl "$label" "$(variant $dc)" 1 $cpu
    done
  done
done

if [ "$FAIL" != 0 ]; then
  echo "gpu-codegen: FAILED (see the FAIL lines above)"
  exit 1
fi
[ "$ROWS" -gt 0 ] || { echo "gpu-codegen: no kernel was reported"; exit 1; }
echo "gpu-codegen: ok, $ROWS kernel/target rows"
