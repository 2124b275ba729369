#!/usr/bin/env python3
"""Writes the PIL/torchvision fixture for tests/preprocess.rs and cross-checks the Python references.

    python tests/reference/check_preprocess.py            # (re)write the fixture, then compare references
    python tests/reference/check_preprocess.py --check    # only print the reference comparisons

Inputs (copied once into tests/data/tiles/, ship-ok, see tests/data/ATTRIBUTION.md):
  kather_tumor.png   Kather et al. 2016 tile image_42_label_0.png (224x224, CC BY 4.0)
  hgsc_crop.png      a 210x150 crop of histolytics' hgsc_nest.jpg at (620, 700) (BSD-3-Clause), lossless
  hgsc_crop.jpg      the same crop re-encoded by PIL as JPEG (quality 90, 4:2:0), to measure decoder parity
  hgsc_tall.png      a 60x150 crop of hgsc_nest.jpg at (900, 300): tall enough for Pillow >= 13 to run the
                     vertical pass first

Outputs, in tests/fixtures/preprocess_pil/:
  cases.json            [{key, image, resize, crop, mean, std}], as PreprocessConfig fields
  expected.safetensors  `<key>.tensor`: torchvision Resize(resize, BICUBIC) + CenterCrop(crop) + ToTensor +
                        Normalize, f32 [3, crop, crop]; `<key>.resized` (some cases): PIL's
                        Image.resize(..., BICUBIC) output, u8 [H, W, 3]; `hgsc_jpeg.decoded`: PIL's decode
                        of hgsc_crop.jpg, u8 [H, W, 3].
"""
import json
import os
import shutil
import sys

import numpy as np
import torch
from PIL import Image
from safetensors.numpy import save_file
from torchvision import transforms as T

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.normpath(os.path.join(HERE, "..", ".."))
TILES = os.path.join(ROOT, "tests", "data", "tiles")
OUT = os.path.join(ROOT, "tests", "fixtures", "preprocess_pil")
DATA = os.environ.get("CLIPIT_SHARED_DATA", os.path.normpath(os.path.join(ROOT, "..", "shared", "data")))

CLIP = ([0.48145466, 0.4578275, 0.40821073], [0.26862954, 0.26130258, 0.27577711])
IMAGENET = ([0.485, 0.456, 0.406], [0.229, 0.224, 0.225])
HALF = ([0.5, 0.5, 0.5], [0.5, 0.5, 0.5])

# key, image, resize, crop, stats, store the full PIL resize output?
CASES = [
    ("tumor_up", "kather_tumor.png", 232, 64, CLIP, False),  # 224 -> 232: upsampling
    ("tumor_down", "kather_tumor.png", 112, 72, IMAGENET, True),  # 224 -> 112: antialiased downsampling
    ("tumor_pad", "kather_tumor.png", 64, 80, CLIP, True),  # crop > resize: torchvision zero-pads
    ("hgsc_up", "hgsc_crop.png", 171, 64, CLIP, True),  # 210x150 -> 239x171, odd offsets 54/88
    ("hgsc_down", "hgsc_crop.png", 97, 90, HALF, True),  # 210x150 -> 135x97, offsets 4 (3.5) / 22 (22.5)
    ("hgsc_jpeg", "hgsc_crop.jpg", 64, 64, CLIP, False),  # JPEG decode + downsampling
    ("hgsc_tall", "hgsc_tall.png", 40, 32, CLIP, True),  # 60x150 -> 40x100: vertical pass first
]


def make_tiles():
    os.makedirs(TILES, exist_ok=True)
    dst = os.path.join(TILES, "kather_tumor.png")
    if not os.path.exists(dst):
        shutil.copyfile(os.path.join(DATA, "crc", "kather2016_sample", "image_42_label_0.png"), dst)
    png = os.path.join(TILES, "hgsc_crop.png")
    if not os.path.exists(png):
        src = Image.open(os.path.join(DATA, "slides", "hgsc_nest.jpg")).convert("RGB")
        src.crop((620, 700, 620 + 210, 700 + 150)).save(png, optimize=True)
    tall = os.path.join(TILES, "hgsc_tall.png")
    if not os.path.exists(tall):
        src = Image.open(os.path.join(DATA, "slides", "hgsc_nest.jpg")).convert("RGB")
        src.crop((900, 300, 900 + 60, 300 + 150)).save(tall, optimize=True)
    jpg = os.path.join(TILES, "hgsc_crop.jpg")
    if not os.path.exists(jpg):
        Image.open(png).convert("RGB").save(jpg, quality=90, subsampling=2)


