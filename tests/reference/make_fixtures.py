#!/usr/bin/env python3
"""Reference fixtures for clipit's parity tests (PyTorch side).

Writes, under tests/fixtures/, tiny random-init checkpoints laid out like the real hub folders plus the
outputs that the reference implementations compute from them (f32, CPU, eval mode):

  tokenizer/clip.json, tokenizer/conch.json    token ids of the reference tokenizers
  hf_clip_quickgelu/   transformers CLIPModel (quick_gelu, f32)           ~ openai/clip-vit-*
  hf_clip_gelu/        transformers CLIPModel (gelu, weights in f16)       ~ vinid/plip
  open_clip/           open_clip.CLIP (GELU)                               ~ wisdomik/QuiltNet-B-32
  conch/               CONCH (CoCa) re-implemented here in plain PyTorch   ~ MahmoodLab/conch
  timm_vit_small/      timm vit_small_patch8_224                          ~ kaiko ViT-S/8
  timm_uni/            timm vit_large_patch16_224, LayerScale             ~ MahmoodLab/UNI
  timm_dinov2_reg4/    timm vit_large_patch14_reg4_dinov2                 ~ kaiko ViT-L/14 (DINOv2, 4 registers)
  preprocess/          PIL/torchvision preprocessing outputs at real sizes

All weights are random (fixed seeds); nothing is downloaded. Every parameter is perturbed away from its
default init (LayerNorm gamma/beta, biases, LayerScale gamma, logit_scale) so that loader mistakes show.

Usage:
  python tests/reference/make_fixtures.py                  # (re)write tests/fixtures and tests/data/tiles
  python tests/reference/make_fixtures.py --full-size DIR  # full-size openai/clip-vit-base-patch32-shaped
                                                           # random CLIPModel (~600 MB; never commit it)

About CONCH: the CONCH code (github.com/mahmoodlab/CONCH) is CC-BY-NC-ND 4.0 and is not pip-installable.
The classes below (ConchLike, ConchTextTower, ConchVisual, AttnPooler, ResBlock) are an independent
re-implementation written from reading that code: same module tree and parameter names, same arithmetic
(timm ViT trunk with forward_features, attentional pooler, CoCa text tower with the CLS token appended last
and CONCH's cls-mask construction, encode_text dropping the last token), no code copied.
"""
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

sys.path.insert(0, str(Path(__file__).resolve().parent))
from fixture_common import *  # noqa: E402,F401,F403  (constants and helpers)
from fixture_common import _convert_rgb  # noqa: E402
from conch_reference import *  # noqa: E402,F401,F403  (the CONCH re-implementation)

# The fixtures name make_fixtures as the CONCH classes' module (peft records it in adapter configs).
for _cls in (AttnPooler, ResBlock, Blocks, ConchTextTower, ConchTextDecoder, ConchVisual, ConchLike):  # noqa: F405
    _cls.__module__ = "make_fixtures"


def make_tokenizer_fixtures(tokmod, vocab_file: Path, merges_file: Path):
    import open_clip

    out = FIX / "tokenizer"
    out.mkdir(parents=True, exist_ok=True)
    hf = tokmod.load_hf_tokenizer(vocab_file, merges_file)
    texts = list(tokmod.CHECK_TEXTS)
    oc = open_clip.tokenize(texts, context_length=77).tolist()
    enc = hf(texts, padding="max_length", truncation=True, max_length=77)
    hf_ids = [list(map(int, x)) for x in enc["input_ids"]]
    asset = REPO / "assets" / "clip_tokenizer.json"
    from tokenizers import Tokenizer

    t = Tokenizer.from_file(str(asset))
    asset_ids = [e.ids for e in t.encode_batch(texts)]
    assert asset_ids == oc, "assets/clip_tokenizer.json no longer matches open_clip.tokenize"
    # HF pads with <|endoftext|> (49407), open_clip with 0; everything up to the first eot is identical.
    for a, b in zip(oc, hf_ids):
        n = a.index(49407) + 1
        assert a[:n] == b[:n] and all(x == 49407 for x in b[n:]), (a, b)
    write_json(out / "clip.json", {
        "context_length": 77,
        "sot_id": 49406,
        "eot_id": 49407,
        "note": "open_clip_ids: open_clip.tokenize (pad 0, eot forced into the last slot when truncated); "
                "hf_ids: transformers CLIPTokenizer(vocab.json, merges.txt)(padding='max_length', truncation=True, "
                "max_length=77) (pad = <|endoftext|> 49407). assets/clip_tokenizer.json gives open_clip_ids.",
        "texts": texts,
        "open_clip_ids": oc,
        "hf_ids": hf_ids,
    })
    return hf


