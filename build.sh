#!/usr/bin/env bash
# clipit's one entry point for building, running and testing.
#
#   ./build.sh serve    the README's first command: set up, build the browser module and serve the
#                       page (www/ + pkg/ + the demo bundle) on http://127.0.0.1:8080; extra
#                       arguments go to www/serve.py (e.g. --allow-origin https://host to let the
#                       page load a model from that URL)
#   ./build.sh          set up, build the CLI and run the same job on the command line (demo bundle)
#   ./build.sh test     set up and run every test (what CI runs): cargo deny (CLIPIT_SKIP_DENY=1
#                       skips it), cargo test, a 30 s fuzz run of each target (fuzz/smoke.sh;
#                       CLIPIT_SKIP_FUZZ=1 skips it), then the page end to end in headless Chromium
#                       (tests/e2e/run.sh; CLIPIT_SKIP_E2E=1 skips it) and the wasm unit tests in
#                       headless Chromium (tests/wasm/run.sh)
#   ./build.sh cli      build the native CLI only
#   ./build.sh web      build the browser module (wasm32 + wasm-bindgen) into pkg/
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
  local model=data/demo/model tiles=data/demo/tiles reports=data/demo/reports.jsonl
  local classes
  classes="$(cd "$tiles" && ls -d -- */ | sed 's:/$::' | paste -sd, -)"
  log "demo: the built-in demo CLIP (trained by clipit pretrain on CC BY tiles; a demo, not a diagnostic model)"
  "$BIN" info --model "$model"
  log "demo: CLIP-IT step 1, the top report of every tile ($tiles) in $reports"
  "$BIN" retrieve --model "$model" --images "$tiles" --reports "$reports" --top-k 1 \
    --out "$out/pairs.jsonl" --cache-dir "$out/cache"
  head -n 3 "$out/pairs.jsonl"
  log "demo: zero-shot over the classes $classes"
  "$BIN" zero-shot --model "$model" --images "$tiles" --classes "$classes" --out "$out/zero_shot.csv"
  log "demo: CLIP-IT training (LoRA + heads, distillation from the retrieved reports), then evaluation"
  "$BIN" train --method clipit --backbone "$model" --teacher "$model" --reports "$reports" --data "$tiles" \
    --out "$out/run" --epochs 4 --batch-size 16 --no-augment --seed 0 >/dev/null
  "$BIN" eval --run "$out/run" --data "$tiles" --json
  "$BIN" classify --run "$out/run" --images "$tiles" --out "$out/predictions.csv"
  log "outputs in $out; open the page with ./build.sh serve"
}

# --- The page (www/): a wasm32 build of the library in its own target folder. -------------------
WASM_TARGET_DIR="${CLIPIT_WASM_TARGET_DIR:-$HOME/.cache/clipit/target-wasm}"

# The wasm-bindgen version pinned in Cargo.lock (the CLI must match it exactly).
wasm_bindgen_version() {
  awk '/^name = "wasm-bindgen"$/ { getline; gsub(/version = |"/, ""); print; exit }' Cargo.lock
}

setup_web() {
  need_cargo
  if ! rustup target list --installed 2>/dev/null | grep -qx wasm32-unknown-unknown; then
    log "adding the wasm32-unknown-unknown target"
    rustup target add wasm32-unknown-unknown
  fi
  local want have
  want="$(wasm_bindgen_version)"
  have="$(wasm-bindgen --version 2>/dev/null | awk '{print $2}' || true)"
  if [ "$have" != "$want" ]; then
    log "installing wasm-bindgen-cli $want (found '${have:-none}'; takes a few minutes)"
    cargo install wasm-bindgen-cli --version "$want"
  fi
}

# The multithreaded CPU engine needs nightly Rust with its sources (std rebuilt with atomics).
setup_web_threads() {
  if ! rustup run nightly rustc --version >/dev/null 2>&1; then
    log "installing nightly Rust (for the page's multithreaded CPU engine)"
    rustup toolchain install nightly --profile minimal
  fi
  if ! rustup component list --toolchain nightly --installed 2>/dev/null | grep -q '^rust-src'; then
    log "adding rust-src to nightly (std is rebuilt with wasm atomics)"
    rustup component add rust-src --toolchain nightly
  fi
}

