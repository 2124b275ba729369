#!/usr/bin/env python3
"""Checks that the demo model written by `clipit pretrain` (data/crc_demo/model) is a real open_clip
checkpoint: open_clip loads it through its own hub-folder loader (strict state dict), and its
image and text embeddings equal clipit's (`clipit embed`) on demo tiles and reports.

    python3 scripts/check_demo_bundle.py [--clipit PATH] [--model data/crc_demo/model]

Needs torch and open_clip_torch (pip install torch open_clip_torch).
"""
import argparse
import glob
import json
import os
import subprocess
import tempfile

import numpy as np
import open_clip
import torch
from PIL import Image

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--clipit", default=os.path.join(
        os.environ.get("CARGO_TARGET_DIR", os.path.expanduser("~/.cache/clipit/target")), "debug", "clipit"))
    ap.add_argument("--model", default=os.path.join(ROOT, "data", "demo", "model"))
    args = ap.parse_args()

    # PNG copies decoded by Pillow, so that both sides see the same pixels (JPEG decoders differ by a
    # few levels; clipit's preprocessing parity is tested on its own in tests/preprocess.rs).
    tmp = tempfile.mkdtemp()
    images = []
    for i, p in enumerate(sorted(glob.glob(os.path.join(ROOT, "data", "demo", "tiles", "*", "*.jpg")))[::40]):
        images.append(os.path.join(tmp, f"{i}.png"))
        Image.open(p).convert("RGB").save(images[-1])
    with open(os.path.join(ROOT, "data", "demo", "reports.jsonl")) as f:
        texts = [json.loads(line)["text"] for line in f][:3]

    model, preprocess = open_clip.create_model_from_pretrained(f"local-dir:{args.model}")
    model.eval()
    with torch.no_grad():
        img = model.encode_image(torch.stack([preprocess(Image.open(p).convert("RGB")) for p in images]))
        txt = model.encode_text(open_clip.tokenize(texts))

    cmd = [args.clipit, "embed", "--model", args.model]
    for p in images:
        cmd += ["--image", p]
    for t in texts:
        cmd += ["--text", t]
    out = json.loads(subprocess.run(cmd, check=True, capture_output=True, text=True).stdout)
    ours_img = np.array(out["image_embeds"], dtype=np.float32)
    ours_txt = np.array(out["text_embeds"], dtype=np.float32)
    di = np.abs(ours_img - img.numpy()).max()
    dt = np.abs(ours_txt - txt.numpy()).max()
    print(f"{len(images)} images, {len(texts)} texts: max |clipit - open_clip| image {di:.2e}, text {dt:.2e}")
    assert di < 1e-3 and dt < 1e-3, "clipit and open_clip disagree on the demo model"
    print("ok: open_clip loads the demo model and agrees with clipit")


if __name__ == "__main__":
    main()
