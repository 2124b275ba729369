#!/usr/bin/env bash
# wasm-bindgen-test unit tests (tests/wasm.rs) in headless Chromium, through chromedriver.
#
#   tests/wasm/run.sh       build tests/wasm.rs for wasm32 (profile web, the page's target folder,
#                           so only clipit and the test compile) and run it in the system Chromium
#
# Environment: CLIPIT_WASM_TARGET_DIR (default ~/.cache/clipit/target-wasm), CHROMIUM and
# CHROMEDRIVER (default /usr/bin/chromium, /usr/bin/chromedriver), WASM_BINDGEN_TEST_TIMEOUT
# (seconds, default 600). Installs Debian's chromium and chromium-driver when missing and running
# as root with apt-get; otherwise it fails (it never skips silently).
set -euo pipefail
cd "$(dirname "$0")/../.."
log() { printf '\033[1m==> %s\033[0m\n' "$*" >&2; }

CHROMIUM="${CHROMIUM:-/usr/bin/chromium}"
export CHROMEDRIVER="${CHROMEDRIVER:-/usr/bin/chromedriver}"
if [ ! -x "$CHROMIUM" ] || [ ! -x "$CHROMEDRIVER" ]; then
  if command -v apt-get >/dev/null && [ "$(id -u)" = 0 ]; then
    log "installing Debian's chromium and chromium-driver"
    apt-get install -y -qq chromium chromium-driver >/dev/null 2>&1 ||
      (apt-get update -qq && apt-get install -y -qq chromium chromium-driver >/dev/null)
  else
    echo "chromium or chromedriver missing ($CHROMIUM, $CHROMEDRIVER): apt-get install chromium chromium-driver" >&2
    exit 1
  fi
fi
# The wasm32 target and wasm-bindgen-cli (which ships wasm-bindgen-test-runner) at Cargo.lock's version.
./build.sh web-setup

# Chromium's flags (docs: WebGPU through SwiftShader needs --enable-unsafe-webgpu and no --disable-gpu);
# the runner adds headless, no-sandbox and disable-dev-shm-usage itself.
TMP="$(mktemp -d)"
trap 'rm -rf "$TMP"' EXIT
cat > "$TMP/webdriver.json" <<JSON
{ "goog:chromeOptions": { "binary": "$CHROMIUM", "args": ["--enable-unsafe-webgpu", "--disable-quic",
  "--no-first-run", "--disable-background-networking", "--disable-component-update", "--disable-sync",
  "--user-data-dir=$TMP/profile"] } }
JSON
export WASM_BINDGEN_TEST_WEBDRIVER_JSON="$TMP/webdriver.json"
export WASM_BINDGEN_TEST_TIMEOUT="${WASM_BINDGEN_TEST_TIMEOUT:-600}"
export CARGO_TARGET_WASM32_UNKNOWN_UNKNOWN_RUNNER=wasm-bindgen-test-runner

log "wasm-bindgen-test unit tests (tests/wasm.rs) in headless Chromium"
CARGO_TARGET_DIR="${CLIPIT_WASM_TARGET_DIR:-$HOME/.cache/clipit/target-wasm}" \
  cargo test --target wasm32-unknown-unknown --no-default-features --features web --profile web --test wasm
