#!/usr/bin/env python3
"""Writes dist/: the page as one self-contained folder that any static file server can host, with
no special headers, under any path (`./build.sh dist` runs this after building the engines).

    python3 scripts/make_dist.py [--out dist] [--allow-origin URL ...] [--demo data/demo]

What a static host cannot do, the folder does itself:
  - the Content-Security-Policy is a <meta> tag in index.html (www/serve.py sends it as a header):
    the page talks to its own origin only, plus each --allow-origin (so it can load a model from,
    say, https://huggingface.co by URL); `frame-ancestors` only works as a header and is left out;
  - cross-origin isolation (the multithreaded CPU engine needs it): coi.js registers coi-sw.js, a
    service worker that adds COOP and COEP to the folder's responses; where that is impossible the
    page runs its one-thread engine and says why;
  - the demo bundle's listing (demo/index.json) is a file, not computed by a server.
Every URL the page uses is relative, so the folder works at https://host/ or https://host/a/b/.
Files over 64 kB also get .gz and .br copies for hosts that serve precompressed files.
"""
import argparse
import gzip
import json
import os
import shutil
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "www"))
import serve  # noqa: E402  (the page's own server: its CSP, MIME types and demo listing)

HOSTING = """# clipit, ready for any static host

Upload this folder as it is (GitHub Pages, an S3 bucket, nginx, a course or hospital intranet
server) and open its index.html over https:// (or http://localhost). Nothing to install; nothing
leaves the visitor's machine: the model runs in the browser tab.

- No special headers are needed. The page isolates itself with a service worker (coi-sw.js) so
  that it can use every CPU core; if the browser does not allow that, it runs on one core and
  says why in the Model panel.
- The page fetches only from its own origin{origins}. Rebuild with
  `./build.sh dist --allow-origin https://host` to let it load models by URL from another host.
- Hosts that serve precompressed files (nginx `gzip_static` / `brotli_static`, most CDNs) can use
  the .gz and .br copies beside the large files; the others serve the plain ones.
"""


def copy_tree(src, dst, skip=()):
    for dirpath, dirnames, filenames in os.walk(src):
        dirnames[:] = [d for d in dirnames if d not in ("node_modules", "__pycache__")]
        rel = os.path.relpath(dirpath, src)
        for f in filenames:
            if f in skip or f.startswith("."):
                continue
            target = os.path.join(dst, rel, f)
            os.makedirs(os.path.dirname(target), exist_ok=True)
            shutil.copy2(os.path.join(dirpath, f), target)


def meta_csp(origins):
    # A <meta> policy cannot carry frame-ancestors (browsers ignore it there, with a warning).
    policy = serve.csp_for(origins).replace("; frame-ancestors 'none'", "")
    return f'<meta http-equiv="Content-Security-Policy" content="{policy}">'


def _leb128(data, pos):
    value = shift = 0
    while True:
        byte = data[pos]
        pos += 1
        value |= (byte & 0x7F) << shift
        shift += 7
        if byte < 0x80:
            return value, pos


def strip_wasm(path):
    """Drops a module's debugging sections (custom sections `name`, `producers`, `.debug_*`):
    function names for stack traces, a third of the file. Every other section is kept as it is."""
    data = open(path, "rb").read()
    if data[:4] != b"\0asm":
        sys.exit(f"make_dist.py: {path} is not a wasm module")
    out, pos = bytearray(data[:8]), 8
    while pos < len(data):
        start = pos
        section_id = data[pos]
        size, body = _leb128(data, pos + 1)
        pos = body + size
        if section_id == 0:
            name_len, name_at = _leb128(data, body)
            name = data[name_at:name_at + name_len].decode("utf-8", "replace")
            if name in ("name", "producers") or name.startswith(".debug"):
                continue
        out += data[start:pos]
    open(path, "wb").write(out)
    return len(data), len(out)


