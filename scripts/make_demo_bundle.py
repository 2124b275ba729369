#!/usr/bin/env python3
"""Rebuilds the page's demo bundle in data/demo/ from PatchCamelyon (PCam, CC0) in ../shared/data/pcam
and prints its held-out figures.

    python3 scripts/make_demo_bundle.py [--shared ../shared/data] [--clipit PATH] [--epochs N]
                                        [--out data/demo] [--threads N] [--skip-train]

What it does, in order:
  1. the report corpus (reports.jsonl): templated sentences written for clipit, one class each;
  2. the model: a small Hugging Face CLIP (config below) trained from scratch by `clipit pretrain`
     on all 20,000 PCam training tiles (--class-aware, flips + quarter turns + colour jitter);
  3. the held-out figures: zero-shot with the page's default prompts on the PCam validation tiles
     (the byte-identical duplicates counted once), balanced accuracy, AUROC and the confusion
     matrix, written to heldout.json and printed;
  4. the page's sample tiles (tiles/<class>/): validation tiles only, never trained on by the
     model, in two disjoint sets listed in tiles.json: `show` (the Tiles panel's first view) and
     `train` (the Train panel's CLIP-IT demo, which splits off its own stratified validation set;
     also as the manifest train.csv for `clipit train`);
  5. ATTRIBUTION.md.

Needs Pillow and a built clipit CLI (`./build.sh cli`). PCam is CC0 (Veeling et al. 2018).
"""
import argparse
import hashlib
import itertools
import json
import os
import random
import shutil
import subprocess
import sys
import tempfile

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# Class name -> PCam folder. The names carry the words "normal" and "tumor" (PCam's own labels).
CLASSES = {"normal lymph node": "normal", "tumor metastasis": "tumor"}

# Templated findings per class (written for clipit; not from any real patient).
FINDINGS = {
    "normal lymph node": [
        "normal lymph node tissue without tumor cells",
        "a benign lymph node with small mature lymphocytes",
        "reactive lymphoid tissue, negative for metastatic carcinoma",
        "lymph node parenchyma with follicles and sinuses, no metastasis",
        "normal nodal tissue and perinodal fat",
        "sheets of small round lymphocytes with preserved architecture",
    ],
    "tumor metastasis": [
        "metastatic tumor in the lymph node",
        "a tumor metastasis of carcinoma replacing nodal tissue",
        "clusters of large atypical epithelial tumor cells with pleomorphic nuclei",
        "metastatic breast carcinoma forming nests of tumor cells",
        "tumor cells with enlarged hyperchromatic nuclei and prominent nucleoli",
        "a lymph node involved by metastatic tumor",
    ],
}
SITES = ["Sentinel lymph node, excision", "Axillary lymph node, biopsy", "Lymph node, dissection"]
FRAMES = [
    "{site}: {finding}.",
    "{site}. Microscopy shows {finding}.",
    "Histology: {finding}.",
    "H&E section of {name}: {finding}.",
]

# The model: a Hugging Face CLIP that clipit, transformers and the page load. The tile's centre
# decides PCam's label, so the 96 px tile is kept at full resolution and cropped to its central
# 64 px (size 96, crop 64) rather than shrunk.
VISION = {"hidden_size": 128, "intermediate_size": 256, "num_hidden_layers": 6,
          "num_attention_heads": 4, "image_size": 64, "patch_size": 8}
TEXT = {"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 3,
        "num_attention_heads": 2, "max_position_embeddings": 40, "vocab_size": 49408}
EMBED_DIM = 64


def hf_config():
    common = {"hidden_act": "gelu", "layer_norm_eps": 1e-5, "attention_dropout": 0.0,
              "initializer_factor": 1.0, "initializer_range": 0.02}
    return {
        "architectures": ["CLIPModel"], "model_type": "clip", "projection_dim": EMBED_DIM,
        "logit_scale_init_value": 2.6592, "initializer_factor": 1.0,
        "vision_config": {"model_type": "clip_vision_model", "num_channels": 3,
                          "projection_dim": EMBED_DIM, **common, **VISION},
        "text_config": {"model_type": "clip_text_model", "projection_dim": EMBED_DIM,
                        "bos_token_id": 49406, "eos_token_id": 49407, "pad_token_id": 1,
                        **common, **TEXT},
    }


PREPROCESSOR = {
    "do_resize": True, "size": 96, "do_center_crop": True, "crop_size": 64, "do_normalize": True,
    "resample": 3, "feature_extractor_type": "CLIPFeatureExtractor",
    "image_mean": [0.48145466, 0.4578275, 0.40821073],
    "image_std": [0.26862954, 0.26130258, 0.27577711],
}


