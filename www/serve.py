#!/usr/bin/env python3
"""Serves the clipit page on 127.0.0.1 only: www/ at /, pkg/ (wasm-bindgen's output) at /pkg/ and
the demo bundle (data/demo/) at /demo/.

    python3 www/serve.py [--port 8080] [--root REPO] [--demo DIR] [--allow-origin URL ...]

The demo bundle is an open_clip folder `model/`, a report corpus `reports.jsonl` and labelled
tiles `tiles/<class>/<image>`; `/demo/index.json` lists them (404 when there is no bundle), so
the page can offer and auto-load it.

Only files with a known type are served, with the right MIME type (application/wasm for the
module, text/javascript for the worker) and a Content-Security-Policy that lets the page talk to
this origin only (`connect-src 'self'`). `--allow-origin https://host` (repeatable) adds that
origin, and nothing else, to `connect-src`, so that the page's "Load from a URL" can fetch a model
from it (the other server must also send CORS headers). A Content-Security-Policy sent as a header
cannot be widened by the page at run time, so this is the one switch. The page is served
cross-origin isolated (COOP `same-origin`, COEP `require-corp`): the multithreaded CPU engine
(pkg/mt/, wasm threads) needs it; a model fetched from another origin then needs that server's
CORS headers, as it already did. Text, wasm and weights go gzip-compressed to browsers that accept
it (a `.br` or `.gz` copy beside a file is sent instead when there is one). Port 0 picks a free port;
the first line on stdout says which.
"""
import argparse
import gzip
import http.server
import json
import os
import posixpath
import sys
import urllib.parse

MIME = {
    ".html": "text/html; charset=utf-8",
    ".js": "text/javascript; charset=utf-8",
    ".mjs": "text/javascript; charset=utf-8",
    ".css": "text/css; charset=utf-8",
    ".wasm": "application/wasm",
    ".json": "application/json",
    ".svg": "image/svg+xml",
    ".png": "image/png",
    ".jpg": "image/jpeg",
    ".jpeg": "image/jpeg",
    ".tif": "image/tiff",
    ".tiff": "image/tiff",
    ".safetensors": "application/octet-stream",
    ".ico": "image/x-icon",
    ".txt": "text/plain; charset=utf-8",
    ".jsonl": "text/plain; charset=utf-8",
    ".d.ts": "text/plain; charset=utf-8",
}

CSP = (
    "default-src 'self'; script-src 'self' 'wasm-unsafe-eval'; worker-src 'self'; "
    "img-src 'self' blob: data:; object-src 'none'; base-uri 'none'; frame-ancestors 'none'"
)


def origin_of(url):
    """The origin (scheme://host[:port]) of an http(s) URL; ValueError names what is wrong."""
    parts = urllib.parse.urlsplit(url.strip())
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError(f"--allow-origin {url!r}: give an http:// or https:// URL with a host")
    if any(c in url for c in " ;,'\"\n"):
        raise ValueError(f"--allow-origin {url!r}: spaces, quotes, commas and semicolons are not allowed")
    host = parts.hostname if ":" not in parts.hostname else f"[{parts.hostname}]"
    return f"{parts.scheme}://{host}" + (f":{parts.port}" if parts.port else "")


def csp_for(origins):
    """The page's Content-Security-Policy, with `origins` added to connect-src."""
    if not origins:
        return CSP
    return CSP + "; connect-src 'self' " + " ".join(sorted(set(origins)))


IMAGE_EXT = (".png", ".jpg", ".jpeg", ".tif", ".tiff")


def demo_index(demo):
    """The demo bundle's files as JSON bytes, or None when there is no usable bundle."""
    model = os.path.join(demo, "model")
    if not os.path.isdir(model):
        return None
    files = sorted(f for f in os.listdir(model) if os.path.isfile(os.path.join(model, f)) and not f.startswith("."))
    if not any(f.endswith(".safetensors") for f in files):
        return None
    tiles = {}
    tiles_dir = os.path.join(demo, "tiles")
    if os.path.isdir(tiles_dir):
        for cls in sorted(os.listdir(tiles_dir)):
            d = os.path.join(tiles_dir, cls)
            if os.path.isdir(d) and not cls.startswith("."):
                imgs = sorted(f for f in os.listdir(d) if f.lower().endswith(IMAGE_EXT))
                if imgs:
                    tiles[cls] = imgs
    reports = "reports.jsonl" if os.path.isfile(os.path.join(demo, "reports.jsonl")) else None
    index = {"name": "Demo model", "model": files, "reports": reports, "tiles": tiles}
    # tiles.json: which tiles the Tiles panel shows first and which the Train panel trains on,
    # and where they come from; heldout.json: the model's figures on tiles it never trained on.
    for key, name in (("split", "tiles.json"), ("heldout", "heldout.json")):
        try:
            with open(os.path.join(demo, name), encoding="utf-8") as f:
                index[key] = json.load(f)
        except (OSError, ValueError):
            pass
    return json.dumps(index).encode()


# Types worth compressing (images and f16 weights barely shrink); files under 1 kB are sent as they are.
COMPRESSIBLE = (".html", ".js", ".mjs", ".css", ".wasm", ".json", ".svg", ".jsonl", ".txt", ".safetensors")
_gzipped = {}  # path -> ((mtime, size), gzip bytes): made once per file version, the last kept


