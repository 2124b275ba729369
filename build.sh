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
#                       headless Chromium (tests/wasm/run.sh). The page's two engines and the
#                       fuzz targets build in the background while the native tests build and
#                       run (logs in $CARGO_TARGET_DIR/test-logs/), so both cores stay busy.
#   ./build.sh cli      build the native CLI only
#   ./build.sh web      build the browser module (wasm32 + wasm-bindgen) into pkg/
#   ./build.sh dist     write dist/: the page for any static host (no special headers, any
#                       sub-path), with the demo bundle; --allow-origin URL (repeatable) lets the
#                       hosted page load models from that origin
#
# Builds share one cargo target folder outside the clone ($CARGO_TARGET_DIR, by default
# ~/.cache/clipit/target), so a second clone or CI reuses the compiled dependencies.
set -euo pipefail
cd "$(dirname "$0")"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/clipit/target}"
# Features every native build and test uses; keep them identical so the cache is shared.
FEATURES="wgpu"

log() { printf '\033[1m==> %s\033[0m\n' "$*" >&2; }

# `cargo install` of a build tool (wasm-bindgen-cli, cargo-deny), lightly optimised: they run for
# seconds, but a full release build of each took minutes of a cold 2-core machine's test run.
install_tool() {
  CARGO_PROFILE_RELEASE_OPT_LEVEL=1 CARGO_PROFILE_RELEASE_LTO=false CARGO_PROFILE_RELEASE_CODEGEN_UNITS=16 \
    CARGO_PROFILE_RELEASE_DEBUG=false cargo install "$@"
}

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
  log "demo: the built-in demo CLIP (trained by clipit pretrain; a demo, not a diagnostic model; data/demo/ATTRIBUTION.md)"
  "$BIN" info --model "$model"
  log "demo: CLIP-IT step 1, the top report of every tile ($tiles) in $reports"
  "$BIN" retrieve --model "$model" --images "$tiles" --reports "$reports" --top-k 1 \
    --out "$out/pairs.jsonl" --cache-dir "$out/cache"
  head -n 3 "$out/pairs.jsonl"
  log "demo: zero-shot over the classes $classes"
  "$BIN" zero-shot --model "$model" --images "$tiles" --classes "$classes" --out "$out/zero_shot.csv"
  # The Train panel's tiles (data/demo/train.csv, when the bundle has one) with the page's settings:
  # the same split, the same two baselines, the same figures within noise.
  local data="$tiles"
  [ -f data/demo/train.csv ] && data=data/demo/train.csv
  log "demo: CLIP-IT training on $data as the page's Train panel runs it (LoRA + heads, distillation from the retrieved reports), beside zero-shot and a linear probe on its validation split"
  "$BIN" train --method clipit --backbone "$model" --teacher "$model" --reports "$reports" --data "$data" \
    --out "$out/run" --epochs 5 --batch-size 16 --no-augment --seed 0 --baselines >/dev/null
  log "demo: the trained classifier on every bundled tile (in-sample for its training split)"
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
    install_tool wasm-bindgen-cli --version "$want"
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
  # The crate is an rlib for native builds; the wasm module is its cdylib, asked for here only.
  CARGO_TARGET_DIR="$WASM_TARGET_DIR" cargo rustc --target wasm32-unknown-unknown \
    --no-default-features --features web --lib --profile web --crate-type cdylib
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
    -Z build-std=panic_abort,std --no-default-features --features web-threads --lib --profile web \
    --crate-type cdylib -- \
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

# wasm-opt from npm's binaryen (Debian's breaks these modules, ../shared/docs/stack.md), installed
# once into ~/.cache/clipit/tools; prints its path, or nothing when it cannot be installed.
wasm_opt() {
  local tools="$HOME/.cache/clipit/tools" version=129.0.0
  if [ ! -x "$tools/node_modules/.bin/wasm-opt" ]; then
    command -v npm >/dev/null || return 0
    log "installing binaryen $version's wasm-opt from npm into $tools" >&2
    mkdir -p "$tools"
    (cd "$tools" && npm install --no-audit --no-fund --silent "binaryen@$version" >&2) || return 0
  fi
  echo "$tools/node_modules/.bin/wasm-opt"
}

