#!/usr/bin/env bash
# clipit's one entry point for building, running and testing.
#
#   ./build.sh          set up, build the CLI and run the demo on the bundled tiles
#   ./build.sh test     set up and run every test (what CI runs)
#   ./build.sh cli      build the native CLI only
#
# Builds share one cargo target folder outside the clone ($CARGO_TARGET_DIR, by default
# ~/.cache/clipit/target), so a second clone or CI reuses the compiled dependencies.
set -euo pipefail
cd "$(dirname "$0")"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/clipit/target}"
# Features every native build and test uses; keep them identical so the cache is shared.
FEATURES="wgpu"

log() { printf '\033[1m==> %s\033[0m\n' "$*" >&2; }

need_cargo() {
  command -v cargo >/dev/null || { echo "cargo not found: install Rust from rustup.rs" >&2; exit 1; }
}

# A software Vulkan device (Mesa lavapipe) lets the wgpu tests run on machines without a GPU.
setup_vulkan() {
  if ! ldconfig -p 2>/dev/null | grep -q 'libvulkan.so.1' || ! ls /usr/share/vulkan/icd.d/lvp_icd*.json >/dev/null 2>&1; then
    if command -v apt-get >/dev/null && [ "$(id -u)" = 0 ]; then
      log "installing Mesa's software Vulkan driver (for the wgpu tests)"
      (apt-get install -y -qq mesa-vulkan-drivers libvulkan1 >/dev/null 2>&1 ||
        (apt-get update -qq >/dev/null 2>&1 && apt-get install -y -qq mesa-vulkan-drivers libvulkan1 >/dev/null 2>&1)) ||
        log "could not install mesa-vulkan-drivers; wgpu tests will be skipped"
    fi
  fi
  export XDG_RUNTIME_DIR="${XDG_RUNTIME_DIR:-$(mktemp -d)}"
}

build_cli() {
  need_cargo
  log "building the clipit CLI"
  cargo build --features "$FEATURES" --bin clipit
  BIN="$CARGO_TARGET_DIR/debug/clipit"
}

demo() {
  build_cli
  local out="${CLIPIT_DEMO_OUT:-$(mktemp -d)}"
  local model=tests/fixtures/open_clip
  log "demo: a tiny random-init open_clip checkpoint (bring real weights: see README)"
  "$BIN" info --model "$model"
  log "demo: retrieval of the bundled reports for the bundled CC BY tiles"
  "$BIN" retrieve --model "$model" --images tests/data/tiles --reports data/reports/demo_reports.jsonl \
    --top-k 1 --out "$out/pairs.jsonl" --cache-dir "$out/cache"
  head -n 3 "$out/pairs.jsonl"
  log "demo: zero-shot over the tiles"
  "$BIN" zero-shot --model "$model" --images tests/data/tiles --classes "tumor,stroma,lymphocytes,mucosa,adipose" \
    --out "$out/predictions.csv"
  log "outputs in $out"
}

run_tests() {
  need_cargo
  setup_vulkan
  if ls /usr/share/vulkan/icd.d/lvp_icd*.json >/dev/null 2>&1; then
    export CLIPIT_REQUIRE_WGPU=1
  fi
  log "running every test (features: $FEATURES)"
  cargo test --features "$FEATURES" --no-fail-fast
}

case "${1:-demo}" in
  demo) demo ;;
  test) run_tests ;;
  cli) build_cli ;;
  *) echo "usage: ./build.sh [demo|test|cli]" >&2; exit 2 ;;
esac