def build_conch_tokenizer(folder: Path):
    """Tiny CONCH-style tokenizer: byte-level BPE, uncased (NFD + StripAccents + Lowercase), bos/eos template."""
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers

    tok = Tokenizer(models.BPE())
    tok.normalizer = normalizers.Sequence([normalizers.NFD(), normalizers.StripAccents(), normalizers.Lowercase()])
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=True)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=420, min_frequency=2, special_tokens=CONCH_SPECIALS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False,
    )
    lines = [ln.strip() for ln in CONCH_CORPUS.strip().splitlines() if ln.strip()]
    tok.train_from_iterator(lines, trainer=trainer)
    tok.post_processor = processors.TemplateProcessing(
        single="<start_of_text> $A <end_of_text>",
        pair="$A $B:1",
        special_tokens=[("<start_of_text>", 1), ("<end_of_text>", 2)],
    )
    for i, s in enumerate(CONCH_SPECIALS):
        assert tok.token_to_id(s) == i, (s, tok.token_to_id(s))
    path = folder / "tokenizer.json"
    tok.save(str(path))
    return path


def conch_tokenize(tokenizer_file: Path, texts: list[str], context_length: int) -> torch.Tensor:
    """CONCH's tokenize(): HF fast tokenizer, max_length = ctx-1 (truncate + pad), then one extra <pad>."""
    from transformers import PreTrainedTokenizerFast

    t = PreTrainedTokenizerFast(tokenizer_file=str(tokenizer_file), bos_token="<start_of_text>",
                                eos_token="<end_of_text>", pad_token="<pad>")
    enc = t(texts, max_length=context_length - 1, add_special_tokens=True, return_token_type_ids=False,
            truncation=True, padding="max_length", return_tensors="pt")
    return F.pad(enc["input_ids"], (0, 1), value=t.pad_token_id)


# --------------------------------------------------------------------------------------------------
# HF CLIPModel
# --------------------------------------------------------------------------------------------------
def hf_clip(name: str, seed: int, text_cfg: dict, vision_cfg: dict, projection_dim: int, logit_scale: float,
            f16: bool, preproc: dict, images: list[Path], hf_tok):
    from transformers import CLIPConfig, CLIPModel
    from transformers.models.clip.image_processing_pil_clip import CLIPImageProcessorPil

    folder = FIX / name
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    torch.manual_seed(seed)
    cfg = CLIPConfig(text_config=text_cfg, vision_config=vision_cfg, projection_dim=projection_dim,
                     logit_scale_init_value=logit_scale)
    model = CLIPModel(cfg).eval()
    perturb(model, seed, logit_scale=logit_scale)
    if f16:
        round_to_f16(model)
        model.half().save_pretrained(folder, safe_serialization=True)
        model.float()
    else:
        model.save_pretrained(folder, safe_serialization=True)
    write_json(folder / "preprocessor_config.json", preproc)

    # reload exactly as a user would, in f32
    model = CLIPModel.from_pretrained(folder, dtype=torch.float32, attn_implementation="eager").eval()
    proc = CLIPImageProcessorPil.from_pretrained(folder)
    pixel_values = proc(images=[pil_rgb(p) for p in images], return_tensors="pt")["pixel_values"].float()
    size = vision_cfg["image_size"]
    ref_tf = clip_like_transform(size, preproc["image_mean"], preproc["image_std"])
    tv = torch.stack([ref_tf(pil_rgb(p)) for p in images])
    pil_vs_tv = float((pixel_values - tv).abs().max())
    try:
        from transformers import CLIPImageProcessor  # torchvision backend (the transformers 5 default)

        fast = CLIPImageProcessor.from_pretrained(folder)
        pv_fast = fast(images=[pil_rgb(p) for p in images], return_tensors="pt")["pixel_values"].float()
        fast_diff = float((pixel_values - pv_fast).abs().max())
    except Exception as e:  # pragma: no cover
        pv_fast, fast_diff = None, repr(e)

    enc = hf_tok(MODEL_TEXTS, padding="max_length", truncation=True, max_length=77, return_tensors="pt")
    input_ids = enc["input_ids"].long()
    with torch.no_grad():
        img = model.get_image_features(pixel_values=pixel_values)
        img = img.pooler_output if hasattr(img, "pooler_output") else img
        txt = model.get_text_features(input_ids=input_ids, attention_mask=enc["attention_mask"])
        txt = txt.pooler_output if hasattr(txt, "pooler_output") else txt
        # same result without attention_mask and with open_clip-style zero padding
        import open_clip

        oc_ids = open_clip.tokenize(MODEL_TEXTS, context_length=77)
        t2 = model.get_text_features(input_ids=oc_ids)
        t2 = t2.pooler_output if hasattr(t2, "pooler_output") else t2
        assert torch.allclose(txt, t2, atol=1e-6), float((txt - t2).abs().max())
    tensors = {"pixel_values": pixel_values, "image_embeds": img, "input_ids": input_ids, "text_embeds": txt,
               "logit_scale": model.logit_scale.detach().reshape(())}
    if pv_fast is not None:
        tensors["pixel_values_torchvision_backend"] = pv_fast
    return write_expected(folder, tensors, {
        "model": "transformers.CLIPModel",
        "seed": seed,
        "images": [rel(p) for p in images],
        "texts": MODEL_TEXTS,
        "preprocess": "transformers CLIPImageProcessorPil (PIL bicubic resize of the short side, center crop, "
                      "rescale 1/255, normalize); pixel_values_torchvision_backend = transformers 5 default "
                      "CLIPImageProcessor (torchvision tensor resize), kept for information only",
        "max_abs_diff_pil_processor_vs_torchvision_transforms": pil_vs_tv,
        "max_abs_diff_pil_processor_vs_torchvision_backend": fast_diff,
        "input_ids": "transformers CLIPTokenizer, padding='max_length', truncation, max_length 77 (pad 49407); "
                     "open_clip ids (pad 0) give the same text_embeds",
        "weights_dtype": "float16" if f16 else "float32",
    })
    return model