def reports(seed):
    rows = []
    for c, findings in FINDINGS.items():
        for i, (site, finding, frame) in enumerate(itertools.product(SITES, findings, FRAMES)):
            text = frame.format(site=site, finding=finding, name=c)
            rows.append({"id": f"{c.replace(' ', '-')}-{i:02d}", "text": text, "class": c})
    random.Random(seed).shuffle(rows)
    return rows


def unique_tiles(folder):
    """The tiles of `folder`, sorted, byte-identical duplicates once (PCam repeats some)."""
    seen, out = set(), []
    for f in sorted(os.listdir(folder)):
        digest = hashlib.sha256(open(os.path.join(folder, f), "rb").read()).hexdigest()
        if digest not in seen:
            seen.add(digest)
            out.append(f)
    return out


def link_split(pcam, split, dest):
    """dest/<class>/ -> the PCam split's class folder (named as the classes)."""
    os.makedirs(dest, exist_ok=True)
    for c, folder in CLASSES.items():
        os.symlink(os.path.join(pcam, split, folder), os.path.join(dest, c))


def heldout_figures(clipit, model, pcam, work, threads):
    """Zero-shot with the default prompts on the unique validation tiles."""
    valid = os.path.join(work, "valid")
    os.makedirs(valid)
    counts = {}
    for c, folder in CLASSES.items():
        os.makedirs(os.path.join(valid, c))
        names = unique_tiles(os.path.join(pcam, "valid", folder))
        counts[c] = len(names)
        for f in names:
            os.symlink(os.path.join(pcam, "valid", folder, f), os.path.join(valid, c, f))
    out = os.path.join(work, "zero_shot.csv")
    env = dict(os.environ, RAYON_NUM_THREADS=str(threads)) if threads else None
    run = subprocess.run([clipit, "zero-shot", "--model", model, "--images", valid,
                          "--classes", ",".join(CLASSES), "--out", out],
                         check=True, capture_output=True, text=True, env=env)
    return scores(out, list(CLASSES)), counts, run.stderr


def scores(csv_path, classes):
    """Balanced accuracy, AUROC (tumor score) and the confusion matrix of a zero-shot CSV."""
    import csv
    rows = list(csv.DictReader(open(csv_path)))
    y = [classes.index(os.path.basename(os.path.dirname(r["image"]))) for r in rows]
    p = [float(r[classes[1]]) for r in rows]
    pred = [classes.index(r["prediction"]) for r in rows]
    confusion = [[sum(1 for t, q in zip(y, pred) if t == i and q == j) for j in range(2)] for i in range(2)]
    recall = [confusion[i][i] / max(1, sum(confusion[i])) for i in range(2)]
    pos = sorted(p[i] for i in range(len(y)) if y[i] == 1)
    neg = sorted(p[i] for i in range(len(y)) if y[i] == 0)
    # AUROC as the Mann-Whitney statistic (ties count half).
    import bisect
    wins = sum(bisect.bisect_left(neg, s) + 0.5 * (bisect.bisect_right(neg, s) - bisect.bisect_left(neg, s)) for s in pos)
    return {"balanced_accuracy": sum(recall) / 2, "accuracy": sum(confusion[i][i] for i in range(2)) / len(y),
            "auroc": wins / max(1, len(pos) * len(neg)), "confusion": confusion, "classes": classes, "tiles": len(y)}


