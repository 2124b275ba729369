#!/usr/bin/env bash
# End-to-end test of the page in headless Chromium, against the native CLI.
#
#   tests/e2e/run.sh            build the page and the CLI, then test WebGPU and the CPU fallback
#
# Environment: E2E_SCENARIOS=webgpu,cpu (which to run), E2E_HARDENING=cpu (the scenarios that also
# run hardening.mjs: training across a reload, bad tiles and bad models), E2E_OUT (screenshots, timings, exported
# adapters; default $CARGO_TARGET_DIR/e2e), E2E_SKIP_BUILD=1 (use the existing pkg/, CLI and
# example), E2E_DEMO=DIR (a demo bundle; default: one built from the test fixtures),
# E2E_SKIP_DIST=1 (skip dist/ on a plain static server, dist.mjs),
# CHROMIUM=/usr/bin/chromium.
# Needs Debian's chromium, node and npm: installed here when missing and running as root with
# apt-get; otherwise it fails (it never skips silently).
set -euo pipefail
cd "$(dirname "$0")/../.."
ROOT="$PWD"
log() { printf '\033[1m==> %s\033[0m\n' "$*" >&2; }

CHROMIUM="${CHROMIUM:-/usr/bin/chromium}"
if [ ! -x "$CHROMIUM" ]; then
  if command -v apt-get >/dev/null && [ "$(id -u)" = 0 ]; then
    log "installing Debian's chromium"
    apt-get install -y -qq chromium chromium-driver >/dev/null 2>&1 ||
      (apt-get update -qq && apt-get install -y -qq chromium chromium-driver >/dev/null)
  else
    echo "chromium not found at $CHROMIUM (apt-get install chromium chromium-driver)" >&2
    exit 1
  fi
fi
if ! command -v node >/dev/null || ! command -v npm >/dev/null; then
  if command -v apt-get >/dev/null && [ "$(id -u)" = 0 ]; then
    log "installing node and npm"
    apt-get install -y -qq nodejs npm >/dev/null 2>&1 || (apt-get update -qq && apt-get install -y -qq nodejs npm >/dev/null)
  else
    echo "node and npm are needed for the end-to-end test (apt-get install nodejs npm)" >&2
    exit 1
  fi
fi
if [ ! -d tests/e2e/node_modules/playwright-core ] || [ tests/e2e/package-lock.json -nt tests/e2e/node_modules/.package-lock.json ]; then
  log "installing playwright-core (no browser download)"
  (cd tests/e2e && PLAYWRIGHT_SKIP_BROWSER_DOWNLOAD=1 npm ci --no-audit --no-fund)
fi

export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/clipit/target}"
if [ "${E2E_SKIP_BUILD:-0}" != 1 ]; then
  ./build.sh web
  ./build.sh cli
  log "building the adapter_predict example (native predictions for exported adapters)"
  cargo build --features wgpu --example adapter_predict
fi
[ -f pkg/clipit_bg.wasm ] || { echo "pkg/clipit_bg.wasm is missing: run ./build.sh web" >&2; exit 1; }
CLI="$CARGO_TARGET_DIR/debug/clipit"
[ -x "$CLI" ] || { echo "$CLI is missing: run ./build.sh cli" >&2; exit 1; }
ADAPTER_PREDICT="$CARGO_TARGET_DIR/debug/examples/adapter_predict"
[ -x "$ADAPTER_PREDICT" ] || { echo "$ADAPTER_PREDICT is missing: cargo build --features wgpu --example adapter_predict" >&2; exit 1; }
E2E_OUT="${E2E_OUT:-$CARGO_TARGET_DIR/e2e}"
mkdir -p "$E2E_OUT"

# References from the native CLI, on the CPU.
REF="$(mktemp -d)"
trap 'rm -rf "$REF"' EXIT
CLASSES="tumor,stroma,lymphocytes,mucosa,adipose"
echo "$CLASSES" > "$REF/classes.txt"
printf '%s\n' "an H&E image of {}." "a histopathology slide showing {}." "{} tissue" > "$REF/templates.txt"
log "native references (clipit zero-shot and retrieve on the CPU)"
"$CLI" zero-shot --model tests/fixtures/open_clip --images tests/data/tiles --classes "$CLASSES" \
  --templates "$REF/templates.txt" --out "$REF/open_clip.csv" >/dev/null
"$CLI" zero-shot --model tests/fixtures/conch --images tests/data/tiles --classes "$CLASSES" \
  --out "$REF/conch.csv" >/dev/null