# --------------------------------------------------------------------------------------------------
# open_clip CLIP
# --------------------------------------------------------------------------------------------------
def make_open_clip(images: list[Path], seed: int) -> float:
    import open_clip

    folder = FIX / "open_clip"
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    model_cfg = {
        "embed_dim": 16,
        "quick_gelu": False,
        "vision_cfg": {"image_size": 32, "layers": 2, "width": 32, "head_width": 16, "mlp_ratio": 2.0, "patch_size": 8},
        "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 8, "heads": 2, "layers": 2},
    }
    torch.manual_seed(seed)
    model = open_clip.CLIP(embed_dim=model_cfg["embed_dim"], vision_cfg=model_cfg["vision_cfg"],
                           text_cfg=model_cfg["text_cfg"], quick_gelu=False).eval()
    perturb(model, seed, logit_scale=3.3)
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(folder / "open_clip_model.safetensors"))
    write_json(folder / "open_clip_config.json", {
        "model_cfg": model_cfg,
        "preprocess_cfg": {"mean": OPENAI_MEAN, "std": OPENAI_STD},
    })
    # reload through open_clip's own hub-folder loader
    model2, preprocess = open_clip.create_model_from_pretrained(f"local-dir:{folder}")
    model2.eval()
    for (k1, v1), (k2, v2) in zip(model.state_dict().items(), model2.state_dict().items()):
        assert k1 == k2 and torch.equal(v1, v2), k1
    pixel_values = torch.stack([preprocess(pil_rgb(p)) for p in images])
    ids = open_clip.tokenize(MODEL_TEXTS, context_length=77)
    with torch.no_grad():
        img = model2.encode_image(pixel_values, normalize=False)
        txt = model2.encode_text(ids, normalize=False)
    return write_expected(folder, {"pixel_values": pixel_values, "image_embeds": img, "input_ids": ids.long(),
                                   "text_embeds": txt, "logit_scale": model2.logit_scale.detach().reshape(())}, {
        "model": "open_clip.CLIP",
        "seed": seed,
        "images": [rel(p) for p in images],
        "texts": MODEL_TEXTS,
        "preprocess": describe(preprocess),
        "input_ids": "open_clip.tokenize (context 77, pad 0)",
        "weights_dtype": "float32",
    })


