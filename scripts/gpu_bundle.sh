#!/usr/bin/env bash
# Builds what scripts/gpu_check.sh runs, on a machine with no GPU and no CUDA toolkit: the clipit
# binary and the parity test binaries with the `cuda` and `wgpu` features, stripped and
# xz-compressed into .gpu/bin.tar.xz (ignored by git; about 25 MB), so that a lent GPU machine without Rust
# can run the check straight away:
#
#   scripts/gpu_bundle.sh                        # here
#   CLIPIT_GPU_BIN=.gpu scripts/gpu_check.sh     # there, from the repository root
#
# burn-cuda loads the CUDA driver and NVRTC at run time; CUDARC_CUDA_VERSION picks the bindings
# (default 13000, the lent machines' CUDA 13.0).
#
# Offline builds: cubecl-cuda 0.11 links cubecl-llvm, whose build script downloads an LLVM bundle
# from GitHub. LLVM only serves cubecl's optional LLVM/NVPTX compiler; the default CUDA path
# compiles kernels with NVRTC. Where GitHub cannot be reached (this project's build machine), set
# CLIPIT_OFFLINE_CUDA=1: DOCS_RS=1 makes those two build scripts skip LLVM, the linker leaves the
# LLVM C API unresolved, and .gpu/libllvm_stubs.so (generated here from the binary's undefined
# symbols; each stub aborts with a message) is preloaded by scripts/gpu_check.sh to satisfy the
# dynamic linker. The binary runs as long as nobody selects cubecl's LLVM compiler. The build goes
# to its own target folder, since RUSTFLAGS differ.
set -euo pipefail
cd "$(dirname "$0")/.."
export CUDARC_CUDA_VERSION="${CUDARC_CUDA_VERSION:-13000}"
if [ "${CLIPIT_OFFLINE_CUDA:-0}" = 1 ]; then
  export DOCS_RS=1
  export RUSTFLAGS="-C link-arg=-Wl,--unresolved-symbols=ignore-all -C link-arg=-Wl,-z,lazy"
fi
# CLIPIT_GPU_FEATURES=wgpu bundles a build without CUDA (the shared native target folder).
FEATURES="${CLIPIT_GPU_FEATURES:-wgpu,cuda}"
case "$FEATURES" in
  *cuda*) export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/clipit/target-cuda}" ;;
  *) export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/clipit/target}" ;;
esac
cargo build --features "$FEATURES" --bin clipit
# The test binaries' paths, from cargo's own build messages.
cargo test --features "$FEATURES" --no-run --test parity --test train_step --message-format=json |
  python3 -c '
import json, sys
for line in sys.stdin:
    m = json.loads(line)
    if m.get("reason") == "compiler-artifact" and m.get("executable") and m["target"]["kind"] == ["test"]:
        print(m["target"]["name"], m["executable"])
' >/tmp/clipit-gpu-tests.txt
rm -rf .gpu && mkdir -p .gpu
cp "$CARGO_TARGET_DIR/debug/clipit" .gpu/clipit
while read -r name exe; do cp "$exe" ".gpu/$name"; done </tmp/clipit-gpu-tests.txt
if [ "${CLIPIT_OFFLINE_CUDA:-0}" = 1 ]; then
  nm -D --undefined-only .gpu/clipit .gpu/parity | awk '$1 == "U" && $2 !~ /@/ {print $2}' | sort -u |
    python3 -c '
import sys
print("#include <stdio.h>\n#include <stdlib.h>")
print("static void die(const char *s) { fprintf(stderr, \"clipit: %s called, but this offline CUDA build has no LLVM (only the NVRTC path works)\\n\", s); abort(); }")
for s in sys.stdin.read().split():
    print(f"void {s}(void) {{ die(\"{s}\"); }}")
' >/tmp/clipit_llvm_stubs.c
  # The stubs carry their own symbol version: Mesa's drivers (lavapipe, llvmpipe) ask for their
  # libLLVM's versioned symbols (e.g. LLVMContextCreate@LLVM_15), so the preloaded stubs do not
  # shadow them, while clipit's unversioned references still bind to the stubs.
  printf 'CLIPIT_LLVM_STUBS {\n  global: *;\n};\n' >/tmp/clipit_llvm_stubs.map
  cc -shared -fPIC -O1 -Wl,--version-script=/tmp/clipit_llvm_stubs.map -o .gpu/libllvm_stubs.so /tmp/clipit_llvm_stubs.c
fi
# One solid archive: the three binaries share most of their code (about 25 MB, against 40 MB
# compressed one by one; the device tool carries 64 MiB with the working tree).
strip .gpu/clipit .gpu/parity .gpu/train_step
(cd .gpu && tar -cf - clipit parity train_step | xz -T1 --lzma2=preset=6,dict=256MiB >bin.tar.xz)
rm .gpu/clipit .gpu/parity .gpu/train_step
# The tests find their fixtures under the path they were built in.
pwd >.gpu/built_in
ls -la .gpu