# Builds pkg/clipit.js + pkg/clipit_bg.wasm (WebGPU + one-thread CPU) and pkg/mt/ (the
# multithreaded CPU engine: wasm threads, shared memory up to 4 GiB; CLIPIT_SKIP_WEB_THREADS=1
# skips it). No wasm-opt: Debian's binaryen breaks the module.
build_web() {
  setup_web
  log "building the browser module (profile web; a cold build takes ~20 min on 2 cores)"
  CARGO_TARGET_DIR="$WASM_TARGET_DIR" cargo build --target wasm32-unknown-unknown \
    --no-default-features --features web --lib --profile web
  wasm-bindgen --target web --out-dir pkg "$WASM_TARGET_DIR/wasm32-unknown-unknown/web/clipit.wasm"
  log "pkg/: $(du -h pkg/clipit_bg.wasm | cut -f1) clipit_bg.wasm"
  if [ "${CLIPIT_SKIP_WEB_THREADS:-0}" = 1 ]; then
    rm -rf pkg/mt
    return 0
  fi
  setup_web_threads
  log "building the multithreaded CPU engine (nightly, std rebuilt with atomics; a cold build takes ~25 min)"
  local mt_dir="${CLIPIT_WASM_MT_TARGET_DIR:-$HOME/.cache/clipit/target-wasm-mt}"
  # The linker arguments (shared, imported memory; the TLS symbols wasm-bindgen's thread support
  # needs) go to clipit's own link only, after `--`.
  RUSTFLAGS="-C target-feature=+simd128,+atomics,+bulk-memory,+mutable-globals -C link-arg=--max-memory=4294967296" \
    CARGO_TARGET_DIR="$mt_dir" cargo +nightly rustc --target wasm32-unknown-unknown \
    -Z build-std=panic_abort,std --no-default-features --features web-threads --lib --profile web -- \
    -C link-arg=--shared-memory -C link-arg=--import-memory -C link-arg=--export=__wasm_init_tls \
    -C link-arg=--export=__tls_size -C link-arg=--export=__tls_align -C link-arg=--export=__tls_base
  rm -rf pkg/mt
  wasm-bindgen --target web --out-dir pkg/mt "$mt_dir/wasm32-unknown-unknown/web/clipit.wasm"
  # wasm-bindgen-rayon's pool workers import the module as '../../..', a bundler's package path;
  # served as files (no bundler) that is a folder, so they are pointed at the module itself.
  local helpers
  helpers="$(ls pkg/mt/snippets/wasm-bindgen-rayon-*/src/workerHelpers.js)"
  grep -q "import('../../..')" "$helpers" ||
    { echo "build.sh: $helpers no longer imports '../../..': check wasm-bindgen-rayon's worker" >&2; exit 1; }
  sed -i "s#import('../../..')#import('../../../clipit.js')#" "$helpers"
  log "pkg/mt/: $(du -h pkg/mt/clipit_bg.wasm | cut -f1) clipit_bg.wasm (multithreaded CPU)"
}

serve() {
  build_web
  command -v python3 >/dev/null || { echo "python3 not found (it serves the page)" >&2; exit 1; }
  log "serving the page on http://127.0.0.1:${PORT:-8080}/ (Ctrl-C stops it; nothing leaves this machine)"
  exec python3 www/serve.py --port "${PORT:-8080}" "$@"
}

# --- Supply chain: cargo deny (licences, bans, sources, RustSec advisories; deny.toml). ----------
# The advisory DB is only read from a local clone, never fetched: deny.toml's db-path, in the folder
# cargo-deny names after the default URL (github.com/rustsec/advisory-db). CLIPIT_ADVISORY_DB (a git
# URL or folder holding that repository) makes the clone when it is missing.
ADVISORY_DB="$HOME/.cache/clipit/advisory-db/advisory-db-3157b0e258782691"