# --------------------------------------------------------------------------------------------------
# CONCH (CoCa) re-implementation
# --------------------------------------------------------------------------------------------------
def make_conch(images: list[Path], seed: int) -> float:
    folder = FIX / "conch"
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    tok_path = build_conch_tokenizer(folder)
    from tokenizers import Tokenizer

    vocab_size = Tokenizer.from_file(str(tok_path)).get_vocab_size()
    ctx = 16
    cfg = {
        "embed_dim": 16,
        "embed_dim_caption": 32,
        "vision_cfg": {
            "image_size": 32, "patch_size": 16, "width": 32, "layers": 2, "num_heads": 2, "mlp_ratio": 4,
            "attentional_pool_caption": True, "attentional_pool_contrast": True, "attn_pooler_heads": 8,
            "n_queries_contrast": 1, "n_queries_caption": 4, "output_tokens": True,
        },
        "text_cfg": {"context_length": ctx, "vocab_size": vocab_size, "width": 16, "heads": 2, "layers": 2,
                     "embed_cls": True, "output_tokens": True},
        "multimodal_cfg": {"context_length": ctx, "vocab_size": vocab_size, "width": 16, "heads": 2, "layers": 1},
        "custom_text": True,
    }
    write_json(folder / "conch_config.json", cfg)
    torch.manual_seed(seed)
    model = ConchLike(cfg).eval()
    perturb(model, seed, logit_scale=3.7)
    sd = {k: v.contiguous() for k, v in model.state_dict().items()}
    save_file(sd, str(folder / "model.safetensors"))
    model2 = ConchLike(cfg).eval()
    model2.load_state_dict(load_file(str(folder / "model.safetensors")), strict=True)

    tf = clip_like_transform(cfg["vision_cfg"]["image_size"], OPENAI_MEAN, OPENAI_STD)
    pixel_values = torch.stack([tf(pil_rgb(p)) for p in images])
    ids = conch_tokenize(tok_path, MODEL_TEXTS, ctx)
    with torch.no_grad():
        img = model2.encode_image(pixel_values, normalize=False)
        txt = model2.encode_text(ids, normalize=False)
    gap = write_expected(folder, {"pixel_values": pixel_values, "image_embeds": img, "input_ids": ids.long(),
                                  "text_embeds": txt, "logit_scale": model2.logit_scale.detach().reshape(())}, {
        "model": "CONCH (CoCa) re-implementation in tests/reference/make_fixtures.py",
        "seed": seed,
        "images": [rel(p) for p in images],
        "texts": MODEL_TEXTS,
        "preprocess": f"Resize({cfg['vision_cfg']['image_size']}, bicubic) + CenterCrop + ToTensor + "
                      f"Normalize(OpenAI mean/std)",
        "input_ids": f"PreTrainedTokenizerFast(tokenizer.json), max_length={ctx - 1}, truncation, "
                     f"padding='max_length', then one extra <pad> (id 0) -> {ctx}",
        "weights_dtype": "float32",
    })
    # tokenizer parity texts (accents, CJK, emoji, long) through the tiny CONCH tokenizer
    tokmod = load_tokenizer_module()
    texts = list(tokmod.CHECK_TEXTS) + MODEL_TEXTS
    write_json(FIX / "tokenizer" / "conch.json", {
        "tokenizer": rel(tok_path),
        "context_length": ctx,
        "pad_id": 0, "bos_id": 1, "eos_id": 2,
        "note": "CONCH tokenize(): encode with bos/eos, truncate+pad (with <pad>=0) to context_length-1, append one "
                "<pad>; encode_text then drops that last slot and appends the CLS embedding.",
        "texts": texts,
        "ids": conch_tokenize(tok_path, texts, ctx).tolist(),
    })
    return gap


# --------------------------------------------------------------------------------------------------
# timm backbones
# --------------------------------------------------------------------------------------------------
TIMM_SPECS = [
    ("timm_vit_small", "vit_small_patch8_224", 5,
     {"embed_dim": 32, "depth": 2, "num_heads": 2, "img_size": 32},
     {"tag": "kaiko_tiny_random", "input_size": [3, 32, 32], "interpolation": "bicubic", "crop_pct": 1.0,
      "mean": HALF, "std": HALF}),
    ("timm_uni", "vit_large_patch16_224", 6,
     {"embed_dim": 32, "depth": 2, "num_heads": 2, "img_size": 32, "patch_size": 16, "init_values": 1e-5,
      "num_classes": 0, "dynamic_img_size": True},
     {"tag": "uni_tiny_random", "input_size": [3, 32, 32], "interpolation": "bicubic", "crop_pct": 0.875,
      "mean": IMAGENET_MEAN, "std": IMAGENET_STD}),
    ("timm_dinov2_reg4", "vit_large_patch14_reg4_dinov2", 7,
     {"embed_dim": 32, "depth": 2, "num_heads": 2, "img_size": 28},
     {"tag": "kaiko_tiny_random", "input_size": [3, 28, 28], "interpolation": "bicubic", "crop_pct": 1.0,
      "mean": HALF, "std": HALF}),
]