def load(name):
    return Image.open(os.path.join(TILES, name)).convert("RGB")


def tv_pipeline(resize, crop, mean, std):
    return T.Compose([T.Resize(resize, interpolation=T.InterpolationMode.BICUBIC), T.CenterCrop(crop),
                      T.ToTensor(), T.Normalize(mean, std)])


def write_fixture():
    make_tiles()
    os.makedirs(OUT, exist_ok=True)
    tensors, cases = {}, []
    for key, image, resize, crop, (mean, std), store_resized in CASES:
        im = load(image)
        x = tv_pipeline(resize, crop, mean, std)(im)
        tensors[f"{key}.tensor"] = x.numpy().astype(np.float32)
        # The same numbers from the uint8 crop, as the Rust side computes them (f32 ToTensor + Normalize).
        if store_resized:
            w, h = im.size
            short, long = min(w, h), max(w, h)
            new_long = int(resize * long / short)
            size = (resize, new_long) if w <= h else (new_long, resize)
            tensors[f"{key}.resized"] = np.asarray(im.resize(size, Image.BICUBIC), dtype=np.uint8).copy()
        cases.append({"key": key, "image": f"tests/data/tiles/{image}", "resize": resize, "crop": crop,
                      "mean": mean, "std": std})
    tensors["hgsc_jpeg.decoded"] = np.asarray(load("hgsc_crop.jpg"), dtype=np.uint8).copy()
    save_file(tensors, os.path.join(OUT, "expected.safetensors"))
    with open(os.path.join(OUT, "cases.json"), "w") as f:
        json.dump(cases, f, indent=1)
    size = sum(os.path.getsize(os.path.join(d, n)) for d in (OUT, TILES) for n in os.listdir(d))
    print(f"wrote {len(cases)} cases to {OUT} ({size / 1024:.0f} KiB with the tiles)")


def compare(name, a, b):
    a, b = torch.as_tensor(np.asarray(a, dtype=np.float64)), torch.as_tensor(np.asarray(b, dtype=np.float64))
    cos = torch.nn.functional.cosine_similarity(a.flatten(), b.flatten(), dim=0).item()
    print(f"  {name:<42} max|diff| {(a - b).abs().max().item():.6f}  cosine {cos:.7f}")


def check_references():
    """How the other Python references relate to torchvision Resize+CenterCrop (CLIP 224 settings)."""
    from transformers import CLIPImageProcessor
    from transformers.models.clip.image_processing_pil_clip import CLIPImageProcessorPil
    import open_clip
    from timm.data import create_transform

    for name in ("kather_tumor.png", "hgsc_crop.png"):
        im = load(name)
        print(f"{name} {im.size}:")
        ref = tv_pipeline(224, 224, *CLIP)(im)
        compare("open_clip image_transform(224)", open_clip.image_transform(224, is_train=False)(im), ref)
        compare("HF CLIPImageProcessorPil", CLIPImageProcessorPil()(im, return_tensors="pt")["pixel_values"][0], ref)
        compare("HF CLIPImageProcessor (torchvision tensors)",
                CLIPImageProcessor()(im, return_tensors="pt")["pixel_values"][0], ref)
        small = {"shortest_edge": 112}, {"height": 112, "width": 112}
        ref112 = tv_pipeline(112, 112, *CLIP)(im)
        compare("HF CLIPImageProcessorPil, 112 (downsampling)",
                CLIPImageProcessorPil(size=small[0], crop_size=small[1])(im, return_tensors="pt")["pixel_values"][0],
                ref112)
        compare("HF CLIPImageProcessor, 112 (downsampling)",
                CLIPImageProcessor(size=small[0], crop_size=small[1])(im, return_tensors="pt")["pixel_values"][0],
                ref112)
        timm_t = create_transform(224, crop_pct=0.875, interpolation="bicubic", mean=IMAGENET[0], std=IMAGENET[1])
        compare("timm eval crop_pct 0.875 (vs Resize 256)", timm_t(im), tv_pipeline(256, 224, *IMAGENET)(im))


if __name__ == "__main__":
    if "--check" not in sys.argv:
        write_fixture()
    check_references()
