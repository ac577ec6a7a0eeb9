#!/bin/sh
# One layer's attention per model family through `attn layer` (issue 10):
# prefill of S tokens and the decode step, on one device. Makes random
# one-layer checkpoints at the families' real shapes with
# tools/gen-bench-layer.py (PYTHON: a python with torch, transformers and
# safetensors, e.g. the venv of tools/bench-peers.sh), then for ROUNDS rounds,
# family after family: the S-token prefill, the (S-16)-token prefill, and S
# tokens with --cache-steps 16. Prints per family the best prefill and the
# decode step, ((S-16) prefill + 16 steps) - ((S-16) prefill), over 16, in
# ms: best of the rounds, since these machines are shared.
#
#   tools/bench-layers.sh [DEVICE (pocl)] [S (512)] [ROUNDS (3)]
set -eu
DEV=${1:-pocl} S=${2:-512} ROUNDS=${3:-3}
PYTHON=${PYTHON:-/work/venv/bin/python}
ATTN=${ATTN:-./attn}
W=${BENCH_DIR:-${TMPDIR:-/tmp}/attn-bench-layers}
FAMILIES="llama3-8b mistral-7b qwen2-7b qwen3-8b gemma2-9b gemma3-12b phi3-mini gpt-oss-20b bert-base gpt2 bloom-560m"
mkdir -p "$W"
for f in $FAMILIES; do
  [ -f "$W/$f/x.npy" ] || "$PYTHON" "$(dirname "$0")/gen-bench-layer.py" "$W/$f" --family "$f" --seq "$S" >/dev/null
done
: >"$W/times"
for r in $(seq "$ROUNDS"); do
  for f in $FAMILIES; do
    a=$("$ATTN" layer --checkpoint "$W/$f" --layer 0 --device "$DEV" --x "$W/$f/x.npy" 2>&1 | awk '/^time/ {print $2}')
    b=$("$ATTN" layer --checkpoint "$W/$f" --layer 0 --device "$DEV" --x "$W/$f/x_prefix.npy" 2>&1 | awk '/^time/ {print $2}')
    c=$("$ATTN" layer --checkpoint "$W/$f" --layer 0 --device "$DEV" --x "$W/$f/x.npy" --cache-steps 16 2>&1 | awk '/^time/ {print $2}')
    echo "$f $a $b $c" >>"$W/times"
  done
done
echo "family prefill_S=${S}_ms decode_step_ms (device $DEV, best of $ROUNDS)"
for f in $FAMILIES; do
  awk -v f="$f" '$1 == f { if (!n || $2 < p) p = $2; d = ($4 - $3) / 16; if (!n || d < dd) dd = d; n++ }
    END { printf "%-12s %8.1f %8.2f\n", f, p, dd }' "$W/times"
done