def make_timm(images: list[Path]):
    import timm
    from timm.data import create_transform, resolve_data_config

    out = {}
    for name, arch, seed, model_args, pcfg in TIMM_SPECS:
        folder = FIX / name
        shutil.rmtree(folder, ignore_errors=True)
        folder.mkdir(parents=True)
        torch.manual_seed(seed)
        kwargs = dict(model_args)
        kwargs["num_classes"] = 0
        model = timm.create_model(arch, pretrained=False, **kwargs).eval()
        perturb(model, seed)
        save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(folder / "model.safetensors"))
        pretrained_cfg = {
            "tag": pcfg["tag"], "custom_load": False, "input_size": pcfg["input_size"], "fixed_input_size": True,
            "interpolation": pcfg["interpolation"], "crop_pct": pcfg["crop_pct"], "crop_mode": "center",
            "mean": pcfg["mean"], "std": pcfg["std"], "num_classes": 0, "pool_size": None,
            "first_conv": "patch_embed.proj", "classifier": "head",
        }
        write_json(folder / "config.json", {
            "architecture": arch, "num_classes": 0, "num_features": model.num_features, "global_pool": "token",
            "model_args": model_args, "pretrained_cfg": pretrained_cfg,
        })
        # reload through timm's own hub-folder loader
        model2 = timm.create_model(f"local-dir:{folder}", pretrained=True).eval()
        for (k1, v1), (k2, v2) in zip(model.state_dict().items(), model2.state_dict().items()):
            assert k1 == k2 and torch.equal(v1, v2), k1
        data_cfg = resolve_data_config({}, model=model2)
        tf = create_transform(**data_cfg)
        pixel_values = torch.stack([tf(pil_rgb(p)) for p in images])
        with torch.no_grad():
            emb = model2(pixel_values)
        write_expected(folder, {"pixel_values": pixel_values, "image_embeds": emb}, {
            "model": f"timm {timm.__version__} {arch}",
            "images": [rel(p) for p in images],
            "data_config": {k: (list(v) if isinstance(v, tuple) else v) for k, v in data_cfg.items()},
            "preprocess": describe(tf),
            "weights_dtype": "float32",
        })
        out[name] = data_cfg
    return out


# --------------------------------------------------------------------------------------------------
# Preprocessing parity cases (real sizes)
# --------------------------------------------------------------------------------------------------
def make_preprocess(images: list[Path]):
    from timm.data import create_transform
    from torchvision import transforms as T

    folder = FIX / "preprocess"
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    crop = TILES / CROP_NAME
    tile = images[0]
    tif = TILES / "crc_val_NORM-TCGA-YLVCMEHK.tif"
    timm96 = dict(input_size=(3, 96, 96), crop_pct=0.875, interpolation="bicubic", mean=IMAGENET_MEAN,
                  std=IMAGENET_STD)
    cases = [
        ("hgsc_crop_openai_clip_224", crop, 224, 224, OPENAI_MEAN, OPENAI_STD, clip_like_transform(224, OPENAI_MEAN, OPENAI_STD),
         "OpenAI CLIP / open_clip eval: Resize(224, bicubic) + CenterCrop(224) + Normalize"),
        ("tile_conch_448", tile, 448, 448, OPENAI_MEAN, OPENAI_STD, clip_like_transform(448, OPENAI_MEAN, OPENAI_STD),
         "CONCH eval: Resize(448, bicubic) upsampling a 224 tile + CenterCrop(448) + Normalize"),
        ("tif_timm_96_crop875", tif, math.floor(96 / 0.875), 96, IMAGENET_MEAN, IMAGENET_STD, create_transform(**timm96),
         "timm eval transform, input 96, crop_pct 0.875: Resize(floor(96/0.875)=109, bicubic) + CenterCrop(96)"),
        ("hgsc_crop_timm_96_crop875", crop, math.floor(96 / 0.875), 96, IMAGENET_MEAN, IMAGENET_STD,
         create_transform(**timm96),
         "timm eval transform on the non-square crop: 300x260 -> 125x109 -> CenterCrop(96) (odd margin 29)"),
    ]
    tensors, listing = {}, []
    for key, img, resize, crop_sz, mean, std, tf, what in cases:
        x = tf(pil_rgb(img))
        assert x.shape == (3, crop_sz, crop_sz), x.shape
        tensors[key] = x.contiguous()
        listing.append({"key": key, "image": rel(img), "resize": resize, "crop": crop_sz, "interpolation": "bicubic",
                        "mean": mean, "std": std, "transform": describe(tf), "what": what})
    save_file(tensors, str(folder / "expected.safetensors"))
    write_json(folder / "cases.json", listing)


