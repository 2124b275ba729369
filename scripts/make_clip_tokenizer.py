#!/usr/bin/env python3
"""Build `assets/clip_tokenizer.json`, the CLIP BPE tokenizer in the `tokenizers` JSON format.

Source of the vocabulary
------------------------
The byte-pair merges come from `bpe_simple_vocab_16e6.txt.gz`, the vocabulary file of OpenAI CLIP
(https://github.com/openai/CLIP, MIT License, Copyright (c) 2021 OpenAI), as redistributed inside the
`open_clip_torch` package (https://github.com/mlfoundations/open_clip, MIT License, Copyright (c) 2012-2021
Gabriel Ilharco, Mitchell Wortsman, Nicholas Carlini, Rohan Taori, Achal Dave, Vaishaal Shankar, John Miller,
Hongseok Namkoong, Hannaneh Hajishirzi, Ali Farhadi, Ludwig Schmidt). Nothing is downloaded: the file is read
from the installed package.

What the script does
--------------------
1. Rebuilds `vocab.json` and `merges.txt` exactly as Hugging Face ships them for CLIP (openai/clip-vit-*):
   256 byte symbols, the same 256 symbols with the `</w>` end-of-word suffix, one token per merge
   (48,894 merges), then `<|startoftext|>` = 49406 and `<|endoftext|>` = 49407 (49,408 tokens).
2. Loads `transformers.CLIPTokenizer` (the `tokenizers`-backed "fast" tokenizer; in transformers 5 the
   class is simply `CLIPTokenizer`, `CLIPTokenizerFast` in transformers 4) from these two files.
3. Saves its backend as a single `assets/clip_tokenizer.json`, with truncation (77, eot kept in the last
   slot by the post-processor) and fixed padding to 77 with id 0, so that
   `tokenizers::Tokenizer::from_bytes` + `encode(text, true)` yields exactly `open_clip.tokenize(text)`.
4. Verifies on a set of texts that the saved file reproduces `open_clip.tokenize` bit for bit.

Usage: python scripts/make_clip_tokenizer.py [--out assets/clip_tokenizer.json]
"""
from __future__ import annotations

import argparse
import gzip
import json
import os
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
CONTEXT_LENGTH = 77
SOT_ID = 49406
EOT_ID = 49407

# Texts used to check the tokenizer (also reused by tests/reference/make_fixtures.py).
# They avoid characters that ftfy rewrites in open_clip's cleaning (curly quotes, ligatures, full-width
# forms, HTML entities): see DIVERGENT_TEXTS below.
CHECK_TEXTS = [
    "an H&E image of colorectal adenocarcinoma.",
    "A PHOTOMICROGRAPH OF LYMPHOCYTES",
    "stroma    with   many\tspaces\nand a newline",
    "  leading and trailing spaces  ",
    "Mucosa, debris; adipose tissue: (normal)!? -- 100% [ok]",
    "don't won't it's we're they've I'm you'll he'd",
    "café crème, naïve Ångström résumé Œdème",
    "组织病理学 图像 腺癌",
    "がん細胞 の 病理 画像",
    "tumour 🔬🧫 with emoji 😀👍🏽",
    "numbers 12345 and 3.14159 and 1e-5 x2",
    "a-b_c/d\\e|f~g`h^i",
    "",
    " ".join(["the slide shows a well differentiated adenocarcinoma with glandular architecture"] * 6),
    "hematoxylin and eosin staining of high grade serous ovarian carcinoma nests",
]

# Texts on which open_clip (ftfy.fix_text + double html.unescape) and the HF tokenizer (NFC only) are known to
# disagree. They are printed, not asserted.
DIVERGENT_TEXTS = [
    "\u201ccurly quotes\u201d and \u2018single\u2019",
    "ligature \ufb01brosis",
    "H&amp;E html entity",
    "\uff21\uff22\uff23 full-width",
]


def bpe_path() -> str:
    import open_clip

    return os.path.join(os.path.dirname(os.path.abspath(open_clip.__file__)), "bpe_simple_vocab_16e6.txt.gz")