"$CLI" zero-shot --model tests/fixtures/hf_clip_gelu --images tests/data/tiles --classes "$CLASSES" \
  --out "$REF/hf_clip.csv" >/dev/null
for m in open_clip conch; do
  "$CLI" retrieve --model "tests/fixtures/$m" --images tests/data/tiles --reports data/reports/demo_reports.jsonl \
    --top-k 3 --out "$REF/${m}_pairs.jsonl" --no-cache 2>/dev/null
done

log "native references on the committed demo bundle (data/demo), classes in the page's order"
DEMO_CLASSES="$(cd data/demo/tiles && LC_ALL=C ls -d -- */ | sed 's:/$::' | paste -sd, -)"
echo "$DEMO_CLASSES" > "$REF/real_demo_classes.txt"
# The tiles the page's Tiles panel shows: tiles.json's `show` list, or every tile without one.
DEMO_SHOW="$REF/real_demo_show"
python3 - data/demo "$DEMO_SHOW" <<'PY'
import json, os, sys
demo, out = sys.argv[1], sys.argv[2]
tiles = os.path.join(demo, "tiles")
try:
    show = json.load(open(os.path.join(demo, "tiles.json")))["show"]
except FileNotFoundError:
    show = {c: sorted(os.listdir(os.path.join(tiles, c))) for c in os.listdir(tiles)}
for c, names in show.items():
    os.makedirs(os.path.join(out, c))
    for n in names:
        os.symlink(os.path.abspath(os.path.join(tiles, c, n)), os.path.join(out, c, n))
PY
"$CLI" zero-shot --model data/demo/model --images "$DEMO_SHOW" --classes "$DEMO_CLASSES" \
  --out "$REF/real_demo.csv" >/dev/null
"$CLI" retrieve --model data/demo/model --images "$DEMO_SHOW" --reports data/demo/reports.jsonl \
  --top-k 1 --out "$REF/real_demo_pairs.jsonl" --no-cache 2>/dev/null

if [ -f data/demo/train.csv ]; then
  log "native reference run of the Train panel's demo (clipit train --baselines on data/demo/train.csv, the page's settings)"
  "$CLI" train --method clipit --backbone data/demo/model --teacher data/demo/model --reports data/demo/reports.jsonl \
    --data data/demo/train.csv --out "$REF/real_demo_run" --epochs 5 --batch-size 16 --no-augment --seed 0 \
    --baselines > "$REF/real_demo_train.json" 2>/dev/null
fi
log "native reference map (clipit map on the CMU slide, with each tile's report of the demo corpus)"
"$CLI" map --model tests/fixtures/open_clip --classes "$CLASSES" --templates "$REF/templates.txt" \
  --slide tests/data/slides/cmu_small_region.svs --tile-size 224 --reports data/reports/demo_reports.jsonl \
  --out "$REF/map" >"$REF/map_summary.json" 2>/dev/null

# A demo bundle as data/demo/ will hold it (never written there: that one is committed by its
# owner): the tiny open_clip fixture, the demo reports and the bundled tiles labelled by source.
if [ -z "${E2E_DEMO:-}" ]; then
  E2E_DEMO="$REF/demo"
  mkdir -p "$E2E_DEMO/model"
  cp tests/fixtures/open_clip/open_clip_config.json tests/fixtures/open_clip/open_clip_model.safetensors "$E2E_DEMO/model/"
  cp data/reports/demo_reports.jsonl "$E2E_DEMO/reports.jsonl"
  for f in tests/data/tiles/*; do
    name="$(basename "$f")"
    class="${name%%_*}"; class="${class%%[0-9]*}"
    mkdir -p "$E2E_DEMO/tiles/$class"
    cp "$f" "$E2E_DEMO/tiles/$class/"
  done
fi

# dist/ as `./build.sh dist` writes it, under a sub-path of a folder a plain static server serves.
if [ "${E2E_SKIP_DIST:-0}" != 1 ]; then
  log "dist/ for a static host (scripts/make_dist.py) at $REF/site/course/clipit/"
  python3 scripts/make_dist.py --no-compress --out "$REF/site/course/clipit" >/dev/null
  export E2E_DIST_SITE="$REF/site"
fi
log "headless Chromium: ${E2E_SCENARIOS:-webgpu,cpu} (screenshots and adapters in $E2E_OUT)"
E2E_ROOT="$ROOT" E2E_REF="$REF" E2E_OUT="$E2E_OUT" E2E_DEMO="$E2E_DEMO" E2E_ADAPTER_PREDICT="$ADAPTER_PREDICT" \
  CHROMIUM="$CHROMIUM" node tests/e2e/e2e.mjs