def encoded_body(full, accept_encoding):
    """The file's bytes and Content-Encoding for a client that accepts `accept_encoding`: a
    precompressed `.br` or `.gz` beside the file (as ./build.sh dist writes them) when it is not
    older than the file, else gzip made here once per file version, else the plain bytes."""
    accepted = {e.split(";")[0].strip() for e in (accept_encoding or "").split(",")}
    st = os.stat(full)
    for enc, ext in (("br", ".br"), ("gzip", ".gz")):
        pre = full + ext
        if enc in accepted and os.path.isfile(pre) and os.stat(pre).st_mtime >= st.st_mtime:
            with open(pre, "rb") as f:
                return f.read(), enc
    with open(full, "rb") as f:
        body = f.read()
    if "gzip" in accepted and full.endswith(COMPRESSIBLE) and len(body) >= 1024:
        version = (st.st_mtime_ns, st.st_size)
        cached = _gzipped.get(full)
        if cached is None or cached[0] != version:
            cached = _gzipped[full] = (version, gzip.compress(body, compresslevel=6, mtime=0))
        if len(cached[1]) < len(body):
            return cached[1], "gzip"
    return body, None


def make_handler(www, pkg, demo, csp=CSP):
    class Handler(http.server.BaseHTTPRequestHandler):
        def version_string(self):
            return "clipit"

        def log_message(self, fmt, *args):
            if os.environ.get("CLIPIT_SERVE_QUIET") != "1":
                sys.stderr.write("%s %s\n" % (self.log_date_time_string(), fmt % args))

        def resolve(self):
            path = urllib.parse.urlsplit(self.path).path
            path = posixpath.normpath(urllib.parse.unquote(path))
            if path in ("/", "."):
                path = "/index.html"
            root = www
            if path == "/pkg" or path.startswith("/pkg/"):
                root, path = pkg, path[len("/pkg"):]
            elif path == "/demo" or path.startswith("/demo/"):
                root, path = demo, path[len("/demo"):]
            parts = [p for p in path.split("/") if p and p not in (".", "..")]
            full = os.path.join(root, *parts)
            if not os.path.realpath(full).startswith(os.path.realpath(root) + os.sep):
                return None, None
            ext = next((e for e in sorted(MIME, key=len, reverse=True) if full.endswith(e)), None)
            if ext is None or not os.path.isfile(full):
                return None, None
            return full, MIME[ext]

        def send_common(self, status, ctype, length, encoding=None):
            self.send_response(status)
            self.send_header("Content-Type", ctype)
            self.send_header("Content-Length", str(length))
            if encoding:
                self.send_header("Content-Encoding", encoding)
            self.send_header("Vary", "Accept-Encoding")
            self.send_header("Content-Security-Policy", csp)
            self.send_header("X-Content-Type-Options", "nosniff")
            self.send_header("Referrer-Policy", "no-referrer")
            # Cross-origin isolation: wasm threads (the multithreaded CPU engine, pkg/mt/) need
            # SharedArrayBuffer, which browsers only give an isolated page.
            self.send_header("Cross-Origin-Opener-Policy", "same-origin")
            self.send_header("Cross-Origin-Embedder-Policy", "require-corp")
            self.send_header("Cache-Control", "no-cache")
            self.end_headers()

        def do_GET(self, head=False):
            if urllib.parse.urlsplit(self.path).path == "/demo/index.json":
                body = demo_index(demo)
                if body is not None:
                    self.send_common(200, MIME[".json"], len(body))
                    if not head:
                        self.wfile.write(body)
                    return
            full, ctype = self.resolve()
            if full is None:
                body = b"not found\n"
                self.send_common(404, "text/plain; charset=utf-8", len(body))
                if not head:
                    self.wfile.write(body)
                return
            body, encoding = encoded_body(full, self.headers.get("Accept-Encoding"))
            self.send_common(200, ctype, len(body), encoding)
            if not head:
                self.wfile.write(body)

        def do_HEAD(self):
            self.do_GET(head=True)

    return Handler


def main():
    here = os.path.dirname(os.path.abspath(__file__))
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--port", type=int, default=8080)
    ap.add_argument("--root", default=os.path.dirname(here), help="the repository (holds www/ and pkg/)")
    ap.add_argument("--demo", help="the demo bundle folder (default: ROOT/data/demo)")
    ap.add_argument("--allow-origin", action="append", default=[], metavar="URL",
                    help="let the page fetch models from this origin (connect-src); repeatable")
    args = ap.parse_args()
    try:
        origins = [origin_of(u) for u in args.allow_origin]
    except ValueError as e:
        ap.error(str(e))
    www, pkg = os.path.join(args.root, "www"), os.path.join(args.root, "pkg")
    demo = args.demo or os.path.join(args.root, "data", "demo")
    if not os.path.isfile(os.path.join(pkg, "clipit_bg.wasm")):
        print(f"warning: {pkg}/clipit_bg.wasm is missing: run ./build.sh web", file=sys.stderr)
    server = http.server.ThreadingHTTPServer(("127.0.0.1", args.port), make_handler(www, pkg, demo, csp_for(origins)))
    print(f"serving clipit on http://127.0.0.1:{server.server_address[1]}/", flush=True)
    for o in origins:
        print(f"the page may fetch models from {o} (connect-src)", file=sys.stderr)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass


if __name__ == "__main__":
    main()
