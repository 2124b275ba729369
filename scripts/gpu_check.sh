#!/usr/bin/env bash
# The GPU check (issue 5), in one run that finishes within 8 minutes on an H100/H200:
#   1. builds clipit with the GPU features, or takes the binaries scripts/gpu_bundle.sh made
#      elsewhere from $CLIPIT_GPU_BIN (for a GPU machine without Rust);
#   2. runs the model parity tests and the CLIP-IT training-step parity (3 Adam steps against
#      peft + PyTorch) on each GPU backend;
#   3. runs `clipit bench` and tests/reference/bench_torch.py on the same card, at the same shapes
#      and dtypes, and prints a table with the ratio clipit / PyTorch (higher is better).
#
# Usage: scripts/gpu_check.sh [OUT_DIR]   (default target/gpu_check; it gets gpu_check.jsonl)
# CLIPIT_GPU_BACKENDS: the clipit backends to check, default "cuda wgpu" (the bundle must have them).
# Needs: an NVIDIA GPU with its driver, the CUDA toolkit for `cuda` (NVRTC and headers, found through
# $CUDA_PATH or nvcc), a Vulkan loader for `wgpu`, and python3 with torch, open_clip and peft.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT_DIR="${1:-target/gpu_check}"
BACKENDS="${CLIPIT_GPU_BACKENDS:-cuda wgpu}"
mkdir -p "$OUT_DIR"
JSONL="$OUT_DIR/gpu_check.jsonl"
: >"$JSONL"
TORCH_CACHE="$(mktemp -d)"
step() { printf '\n== %s (%ss)\n' "$*" "$SECONDS"; }

if [ -z "${CUDA_PATH:-}" ] && command -v nvcc >/dev/null; then
  CUDA_PATH="$(dirname "$(dirname "$(readlink -f "$(command -v nvcc)")")")"
  export CUDA_PATH
fi
export LD_LIBRARY_PATH="${CUDA_PATH:-/usr/local/cuda}/lib64:${LD_LIBRARY_PATH:-}"
step "machine"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
GPU="$(nvidia-smi --query-gpu=name --format=csv,noheader 2>/dev/null | head -1)"
echo "backends: $BACKENDS; CUDA_PATH=${CUDA_PATH:-unset}; $(nproc) CPU cores;" \
  "$(python3 -c 'import torch; print("torch", torch.__version__)' 2>&1)"

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

# Parity of the 7 fixture architectures (transformers / open_clip / timm) on one backend.
parity() {
  step "parity on $1"
  local require=CLIPIT_REQUIRE_WGPU
  [ "$1" = cuda ] && require=CLIPIT_REQUIRE_CUDA
  env "$require=1" timeout 120 "$BIN_DIR/parity" "$1::" --test-threads 1 --nocapture 2>&1 |
    grep -E "rel err|test result|panicked|FAILED|error" | tee "$OUT_DIR/parity_$1.txt"
}

# The CLIP-IT training step (3 Adam steps) against peft + torch on one backend.
train_step() {
  step "CLIP-IT step parity on $1"
  CLIPIT_TEST_BACKEND=$1 timeout 100 "$BIN_DIR/train_step" --test-threads 1 --nocapture 2>&1 |
    grep -E "worst|test result|panicked|FAILED" | tee "$OUT_DIR/train_step_$1.txt"
}

json_error() { tail -c 300 "$1" | python3 -c 'import json,sys; print(json.dumps({"error": sys.stdin.read()}))'; }

# One row: model task batch dtype clipit_backend. Each side runs in its own process; PyTorch (on
# CUDA) is measured once per shape and dtype.
bench_row() {
  local model=$1 task=$2 batch=$3 dtype=$4 backend=$5 ours theirs key
  ours=$(timeout 120 "$BIN_DIR/clipit" bench --model "$model" --task "$task" --batch "$batch" \
    --dtype "$dtype" --backend "$backend" --warmup 3 --runs 10 --json 2>"$TORCH_CACHE/err" | tail -1)
  [ -n "$ours" ] || ours="$(json_error "$TORCH_CACHE/err")"
  key="$TORCH_CACHE/$model-$task-$batch-$dtype.json"
  if [ ! -s "$key" ]; then
    timeout 90 python3 tests/reference/bench_torch.py --model "$model" --task "$task" --batch "$batch" \
      --dtype "$dtype" --device cuda --warmup 3 --runs 10 2>"$TORCH_CACHE/err" | tail -1 >"$key"
    [ -s "$key" ] || json_error "$TORCH_CACHE/err" >"$key"
  fi
  theirs="$(cat "$key")"
  printf '{"gpu": "%s", "clipit": %s, "torch": %s}\n' "$GPU" "$ours" "$theirs" | tee -a "$JSONL"
}

first=${BACKENDS%% *}
parity "$first"
step "benchmarks on $GPU, clipit on $first against PyTorch on CUDA (the targets first)"
bench_row vit-b-16 embed 256 f16 "$first"
bench_row vit-b-16 train 64 bf16 "$first"
bench_row vit-b-16 embed 256 f32 "$first"
bench_row vit-b-16 train 64 f32 "$first"
train_step "$first"
for b in $BACKENDS; do
  [ "$b" = "$first" ] && continue
  parity "$b"
  step "benchmarks on $GPU, clipit on $b"
  bench_row vit-b-16 embed 256 f32 "$b"
  bench_row vit-b-16 train 64 f32 "$b"
done
step "more benchmarks"
bench_row vit-b-32 embed 8 f32 "$first"
bench_row vit-b-16 embed 16 f16 "$first"

step "table"
python3 - "$JSONL" <<'EOF'
import json, sys
print(f"{'model':9} {'task':5} {'batch':>5} {'dtype':5} {'clipit on':9} {'clipit img/s':>12} {'torch img/s':>11} "
      f"{'ratio':>6} {'clipit GB':>9} {'torch GB':>8} {'unloaded GB':>11}")
for line in open(sys.argv[1]):
    r = json.loads(line)
    o, t = r["clipit"], r["torch"]
    if "error" in t:
        print("torch error:", t["error"][-200:].replace("\n", " "))
        continue
    head = f"{t['model']:9} {t['task']:5} {t['batch']:5} {t['dtype']:5}"
    if "error" in o:
        print(f"{head} {'-':9} {'error':>12} {t['images_per_sec']:11.1f}   clipit: {o['error'][-160:].strip()}")
        continue
    print(f"{head} {o['backend']:9} {o['images_per_sec']:12.1f} {t['images_per_sec']:11.1f} "
          f"{o['images_per_sec'] / t['images_per_sec']:6.2f} {o['peak_memory_bytes'] / 1e9:9.2f} "
          f"{t['peak_memory_bytes'] / 1e9:8.2f} {(o.get('device_memory_after_unload_bytes') or 0) / 1e9:11.3f}")
EOF
step "done"