# --------------------------------------------------------------------------------------------------
# Full-size (never committed)
# --------------------------------------------------------------------------------------------------
def make_full_size(out_dir: Path, images: list[Path]):
    from transformers import CLIPConfig, CLIPModel
    from transformers.models.clip.image_processing_pil_clip import CLIPImageProcessorPil

    tokmod = load_tokenizer_module()
    out_dir.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(1234)
    cfg = CLIPConfig(
        text_config=dict(vocab_size=49408, hidden_size=512, intermediate_size=2048, num_hidden_layers=12,
                         num_attention_heads=8, max_position_embeddings=77, hidden_act="quick_gelu",
                         projection_dim=512, bos_token_id=0, eos_token_id=2, pad_token_id=1),
        vision_config=dict(image_size=224, patch_size=32, hidden_size=768, intermediate_size=3072,
                           num_hidden_layers=12, num_attention_heads=12, hidden_act="quick_gelu", projection_dim=512),
        projection_dim=512)
    model = CLIPModel(cfg).eval()
    model.save_pretrained(out_dir, safe_serialization=True)
    pre = {"crop_size": {"height": 224, "width": 224}, "do_center_crop": True, "do_convert_rgb": True,
           "do_normalize": True, "do_rescale": True, "do_resize": True, "image_mean": OPENAI_MEAN,
           "image_processor_type": "CLIPImageProcessor", "image_std": OPENAI_STD, "resample": 3,
           "rescale_factor": 1 / 255, "size": {"shortest_edge": 224}}
    write_json(out_dir / "preprocessor_config.json", pre)
    with tempfile.TemporaryDirectory() as tmp:
        v, m = tokmod.build_vocab_merges(tmp)
        hf_tok = tokmod.load_hf_tokenizer(v, m)
        hf_tok.save_pretrained(out_dir)
    proc = CLIPImageProcessorPil.from_pretrained(out_dir)
    pv = proc(images=[pil_rgb(p) for p in images[:2]], return_tensors="pt")["pixel_values"].float()
    enc = hf_tok(MODEL_TEXTS[:2], padding="max_length", truncation=True, max_length=77, return_tensors="pt")
    with torch.no_grad():
        img = model.get_image_features(pixel_values=pv)
        img = img.pooler_output if hasattr(img, "pooler_output") else img
        txt = model.get_text_features(input_ids=enc["input_ids"])
        txt = txt.pooler_output if hasattr(txt, "pooler_output") else txt
    save_file({"pixel_values": pv, "image_embeds": img.contiguous(), "input_ids": enc["input_ids"].long(),
               "text_embeds": txt.contiguous()}, str(out_dir / "expected.safetensors"))
    print(f"full-size model written to {out_dir}")


# --------------------------------------------------------------------------------------------------
def versions() -> dict:
    import open_clip
    import PIL
    import safetensors
    import timm
    import tokenizers
    import torchvision
    import transformers

    return {"python": sys.version.split()[0], "torch": torch.__version__, "torchvision": torchvision.__version__,
            "transformers": transformers.__version__, "tokenizers": tokenizers.__version__,
            "open_clip_torch": open_clip.__version__, "timm": timm.__version__, "safetensors": safetensors.__version__,
            "pillow": PIL.__version__, "numpy": np.__version__}


