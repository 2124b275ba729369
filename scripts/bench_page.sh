#!/usr/bin/env bash
# Throughput of the page against its baselines (a benchmark: not part of ./build.sh test).
#
#   scripts/bench_page.sh
#
# Full-size random-init HF CLIP ViT-B/32 (the model of tests/e2e/full_size.sh), image embedding,
# batch 8, 224 px, f32, one warm-up batch and BP_RUNS (3) timed ones, median. Prints one JSON row per
# figure (as `clipit bench --json`), then the ratios:
#   - the page on WebGPU (headless Chromium's only adapter here: SwiftShader) vs native `clipit bench
#     --backend wgpu` on the same software Vulkan driver (Chromium's libvk_swiftshader.so through
#     VK_ICD_FILENAMES) and on Mesa lavapipe (the default Vulkan driver here);
#   - the page's CPU fallback (wasm: its multithreaded engine; cpu1: the one-thread one) vs
#     transformers.js 4 (onnxruntime-web, wasm SIMD, 1 and 2 threads) on the ONNX export of the
#     same tower (tests/reference/export_onnx.py), with a check that both give the same embeddings
#     (1e-3).
# Needs pkg/ (./build.sh web), the CLI ($CARGO_TARGET_DIR/debug/clipit, ./build.sh cli), Chromium,
# tests/e2e/node_modules (tests/e2e/run.sh installs it) and Python with torch, transformers and onnx.
# Installs transformers.js into tests/bench_page/node_modules (npm ci --ignore-scripts; ~480 MB).
# Environment: BP_SCENARIOS (cpu,cpu1,webgpu,tjs1,tjs2; cpu1: ?threads=0), BP_NATIVE (lavapipe,swiftshader; empty: none),
# BP_RUNS, BP_FLAGS_<SCENARIO> (extra Chromium flags, JSON), CHROMIUM. Slow on a machine without a GPU:
# the CPU rows take ~10 minutes, but on SwiftShader each WebGPU batch took ~30 minutes and native
# wgpu's batches after the first did not finish in minutes (BENCHMARKS.md, "The page (browser)").
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/clipit/target}"
export XDG_RUNTIME_DIR="${XDG_RUNTIME_DIR:-/tmp}"
OUT="$CARGO_TARGET_DIR/e2e/bench_page"
MODEL="$CARGO_TARGET_DIR/e2e/full_size/model"
ONNX="$OUT/onnx_clip"
CLI="$CARGO_TARGET_DIR/debug/clipit"
CHROMIUM="${CHROMIUM:-/usr/bin/chromium}"
SWIFTSHADER_ICD="${SWIFTSHADER_ICD:-$(dirname "$(readlink -f "$CHROMIUM")")/vk_swiftshader_icd.json}"
[ -f "$SWIFTSHADER_ICD" ] || SWIFTSHADER_ICD=/usr/lib/chromium/vk_swiftshader_icd.json
source tests/e2e/full_size_setup.sh
full_size_setup
mkdir -p "$OUT"
if [ ! -f "$ONNX/onnx/vision_model.onnx" ]; then
  echo "==> exporting its image tower to ONNX ($ONNX)" >&2
  python3 tests/reference/export_onnx.py "$MODEL" "$ONNX.tmp" >&2
  rm -rf "$ONNX" && mv "$ONNX.tmp" "$ONNX"
fi
if [ ! -d tests/bench_page/node_modules/@huggingface/transformers ]; then
  echo "==> installing transformers.js (no install scripts: only its browser files are used)" >&2
  (cd tests/bench_page && npm ci --ignore-scripts --no-audit --no-fund >&2)
fi
ROWS="$OUT/rows.jsonl"
: > "$ROWS"
SCENARIOS="${BP_SCENARIOS-cpu,webgpu,tjs1,tjs2}"
if [ -n "$SCENARIOS" ]; then
  REF="$(mktemp -d)"
  trap 'rm -rf "$REF"' EXIT
  echo x > "$REF/classes.txt" # lib.mjs reads it
  # The page as it is now (a rebuild of pkg/ during the run does not swap the module under it).
  PAGE="$OUT/page"
  rm -rf "$PAGE" && mkdir -p "$PAGE" && cp -r www pkg "$PAGE/"
  E2E_ROOT="$PAGE" BP_REPO="$PWD" E2E_REF="$REF" E2E_OUT="$OUT" CHROMIUM="$CHROMIUM" BP_MODEL="$MODEL" BP_ONNX="$ONNX" \
    BP_SCENARIOS="$SCENARIOS" node tests/e2e/bench_page.mjs >&2
  python3 -c 'import json,sys; [print(json.dumps(r)) for r in json.load(open(sys.argv[1]))]' "$OUT/bench_page.json" >> "$ROWS"
fi
for adapter in $(echo "${BP_NATIVE-lavapipe,swiftshader}" | tr , ' '); do
  case "$adapter" in
    lavapipe) icd=/usr/share/vulkan/icd.d/lvp_icd.x86_64.json; name="llvmpipe (Mesa lavapipe)" ;;
    swiftshader) icd="$SWIFTSHADER_ICD"; name="SwiftShader Device (Subzero), Chromium's own driver" ;;
    *) echo "BP_NATIVE: unknown adapter $adapter (lavapipe, swiftshader)" >&2; exit 1 ;;
  esac
  echo "==> native clipit bench --backend wgpu on $adapter ($icd)" >&2
  VK_ICD_FILENAMES="$icd" VK_DRIVER_FILES="$icd" "$CLI" bench --model "$MODEL" --task embed --batch 8 --backend wgpu \
    --warmup 1 --runs "${BP_RUNS:-3}" --json | python3 -c 'import json,sys; r=json.load(sys.stdin); r["scenario"]="native-wgpu-'"$adapter"'"; r["adapter"]="'"$name"'"; print(json.dumps(r))' >> "$ROWS"
done
cat "$ROWS"
python3 - "$ROWS" <<'EOF'
import json, sys
rows = {r["scenario"]: r["images_per_sec"] for r in map(json.loads, open(sys.argv[1]))}
pairs = [("page-webgpu", "native-wgpu-swiftshader", 0.7), ("page-webgpu", "native-wgpu-lavapipe", 0.7),
         ("page-cpu", "transformers.js-wasm-1t", 1.0), ("page-cpu", "transformers.js-wasm-2t", 1.0),
         ("page-cpu1", "transformers.js-wasm-1t", 1.0)]
for a, b, target in pairs:
    if a in rows and b in rows:
        print(f"{a} / {b}: {rows[a]:.3f} / {rows[b]:.3f} img/s = {rows[a] / rows[b]:.3f} (target >= {target})")
EOF
