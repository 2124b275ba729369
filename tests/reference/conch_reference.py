"""Plain-PyTorch re-implementation of CONCH (CoCa) for the reference fixtures: same module tree,
parameter names and arithmetic as github.com/mahmoodlab/CONCH, written from reading it (no code copied;
see make_fixtures.py)."""
from __future__ import annotations

import math
from collections import OrderedDict

import torch
import torch.nn as nn
import torch.nn.functional as F


class AttnPooler(nn.Module):
    """Attentional pooling: learned queries attend (nn.MultiheadAttention, seq-first) to LayerNorm'ed tokens."""

    def __init__(self, d_model: int, context_dim: int, n_head: int, n_queries: int):
        super().__init__()
        self.query = nn.Parameter(torch.randn(n_queries, d_model))
        self.attn = nn.MultiheadAttention(d_model, n_head, kdim=context_dim, vdim=context_dim)
        self.ln_q = nn.LayerNorm(d_model)
        self.ln_k = nn.LayerNorm(context_dim)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:  # [B, N, C] -> [B, Q, D]
        kv = self.ln_k(tokens).transpose(0, 1)
        q = self.ln_q(self.query).unsqueeze(1).expand(-1, tokens.shape[0], -1)
        out, _ = self.attn(q, kv, kv, need_weights=False)
        return out.transpose(0, 1)


class ResBlock(nn.Module):
    """Pre-LN transformer block on [L, B, D] with nn.MultiheadAttention and a GELU MLP (c_fc / c_proj)."""

    def __init__(self, width: int, heads: int, mlp_ratio: float = 4.0, cross: bool = False):
        super().__init__()
        self.ln_1 = nn.LayerNorm(width)
        self.attn = nn.MultiheadAttention(width, heads)
        if cross:
            self.ln_1_kv = nn.LayerNorm(width)
        self.ln_2 = nn.LayerNorm(width)
        hidden = int(width * mlp_ratio)
        self.mlp = nn.Sequential(OrderedDict([("c_fc", nn.Linear(width, hidden)), ("gelu", nn.GELU()),
                                              ("c_proj", nn.Linear(hidden, width))]))

    def forward(self, x: torch.Tensor, attn_mask: torch.Tensor | None = None) -> torch.Tensor:
        h = self.ln_1(x)
        x = x + self.attn(h, h, h, need_weights=False, attn_mask=attn_mask)[0]
        return x + self.mlp(self.ln_2(x))


class Blocks(nn.Module):
    def __init__(self, width: int, heads: int, layers: int):
        super().__init__()
        self.resblocks = nn.ModuleList([ResBlock(width, heads) for _ in range(layers)])


class ConchTextTower(nn.Module):
    def __init__(self, context_length: int, vocab_size: int, width: int, heads: int, layers: int, output_dim: int,
                 pad_id: int = 0):
        super().__init__()
        self.heads, self.pad_id, self.num_pos = heads, pad_id, context_length
        self.text_projection = nn.Parameter(torch.empty(width, output_dim))
        self.cls_emb = nn.Parameter(torch.empty(width))
        self.token_embedding = nn.Embedding(vocab_size, width)
        self.positional_embedding = nn.Parameter(torch.empty(context_length, width))
        self.transformer = Blocks(width, heads, layers)
        self.ln_final = nn.LayerNorm(width)

    def attention_mask(self, text: torch.Tensor) -> torch.Tensor:
        """Causal mask over L+1 positions plus CONCH's cls mask.

        The key-validity row (text != pad) is padded by one column on the LEFT and by L rows on top (all allowed),
        exactly as CONCH's build_cls_mask does with F.pad(mask, (1, 0, L, 0), value=1). Consequence: only the CLS
        query (last row) is restricted, and its key j is allowed iff j == 0 or text[j-1] != pad -- i.e. shifted by
        one: the CLS attends to the first pad position and attends to itself only when text[L-1] is not a pad.
        """
        B, L = text.shape
        n = L + 1
        causal = torch.full((n, n), float("-inf")).triu(1)
        keep = (text != self.pad_id).unsqueeze(1)
        keep = F.pad(keep, (1, 0, L, 0), value=True)  # [B, n, n]
        cls_add = torch.zeros(keep.shape).masked_fill(~keep, float("-inf"))
        cls_add = cls_add.repeat_interleave(self.heads, 0)  # [B*heads, n, n]
        return causal.unsqueeze(0) + cls_add

    def forward(self, text: torch.Tensor) -> torch.Tensor:
        B, L = text.shape
        x = self.token_embedding(text)
        x = torch.cat([x, self.cls_emb.view(1, 1, -1).expand(B, 1, -1)], dim=1)  # CLS appended LAST
        mask = self.attention_mask(text)
        x = x + self.positional_embedding[: L + 1]
        x = x.transpose(0, 1)
        for blk in self.transformer.resblocks:
            x = blk(x, attn_mask=mask)
        x = x.transpose(0, 1)
        pooled = self.ln_final(x[:, -1])
        return pooled @ self.text_projection