def write_readme(vers: dict, timm_cfgs: dict):
    mine = ["tokenizer/clip.json", "tokenizer/conch.json", "hf_clip_quickgelu", "hf_clip_gelu", "open_clip", "conch",
            "timm_vit_small", "timm_uni", "timm_dinov2_reg4", "preprocess"]
    files = sorted(p for m in mine for p in ([FIX / m] if (FIX / m).is_file() else (FIX / m).rglob("*")) if p.is_file())
    listing = "\n".join(f"| `{p.relative_to(FIX).as_posix()}` | {p.stat().st_size} | "
                        f"`{hashlib.sha256(p.read_bytes()).hexdigest()[:16]}` |" for p in files)
    ver_lines = "\n".join(f"- {k} {v}" for k, v in vers.items())
    text = f"""# Reference fixtures (generated; do not edit by hand)

Regenerate with

    python scripts/make_clip_tokenizer.py      # assets/clip_tokenizer.json (only if the tokenizer changes)
    python tests/reference/make_fixtures.py    # this folder + tests/data/tiles + tests/data/ATTRIBUTION.md

Everything is deterministic (fixed seeds, 1 CPU thread, deterministic algorithms). All checkpoints are tiny and
randomly initialised; no pretrained weight was downloaded. Every weight is perturbed away from its default init
(LayerNorm gamma ~ U(0.5,1.5) and beta ~ N(0,0.1), biases ~ N(0,0.1), LayerScale gamma ~ U(0.5,1.5), non-default
logit_scale) so that a mis-loaded tensor changes the outputs. Expected outputs are computed in float32 on CPU, eval mode.
A full-size random openai/clip-vit-base-patch32-shaped CLIPModel (~600 MB, never committed) is written by

    python tests/reference/make_fixtures.py --full-size /tmp/clip-vit-base-patch32-random

Package versions used for the committed files:

{ver_lines}

## Folders

- `tokenizer/clip.json`: texts, `open_clip_ids` (open_clip.tokenize, 77, pad 0) and `hf_ids` (transformers
  CLIPTokenizer from vocab.json/merges.txt, padding='max_length', truncation, 77; pad 49407).
  `tokenizer/conch.json`: the same texts plus the model texts through the tiny CONCH tokenizer (`conch/tokenizer.json`), context 16.
- `hf_clip_quickgelu/`: transformers CLIPModel, quick_gelu, f32. Hub layout: `config.json`, `model.safetensors`,
  `preprocessor_config.json` (modern dict form: size.shortest_edge / crop_size.height,width).
- `hf_clip_gelu/`: PLIP-like CLIPModel, gelu (erf), weights stored in **float16**; expected outputs computed in f32
  from the f16-rounded weights. `preprocessor_config.json` in the legacy int form (`size: 48`, `crop_size: 48`,
  CLIPFeatureExtractor).
- `open_clip/`: QuiltNet-like open_clip.CLIP (GELU). Hub layout: `open_clip_config.json` ({{model_cfg, preprocess_cfg}}),
  `open_clip_model.safetensors` (open_clip state_dict names).
- `conch/`: CONCH-like CoCa (re-implemented in make_fixtures.py). `conch_config.json` (schema of conch_ViT-B-16.json),
  `model.safetensors` (real key names, including the unused `visual.attn_pool_caption.*`, `visual.ln_caption.*` and
  `text_decoder.*`), `tokenizer.json` (tiny uncased byte-level BPE).
- `timm_vit_small/`, `timm_uni/`, `timm_dinov2_reg4/`: timm ViTs as the HF hub stores timm models: `config.json`
  (architecture, num_classes 0, model_args, pretrained_cfg) + `model.safetensors`; loadable with
  `timm.create_model("local-dir:<folder>", pretrained=True)`.
- `preprocess/`: `cases.json` + `expected.safetensors` ([3,H,W] f32 under each case's `key`): PIL/torchvision
  preprocessing at real sizes (224 OpenAI CLIP on a non-square crop, CONCH 448 upsampling, timm crop_pct 0.875 at 96).

Each model folder has `expected.safetensors` (`pixel_values` [N,3,S,S] f32, `image_embeds` [N,E] f32 before L2
normalisation; CLIP-like models also `input_ids` [M,ctx] i64, `text_embeds` [M,E] f32, `logit_scale` [] f32 = the raw
parameter, not exp) and `expected.json` (`images` relative to the repo root, `texts`, and for CLIP-like models
`retrieval` = per image the text indices by descending cosine, `scores` = those cosines).

Images: `tests/data/tiles/` (see `tests/data/ATTRIBUTION.md`). Folders not listed here (e.g. `pickle/`,
`preprocess_pil/`) are written by other scripts in `tests/reference/`.

## Notes for the loaders

- LayerNorm eps: HF CLIP 1e-5 (`layer_norm_eps` in both sub-configs); open_clip 1e-5; CONCH text tower, attentional
  poolers, `ln_contrast`/`ln_caption` 1e-5; every timm ViT (including CONCH's `visual.trunk`) **1e-6**.
- Activations: `hidden_act` quick_gelu = x*sigmoid(1.702x); gelu = exact erf GELU (HF, open_clip with
  `quick_gelu: false`, CONCH, timm).
- Attention naming: HF = separate `q_proj/k_proj/v_proj/out_proj` Linear (weight [out,in] + bias); open_clip and CONCH
  text = `attn.in_proj_weight` [3D,D] / `attn.in_proj_bias` [3D] (q,k,v stacked in that order) + `attn.out_proj`;
  timm = `attn.qkv` Linear [3D,D] (q,k,v stacked) + `attn.proj`; CONCH `visual.attn_pool_contrast.attn` has kdim=vdim
  (32) != embed (16) so it stores `q_proj_weight` [16,16], `k_proj_weight` [16,32], `v_proj_weight` [16,32] and one
  `in_proj_bias` [48] (q,k,v biases stacked); `visual.attn_pool_caption.attn` (embed = kdim) has `in_proj_weight`.
- Projections: HF `visual_projection.weight`/`text_projection.weight` are Linear weights [E, width] (y = x W^T);
  open_clip `visual.proj` [width,E], `text_projection` [width,E] and CONCH `visual.proj_contrast` [E,E],
  `text.text_projection` [width,E] are used as y = x @ P. HF sub-configs keep `projection_dim: 512` (the library
  default); only the top-level `projection_dim` is the real one.
- Text pooling: HF with `eos_token_id == 2` (hf_clip_quickgelu, like openai/clip-vit-*): position of argmax(input_ids)
  (first max); otherwise (hf_clip_gelu, eos 49407): first position where id == eos. open_clip: argmax(ids). HF ids are
  padded with 49407, open_clip ids with 0: both give the same text_embeds here.
- CONCH text: input [B,16] -> drop the last slot -> [B,15] token embeddings + `cls_emb` appended LAST -> + positional
  [16] -> causal mask + CONCH's cls mask (see ConchTextTower.attention_mask) -> `ln_final` on the last position only
  -> @ `text.text_projection`. The cls mask is shifted by one: the CLS query may attend key j iff j == 0 or
  ids[j-1] != pad (so it sees the first pad slot, and itself only when slot 14 is not a pad).
- CONCH vision: the poolers always have 8 heads (CONCH's code ignores `attn_pooler_heads`, default 8; the config says
  8 too). Trunk: timm forward_features (cls + patches, final `norm`), pooler over all tokens, `[:,0]`, `ln_contrast`,
  @ `proj_contrast`.
- timm: `vit_large_patch16_224` + `init_values` -> LayerScale `ls1.gamma`/`ls2.gamma`; `vit_large_patch14_reg4_dinov2`
  implies patch 14, `init_values` 1e-5 (LayerScale), `reg_tokens` 4, `no_embed_class` True (pos_embed [1, 4, D] covers
  patches only; the sequence is [cls, reg x4, patches]); output = final norm, token 0 (cls).
- Center crop offsets: torchvision (open_clip, CONCH, timm) uses round-half-even of (size-crop)/2; transformers'
  CLIPImageProcessor uses floor. They differ on the 300x260 crop at 48 px (offset 4 vs 3): the hf_clip_gelu
  `pixel_values` of that image follow transformers.

## Files

| File | Bytes | sha256[:16] |
|---|---|---|
{listing}
"""
    (FIX / "README.md").write_text(text, encoding="utf-8")