def compress(folder):
    """.gz (and .br where the brotli module is installed) beside every file over 64 kB."""
    try:
        import brotli
    except ImportError:
        brotli = None
        print("make_dist.py: Python's brotli module is missing (pip install brotli): .gz copies only", file=sys.stderr)
    for dirpath, _, filenames in os.walk(folder):
        for f in filenames:
            path = os.path.join(dirpath, f)
            if f.endswith((".gz", ".br")) or os.path.getsize(path) < 65536:
                continue
            data = open(path, "rb").read()
            with open(path + ".gz", "wb") as out:
                out.write(gzip.compress(data, compresslevel=9, mtime=0))
            if brotli is not None:
                with open(path + ".br", "wb") as out:
                    out.write(brotli.compress(data, quality=9))


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default=os.path.join(ROOT, "dist"))
    ap.add_argument("--allow-origin", action="append", default=[], metavar="URL")
    ap.add_argument("--demo", default=os.path.join(ROOT, "data", "demo"))
    ap.add_argument("--no-compress", action="store_true", help="no .gz/.br copies (the end-to-end test)")
    args = ap.parse_args()
    try:
        origins = [serve.origin_of(u) for u in args.allow_origin]
    except ValueError as e:
        ap.error(str(e))
    www, pkg = os.path.join(ROOT, "www"), os.path.join(ROOT, "pkg")
    if not os.path.isfile(os.path.join(pkg, "clipit_bg.wasm")):
        sys.exit("make_dist.py: pkg/clipit_bg.wasm is missing: run ./build.sh web")
    out = os.path.abspath(args.out)
    tmp = out + ".new"
    shutil.rmtree(tmp, ignore_errors=True)
    copy_tree(www, tmp, skip=("serve.py",))
    copy_tree(pkg, os.path.join(tmp, "pkg"), skip=(".gitignore", "package.json"))
    for dirpath, _, filenames in os.walk(os.path.join(tmp, "pkg")):
        for f in filenames:
            if f.endswith((".gz", ".br")):
                os.remove(os.path.join(dirpath, f))
    for engine in ("pkg/clipit_bg.wasm", "pkg/mt/clipit_bg.wasm"):
        if os.path.isfile(os.path.join(tmp, engine)):
            before, after = strip_wasm(os.path.join(tmp, engine))
            print(f"make_dist.py: {engine}: {before / 1e6:.1f} MB -> {after / 1e6:.1f} MB without names", file=sys.stderr)
    index = serve.demo_index(args.demo)
    if index is not None:
        copy_tree(args.demo, os.path.join(tmp, "demo"))
        with open(os.path.join(tmp, "demo", "index.json"), "wb") as f:
            f.write(index)
    html_path = os.path.join(tmp, "index.html")
    html = open(html_path, encoding="utf-8").read()
    marker = '<meta charset="utf-8">'
    if marker not in html:
        sys.exit(f"make_dist.py: {html_path} has no {marker} to put the policy after")
    html = html.replace(marker, marker + "\n    " + meta_csp(origins), 1)
    open(html_path, "w", encoding="utf-8").write(html)
    sw_path = os.path.join(tmp, "coi-sw.js")
    sw = open(sw_path, encoding="utf-8").read()
    if "const POLICY = '';" not in sw:
        sys.exit(f"make_dist.py: {sw_path} has no `const POLICY = '';` to fill in")
    open(sw_path, "w", encoding="utf-8").write(sw.replace("const POLICY = '';", f"const POLICY = {json.dumps(serve.csp_for(origins))};", 1))
    listed = "".join(f" and {o}" for o in origins)
    open(os.path.join(tmp, "HOSTING.md"), "w").write(HOSTING.format(origins=listed))
    if not args.no_compress:
        compress(tmp)
    shutil.rmtree(out, ignore_errors=True)
    os.rename(tmp, out)
    total = sum(os.path.getsize(os.path.join(d, f)) for d, _, fs in os.walk(out) for f in fs if not f.endswith((".gz", ".br")))
    print(f"make_dist.py: wrote {out} ({total / 1e6:.1f} MB, compressed copies beside the large files)")


if __name__ == "__main__":
    main()
