# Sourced by tests/e2e/full_size.sh and scripts/bench_page.sh (from the repository root): checks
# what both need (pkg/, the CLI at $CLI, playwright-core) and generates once, in $MODEL (never in
# the repository), the full-size random-init HF CLIP ViT-B/32 of make_fixtures.py --full-size.
full_size_setup() {
  [ -f pkg/clipit_bg.wasm ] || { echo "pkg/clipit_bg.wasm is missing: run ./build.sh web" >&2; exit 1; }
  [ -x "$CLI" ] || { echo "$CLI is missing: run ./build.sh cli" >&2; exit 1; }
  [ -d tests/e2e/node_modules/playwright-core ] || { echo "run tests/e2e/run.sh once (installs playwright-core)" >&2; exit 1; }
  if [ ! -f "$MODEL/model.safetensors" ]; then
    echo "==> generating the full-size model in $MODEL (~600 MB)" >&2
    mkdir -p "$(dirname "$MODEL")"
    python3 tests/reference/make_fixtures.py --full-size "$MODEL.tmp"
    mv "$MODEL.tmp" "$MODEL"
  fi
}
