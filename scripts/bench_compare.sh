#!/usr/bin/env bash
# Runs `clipit bench` and the PyTorch reference (tests/reference/bench_torch.py) on the same tasks and
# shapes, one after the other on this machine, and prints images/s and the ratio clipit / PyTorch
# (higher is better). Usage: [ROUNDS=3] [RAYON_NUM_THREADS=N OMP_NUM_THREADS=N] scripts/bench_compare.sh
# [cpu|wgpu|cuda] (default cpu); the thread variables set both sides' CPU threads.
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
# ROUNDS pairs per row (default 3), clipit and PyTorch alternating, so that both sides see the
# same machine state; the medians and the ratio of the medians are printed, with the range of the
# per-round ratios (this shared machine's clock moves by up to 1.5x between minutes).
ROUNDS="${ROUNDS:-3}"
printf '%-10s %-6s %6s %8s %12s %12s %7s %13s\n' model task batch threads clipit_img/s torch_img/s ratio round_ratios
for row in "${rows[@]}"; do
  read -r model task batch <<<"$row"
  ours=() theirs=()
  for _ in $(seq "$ROUNDS"); do
    ours+=("$("$BIN" bench --model "$model" --task "$task" --batch "$batch" --backend "$BACKEND" --runs 3 --warmup 1 --json |
      python3 -c 'import json,sys; print(json.load(sys.stdin)["images_per_sec"])')")
    theirs+=("$(python3 tests/reference/bench_torch.py --model "$model" --task "$task" --batch "$batch" \
      --device "$TORCH_DEVICE" --runs 3 --warmup 1 2>/dev/null | python3 -c 'import json,sys; print(json.load(sys.stdin)["images_per_sec"])')")
  done
  python3 - "$model" "$task" "$batch" "${RAYON_NUM_THREADS:-all}" "${ours[*]}" "${theirs[*]}" <<'PY'
import statistics, sys
model, task, batch, threads, ours, theirs = sys.argv[1:]
o, t = [float(x) for x in ours.split()], [float(x) for x in theirs.split()]
ratios = sorted(a / b for a, b in zip(o, t))
mo, mt = statistics.median(o), statistics.median(t)
print(f"{model:<10} {task:<6} {batch:>6} {threads:>8} {mo:12.2f} {mt:12.2f} {mo / mt:7.2f} {ratios[0]:.2f}-{ratios[-1]:.2f}")
PY
done
