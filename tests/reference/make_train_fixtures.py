#!/usr/bin/env python3
"""Reference CLIP-IT training steps (HF peft + PyTorch) for clipit's `tests/train_step.rs`.

The model is CLIP-IT's (paper Step 4, `Models/LateFuser_.py::FuserModel`) at fixture size:

  vision  the tiny timm ViT of tests/fixtures/timm_vit_small (D_v = 32), wrapped with
          `peft.get_peft_model(vit, LoraConfig(target_modules=<every nn.Linear / nn.Embedding / nn.Conv2d module>,
          r=4, lora_alpha=8, lora_dropout=0.0))` (peft freezes every other weight);
  text    the CONCH-like CoCa of tests/fixtures/conch (its text tower: D_t = 16), either frozen without LoRA
          (mode "precomputed": t is computed once, before training) or wrapped whole with peft like the vision model
          (mode "text_lora": t = encode_text(ids) is computed in the loop and the text LoRA trains, as in the official
          code, where t is not detached). peft also adapts the CoCa's visual tower and caption decoder and the
          `out_proj` of every nn.MultiheadAttention: none of those adapters gets a gradient (the attention reads
          `out_proj.weight` directly), which this script asserts;
  heads   h_v Linear(D_v, C), h_d Linear(D_v, D_t), fc0 Linear(D_t, D_t) -> LeakyReLU(0.1) -> Linear(D_t, C),
          fc Linear(2C, C), C = 3, PyTorch's default init (seeded), all trainable.

Forward / loss (official): out = fc([h_v(v), fc0(h_d(v))]); loss = CE(out, y) + lam * mean(1 - cos(h_d(v), t)),
lam = 1, cos through F.normalize; with --paper-compat semantics ("_paper_compat" modes) CE is taken over
softmax(out) (the official double softmax).
Optimiser: torch.optim.Adam(lr 1e-3, weight_decay 1e-4 (L2), eps 1e-8) over all parameters (frozen ones have no
gradient and are skipped); each step: zero_grad(set_to_none) -> backward -> clip_grad_norm_(0.5) over every
parameter with a gradient (Lightning's gradient_clip_val) -> step. Three steps on one fixed batch, train mode.

peft's init has B = 0 (embedding A = 0), which would give A no gradient at the first step: every B (and embedding
A) is redrawn at random first, so all factors get non-trivial gradients from step 1.

Written to tests/fixtures/train_step/:
  vision_lora/            peft save_pretrained of the vision adapters (initial values)
  text_lora/              peft save_pretrained of the CoCa adapters (initial values; text_lora modes only use the
                          text tower's, the rest are unmatched in Rust or inert)
  heads.safetensors       initial heads, torch layout: h_v.*, h_d.*, fc0.0.*, fc0.2.*, fc.* (weight [out, in])
  batch.safetensors       pixel_values [4,3,32,32] (the timm fixture's first 4), labels [4] i64, input_ids [4,16]
                          i64 (CONCH fixture reports, one per image), text_targets [4,16] (mode precomputed's t:
                          F.normalize(encode_text(ids)) of the frozen CoCa)
  <mode>.safetensors      for step s in 1..3: s{s}.loss, s{s}.ce, s{s}.kd, s{s}.grad_norm (before clipping) [];
                          s{s}.grad.<param> = the gradient BEFORE clipping; s{s}.param.<param> = the value after the
                          step. <param> = vision.<module>.lora_A.weight / .lora_B.weight (peft layout),
                          text.<module>.lora_embedding_A / ..., heads.<name>.weight / .bias (torch layout)
  expected.json           what was done, modes, trainable parameter names, versions

Usage: python tests/reference/make_train_fixtures.py     (deterministic; run after make_fixtures.py)
"""
from __future__ import annotations

import importlib.util
import json
import shutil
import sys
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F
from safetensors.torch import load_file, save_file

