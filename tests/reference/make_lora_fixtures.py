#!/usr/bin/env python3
"""Reference LoRA adapters for clipit's LoRA tests (HF peft side).

For three of the tiny fixtures written by make_fixtures.py, this wraps the PyTorch reference model with
`peft.get_peft_model(model, LoraConfig(target_modules=<every nn.Linear / nn.Embedding / nn.Conv2d module>,
r=4, lora_alpha=8, lora_dropout=0.0))` -- exactly how CLIP-IT applies LoRA -- gives every adapter non-zero
factors (peft's init has B = 0, and for embeddings A = 0, which would make the delta zero and prove nothing),
saves the adapter with `save_pretrained` and records the adapted and the merged outputs:

  tests/fixtures/lora/<name>/adapter_model.safetensors   peft's own file (keys base_model.model.<module>.lora_*)
  tests/fixtures/lora/<name>/adapter_config.json         peft's own config
  tests/fixtures/lora/<name>/expected.safetensors        outputs on the base fixture's pixel_values / input_ids:
      image_embeds, text_embeds                 peft model, adapters active (f32, CPU, eval)
      merged_image_embeds, merged_text_embeds   after peft's merge_and_unload()
      base_image_embeds, base_text_embeds       before LoRA (the base fixture's own outputs)
  tests/fixtures/lora/<name>/expected.json               what was done, versions, the target list

Fixtures:
  timm_vit_small      timm ViT (attn.qkv fused, attn.proj, mlp.fc1/fc2, patch_embed.proj Conv2d)
  hf_clip_quickgelu   transformers CLIPModel (q/k/v/out_proj, fc1/fc2, projections, patch_embedding Conv2d,
                      position_embedding nn.Embedding). text_model.embeddings.token_embedding is NOT targeted here:
                      its lora_embedding_A would be [4, 49408] (790 kB); the CONCH fixture covers token embeddings.
  conch               the CONCH re-implementation of make_fixtures.py, every target of the whole model (as CLIP-IT
                      does), including the caption decoder the Rust model does not load.

peft quirk reproduced here (and asserted below): an adapter on the `out_proj` of a torch nn.MultiheadAttention (CONCH
text tower and attentional pooler, open_clip) is created and saved, but nn.MultiheadAttention reads
`out_proj.weight` directly, so the adapter never changes the forward pass and never receives a gradient. Only
`merge_and_unload()` folds it in, so for CONCH peft's merged outputs differ from its adapted outputs
(`merged_*` of the conch fixture are peft's, for information; the Rust test compares merged to adapted there).

Usage: python tests/reference/make_lora_fixtures.py     (run after make_fixtures.py; deterministic)
"""
from __future__ import annotations

import importlib.util
import json
import shutil
import sys
from pathlib import Path

import torch
import torch.nn as nn
from safetensors.torch import load_file, save_file

REPO = Path(__file__).resolve().parents[2]
FIX = REPO / "tests" / "fixtures"
OUT = FIX / "lora"
R, ALPHA = 4, 8

torch.set_num_threads(1)
torch.use_deterministic_algorithms(True)


