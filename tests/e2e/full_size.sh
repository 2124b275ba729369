#!/usr/bin/env bash
# The page with a full-size checkpoint (not part of ./build.sh test: it needs ~600 MB on disk).
#
#   tests/e2e/full_size.sh      CPU fallback, then WebGPU (SwiftShader), in headless Chromium
#
# Generates once, under $CARGO_TARGET_DIR/e2e/full_size/model (never in the repository), a random-init
# HF CLIP ViT-B/32 with tests/reference/make_fixtures.py --full-size; loads it through the page's
# model file input; records loaded or the error, load time, wasm memory and Chromium's peak RSS; embeds
# one demo tile and one text and compares them with `clipit embed` (1e-3). Figures:
# $CARGO_TARGET_DIR/e2e/full_size/full_size.json. Uses the existing pkg/ (./build.sh web) and CLI
# ($CARGO_TARGET_DIR/debug/clipit, ./build.sh cli). Environment: FS_SCENARIOS=cpu,webgpu, CHROMIUM.
set -euo pipefail
cd "$(dirname "$0")/../.."
ROOT="$PWD"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/clipit/target}"
OUT="$CARGO_TARGET_DIR/e2e/full_size"
MODEL="$OUT/model"
CLI="$CARGO_TARGET_DIR/debug/clipit"
CHROMIUM="${CHROMIUM:-/usr/bin/chromium}"
[ -x "$CHROMIUM" ] || { echo "chromium not found at $CHROMIUM" >&2; exit 1; }
source tests/e2e/full_size_setup.sh
full_size_setup
mkdir -p "$OUT"
TILES=(data/crc_demo/tiles/*/*) # sorted by the glob
TILE="$ROOT/${TILES[0]}"
TEXT="an H&E image of tumor."
REF="$(mktemp -d)"
trap 'rm -rf "$REF"' EXIT
echo tumor > "$REF/classes.txt" # lib.mjs reads it
echo "==> native reference: clipit embed --model $MODEL --image $TILE" >&2
/usr/bin/time -f '%e s, %M KiB peak RSS' "$CLI" embed --model "$MODEL" --image "$TILE" --text "$TEXT" > "$OUT/native.json"
E2E_ROOT="$ROOT" E2E_REF="$REF" E2E_OUT="$OUT" CHROMIUM="$CHROMIUM" FS_MODEL="$MODEL" FS_NATIVE="$OUT/native.json" \
  FS_TILE="$TILE" FS_TEXT="$TEXT" node tests/e2e/full_size.mjs
