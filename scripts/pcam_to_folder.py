#!/usr/bin/env python3
"""Convert PatchCamelyon (PCAM) from its official HDF5 files to PNG tiles plus a manifest.

PCAM (Veeling et al. 2018, https://github.com/basveeling/pcam, CC0) ships as

    camelyonpatch_level_2_split_{train,valid,test}_x.h5   dataset "x": uint8 [N, 96, 96, 3]
    camelyonpatch_level_2_split_{train,valid,test}_y.h5   dataset "y": uint8 [N, 1, 1, 1]

(262,144 / 32,768 / 32,768 tiles; label 1 = metastatic tissue in the centre 32x32 region). The
downloads are gzipped: run `gunzip *.h5.gz` first, h5py cannot read .gz files.

This script writes

    OUT/{train,val,test}/{normal,tumor}/pcam_<split>_<index>.png
    OUT/manifest.csv          path,label,split   (paths relative to OUT; labels normal/tumor)

which `clipit` reads with `clipit::train::data::read_manifest` (label 0 -> normal, 1 -> tumor,
the order of the paper's code; classes sort to the same order). Images are streamed in chunks, so
memory stays small whatever the split size, and PNGs are written by a thread pool.

Requirements: `pip install h5py numpy pillow`.

Usage:
    python scripts/pcam_to_folder.py PCAM_DIR OUT_DIR [--splits train valid test]
                                     [--chunk 2048] [--workers 8] [--limit N] [--skip-existing]
"""

from __future__ import annotations

import argparse
import csv
import os
import sys
import tempfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

LABELS = {0: "normal", 1: "tumor"}
SPLIT_NAMES = {"train": "train", "valid": "val", "test": "test"}


def fail(msg: str) -> "NoReturn":  # noqa: F821
    print(f"pcam_to_folder: error: {msg}", file=sys.stderr)
    sys.exit(1)


def open_split(h5py, src: Path, split: str):
    """Opens the x and y datasets of one split and checks their shapes."""
    xp = src / f"camelyonpatch_level_2_split_{split}_x.h5"
    yp = src / f"camelyonpatch_level_2_split_{split}_y.h5"
    for p in (xp, yp):
        if not p.is_file():
            gz = p.with_name(p.name + ".gz")
            hint = f" ({gz.name} exists: gunzip it first)" if gz.is_file() else ""
            fail(f"{p}: not found{hint}")
    try:
        fx, fy = h5py.File(xp, "r"), h5py.File(yp, "r")
    except OSError as e:
        fail(f"cannot open the {split} HDF5 files: {e}")
    if "x" not in fx or "y" not in fy:
        fail(f"{xp.name} must hold a dataset 'x' and {yp.name} a dataset 'y'")
    x, y = fx["x"], fy["y"]
    if x.ndim != 4 or x.shape[3] != 3 or x.dtype.itemsize != 1:
        fail(f"{xp}: expected uint8 [N, H, W, 3], got {x.dtype} {x.shape}")
    if y.shape[0] != x.shape[0]:
        fail(f"{split}: {x.shape[0]} images but {y.shape[0]} labels")
    return fx, fy, x, y


def write_png(args):
    from PIL import Image

    path, pixels, skip_existing = args
    if skip_existing and path.is_file():
        return
    tmp = path.with_name("." + path.name + ".tmp")
    Image.fromarray(pixels, "RGB").save(tmp, format="PNG")
    os.replace(tmp, path)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("src", type=Path, help="folder with the camelyonpatch_level_2_split_*.h5 files")
    ap.add_argument("out", type=Path, help="output folder (created)")
    ap.add_argument("--splits", nargs="+", default=["train", "valid", "test"], choices=list(SPLIT_NAMES))
    ap.add_argument("--chunk", type=int, default=2048, help="images read from HDF5 at a time")
    ap.add_argument("--workers", type=int, default=min(8, os.cpu_count() or 1), help="PNG writer threads")
    ap.add_argument("--limit", type=int, default=None, help="convert only the first N images per split")
    ap.add_argument("--skip-existing", action="store_true", help="keep PNGs already written (resume)")
    a = ap.parse_args()
    try:
        import h5py
        import numpy as np
    except ImportError as e:
        fail(f"{e.name} is missing: pip install h5py numpy pillow")
    if a.chunk < 1 or a.workers < 1 or (a.limit is not None and a.limit < 0):
        fail("--chunk and --workers must be positive, --limit non-negative")

    a.out.mkdir(parents=True, exist_ok=True)
    rows = []
    with ThreadPoolExecutor(max_workers=a.workers) as pool:
        for split in a.splits:
            name = SPLIT_NAMES[split]
            fx, fy, x, y = open_split(h5py, a.src, split)
            n = x.shape[0] if a.limit is None else min(a.limit, x.shape[0])
            for label in LABELS.values():
                (a.out / name / label).mkdir(parents=True, exist_ok=True)
            counts = {v: 0 for v in LABELS.values()}
            for start in range(0, n, a.chunk):
                stop = min(start + a.chunk, n)
                xs = np.asarray(x[start:stop], dtype=np.uint8)
                ys = np.asarray(y[start:stop]).reshape(stop - start, -1)[:, 0]
                jobs = []
                for i in range(stop - start):
                    raw = int(ys[i])
                    if raw not in LABELS:
                        fail(f"{split} image {start + i}: label {raw} is not 0 or 1")
                    label = LABELS[raw]
                    counts[label] += 1
                    rel = Path(name) / label / f"pcam_{name}_{start + i:06d}.png"
                    jobs.append((a.out / rel, np.ascontiguousarray(xs[i]), a.skip_existing))
                    rows.append((rel.as_posix(), label, name))
                list(pool.map(write_png, jobs))  # re-raises a writer's exception
                print(f"\r{name}: {stop}/{n}", end="", file=sys.stderr, flush=True)
            print(f"\r{name}: {n} images ({counts['normal']} normal, {counts['tumor']} tumor)", file=sys.stderr)
            fx.close()
            fy.close()

    # Write the manifest atomically, so an interrupted run never leaves a truncated one.
    fd, tmp = tempfile.mkstemp(prefix=".manifest.", suffix=".csv", dir=a.out)
    with os.fdopen(fd, "w", newline="") as f:
        w = csv.writer(f, lineterminator="\n")
        w.writerow(["path", "label", "split"])
        w.writerows(rows)
    os.replace(tmp, a.out / "manifest.csv")
    print(f"wrote {len(rows)} rows to {a.out / 'manifest.csv'}", file=sys.stderr)


if __name__ == "__main__":
    main()