def bytes_to_unicode() -> dict[int, str]:
    """GPT-2 / CLIP reversible byte -> printable unicode map."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(2**8):
        if b not in bs:
            bs.append(b)
            cs.append(2**8 + n)
            n += 1
    return dict(zip(bs, [chr(c) for c in cs]))


def build_vocab_merges(out_dir: str | Path) -> tuple[Path, Path]:
    """Write HF-style `vocab.json` and `merges.txt` for CLIP into out_dir; return their paths."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    lines = gzip.open(bpe_path()).read().decode("utf-8").split("\n")
    merges = lines[1 : 49152 - 256 - 2 + 1]  # same slice as OpenAI CLIP / open_clip
    assert len(merges) == 48894, len(merges)
    symbols = list(bytes_to_unicode().values())
    vocab = symbols + [s + "</w>" for s in symbols]
    vocab += ["".join(m.split()) for m in merges]
    vocab += ["<|startoftext|>", "<|endoftext|>"]
    assert len(vocab) == 49408 and vocab.index("<|endoftext|>") == EOT_ID
    encoder = {tok: i for i, tok in enumerate(vocab)}
    assert len(encoder) == len(vocab), "duplicate tokens"
    vocab_file = out_dir / "vocab.json"
    merges_file = out_dir / "merges.txt"
    vocab_file.write_text(json.dumps(encoder, ensure_ascii=False), encoding="utf-8")
    merges_file.write_text("#version: 0.2\n" + "\n".join(merges) + "\n", encoding="utf-8")
    return vocab_file, merges_file


def load_hf_tokenizer(vocab_file: Path, merges_file: Path):
    import transformers

    cls = getattr(transformers, "CLIPTokenizerFast", None) or transformers.CLIPTokenizer
    tok = cls(vocab_file=str(vocab_file), merges_file=str(merges_file))
    if len(tok) != 49408 or tok.eos_token_id != EOT_ID or tok.bos_token_id != SOT_ID:
        # transformers 5 takes `vocab=` / `merges=` (path or object)
        tok = cls(vocab=str(vocab_file), merges=str(merges_file))
    assert len(tok) == 49408, len(tok)
    assert tok.bos_token_id == SOT_ID and tok.eos_token_id == EOT_ID, (tok.bos_token_id, tok.eos_token_id)
    return tok


def open_clip_ids(texts: list[str]) -> list[list[int]]:
    import open_clip

    return open_clip.tokenize(texts, context_length=CONTEXT_LENGTH).tolist()


def ids_from_file(path: Path, texts: list[str]) -> list[list[int]]:
    from tokenizers import Tokenizer

    tok = Tokenizer.from_file(str(path))
    # Truncation + padding are stored in the file; set them again anyway to be explicit.
    tok.enable_truncation(CONTEXT_LENGTH)
    tok.enable_padding(length=CONTEXT_LENGTH, pad_id=0, pad_token="!")
    return [e.ids for e in tok.encode_batch(texts, add_special_tokens=True)]


def ids_from_file_as_stored(path: Path, texts: list[str]) -> list[list[int]]:
    from tokenizers import Tokenizer

    tok = Tokenizer.from_file(str(path))
    return [tok.encode(t, add_special_tokens=True).ids for t in texts]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", default=str(REPO / "assets" / "clip_tokenizer.json"))
    args = ap.parse_args()
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)

    with tempfile.TemporaryDirectory() as tmp:
        vocab_file, merges_file = build_vocab_merges(tmp)
        hf = load_hf_tokenizer(vocab_file, merges_file)
        backend = hf.backend_tokenizer
        backend.enable_truncation(CONTEXT_LENGTH)
        backend.enable_padding(length=CONTEXT_LENGTH, pad_id=0, pad_token="!")
        # Tokenizer.save writes a pretty-printed JSON; re-dump it compactly (smaller file, same content).
        tmp_json = Path(tmp) / "tokenizer.json"
        backend.save(str(tmp_json))
        data = json.loads(tmp_json.read_text(encoding="utf-8"))
        out.write_text(json.dumps(data, ensure_ascii=False, separators=(",", ":")), encoding="utf-8")

    texts = CHECK_TEXTS
    ref = open_clip_ids(texts)
    got = ids_from_file(out, texts)
    got_stored = ids_from_file_as_stored(out, texts)
    bad = 0
    for t, r, g, s in zip(texts, ref, got, got_stored):
        if r != g or r != s:
            bad += 1
            print(f"MISMATCH for {t!r}:\n  open_clip {r}\n  file      {g}\n  stored    {s}", file=sys.stderr)
    n_trunc = sum(1 for r in ref if r[-1] == EOT_ID)
    print(f"checked {len(texts)} texts ({n_trunc} truncated): {len(texts) - bad} identical to open_clip.tokenize")

    div_ref = open_clip_ids(DIVERGENT_TEXTS)
    div_got = ids_from_file(out, DIVERGENT_TEXTS)
    for t, r, g in zip(DIVERGENT_TEXTS, div_ref, div_got):
        status = "same" if r == g else "DIFFERS (expected: ftfy/html cleaning in open_clip only)"
        print(f"  known-divergence probe {t!r}: {status}")

    print(f"wrote {out} ({out.stat().st_size} bytes)")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