class ConchTextDecoder(nn.Module):
    """Parameters of CoCa's multimodal decoder (never run here; present so the checkpoint looks real)."""

    def __init__(self, width: int, heads: int, layers: int, vocab_size: int):
        super().__init__()
        self.resblocks = nn.ModuleList([ResBlock(width, heads) for _ in range(layers)])
        self.cross_attn = nn.ModuleList([ResBlock(width, heads, cross=True) for _ in range(layers)])
        self.ln_final = nn.LayerNorm(width)
        self.text_projection = nn.Parameter(torch.empty(width, vocab_size))


class ConchVisual(nn.Module):
    def __init__(self, cfg: dict, embed_dim: int, embed_dim_caption: int):
        super().__init__()
        import timm

        v = cfg
        self.trunk = timm.models.vision_transformer.VisionTransformer(
            embed_dim=v["width"], depth=v["layers"], num_heads=v["num_heads"], mlp_ratio=v["mlp_ratio"],
            img_size=v["image_size"], patch_size=v["patch_size"], num_classes=0, dynamic_img_size=True)
        width = self.trunk.num_features
        # CONCH's _build_vision_tower never passes attn_pooler_heads to VisualModel, whose default is 8: the poolers
        # always have 8 heads whatever the config says. The config here says 8, so both readings agree.
        heads = 8
        assert v.get("attn_pooler_heads", 8) == heads
        self.attn_pool_contrast = AttnPooler(embed_dim, width, heads, v["n_queries_contrast"])
        self.ln_contrast = nn.LayerNorm(embed_dim)
        self.proj_contrast = nn.Parameter(width ** -0.5 * torch.randn(embed_dim, embed_dim))
        self.head = nn.Sequential()
        self.attn_pool_caption = AttnPooler(embed_dim_caption, width, heads, v["n_queries_caption"])
        self.ln_caption = nn.LayerNorm(embed_dim_caption)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        tokens = self.trunk.forward_features(x)  # [B, 1+N, width], after the trunk's final norm
        pooled = self.attn_pool_contrast(tokens)[:, 0]
        return self.ln_contrast(pooled) @ self.proj_contrast


class ConchLike(nn.Module):
    def __init__(self, cfg: dict):
        super().__init__()
        t, m = cfg["text_cfg"], cfg["multimodal_cfg"]
        self.text = ConchTextTower(t["context_length"], t["vocab_size"], t["width"], t["heads"], t["layers"],
                                   cfg["embed_dim"], pad_id=0)
        self.visual = ConchVisual(cfg["vision_cfg"], cfg["embed_dim"], cfg["embed_dim_caption"])
        self.text_decoder = ConchTextDecoder(m["width"], m["heads"], m["layers"], m["vocab_size"])
        self.logit_scale = nn.Parameter(torch.ones([]) * math.log(1 / 0.07))

    def encode_image(self, images: torch.Tensor, normalize: bool = True) -> torch.Tensor:
        z = self.visual(images)
        return F.normalize(z, dim=-1) if normalize else z

    def encode_text(self, text: torch.Tensor, normalize: bool = True) -> torch.Tensor:
        z = self.text(text[:, :-1])  # drop the last slot (the extra <pad>) to make room for the CLS token
        return F.normalize(z, dim=-1) if normalize else z