REPO = Path(__file__).resolve().parents[2]
FIX = REPO / "tests" / "fixtures"
OUT = FIX / "train_step"
R, ALPHA = 4, 8
NUM_CLASSES = 3
LR, WEIGHT_DECAY, EPS, CLIP, LAM = 1e-3, 1e-4, 1e-8, 0.5, 1.0
STEPS = 3
LABELS = [0, 2, 1, 2]
REPORTS = [0, 4, 3, 5]  # rows of the CONCH fixture's input_ids (4 and 5 fill slot 14, so CLS also sees itself)
MODES = {  # name -> (text LoRA in the loop, paper-compat CE)
    "precomputed": (False, False),
    "text_lora": (True, False),
    "text_lora_paper_compat": (True, True),
}

torch.set_num_threads(1)
torch.use_deterministic_algorithms(True)


def load_make_fixtures():
    spec = importlib.util.spec_from_file_location("make_fixtures", REPO / "tests" / "reference" / "make_fixtures.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def targets(model: nn.Module) -> list[str]:
    """Every nn.Linear / nn.Embedding / nn.Conv2d module name (what CLIP-IT passes as target_modules)."""
    return sorted(n for n, m in model.named_modules() if isinstance(m, (nn.Linear, nn.Embedding, nn.Conv2d)))


def peft_wrap(model: nn.Module, seed: int):
    """get_peft_model exactly as the official code, then non-zero B (and embedding A)."""
    from peft import LoraConfig, get_peft_model

    cfg = LoraConfig(target_modules=targets(model), r=R, lora_alpha=ALPHA, lora_dropout=0.0)
    torch.manual_seed(seed)  # peft draws lora_A (Kaiming) and lora_embedding_B (normal) from the global generator
    pm = get_peft_model(model, cfg)
    g = torch.Generator().manual_seed(seed + 1000)
    with torch.no_grad():
        for name, p in pm.named_parameters():
            if ".lora_B." in name:
                p.copy_(torch.randn(p.shape, generator=g) * 0.3)
            elif ".lora_embedding_A." in name:
                p.copy_(torch.randn(p.shape, generator=g) * 0.1)
    return pm


def lora_key(pm, name: str) -> str:
    """peft parameter name -> the module.lora_* key of its saved adapter file (without base_model.model.)."""
    name = name.removeprefix("base_model.model.")
    return name.replace(".default.", ".").removesuffix(".default")


class Heads(nn.Module):
    def __init__(self, d_v: int, d_t: int, c: int):
        super().__init__()
        self.h_v = nn.Linear(d_v, c)
        self.h_d = nn.Linear(d_v, d_t)
        self.fc0 = nn.Sequential(nn.Linear(d_t, d_t), nn.LeakyReLU(0.1), nn.Linear(d_t, c))
        self.fc = nn.Linear(2 * c, c)

    def forward(self, v: torch.Tensor):
        t_hat = self.h_d(v)
        out = self.fc(torch.cat([self.h_v(v), self.fc0(t_hat)], 1))
        return out, t_hat


def build(mf, text_lora: bool):
    import timm

    vit = timm.create_model(f"local-dir:{FIX / 'timm_vit_small'}", pretrained=True)
    vision = peft_wrap(vit, 11)
    cfg = json.loads((FIX / "conch" / "conch_config.json").read_text())
    coca = mf.ConchLike(cfg)
    coca.load_state_dict(load_file(str(FIX / "conch" / "model.safetensors")), strict=True)
    text = peft_wrap(coca, 12) if text_lora else coca.requires_grad_(False)
    torch.manual_seed(13)
    heads = Heads(vit.num_features, cfg["embed_dim"], NUM_CLASSES)
    return vision, text, heads


def named_trainable(vision, text, heads, text_lora: bool) -> dict[str, nn.Parameter]:
    out = {}
    for n, p in vision.named_parameters():
        if p.requires_grad:
            out[f"vision.{lora_key(vision, n)}"] = p
    if text_lora:
        for n, p in text.named_parameters():
            if p.requires_grad:
                out[f"text.{lora_key(text, n)}"] = p
    for n, p in heads.named_parameters():
        out[f"heads.{n}"] = p
    return out


def inert_expected(name: str) -> bool:
    """Adapters that never get a gradient: CoCa's visual tower and decoder, and MultiheadAttention out_proj."""
    return name.startswith(("text.visual.", "text.text_decoder.")) or name.endswith(
        (".attn.out_proj.lora_A.weight", ".attn.out_proj.lora_B.weight"))


def run_mode(mf, mode: str, batch: dict) -> tuple[dict, dict, list[str]]:
    text_lora, paper_compat = MODES[mode]
    vision, text, heads = build(mf, text_lora)
    for m in (vision, text, heads):
        m.train()
    params = named_trainable(vision, text, heads, text_lora)
    all_params = [p for m in (vision, text, heads) for p in m.parameters()]
    opt = torch.optim.Adam(all_params, lr=LR, weight_decay=WEIGHT_DECAY, eps=EPS)
    initial = {k: p.detach().clone() for k, p in params.items()}
    coca = text.base_model.model if text_lora else text
    out = {}
    for s in range(1, STEPS + 1):
        opt.zero_grad(set_to_none=True)
        v = vision(batch["pixel_values"])
        logits, t_hat = heads(v)
        if text_lora:
            t = coca.encode_text(batch["input_ids"])  # normalize=True, as CONCH's default; gradients flow
        else:
            t = batch["text_targets"]
        ce = F.cross_entropy(torch.softmax(logits, 1) if paper_compat else logits, batch["labels"])
        cos = (F.normalize(t, p=2, dim=-1) * F.normalize(t_hat, p=2, dim=-1)).sum(-1)
        kd = (1 - cos).mean()
        loss = ce + LAM * kd
        loss.backward()
        with_grad = {k for k, p in params.items() if p.grad is not None}
        missing = sorted(k for k in params if k not in with_grad and not inert_expected(k))
        assert not missing, (mode, "no gradient", missing)
        assert all(p.grad is None for p in all_params if not p.requires_grad)
        grads = {k: params[k].grad.detach().clone() for k in sorted(with_grad)}
        norm = torch.nn.utils.clip_grad_norm_([p for p in all_params if p.grad is not None], CLIP)
        opt.step()
        out[f"s{s}.loss"] = loss.detach().reshape(())
        out[f"s{s}.ce"] = ce.detach().reshape(())
        out[f"s{s}.kd"] = kd.detach().reshape(())
        out[f"s{s}.grad_norm"] = norm.detach().reshape(())
        for k, g in grads.items():
            out[f"s{s}.grad.{k}"] = g
            out[f"s{s}.param.{k}"] = params[k].detach().clone()
        print(f"{mode} step {s}: loss {loss.item():.6f} (ce {ce.item():.6f}, kd {kd.item():.6f}), "
              f"grad norm {norm.item():.4f}")
    trained = sorted(k for k in params if f"s1.grad.{k}" in out)
    for k in params:  # adapters without gradient are untouched by Adam (their grad stays None)
        if k not in trained:
            assert torch.equal(params[k].detach(), initial[k]), (mode, k, "changed without a gradient")
    return out, {"vision": vision, "text": text if text_lora else None, "heads": heads, "initial": initial}, trained


def save_adapter(pm, folder: Path) -> None:
    shutil.rmtree(folder, ignore_errors=True)
    pm.save_pretrained(folder)
    (folder / "README.md").unlink(missing_ok=True)
    cfg_path = folder / "adapter_config.json"
    written = json.loads(cfg_path.read_text())
    written["target_modules"] = sorted(written["target_modules"])
    cfg_path.write_text(json.dumps(written, indent=2, sort_keys=True))


def main() -> int:
    import peft
    import timm

    mf = load_make_fixtures()
    shutil.rmtree(OUT, ignore_errors=True)
    OUT.mkdir(parents=True)
    vis = load_file(str(FIX / "timm_vit_small" / "expected.safetensors"))
    conch = load_file(str(FIX / "conch" / "expected.safetensors"))
    ids = conch["input_ids"][REPORTS].long()
    cfg = json.loads((FIX / "conch" / "conch_config.json").read_text())
    coca = mf.ConchLike(cfg).eval()
    coca.load_state_dict(load_file(str(FIX / "conch" / "model.safetensors")), strict=True)
    with torch.no_grad():
        text_targets = coca.encode_text(ids)  # F.normalize'd
    batch = {"pixel_values": vis["pixel_values"][:4].contiguous(), "labels": torch.tensor(LABELS, dtype=torch.long),
             "input_ids": ids.contiguous(), "text_targets": text_targets.contiguous()}
    save_file(batch, str(OUT / "batch.safetensors"))

    meta_modes = {}
    for mode in MODES:
        out, models, trained = run_mode(mf, mode, batch)
        save_file({k: v.contiguous() for k, v in out.items()}, str(OUT / f"{mode}.safetensors"))
        meta_modes[mode] = {"text_lora": MODES[mode][0], "paper_compat": MODES[mode][1], "trained": trained,
                            "loss": [float(out[f"s{s}.loss"]) for s in range(1, STEPS + 1)],
                            "grad_norm": [float(out[f"s{s}.grad_norm"]) for s in range(1, STEPS + 1)]}
        if mode == "text_lora":
            # The initial factors (identical in every mode: same seeds). Restore them before saving.
            for m in ("vision", "text"):
                pm = models[m]
                with torch.no_grad():
                    for n, p in pm.named_parameters():
                        key = f"{m}.{lora_key(pm, n)}"
                        if key in models["initial"]:
                            p.copy_(models["initial"][key])
                save_adapter(pm, OUT / f"{m}_lora")
            heads = {k.removeprefix("heads."): v.contiguous() for k, v in models["initial"].items()
                     if k.startswith("heads.")}
            save_file(heads, str(OUT / "heads.safetensors"))
    meta = {
        "what": "three CLIP-IT training steps with peft LoRA + torch.optim.Adam + clip_grad_norm_ on one batch; "
                "see tests/reference/make_train_fixtures.py",
        "vision_fixture": "tests/fixtures/timm_vit_small",
        "text_fixture": "tests/fixtures/conch",
        "batch": {"images": "first 4 pixel_values of the timm fixture", "labels": LABELS,
                  "reports": f"rows {REPORTS} of the CONCH fixture's input_ids"},
        "lora": {"r": R, "lora_alpha": ALPHA, "lora_dropout": 0.0,
                 "nonzero": "lora_B ~ N(0, 0.3^2), lora_embedding_A ~ N(0, 0.1^2); lora_A / lora_embedding_B keep "
                            "peft's init"},
        "optimizer": {"adam_lr": LR, "weight_decay": WEIGHT_DECAY, "eps": EPS, "clip_grad_norm": CLIP,
                      "lambda": LAM, "steps": STEPS},
        "grads": "before clipping (s{s}.grad_norm is the total norm clip_grad_norm_ returned)",
        "modes": meta_modes,
        "versions": {"torch": torch.__version__, "peft": peft.__version__, "timm": timm.__version__},
    }
    (OUT / "expected.json").write_text(json.dumps(meta, indent=1) + "\n", encoding="utf-8")
    total = sum(p.stat().st_size for p in OUT.rglob("*") if p.is_file())
    print(f"train-step fixtures written; tests/fixtures/train_step = {total / 1e3:.1f} kB")
    assert total < 1e6, "train-step fixtures exceed 1 MB"
    return 0


if __name__ == "__main__":
    sys.exit(main())
