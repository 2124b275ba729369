#!/usr/bin/env python3
"""Exports the image tower of a Hugging Face CLIP checkpoint to ONNX, in the folder layout that
transformers.js loads locally (the baseline of scripts/bench_page.sh).

    python3 tests/reference/export_onnx.py MODEL_DIR OUT_DIR

MODEL_DIR is a CLIPModel folder (config.json + model.safetensors, e.g. the random-init ViT-B/32 of
tests/e2e/full_size.sh). OUT_DIR gets config.json and preprocessor_config.json (copied) and
onnx/vision_model.onnx: CLIPVisionModelWithProjection with input `pixel_values` [batch, 3, H, W]
and output `image_embeds` [batch, projection_dim] (projected, not normalised: what `clipit embed`
prints), f32, opset 17, one file (TorchScript exporter, no external data). transformers.js loads it
with `CLIPVisionModelWithProjection.from_pretrained(name, {dtype: 'fp32'})`. Prints the largest
|difference| between the exported graph's PyTorch module and CLIPModel.get_image_features on a
random batch, as a check that the weights are the checkpoint's.
"""
import os
import shutil
import sys

import torch
from transformers import CLIPModel, CLIPVisionModelWithProjection


class ImageEmbeds(torch.nn.Module):
    """CLIPVisionModelWithProjection returning only `image_embeds`."""

    def __init__(self, inner):
        super().__init__()
        self.inner = inner

    def forward(self, pixel_values):
        return self.inner(pixel_values=pixel_values).image_embeds


def main():
    if len(sys.argv) != 3:
        sys.exit(__doc__)
    src, out = sys.argv[1], sys.argv[2]
    if not os.path.isfile(os.path.join(src, "config.json")):
        sys.exit(f"{src}: no config.json (give a Hugging Face CLIPModel folder)")
    vision = CLIPVisionModelWithProjection.from_pretrained(src, attn_implementation="eager").eval()
    size = vision.config.image_size
    x = torch.randn(2, 3, size, size, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        want = CLIPModel.from_pretrained(src, attn_implementation="eager").eval().get_image_features(pixel_values=x)
        want = getattr(want, "pooler_output", want)
        got = ImageEmbeds(vision)(x)
    diff = (got - want).abs().max().item()
    if diff > 1e-4:
        sys.exit(f"{src}: the vision tower with projection differs from CLIPModel by {diff} (weights not loaded?)")
    os.makedirs(os.path.join(out, "onnx"), exist_ok=True)
    for name in ("config.json", "preprocessor_config.json"):
        if os.path.isfile(os.path.join(src, name)):
            shutil.copy(os.path.join(src, name), os.path.join(out, name))
    path = os.path.join(out, "onnx", "vision_model.onnx")
    torch.onnx.export(
        ImageEmbeds(vision),
        (x,),
        path,
        input_names=["pixel_values"],
        output_names=["image_embeds"],
        dynamic_axes={"pixel_values": {0: "batch"}, "image_embeds": {0: "batch"}},
        opset_version=17,
        dynamo=False,
    )
    print(f"{path}: {os.path.getsize(path) / 1e6:.0f} MB; PyTorch module vs CLIPModel max |diff| {diff:.2e}")


if __name__ == "__main__":
    main()
