#!/usr/bin/env python3
"""Writes the reference fixtures of tests/slide.rs from OpenSlide (libjpeg-turbo) and numpy.

    pip install openslide-python openslide-bin numpy pillow
    python tests/reference/make_slide_reference.py

Input: tests/data/slides/cmu_small_region.svs (OpenSlide test data CMU-1-Small-Region, CC0), an
Aperio SVS whose base level is 240x240 JPEG tiles (Photometric RGB, shared JPEGTables).

Outputs, in tests/fixtures/slide/:
  tile_5.png        base-level tile 5 (x 1200, y 0, 240x240) as OpenSlide decodes it
  region.png        read_region((1000, 1100), 0, (300, 280)): crosses four tiles
  edge_right.png    read_region((2100, 560), 0, (120, 100)): into the partial tiles of the right edge
  edge_bottom.png   read_region((1600, 2880), 0, (160, 87)): the partial tiles of the bottom edge
  thumbnail.png     the scanner's thumbnail (directory 1: JPEG strips with shared tables), RGB
  reference.json    the slide's size and pixel size, and the tissue mask of the spec below computed
                    here independently: its tissue fraction and the number of 224 px tiles (stride
                    224) with at least 50% tissue.

Tissue mask spec (as src/slide/tissue.rs documents it): the base level averaged down so that its
longest side is 2048 px (each base pixel (x, y) goes to overview pixel (x*tw//W, y*th//H), mean
rounded half up); saturation (max-min)/max; a 256-bin histogram (bin = floor(s*256)); Otsu's t;
t = max(t, floor(0.05*256)), or floor(0.05*256) when the class below t has mean saturation > 0.1;
tissue = bin > t. A tile's fraction counts the overview pixels whose centres lie inside it.
"""
import json
import math
import os

import numpy as np
import openslide
from PIL import Image

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
SVS = os.path.join(ROOT, "tests/data/slides/cmu_small_region.svs")
OUT = os.path.join(ROOT, "tests/fixtures/slide")
REGIONS = {
    "tile_5.png": (1200, 0, 240, 240),
    "region.png": (1000, 1100, 300, 280),
    "edge_right.png": (2100, 560, 120, 100),
    "edge_bottom.png": (1600, 2880, 160, 87),
}


def region(slide, x, y, w, h):
    return np.asarray(slide.read_region((x, y), 0, (w, h)).convert("RGB"))


def overview(base, side):
    h, w, _ = base.shape
    f = min(side / max(w, h), 1.0)
    tw, th = max(round(w * f), 1), max(round(h * f), 1)
    tx = (np.arange(w) * tw) // w
    ty = (np.arange(h) * th) // h
    idx = (ty[:, None] * tw + tx[None, :]).ravel()
    n = np.bincount(idx, minlength=tw * th)
    out = np.zeros((tw * th, 3), dtype=np.uint8)
    for c in range(3):
        s = np.bincount(idx, weights=base[..., c].ravel().astype(np.float64), minlength=tw * th)
        out[:, c] = ((s.astype(np.int64) + n // 2) // np.maximum(n, 1)).astype(np.uint8)
    return out.reshape(th, tw, 3), (w / tw, h / th)


def otsu(hist):
    total, best, best_t = hist.sum(), -1.0, None
    levels = np.arange(256, dtype=np.float64)
    for t in range(256):
        w0 = hist[: t + 1].sum()
        w1 = total - w0
        if w0 == 0 or w1 == 0:
            continue
        m0 = (levels[: t + 1] * hist[: t + 1]).sum() / w0
        m1 = (levels[t + 1 :] * hist[t + 1 :]).sum() / w1
        between = float(w0) * float(w1) * (m0 - m1) ** 2
        if between > best:
            best, best_t = between, t
    return best_t


def tissue(ov):
    a = ov.astype(np.float32)
    mx, mn = a.max(2), a.min(2)
    sat = np.where(mx > 0, (mx - mn) / np.maximum(mx, 1), 0)
    bins = np.minimum((sat * 256).astype(np.int64), 255)
    hist = np.bincount(bins.ravel(), minlength=256)
    floor = int(0.05 * 256)
    t = otsu(hist)
    below = hist[: t + 1]
    mean_below = ((np.arange(t + 1) + 0.5) / 256 * below).sum() / max(below.sum(), 1)
    t = floor if mean_below > 0.1 else max(t, floor)
    return bins > t


def tiles_over_tissue(mask, scale, width, height, tile, stride, min_tissue):
    mh, mw = mask.shape
    count = 0
    for y in range(0, height - tile + 1, stride):
        for x in range(0, width - tile + 1, stride):
            edge = lambda v, s, n: min(max(math.ceil(v / s - 0.5), 0), n)
            x0, x1 = edge(x, scale[0], mw), edge(x + tile, scale[0], mw)
            y0, y1 = edge(y, scale[1], mh), edge(y + tile, scale[1], mh)
            if mask[y0:y1, x0:x1].mean() >= min_tissue:
                count += 1
    return count


def main():
    os.makedirs(OUT, exist_ok=True)
    slide = openslide.OpenSlide(SVS)
    width, height = slide.dimensions
    for name, box in REGIONS.items():
        Image.fromarray(region(slide, *box)).save(os.path.join(OUT, name))
    slide.associated_images["thumbnail"].convert("RGB").save(os.path.join(OUT, "thumbnail.png"))
    base = region(slide, 0, 0, width, height)
    ov, scale = overview(base, 2048)
    mask = tissue(ov)
    ref = {
        "regions": REGIONS,
        "width": width,
        "height": height,
        "mpp": float(slide.properties["openslide.mpp-x"]),
        "overview": [ov.shape[1], ov.shape[0]],
        "tissue_fraction": float(mask.mean()),
        "tiles_224_min50": tiles_over_tissue(mask, scale, width, height, 224, 224, 0.5),
        "versions": {
            "openslide": openslide.__library_version__,
            "openslide-python": openslide.__version__,
            "numpy": np.__version__,
        },
    }
    with open(os.path.join(OUT, "reference.json"), "w") as f:
        json.dump(ref, f, indent=2)
        f.write("\n")
    print(json.dumps(ref, indent=2))


if __name__ == "__main__":
    main()
