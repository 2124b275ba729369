#!/usr/bin/env python3
"""Writes the fixtures for tests/convert.rs (`clipit convert IN.bin OUT.safetensors`).

    python tests/reference/make_pickle_fixture.py

Outputs, in tests/fixtures/pickle/:
  tiny.bin              torch.save of a small nested state dict: mixed dtypes, a transposed
                        (non-contiguous) view, two tensors sharing one storage with offsets,
                        a 0-d tensor, an nn.Parameter, and non-tensor entries to skip.
  expected.safetensors  the same tensors, contiguous, written by safetensors.torch.save_file.
  evil.bin              a torch-style zip whose data.pkl calls os.system (GLOBAL 'os system'
                        + REDUCE); the converter must refuse it without running anything.
"""
import collections
import io
import os
import pickle
import zipfile

import torch
from safetensors.torch import save_file

OUT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "fixtures", "pickle")


def tiny_state_dict():
    g = torch.Generator().manual_seed(0)
    base = torch.arange(24, dtype=torch.float32).reshape(4, 6) / 7.0
    shared = torch.randn(32, generator=g)
    sd = collections.OrderedDict()
    sd["visual.proj"] = torch.randn(3, 5, generator=g)  # f32
    sd["visual.proj_t"] = base.t()  # non-contiguous view (strides (1, 6))
    sd["visual.slice"] = base[1:3, ::2]  # offset + step strides
    sd["text.a"] = shared[2:10].view(2, 4)  # shares `shared`'s storage, offset 2
    sd["text.b"] = shared[10:22].view(3, 4)  # same storage, offset 10
    sd["half"] = torch.randn(2, 3, generator=g).half()
    sd["bf16"] = torch.randn(4, generator=g).bfloat16()
    sd["f64"] = torch.randn(2, 2, generator=g).double()
    sd["i64"] = torch.tensor([[-3, 1 << 40], [7, -(1 << 50)]], dtype=torch.int64)
    sd["i32"] = torch.tensor([1, -2, 3], dtype=torch.int32)
    sd["u8"] = torch.tensor([0, 255, 17], dtype=torch.uint8)
    sd["mask"] = torch.tensor([True, False, True, True])
    sd["scalar"] = torch.tensor(2.5)  # 0-d
    sd["param"] = torch.nn.Parameter(torch.ones(2, 2) * 0.5)
    sd["empty"] = torch.zeros(0, 3)
    sd["logit_scale_note"] = "not a tensor"  # skipped
    sd["num_batches"] = 3  # skipped
    return {"state_dict": sd, "epoch": 7}


def write_evil(path):
    # A protocol-2 pickle built by hand: os.system("echo pwned") via GLOBAL + REDUCE.
    pkl = b"\x80\x02" + b"cos\nsystem\n" + b"X\x0a\x00\x00\x00echo pwned" + b"\x85R."
    with zipfile.ZipFile(path, "w", zipfile.ZIP_STORED) as z:
        for name, data in [("data.pkl", pkl), ("byteorder", b"little"), ("version", b"3\n")]:
            z.writestr(zipfile.ZipInfo("evil/" + name, date_time=(1980, 1, 1, 0, 0, 0)), data)


def main():
    os.makedirs(OUT, exist_ok=True)
    obj = tiny_state_dict()
    torch.save(obj, os.path.join(OUT, "tiny.bin"))
    tensors = {k: v.detach().contiguous().clone() for k, v in obj["state_dict"].items()
               if isinstance(v, torch.Tensor)}
    save_file(tensors, os.path.join(OUT, "expected.safetensors"))
    write_evil(os.path.join(OUT, "evil.bin"))
    # Sanity: tiny.bin round-trips, and torch itself refuses evil.bin under weights_only.
    back = torch.load(os.path.join(OUT, "tiny.bin"), weights_only=True)
    assert set(back["state_dict"]) == set(obj["state_dict"])
    try:
        torch.load(os.path.join(OUT, "evil.bin"), weights_only=True)
        raise SystemExit("torch.load(evil.bin, weights_only=True) should have failed")
    except pickle.UnpicklingError:
        pass
    for name in ("tiny.bin", "expected.safetensors", "evil.bin"):
        print(name, os.path.getsize(os.path.join(OUT, name)), "bytes")


if __name__ == "__main__":
    main()