def main() -> int:
    ap = argparse.ArgumentParser(description="Write clipit's reference fixtures.")
    ap.add_argument("--full-size", metavar="OUT_DIR", help="write a full-size random CLIP ViT-B/32 (HF) and exit")
    args = ap.parse_args()

    images = ensure_tiles()
    if args.full_size:
        make_full_size(Path(args.full_size), images)
        return 0

    FIX.mkdir(parents=True, exist_ok=True)
    tokmod = load_tokenizer_module()
    with tempfile.TemporaryDirectory() as tmp:
        vocab_file, merges_file = tokmod.build_vocab_merges(tmp)
        hf_tok = make_tokenizer_fixtures(tokmod, vocab_file, merges_file)

        with_stable_ranking(lambda seed: hf_clip(
            "hf_clip_quickgelu", seed,
            text_cfg=dict(vocab_size=49408, max_position_embeddings=77, hidden_size=8, num_attention_heads=2,
                          num_hidden_layers=2, intermediate_size=16, hidden_act="quick_gelu", layer_norm_eps=1e-5,
                          bos_token_id=0, eos_token_id=2, pad_token_id=1),
            vision_cfg=dict(image_size=32, patch_size=8, hidden_size=32, num_attention_heads=4,
                            num_hidden_layers=2, intermediate_size=64, hidden_act="quick_gelu",
                            layer_norm_eps=1e-5),
            projection_dim=16, logit_scale=3.1, f16=False,
            preproc={"crop_size": {"height": 32, "width": 32}, "do_center_crop": True, "do_convert_rgb": True,
                     "do_normalize": True, "do_rescale": True, "do_resize": True, "image_mean": OPENAI_MEAN,
                     "image_processor_type": "CLIPImageProcessor", "image_std": OPENAI_STD, "resample": 3,
                     "rescale_factor": 0.00392156862745098, "size": {"shortest_edge": 32}},
            images=images, hf_tok=hf_tok), 1)
        with_stable_ranking(lambda seed: hf_clip(
            "hf_clip_gelu", seed,
            text_cfg=dict(vocab_size=49408, max_position_embeddings=77, hidden_size=12, num_attention_heads=3,
                          num_hidden_layers=3, intermediate_size=24, hidden_act="gelu", layer_norm_eps=1e-5,
                          bos_token_id=49406, eos_token_id=49407, pad_token_id=1),
            vision_cfg=dict(image_size=48, patch_size=16, hidden_size=24, num_attention_heads=3,
                            num_hidden_layers=3, intermediate_size=48, hidden_act="gelu", layer_norm_eps=1e-5),
            projection_dim=20, logit_scale=2.9, f16=True,
            preproc={"crop_size": 48, "do_center_crop": True, "do_normalize": True, "do_resize": True,
                     "feature_extractor_type": "CLIPFeatureExtractor", "image_mean": OPENAI_MEAN,
                     "image_std": OPENAI_STD, "resample": 3, "size": 48},
            images=images, hf_tok=hf_tok), 2)
    with_stable_ranking(lambda seed: make_open_clip(images, seed), 3)
    with_stable_ranking(lambda seed: make_conch(images, seed), 4)
    timm_cfgs = make_timm(images)
    make_preprocess(images)
    write_readme(versions(), timm_cfgs)
    total = sum(p.stat().st_size for p in list(FIX.rglob("*")) + list(DATA.rglob("*")) if p.is_file())
    print(f"fixtures written; tests/fixtures + tests/data = {total / 1e6:.2f} MB")
    assert total < 20e6, "fixtures + test data exceed the 20 MB budget"
    return 0


if __name__ == "__main__":
    sys.exit(main())