# A static copy of the page for any host (scripts/make_dist.py): the engines without their
# debugging sections (and through wasm-opt with CLIPIT_WASM_OPT=1), the demo bundle, the policy as
# a <meta> tag, a service worker for isolation, .gz/.br copies.
dist() {
  local args=()
  while [ $# -gt 0 ]; do
    case "$1" in
      --allow-origin) [ $# -ge 2 ] || { echo "--allow-origin needs a URL" >&2; exit 2; }; args+=(--allow-origin "$2"); shift 2 ;;
      --allow-origin=*) args+=(--allow-origin "${1#*=}"); shift ;;
      *) echo "usage: ./build.sh dist [--allow-origin URL]..." >&2; exit 2 ;;
    esac
  done
  build_web
  command -v python3 >/dev/null || { echo "python3 not found (it writes dist/)" >&2; exit 1; }
  python3 -c 'import brotli' 2>/dev/null || python3 -m pip install -q brotli >/dev/null 2>&1 ||
    log "could not install Python's brotli module: dist/ gets .gz copies only"
  python3 scripts/make_dist.py --out "${CLIPIT_DIST_DIR:-dist}" "${args[@]}"
  # wasm-opt takes 5 to 10 minutes a module on 2 cores and gains little once the names are
  # stripped (make_dist.py does that): opt in with CLIPIT_WASM_OPT=1.
  local opt=""
  [ "${CLIPIT_WASM_OPT:-0}" = 1 ] && opt="$(wasm_opt)"
  if [ -n "$opt" ]; then
    local dir="${CLIPIT_DIST_DIR:-dist}" f
    for f in "$dir/pkg/clipit_bg.wasm" "$dir/pkg/mt/clipit_bg.wasm"; do
      [ -f "$f" ] || continue
      log "wasm-opt -O3 $f ($(du -h "$f" | cut -f1))"
      "$opt" -O3 --enable-simd --enable-threads --enable-bulk-memory --enable-mutable-globals \
        --enable-nontrapping-float-to-int --enable-sign-ext --enable-reference-types \
        --enable-multivalue -o "$f.opt" "$f" && mv "$f.opt" "$f"
      rm -f "$f.gz" "$f.br"
    done
    python3 -c 'import sys; sys.path.insert(0, "scripts"); import make_dist; make_dist.compress(sys.argv[1])' "$dir"
  elif [ "${CLIPIT_WASM_OPT:-0}" = 1 ]; then
    log "wasm-opt unavailable (npm missing or offline): dist/ keeps the modules as wasm-bindgen wrote them"
  fi
  log "dist/ is ready: upload it to any static host (see dist/HOSTING.md); $(du -sh "${CLIPIT_DIST_DIR:-dist}" | cut -f1) in all"
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
    install_tool cargo-deny --locked || return 1
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

# Waits for background job `pid` (a build whose output went to `logfile`); on failure shows the
# log's end and returns 1.
wait_build() {
  local pid=$1 what=$2 logfile=$3
  if wait "$pid"; then
    log "$what: built ($(grep -c . "$logfile") log lines in $logfile)"
  else
    tail -n 80 "$logfile" >&2
    echo "$what: the build FAILED (whole log: $logfile)" >&2
    return 1
  fi
}

