#!/usr/bin/env python3
"""PyTorch reference for `clipit bench`: the same tasks at the same shapes, printing the same JSON.

    python3 tests/reference/bench_torch.py --model vit-b-32|vit-b-16 --task embed|train --batch N
        [--device cpu|cuda] [--dtype f32|f16|bf16] [--warmup 2] [--runs 5]

embed: open_clip's image tower (random init), forward only. train: one CLIP-IT step as clipit's:
the image tower with peft LoRA (r 16, alpha 8) on every Linear and Conv2d, the four heads, CE +
(1 - cos) against fixed targets, backward, clip_grad_norm_(0.5) and Adam (lr 1e-3, wd 1e-4).
"""
import argparse
import json
import resource
import statistics
import time

import open_clip
import torch
import torch.nn as nn
import torch.nn.functional as F


class Heads(nn.Module):
    def __init__(self, d, t, c):
        super().__init__()
        self.h_v, self.h_d = nn.Linear(d, c), nn.Linear(d, t)
        self.fc0 = nn.Sequential(nn.Linear(t, t), nn.LeakyReLU(0.1), nn.Linear(t, c))
        self.fc = nn.Linear(2 * c, c)

    def forward(self, v):
        t_hat = self.h_d(v)
        return self.fc(torch.cat([self.h_v(v), self.fc0(t_hat)], 1)), t_hat


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="vit-b-32", choices=["vit-b-32", "vit-b-16"])
    ap.add_argument("--task", default="embed", choices=["embed", "train"])
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--dtype", default="f32", choices=["f32", "f16", "bf16"])
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--runs", type=int, default=5)
    a = ap.parse_args()
    torch.manual_seed(0)
    name = {"vit-b-32": "ViT-B-32", "vit-b-16": "ViT-B-16"}[a.model]
    visual = open_clip.create_model(name).visual.to(a.device)
    x = torch.randn(a.batch, 3, 224, 224, device=a.device)
    dtype = {"f32": None, "f16": torch.float16, "bf16": torch.bfloat16}[a.dtype]
    sync = (lambda: torch.cuda.synchronize()) if a.device.startswith("cuda") else (lambda: None)

    if a.task == "embed":
        visual.eval()
        if dtype is not None:
            visual = visual.to(dtype)
            x = x.to(dtype)

        def run():
            with torch.inference_mode():
                visual(x)
            sync()
    else:
        from peft import LoraConfig, get_peft_model
        targets = [n for n, m in visual.named_modules() if isinstance(m, (nn.Linear, nn.Conv2d))]
        model = get_peft_model(visual, LoraConfig(target_modules=targets, r=16, lora_alpha=8))
        heads = Heads(512, 512, 2).to(a.device)
        params = [p for p in model.parameters() if p.requires_grad] + list(heads.parameters())
        opt = torch.optim.Adam(params, lr=1e-3, weight_decay=1e-4)
        y = torch.arange(a.batch, device=a.device) % 2
        t = torch.randn(a.batch, 512, device=a.device)

        def run():
            with torch.autocast(a.device.split(":")[0], dtype=dtype, enabled=dtype is not None):
                logits, t_hat = heads(model(x))
                loss = F.cross_entropy(logits.float(), y) + (1 - F.cosine_similarity(t_hat.float(), t)).mean()
            opt.zero_grad()
            loss.backward()
            torch.nn.utils.clip_grad_norm_(params, 0.5)
            opt.step()
            sync()

    for _ in range(a.warmup):
        run()
    times = []
    for _ in range(max(a.runs, 1)):
        t0 = time.perf_counter()
        run()
        times.append(time.perf_counter() - t0)
    med = statistics.median(times)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    if a.device.startswith("cuda"):
        peak = torch.cuda.max_memory_reserved()  # what the caching allocator held, as clipit's pools
    print(json.dumps({"model": a.model, "task": a.task, "backend": f"torch-{a.device}", "batch": a.batch,
                      "dtype": a.dtype, "runs": a.runs, "median_s": med, "images_per_sec": a.batch / med,
                      "peak_memory_bytes": peak, "threads": torch.get_num_threads()}))


if __name__ == "__main__":
    main()