run_deny() {
  if [ "${CLIPIT_SKIP_DENY:-0}" = 1 ]; then
    log "CLIPIT_SKIP_DENY=1: skipping cargo deny"
    return 0
  fi
  if ! cargo deny --version >/dev/null 2>&1; then
    log "installing cargo-deny (cargo install cargo-deny --locked; a few minutes)"
    cargo install cargo-deny --locked || return 1
  fi
  if [ ! -e "$ADVISORY_DB/.git" ] && [ -n "${CLIPIT_ADVISORY_DB:-}" ]; then
    log "cloning the RustSec advisory DB from $CLIPIT_ADVISORY_DB into $ADVISORY_DB"
    git clone -q --single-branch --branch main "$CLIPIT_ADVISORY_DB" "$ADVISORY_DB" || true
  fi
  local checks=(licenses bans sources) db_date db_time
  if db_date="$(git -C "$ADVISORY_DB" show -s --format='%cs, commit %h' HEAD 2>/dev/null)"; then
    db_time="$(git -C "$ADVISORY_DB" show -s --format=%ct HEAD)"
    log "cargo deny: RustSec advisory DB of $db_date ($(( ($(date +%s) - db_time) / 86400 )) days old), read offline from $ADVISORY_DB; advisories published later are not checked"
    checks+=(advisories)
  else
    log "advisory DB not available offline: no clone at $ADVISORY_DB (set CLIPIT_ADVISORY_DB to a git URL or folder of github.com/rustsec/advisory-db to make one); SKIPPING the advisories check, licences, bans and sources still run"
  fi
  # --offline: the DB is opened, never fetched (and the crates.io index is read from cargo's cache).
  cargo deny --all-features --locked --offline check --hide-inclusion-graph "${checks[@]}"
}

run_tests() {
  need_cargo
  setup_vulkan
  if ls /usr/share/vulkan/icd.d/lvp_icd*.json >/dev/null 2>&1; then
    export CLIPIT_REQUIRE_WGPU=1
  fi
  local failed=0
  log "cargo deny: licences, bans, sources and advisories (deny.toml; CLIPIT_SKIP_DENY=1 skips it)"
  run_deny || failed=1
  log "running every test (features: $FEATURES)"
  cargo test --features "$FEATURES" --no-fail-fast || failed=1
  # 30 s of each cargo-fuzz target from its committed seeds (nightly; sanitizer build in
  # ~/.cache/clipit/target-fuzz, shared by every clone).
  if [ "${CLIPIT_SKIP_FUZZ:-0}" = 1 ]; then
    log "CLIPIT_SKIP_FUZZ=1: skipping the fuzz smoke run"
  else
    log "fuzz smoke run: 30 s of each cargo-fuzz target (fuzz/smoke.sh 30; CLIPIT_SKIP_FUZZ=1 skips it)"
    fuzz/smoke.sh 30 || failed=1
  fi
  # The page end to end in headless Chromium (WebGPU and the CPU fallback). It installs what it
  # needs (wasm target, wasm-bindgen-cli, chromium, node packages) and fails loudly when it cannot.
  if [ "${CLIPIT_SKIP_E2E:-0}" = 1 ]; then
    log "CLIPIT_SKIP_E2E=1: skipping the end-to-end test of the page"
  else
    log "end-to-end test of the page (tests/e2e/run.sh)"
    tests/e2e/run.sh || failed=1
  fi
  # wasm-bindgen-test unit tests of the library in headless Chromium (tests/wasm.rs).
  log "wasm unit tests in headless Chromium (tests/wasm/run.sh)"
  tests/wasm/run.sh || failed=1
  [ "$failed" = 0 ] || { echo "some tests failed (see above)" >&2; exit 1; }
}

case "${1:-demo}" in
  demo) demo ;;
  test) run_tests ;;
  cli) build_cli ;;
  web) build_web ;;
  web-setup) setup_web ;;
  serve) shift; serve "$@" ;;
  *) echo "usage: ./build.sh [demo|test|cli|web|serve]" >&2; exit 2 ;;
esac
