#!/usr/bin/env bash
# Short fuzzing run of every cargo-fuzz target (issue 6): builds them, then runs each for N seconds
# (default 30) from its committed seed corpus in fuzz/corpus/<target>. Fails on any crash, hang
# (over 60 s of wall-clock time on one input: libFuzzer's timeout is wall-clock, and on a loaded
# 2-core CI machine a config input that costs 1.7 s of CPU took 13 s) or out-of-memory (over 2 GB
# RSS); the input that did it is saved under
# fuzz/artifacts/<target>/ (reproduce: cargo +nightly fuzz run <target> <that file>).
#
#   fuzz/smoke.sh [--build-only | --no-build] [SECONDS] [TARGET...]
#
# --build-only builds the targets and stops; --no-build runs targets built before (./build.sh test
# builds them in the background while the native tests run, then fuzzes).
#
# Needs rustup: installs the nightly toolchain (minimal profile) and cargo-fuzz when missing.
# Builds go to $CLIPIT_FUZZ_TARGET_DIR (default ~/.cache/clipit/target-fuzz), never to the main
# target folder: the sanitizer flags would otherwise rebuild it from scratch.
set -euo pipefail

stage=all
case "${1:-}" in
    --build-only) stage=build; shift ;;
    --no-build) stage=run; shift ;;
esac
secs=${1:-30}
shift || true
repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$repo"
targets=("$@")
if [ ${#targets[@]} -eq 0 ]; then
    targets=(safetensors config tokenizer image pickle manifest)
fi
export CARGO_TARGET_DIR=${CLIPIT_FUZZ_TARGET_DIR:-$HOME/.cache/clipit/target-fuzz}

if ! rustup run nightly rustc --version >/dev/null 2>&1; then
    echo "smoke.sh: installing the nightly toolchain (cargo-fuzz needs it)"
    rustup toolchain install nightly --profile minimal
fi
if ! cargo +nightly fuzz --version >/dev/null 2>&1; then
    echo "smoke.sh: installing cargo-fuzz"
    # Lightly optimised: the tool only drives cargo and libFuzzer.
    CARGO_PROFILE_RELEASE_OPT_LEVEL=1 CARGO_PROFILE_RELEASE_LTO=false CARGO_PROFILE_RELEASE_CODEGEN_UNITS=16 \
        cargo install cargo-fuzz --locked
fi

start=$(date +%s)
if [ "$stage" != run ]; then
    if [ "${#targets[@]}" = 6 ]; then
        cargo +nightly fuzz build # every target in one cargo run: the links run side by side
    else
        for t in "${targets[@]}"; do
            cargo +nightly fuzz build "$t"
        done
    fi
    echo "smoke.sh: built ${#targets[@]} targets in $(($(date +%s) - start)) s"
fi
[ "$stage" != build ] || exit 0

# New inputs libFuzzer finds go to a scratch folder; the committed seeds are only read.
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
failed=()
for t in "${targets[@]}"; do
    mkdir -p "$work/$t"
    log="$work/$t.log"
    echo "smoke.sh: fuzzing $t for ${secs} s"
    if cargo +nightly fuzz run "$t" "$work/$t" "fuzz/corpus/$t" -- \
        -max_total_time="$secs" -rss_limit_mb=2048 -timeout=60 -print_final_stats=1 \
        >"$log" 2>&1; then
        runs=$(grep -m1 '^stat::number_of_executed_units' "$log" | awk '{print $2}')
        echo "smoke.sh: $t ok (${runs:-?} executions)"
    else
        tail -n 40 "$log"
        echo "smoke.sh: $t FAILED (input saved under fuzz/artifacts/$t/)"
        failed+=("$t")
    fi
done
echo "smoke.sh: done in $(($(date +%s) - start)) s"
if [ ${#failed[@]} -gt 0 ]; then
    echo "smoke.sh: failing targets: ${failed[*]}"
    exit 1
fi