def load_make_fixtures():
    spec = importlib.util.spec_from_file_location("make_fixtures", REPO / "tests" / "reference" / "make_fixtures.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def targets(model: nn.Module, exclude: tuple[str, ...] = ()) -> list[str]:
    """Every nn.Linear / nn.Embedding / nn.Conv2d module name (what CLIP-IT passes as target_modules)."""
    return sorted(n for n, m in model.named_modules()
                  if isinstance(m, (nn.Linear, nn.Embedding, nn.Conv2d)) and n not in exclude)


@torch.no_grad()
def make_nonzero(peft_model: nn.Module, seed: int) -> None:
    """B (and embedding A) drawn at random, so every adapter contributes; A keeps peft's Kaiming init."""
    g = torch.Generator().manual_seed(seed)
    for name, p in peft_model.named_parameters():
        if ".lora_B." in name:
            p.copy_(torch.randn(p.shape, generator=g) * 0.3)
        elif ".lora_embedding_A." in name:
            p.copy_(torch.randn(p.shape, generator=g) * 0.1)


def mha_out_proj_modules(model: nn.Module) -> list[str]:
    return sorted(f"{n}.out_proj" if n else "out_proj" for n, m in model.named_modules()
                  if isinstance(m, nn.MultiheadAttention))


def build(name: str, mf):
    """(model, forward(model) -> dict of outputs, inputs, excluded targets) for one base fixture."""
    folder = FIX / name
    exp = load_file(str(folder / "expected.safetensors"))
    pixels = exp["pixel_values"]
    ids = exp.get("input_ids")
    if name.startswith("timm"):
        import timm

        model = timm.create_model(f"local-dir:{folder}", pretrained=True).eval()
        return model, lambda m: {"image_embeds": m(pixels)}, ()
    if name.startswith("hf_clip"):
        from transformers import CLIPModel

        model = CLIPModel.from_pretrained(folder, dtype=torch.float32, attn_implementation="eager").eval()

        def fwd(m):
            img = m.get_image_features(pixel_values=pixels)
            txt = m.get_text_features(input_ids=ids)
            img = img.pooler_output if hasattr(img, "pooler_output") else img
            txt = txt.pooler_output if hasattr(txt, "pooler_output") else txt
            return {"image_embeds": img, "text_embeds": txt}

        return model, fwd, ("text_model.embeddings.token_embedding",)
    if name == "conch":
        cfg = json.loads((folder / "conch_config.json").read_text())
        model = mf.ConchLike(cfg).eval()
        model.load_state_dict(load_file(str(folder / "model.safetensors")), strict=True)
        return model, lambda m: {"image_embeds": m.encode_image(pixels, normalize=False),
                                 "text_embeds": m.encode_text(ids, normalize=False)}, ()
    raise ValueError(name)


def make(name: str, seed: int, mf) -> None:
    from peft import LoraConfig, get_peft_model

    model, fwd, exclude = build(name, mf)
    with torch.no_grad():
        base = {k: v.clone() for k, v in fwd(model).items()}
    names = targets(model, exclude)
    mha = mha_out_proj_modules(model)
    cfg = LoraConfig(target_modules=names, r=R, lora_alpha=ALPHA, lora_dropout=0.0)
    torch.manual_seed(seed)  # peft draws lora_A from the global generator
    pm = get_peft_model(model, cfg).eval()
    inner = pm.base_model.model
    with torch.no_grad():
        init = fwd(inner)
    for k in base:  # peft init: B = 0 (embedding A = 0) -> outputs unchanged
        assert torch.equal(init[k], base[k]), (name, k)
    make_nonzero(pm, seed)
    with torch.no_grad():
        adapted = {k: v.clone() for k, v in fwd(inner).items()}
    for k in base:
        assert (adapted[k] - base[k]).abs().max() > 1e-2, (name, k, "adapters do not change the output")
    if mha:
        # The quirk: the MultiheadAttention out_proj adapters do not take part in the forward pass.
        with torch.no_grad():
            for n, p in pm.named_parameters():
                if any(f".{m}.lora_B." in n for m in mha):
                    p.zero_()
            same = fwd(inner)
            for k in base:
                assert torch.equal(same[k], adapted[k]), (name, k, "MHA out_proj adapter took part")
        make_nonzero(pm, seed)  # same draws again: back to the saved values

    folder = OUT / name
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    pm.save_pretrained(folder)
    (folder / "README.md").unlink(missing_ok=True)  # peft's model card template: noise for a fixture
    # peft writes target_modules from a set (order varies between runs): sort it, in peft's own JSON style.
    cfg_path = folder / "adapter_config.json"
    written = json.loads(cfg_path.read_text())
    written["target_modules"] = sorted(written["target_modules"])
    cfg_path.write_text(json.dumps(written, indent=2, sort_keys=True))
    saved = load_file(str(folder / "adapter_model.safetensors"))
    assert all(".lora_" in k for k in saved), "only LoRA tensors expected"

    merged_model = pm.merge_and_unload()
    with torch.no_grad():
        merged = fwd(merged_model)
    if not mha:
        for k in base:
            err = float((merged[k] - adapted[k]).abs().max() / adapted[k].abs().max())
            assert err < 1e-5, (name, k, err)
    tensors = {k: v.contiguous() for k, v in adapted.items()}
    tensors.update({f"merged_{k}": v.contiguous() for k, v in merged.items()})
    tensors.update({f"base_{k}": v.contiguous() for k, v in base.items()})
    save_file(tensors, str(folder / "expected.safetensors"))
    import peft
    import timm
    import transformers

    meta = {
        "base_fixture": f"tests/fixtures/{name}",
        "inputs": "pixel_values and input_ids of the base fixture's expected.safetensors",
        "peft_config": {"r": R, "lora_alpha": ALPHA, "lora_dropout": 0.0, "target_modules": "see targets"},
        "targets": names,
        "excluded_targets": list(exclude),
        "mha_out_proj_inert": mha,
        "nonzero": f"lora_B ~ N(0, 0.3^2), lora_embedding_A ~ N(0, 0.1^2) (torch.Generator seed {seed}); "
                   "lora_A / lora_embedding_B keep peft's init (Kaiming-uniform a=sqrt(5) / N(0, 1))",
        "outputs": "image_embeds/text_embeds: adapters active; merged_*: after merge_and_unload(); base_*: before "
                   "LoRA. For models with nn.MultiheadAttention, merged_* include the out_proj adapters that the "
                   "adapted forward ignores (peft quirk), so they differ from the adapted outputs.",
        "versions": {"torch": torch.__version__, "peft": peft.__version__, "timm": timm.__version__,
                     "transformers": transformers.__version__},
    }
    (folder / "expected.json").write_text(json.dumps(meta, indent=1) + "\n", encoding="utf-8")


def main() -> int:
    mf = load_make_fixtures()
    for i, name in enumerate(["timm_vit_small", "hf_clip_quickgelu", "conch"]):
        make(name, 100 + i, mf)
    total = sum(p.stat().st_size for p in OUT.rglob("*") if p.is_file())
    print(f"LoRA fixtures written; tests/fixtures/lora = {total / 1e3:.1f} kB")
    assert total < 1e6, "LoRA fixtures exceed 1 MB"
    return 0


if __name__ == "__main__":
    sys.exit(main())
