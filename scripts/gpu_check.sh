#!/usr/bin/env bash
# The GPU check (issue 5), in one run that finishes within 8 minutes on an H100/H200:
#   1. builds clipit with the cuda and wgpu features, or takes the binaries scripts/gpu_bundle.sh
#      made elsewhere from $CLIPIT_GPU_BIN (for a GPU machine without Rust);
#   2. runs the model parity tests on CUDA and on wgpu (Vulkan), and the CLIP-IT training-step
#      parity (3 Adam steps against peft + PyTorch) on CUDA;
#   3. runs `clipit bench` and tests/reference/bench_torch.py on the same card, at the same shapes
#      and dtypes, and prints a table with the ratio clipit / PyTorch (higher is better).
#
# Usage: scripts/gpu_check.sh [OUT_DIR]   (default target/gpu_check; it gets gpu_check.jsonl)
# Needs: an NVIDIA GPU with its driver, the CUDA toolkit (NVRTC and headers, found through
# $CUDA_PATH or nvcc), a Vulkan loader for the wgpu rows, and python3 with torch, open_clip and peft.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT_DIR="${1:-target/gpu_check}"
mkdir -p "$OUT_DIR"
JSONL="$OUT_DIR/gpu_check.jsonl"
: >"$JSONL"
step() { printf '\n== %s (%ss)\n' "$*" "$SECONDS"; }

if [ -z "${CUDA_PATH:-}" ] && command -v nvcc >/dev/null; then
  CUDA_PATH="$(dirname "$(dirname "$(readlink -f "$(command -v nvcc)")")")"
  export CUDA_PATH
fi
export LD_LIBRARY_PATH="${CUDA_PATH:-/usr/local/cuda}/lib64:${LD_LIBRARY_PATH:-}"
step "machine"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
GPU="$(nvidia-smi --query-gpu=name --format=csv,noheader 2>/dev/null | head -1)"
echo "CUDA_PATH=${CUDA_PATH:-unset}; $(nproc) CPU cores; $(python3 -c 'import torch; print("torch", torch.__version__)' 2>&1)"

step "binaries"
if [ -n "${CLIPIT_GPU_BIN:-}" ]; then
  BIN_DIR="$(mktemp -d)"
  tar -xJf "$CLIPIT_GPU_BIN/bin.tar.xz" -C "$BIN_DIR"
  chmod +x "$BIN_DIR"/*
  # An offline build's LLVM stubs (scripts/gpu_bundle.sh with CLIPIT_OFFLINE_CUDA=1).
  if [ -f "$CLIPIT_GPU_BIN/libllvm_stubs.so" ]; then
    export LD_PRELOAD="$(readlink -f "$CLIPIT_GPU_BIN/libllvm_stubs.so")"
  fi
  # The test binaries look for their fixtures under the folder they were built in.
  built_in="$(cat "$CLIPIT_GPU_BIN/built_in")"
  if [ "$built_in" != "$PWD" ] && [ ! -e "$built_in" ]; then
    mkdir -p "$(dirname "$built_in")" && ln -s "$PWD" "$built_in"
  fi
else
  scripts/gpu_bundle.sh >&2 || exit 1
  CLIPIT_GPU_BIN=.gpu exec "$0" "$@"
fi
ls -la "$BIN_DIR"

step "parity on CUDA (7 architectures against transformers / open_clip / timm)"
CLIPIT_REQUIRE_CUDA=1 timeout 150 "$BIN_DIR/parity" cuda:: --test-threads 1 --nocapture 2>&1 |
  grep -E "rel err|test result|panicked|FAILED|error" | tee "$OUT_DIR/parity_cuda.txt"

# One row: model task batch dtype clipit_backend. Each side runs in its own process.
bench_row() {
  local model=$1 task=$2 batch=$3 dtype=$4 backend=$5 ours theirs
  ours=$(timeout 120 "$BIN_DIR/clipit" bench --model "$model" --task "$task" --batch "$batch" \
    --dtype "$dtype" --backend "$backend" --warmup 3 --runs 10 --json 2>"$OUT_DIR/err.txt" | tail -1)
  [ -n "$ours" ] || ours="{\"error\": $(tail -c 300 "$OUT_DIR/err.txt" | python3 -c 'import json,sys; print(json.dumps(sys.stdin.read()))')}"
  theirs=$(timeout 90 python3 tests/reference/bench_torch.py --model "$model" --task "$task" \
    --batch "$batch" --dtype "$dtype" --device cuda --warmup 3 --runs 10 2>"$OUT_DIR/err.txt" | tail -1)
  [ -n "$theirs" ] || theirs="{\"error\": $(tail -c 300 "$OUT_DIR/err.txt" | python3 -c 'import json,sys; print(json.dumps(sys.stdin.read()))')}"
  printf '{"gpu": "%s", "clipit": %s, "torch": %s}\n' "$GPU" "$ours" "$theirs" | tee -a "$JSONL"
}

step "benchmarks on $GPU: clipit against PyTorch (the targets first)"
bench_row vit-b-16 embed 256 f16 cuda
bench_row vit-b-16 train 64 bf16 cuda
bench_row vit-b-16 embed 256 f32 cuda
bench_row vit-b-16 train 64 f32 cuda
step "CLIP-IT step parity on CUDA (3 Adam steps against peft + torch)"
if [ -x "$BIN_DIR/train_step" ]; then
  CLIPIT_TEST_BACKEND=cuda timeout 100 "$BIN_DIR/train_step" --test-threads 1 --nocapture 2>&1 |
    grep -E "worst|test result|panicked|FAILED" | tee "$OUT_DIR/train_step_cuda.txt"
else
  echo "no train_step binary in this bundle"
fi
step "parity on wgpu (Vulkan)"
CLIPIT_REQUIRE_WGPU=1 timeout 100 "$BIN_DIR/parity" wgpu:: --test-threads 1 --nocapture 2>&1 |
  grep -E "rel err|test result|panicked|FAILED|error" | tee "$OUT_DIR/parity_wgpu.txt"
step "more benchmarks"
bench_row vit-b-32 embed 8 f32 cuda
bench_row vit-b-16 embed 16 f16 cuda
bench_row vit-b-16 embed 256 f32 wgpu

step "table"
python3 - "$JSONL" <<'EOF'
import json, sys
print(f"{'model':9} {'task':5} {'batch':>5} {'dtype':5} {'backend':7} {'clipit img/s':>12} {'torch img/s':>11} {'ratio':>6} {'clipit GB':>9} {'torch GB':>8} {'unloaded GB':>11}")
for line in open(sys.argv[1]):
    r = json.loads(line)
    o, t = r["clipit"], r["torch"]
    if "error" in o or "error" in t:
        print("error:", json.dumps(r)[:400])
        continue
    ratio = o["images_per_sec"] / t["images_per_sec"]
    print(f"{o['model']:9} {o['task']:5} {o['batch']:5} {o['dtype']:5} {o['backend']:7} "
          f"{o['images_per_sec']:12.1f} {t['images_per_sec']:11.1f} {ratio:6.2f} "
          f"{o['peak_memory_bytes'] / 1e9:9.2f} {t['peak_memory_bytes'] / 1e9:8.2f} "
          f"{(o.get('device_memory_after_unload_bytes') or 0) / 1e9:11.3f}")
EOF
step "done"
