#!/usr/bin/env python3
"""Rebuilds the page's demo bundle in data/demo/ from the CC BY 4.0 colorectal tiles in
../shared/data/crc (Kather et al. 2016 and 2019) and a templated report corpus written for clipit.

    python3 scripts/make_demo_bundle.py [--shared ../shared/data] [--clipit PATH] [--epochs N]

Writes:
  data/demo/tiles/<class>/*.jpg   the tiles, relabelled into 7 classes, as JPEG (quality 90)
  data/demo/reports.jsonl         {"id", "text", "class"} per line (templated, see REPORTS)
  data/demo/model/                a small open_clip CLIP trained from scratch by `clipit pretrain`
  data/demo/ATTRIBUTION.md        sources and licences

Needs Pillow and a built clipit CLI (`./build.sh cli`). Only ship-ok (CC BY 4.0) sources are read.
"""
import argparse
import itertools
import json
import os
import random
import shutil
import subprocess
import sys

from PIL import Image

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# Demo class <- source labels. Kather 2016: 0 TUMOR 1 STROMA 2 COMPLEX 3 LYMPHO 4 DEBRIS 5 MUCOSA
# 6 ADIPOSE 7 EMPTY (COMPLEX is left out: mixed tissue). Kather 2019 (NCT-CRC-HE): ADI BACK DEB LYM
# MUC MUS NORM STR TUM (MUC is left out: too few tiles).
CLASSES = {
    "tumor": {"k16": [0], "k19": ["TUM"]},
    "stroma": {"k16": [1], "k19": ["STR", "MUS"]},
    "lymphocytes": {"k16": [3], "k19": ["LYM"]},
    "debris": {"k16": [4], "k19": ["DEB"]},
    "normal mucosa": {"k16": [5], "k19": ["NORM"]},
    "adipose": {"k16": [6], "k19": ["ADI"]},
    "background": {"k16": [7], "k19": ["BACK"]},
}

# Templated findings per class (written for clipit; not from any real patient).
FINDINGS = {
    "tumor": [
        "invasive adenocarcinoma with irregular, back-to-back malignant glands",
        "moderately differentiated adenocarcinoma with cribriform glands and dirty necrosis",
        "sheets of atypical columnar cells with enlarged, hyperchromatic nuclei and frequent mitoses",
        "malignant glands infiltrating the wall with a desmoplastic reaction",
    ],
    "stroma": [
        "fibrous stroma with spindle cells and dense collagen",
        "bundles of smooth muscle of the muscularis propria",
        "desmoplastic stroma without epithelium",
        "loose connective tissue and smooth muscle fibres with scattered vessels",
    ],
    "lymphocytes": [
        "dense sheets of small mature lymphocytes",
        "a lymphoid aggregate with a reactive germinal centre",
        "lymph node tissue with small round lymphocytes and no metastatic carcinoma",
        "a heavy lymphocytic infiltrate obscuring the architecture",
    ],
    "debris": [
        "necrotic debris with nuclear dust and fibrin",
        "luminal necrosis and cellular debris admixed with inflammatory cells",
        "an ulcer base with necrotic material and neutrophils",
        "amorphous eosinophilic debris with karyorrhectic nuclei",
    ],
    "normal mucosa": [
        "normal colonic mucosa with regular crypts and abundant goblet cells",
        "preserved crypt architecture and lamina propria, no dysplasia",
        "benign colonic mucosa with straight, evenly spaced test-tube crypts",
        "unremarkable large bowel mucosa with intact surface epithelium",
    ],
    "adipose": [
        "mature adipose tissue with large empty fat vacuoles",
        "pericolic fat with thin fibrous septa",
        "lobules of mature adipocytes without atypia",
        "adipose tissue of the mesentery, negative for tumour",
    ],
    "background": [
        "no tissue in this field, only slide background",
        "empty glass without cells",
        "a blank area at the edge of the section",
        "background without tissue, pale and acellular",
    ],
}
SITES = ["Colon, resection", "Rectum, biopsy", "Sigmoid colon, excision"]
FRAMES = [
    "{site}: {finding}.",
    "{site}. Microscopy shows {finding}.",
    "Histology ({site}): {finding}.",
]