run_tests() {
  need_cargo
  setup_vulkan
  if ls /usr/share/vulkan/icd.d/lvp_icd*.json >/dev/null 2>&1; then
    export CLIPIT_REQUIRE_WGPU=1
  fi
  local failed=0 logs="$CARGO_TARGET_DIR/test-logs" web_pid="" fuzz_pid=""
  mkdir -p "$logs"
  # Every crate Cargo.lock names, for every target: cargo deny reads them offline, and the builds
  # below then never wait on each other for downloads.
  if ! cargo fetch --locked --offline >/dev/null 2>&1; then
    log "fetching the crates Cargo.lock names (cargo fetch --locked)"
    cargo fetch --locked || log "cargo fetch failed (offline?): cargo deny and the builds use what is cached"
  fi
  # Toolchains first (rustup must not change one toolchain from two builds at once).
  if [ "${CLIPIT_SKIP_E2E:-0}" != 1 ]; then
    setup_web
    [ "${CLIPIT_SKIP_WEB_THREADS:-0}" = 1 ] || setup_web_threads
  fi
  # The page's two engines and the fuzz targets build in the background while the native tests
  # build and run in the foreground: one build alone leaves a core idle through its serial
  # stretches (a big crate's front end, the links), and the native tests wait on lavapipe.
  if [ "${CLIPIT_SKIP_E2E:-0}" != 1 ]; then
    log "building the page's engines in the background (log: $logs/web.log)"
    ./build.sh web >"$logs/web.log" 2>&1 &
    web_pid=$!
  fi
  if [ "${CLIPIT_SKIP_FUZZ:-0}" != 1 ]; then
    log "building the fuzz targets in the background (log: $logs/fuzz-build.log)"
    fuzz/smoke.sh --build-only >"$logs/fuzz-build.log" 2>&1 &
    fuzz_pid=$!
  fi
  log "cargo deny: licences, bans, sources and advisories (deny.toml; CLIPIT_SKIP_DENY=1 skips it)"
  run_deny || failed=1
  log "running every test (features: $FEATURES)"
  cargo test --features "$FEATURES" --no-fail-fast || failed=1
  # 30 s of each cargo-fuzz target from its committed seeds (nightly; sanitizer build in
  # ~/.cache/clipit/target-fuzz, shared by every clone). libFuzzer uses one core: the page's end
  # to end test runs beside it.
  local smoke_pid=""
  if [ -n "$fuzz_pid" ]; then
    if wait_build "$fuzz_pid" "fuzz targets" "$logs/fuzz-build.log"; then
      log "fuzz smoke run in the background: 30 s of each cargo-fuzz target (log: $logs/fuzz-smoke.log)"
      fuzz/smoke.sh --no-build 30 >"$logs/fuzz-smoke.log" 2>&1 &
      smoke_pid=$!
    else
      failed=1
    fi
  else
    log "CLIPIT_SKIP_FUZZ=1: skipping the fuzz smoke run"
  fi
  # The page end to end in headless Chromium (WebGPU and the CPU fallback), then the wasm unit
  # tests; both fail loudly when what they need cannot be installed.
  if [ -n "$web_pid" ]; then
    if wait_build "$web_pid" "the page's engines (pkg/)" "$logs/web.log"; then
      log "building the CLI and the adapter_predict example for the end-to-end test"
      if cargo build --features "$FEATURES" --bin clipit --example adapter_predict; then
        log "end-to-end test of the page (tests/e2e/run.sh)"
        E2E_SKIP_BUILD=1 tests/e2e/run.sh || failed=1
      else
        failed=1
      fi
      log "wasm unit tests in headless Chromium (tests/wasm/run.sh)"
      tests/wasm/run.sh || failed=1
    else
      failed=1
    fi
  else
    log "CLIPIT_SKIP_E2E=1: skipping the end-to-end test of the page"
    log "wasm unit tests in headless Chromium (tests/wasm/run.sh)"
    tests/wasm/run.sh || failed=1
  fi
  if [ -n "$smoke_pid" ]; then
    if wait "$smoke_pid"; then
      grep '^smoke.sh: ' "$logs/fuzz-smoke.log" >&2 || true
    else
      tail -n 60 "$logs/fuzz-smoke.log" >&2
      echo "fuzz smoke run FAILED (whole log: $logs/fuzz-smoke.log)" >&2
      failed=1
    fi
  fi
  [ "$failed" = 0 ] || { echo "some tests failed (see above)" >&2; exit 1; }
}

case "${1:-demo}" in
  demo) demo ;;
  test) run_tests ;;
  cli) build_cli ;;
  web) build_web ;;
  web-setup) setup_web ;;
  serve) shift; serve "$@" ;;
  dist) shift; dist "$@" ;;
  *) echo "usage: ./build.sh [demo|test|cli|web|serve|dist]" >&2; exit 2 ;;
esac
