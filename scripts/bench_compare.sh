#!/usr/bin/env bash
# Runs `clipit bench` and the PyTorch reference (tests/reference/bench_torch.py) on the same tasks and
# shapes, one after the other on this machine, and prints images/s and the ratio clipit / PyTorch
# (higher is better). Usage: scripts/bench_compare.sh [cpu|wgpu|cuda] (default cpu).
set -euo pipefail
cd "$(dirname "$0")/.."
BACKEND="${1:-cpu}"
TORCH_DEVICE=cpu; [ "$BACKEND" = cuda ] && TORCH_DEVICE=cuda
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/clipit/target}"
FEATURES=wgpu; [ "$BACKEND" = cuda ] && FEATURES="wgpu,cuda"
cargo build --features "$FEATURES" --bin clipit >&2
BIN="$CARGO_TARGET_DIR/debug/clipit"
rows=("vit-b-32 embed 8" "vit-b-16 embed 8" "vit-b-16 train 8")
[ "$BACKEND" != cpu ] && rows=("vit-b-32 embed 8" "vit-b-16 embed 256" "vit-b-16 train 64")
printf '%-10s %-6s %6s %14s %14s %7s\n' model task batch clipit_img/s torch_img/s ratio
for row in "${rows[@]}"; do
  read -r model task batch <<<"$row"
  ours=$("$BIN" bench --model "$model" --task "$task" --batch "$batch" --backend "$BACKEND" --runs 3 --warmup 1 --json |
    python3 -c 'import json,sys; print(json.load(sys.stdin)["images_per_sec"])')
  theirs=$(python3 tests/reference/bench_torch.py --model "$model" --task "$task" --batch "$batch" \
    --device "$TORCH_DEVICE" --runs 3 --warmup 1 | python3 -c 'import json,sys; print(json.load(sys.stdin)["images_per_sec"])')
  python3 -c "import sys; o,t=float('$ours'),float('$theirs'); print(f'%-10s %-6s %6s %14.2f %14.2f %7.2f' % ('$model','$task','$batch',o,t,o/t))"
done