def sample_tiles(pcam, out, per_class_show, per_class_train, seed):
    """Copies validation tiles into out/tiles/<class>/; returns the tiles.json listing."""
    tiles = os.path.join(out, "tiles")
    shutil.rmtree(tiles, ignore_errors=True)
    listing = {"source": (f"PatchCamelyon validation tiles, which the demo model never trained on: {per_class_show} per class "
                          f"in the Tiles panel and {per_class_train} other ones per class in the Train panel, drawn at random"),
               "show": {}, "train": {}}
    rng = random.Random(seed)
    for c, folder in CLASSES.items():
        names = unique_tiles(os.path.join(pcam, "valid", folder))
        rng.shuffle(names)
        chosen = names[: per_class_show + per_class_train]
        os.makedirs(os.path.join(tiles, c))
        for f in chosen:
            shutil.copy(os.path.join(pcam, "valid", folder, f), os.path.join(tiles, c, f))
        listing["show"][c] = sorted(chosen[:per_class_show])
        listing["train"][c] = sorted(chosen[per_class_show:])
    with open(os.path.join(out, "tiles.json"), "w") as f:
        json.dump(listing, f, indent=1)
    # The Train panel's tiles as a manifest, in the page's order, so that `clipit train --data
    # data/demo/train.csv` splits them as the page does.
    with open(os.path.join(out, "train.csv"), "w") as f:
        f.write("path,label\n")
        for c in CLASSES:
            for name in listing["train"][c]:
                f.write(f"tiles/{c}/{name},{c}\n")
    return listing


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--shared", default=os.path.join(ROOT, "..", "shared", "data"))
    ap.add_argument("--clipit", default=os.path.join(
        os.environ.get("CARGO_TARGET_DIR", os.path.expanduser("~/.cache/clipit/target")), "debug", "clipit"))
    ap.add_argument("--out", default=os.path.join(ROOT, "data", "demo"))
    ap.add_argument("--epochs", type=int, default=30)
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--lr", default="1e-3")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=0, help="RAYON_NUM_THREADS for clipit (0: all cores)")
    ap.add_argument("--skip-train", action="store_true", help="keep the model in --out/model; redo the rest")
    ap.add_argument("--show", type=int, default=40, help="sample tiles per class for the Tiles panel")
    ap.add_argument("--train-tiles", type=int, default=150, help="labelled tiles per class for the Train panel")
    args = ap.parse_args()

    pcam = os.path.abspath(os.path.join(args.shared, "pcam"))
    out = os.path.abspath(args.out)
    os.makedirs(out, exist_ok=True)
    with open(os.path.join(out, "reports.jsonl"), "w") as f:
        for r in reports(args.seed):
            f.write(json.dumps(r) + "\n")

    work = tempfile.mkdtemp(prefix="clipit-demo-")
    try:
        model = os.path.join(out, "model")
        if not args.skip_train:
            cfg_dir = os.path.join(work, "config")
            os.makedirs(cfg_dir)
            json.dump(hf_config(), open(os.path.join(cfg_dir, "config.json"), "w"), indent=1)
            json.dump(PREPROCESSOR, open(os.path.join(cfg_dir, "preprocessor_config.json"), "w"), indent=1)
            train = os.path.join(work, "train")
            link_split(pcam, "train", train)
            cmd = [args.clipit, "pretrain", "--model", cfg_dir, "--from-scratch", "--data", train,
                   "--reports", os.path.join(out, "reports.jsonl"), "--out", model + ".new",
                   "--epochs", str(args.epochs), "--batch-size", str(args.batch_size), "--lr", args.lr,
                   "--seed", str(args.seed), "--class-aware", "--cosine", "--f16"]
            print(" ".join(cmd), file=sys.stderr)
            env = dict(os.environ, RAYON_NUM_THREADS=str(args.threads)) if args.threads else None
            subprocess.run(cmd, check=True, env=env)
            shutil.rmtree(model, ignore_errors=True)
            os.rename(model + ".new", model)
        figures, counts, log = heldout_figures(args.clipit, model, pcam, work, args.threads)
        figures["note"] = ("zero-shot with the page's default prompts on the PCam validation split "
                           "(held out: never trained on), byte-identical duplicates counted once")
        figures["tiles_per_class"] = counts
        figures["source"] = "PatchCamelyon validation split, never trained on"
        with open(os.path.join(out, "heldout.json"), "w") as f:
            json.dump(figures, f, indent=1)
        print(json.dumps(figures))
    finally:
        shutil.rmtree(work, ignore_errors=True)

    listing = sample_tiles(pcam, out, args.show, args.train_tiles, args.seed)
    with open(os.path.join(out, "ATTRIBUTION.md"), "w") as f:
        f.write("# Demo bundle: sources and licences\n\n")
        f.write("- `tiles/`: PatchCamelyon (PCam) validation tiles, 96 x 96 px lymph-node H&E sections (JPEG), "
                "Veeling et al. 2018 (Camelyon16 slides), CC0 1.0: "
                + ", ".join(f"{c} {len(listing['show'][c]) + len(listing['train'][c])}" for c in CLASSES)
                + ". `tiles.json` says which are the page's first view and which its Train panel's.\n")
        f.write("- `reports.jsonl`: templated report sentences written for clipit (no patient data); the project's licence.\n")
        f.write("- `model/`: a small Hugging Face CLIP trained from scratch by `clipit pretrain` on the 20,000 PCam "
                "training tiles (`scripts/make_demo_bundle.py`); the project's licence. It is a demo, not a diagnostic model.\n")
        f.write("- `heldout.json`: its zero-shot figures on the PCam validation tiles (held out).\n")


if __name__ == "__main__":
    main()