def collect(shared):
    crc = os.path.join(shared, "crc")
    out = {c: [] for c in CLASSES}
    k16 = os.path.join(crc, "kather2016_sample")
    for f in sorted(os.listdir(k16)):
        label = int(f.rsplit("_label_", 1)[1].split(".")[0])
        for c, src in CLASSES.items():
            if label in src["k16"]:
                out[c].append(("kather2016", os.path.join(k16, f)))
    for sub in ["crc_val_he_7k", "nct_crc_he_100k"]:
        d = os.path.join(crc, sub)
        for f in sorted(os.listdir(d)):
            code = f.split("-", 1)[0]
            for c, src in CLASSES.items():
                if code in src["k19"]:
                    out[c].append((sub, os.path.join(d, f)))
    return out


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--shared", default=os.path.join(ROOT, "..", "shared", "data"))
    ap.add_argument("--clipit", default=os.path.join(
        os.environ.get("CARGO_TARGET_DIR", os.path.expanduser("~/.cache/clipit/target")), "debug", "clipit"))
    ap.add_argument("--epochs", type=int, default=80)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--lr", default="2e-3")
    args = ap.parse_args()

    demo = os.path.join(ROOT, "data", "demo")
    tiles = os.path.join(demo, "tiles")
    shutil.rmtree(tiles, ignore_errors=True)
    counts = {}
    for c, items in collect(args.shared).items():
        os.makedirs(os.path.join(tiles, c), exist_ok=True)
        for source, path in items:
            name = f"{source}_{os.path.splitext(os.path.basename(path))[0]}.jpg"
            Image.open(path).convert("RGB").save(os.path.join(tiles, c, name), quality=90)
        counts[c] = len(items)

    rows = []
    for c, findings in FINDINGS.items():
        for i, (site, finding, frame) in enumerate(itertools.product(SITES, findings, FRAMES)):
            rows.append({"id": f"{c.replace(' ', '-')}-{i:02d}", "text": frame.format(site=site, finding=finding), "class": c})
    random.Random(args.seed).shuffle(rows)
    with open(os.path.join(demo, "reports.jsonl"), "w") as f:
        for r in rows:
            f.write(json.dumps(r) + "\n")

    with open(os.path.join(demo, "ATTRIBUTION.md"), "w") as f:
        f.write("# Demo bundle: sources and licences\n\n")
        f.write("- `tiles/`: colorectal H&E tiles, converted to JPEG and relabelled into the classes below.\n")
        f.write("  - `kather2016_*`: Kather et al., \"Multi-class texture analysis in colorectal cancer histology\", "
                "Sci Rep 2016 (Zenodo 53169), CC BY 4.0.\n")
        f.write("  - `crc_val_he_7k_*`, `nct_crc_he_100k_*`: Kather et al., PLoS Med 2019 (Zenodo 1214456), CC BY 4.0.\n")
        f.write("  - Tiles per class: " + ", ".join(f"{c} {n}" for c, n in counts.items()) + ".\n")
        f.write("- `reports.jsonl`: templated report sentences written for clipit (no patient data); the project's licence.\n")
        f.write("- `model/`: a small open_clip CLIP trained from scratch by `clipit pretrain` on the tiles and reports above "
                "(`scripts/make_demo_bundle.py`); the project's licence. It is a demo, not a diagnostic model.\n")

    model = os.path.join(demo, "model")
    cfg_dir = os.path.join(demo, "model_config")
    os.makedirs(cfg_dir, exist_ok=True)
    shutil.copy(os.path.join(ROOT, "scripts", "demo_open_clip_config.json"), os.path.join(cfg_dir, "open_clip_config.json"))
    cmd = [args.clipit, "pretrain", "--model", cfg_dir, "--from-scratch", "--data", tiles,
           "--reports", os.path.join(demo, "reports.jsonl"), "--out", model, "--epochs", str(args.epochs),
           "--batch-size", "32", "--lr", args.lr, "--seed", str(args.seed), "--no-augment", "--f16"]
    print(" ".join(cmd), file=sys.stderr)
    subprocess.run(cmd, check=True)
    shutil.rmtree(cfg_dir)


if __name__ == "__main__":
    main()
