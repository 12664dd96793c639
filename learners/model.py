"""Block-local masked-diffusion language model.

A masked-diffusion LM (absorbing [MASK], linear schedule alpha(t) = 1 - t, so the ELBO weight is
1/t) split into B blocks. Block b is a complete small bidirectional transformer with its own
token embedding, t-conditioning and output head, and it owns the mask ratios [b/B, (b+1)/B),
widened by an overlap gamma. No parameter is shared, so training one block needs no other
block's forward pass and sends no gradient anywhere else (NoProp / DiffusionBlocks, with the
stem and head made private too; see reference/learner-digest.md, pitfall 4).

Layer shapes follow nanoGPT; t-conditioning is DiT's adaLN with the modulation zero-initialised.
Positions use RoPE plus a learned table counted from the sequence end, initialised at the same
scale as the token embedding (digest pitfall 1).

This file imports only torch: ``learners.hf_export`` ships it verbatim as the modelling code of
a transformers checkpoint.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F


@dataclass
class ModelConfig:
    vocab_size: int = 260  # 256 bytes + [MASK] [PAD] [BOS] [EOS]
    mask_token_id: int = 256
    n_blocks: int = 3  # B: independent denoisers, each owning a slice of t
    n_layer: int = 2  # transformer layers inside each block
    n_head: int = 4
    n_embd: int = 128
    mlp_ratio: int = 4
    overlap: float = 0.05  # gamma: a block trains on its range widened by gamma*width each side
    t_eps: float = 1e-3  # t >= eps keeps the 1/t weight finite
    rope_base: float = 10000.0
    max_seq_len: int = 256  # learned positions, counted from the sequence end (see DenoiserBlock)


def block_range(cfg: ModelConfig, b: int, widen: bool = True) -> tuple[float, float]:
    """The t-interval block ``b`` owns; ``widen`` adds the training overlap, clipped to [eps, 1]."""
    width = 1.0 / cfg.n_blocks
    lo, hi = b * width, (b + 1) * width
    if widen:
        lo, hi = lo - cfg.overlap * width, hi + cfg.overlap * width
    return max(lo, cfg.t_eps), min(hi, 1.0)


def block_of_t(cfg: ModelConfig, t: float) -> int:
    """Which block owns mask ratio ``t`` (t = 1 belongs to the top block)."""
    return min(max(int(t * cfg.n_blocks), 0), cfg.n_blocks - 1)


def rope_tables(T: int, head_dim: int, base: float, device) -> tuple[torch.Tensor, torch.Tensor]:
    # computed per call rather than cached in buffers: cheap, and survives meta-device loading
    inv = 1.0 / (base ** (torch.arange(0, head_dim, 2, device=device, dtype=torch.float32) / head_dim))
    ang = torch.arange(T, device=device, dtype=torch.float32)[:, None] * inv[None, :]  # (T, hs/2)
    return ang.cos(), ang.sin()


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    x1, x2 = x[..., 0::2].float(), x[..., 1::2].float()  # (B, nh, T, hs/2)
    out = torch.stack((x1 * cos - x2 * sin, x1 * sin + x2 * cos), dim=-1).flatten(-2)
    return out.to(x.dtype)


def modulate(x: torch.Tensor, shift: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    return x * (1 + scale) + shift


class TimeEmbedding(nn.Module):
    """Sinusoidal features of t followed by an MLP, giving the conditioning vector c."""

    def __init__(self, n_embd: int):
        super().__init__()
        self.n_freq = n_embd // 2
        self.mlp = nn.Sequential(nn.Linear(2 * self.n_freq, n_embd), nn.SiLU(), nn.Linear(n_embd, n_embd))

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        freqs = torch.exp(-math.log(1000.0) * torch.arange(self.n_freq, device=t.device) / self.n_freq)
        ang = 1000.0 * t.float()[:, None] * freqs[None, :]  # t in [0,1]: stretch so low freqs matter
        return self.mlp(torch.cat([ang.cos(), ang.sin()], dim=-1))


class SelfAttention(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.n_head = cfg.n_head
        self.qkv = nn.Linear(cfg.n_embd, 3 * cfg.n_embd, bias=False)
        self.proj = nn.Linear(cfg.n_embd, cfg.n_embd, bias=False)

    def forward(self, x, cos, sin, attn_mask=None):
        B, T, C = x.size()
        q, k, v = self.qkv(x).split(C, dim=2)
        q = q.view(B, T, self.n_head, C // self.n_head).transpose(1, 2)  # (B, nh, T, hs)
        k = k.view(B, T, self.n_head, C // self.n_head).transpose(1, 2)
        v = v.view(B, T, self.n_head, C // self.n_head).transpose(1, 2)
        q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask)  # bidirectional
        return self.proj(y.transpose(1, 2).contiguous().view(B, T, C))


class MLP(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.fc = nn.Linear(cfg.n_embd, cfg.mlp_ratio * cfg.n_embd, bias=False)
        self.proj = nn.Linear(cfg.mlp_ratio * cfg.n_embd, cfg.n_embd, bias=False)

    def forward(self, x):
        return self.proj(F.gelu(self.fc(x)))


class Layer(nn.Module):
    """Pre-LN transformer layer; adaLN turns c into shift/scale/gate, all zero at init."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.ln1 = nn.LayerNorm(cfg.n_embd, elementwise_affine=False)
        self.attn = SelfAttention(cfg)
        self.ln2 = nn.LayerNorm(cfg.n_embd, elementwise_affine=False)
        self.mlp = MLP(cfg)
        self.ada = nn.Linear(cfg.n_embd, 6 * cfg.n_embd)

    def forward(self, x, c, cos, sin, attn_mask=None):
        sh1, sc1, g1, sh2, sc2, g2 = self.ada(c)[:, None, :].chunk(6, dim=-1)
        # (1 + gate): at init this is a plain pre-LN layer and t enters gradually
        x = x + (1 + g1) * self.attn(modulate(self.ln1(x), sh1, sc1), cos, sin, attn_mask)
        x = x + (1 + g2) * self.mlp(modulate(self.ln2(x), sh2, sc2))
        return x


class DenoiserBlock(nn.Module):
    """One block: embedding -> layers -> adaLN -> head. Predicts x0 logits from (x_t, t)."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.cfg = cfg
        self.wte = nn.Embedding(cfg.vocab_size, cfg.n_embd)
        self.wpe = nn.Embedding(cfg.max_seq_len, cfg.n_embd)
        self.time = TimeEmbedding(cfg.n_embd)
        self.layers = nn.ModuleList([Layer(cfg) for _ in range(cfg.n_layer)])
        self.ln_f = nn.LayerNorm(cfg.n_embd, elementwise_affine=False)
        self.ada_f = nn.Linear(cfg.n_embd, 2 * cfg.n_embd)
        self.head = nn.Linear(cfg.n_embd, cfg.vocab_size, bias=False)
        self.reset_parameters()

    def reset_parameters(self):
        # one std for embeddings and weights (digest pitfall 1: N(0,1) embeddings stall at unigram)
        for name, p in self.named_parameters():
            if p.dim() >= 2:
                std = 0.02 / math.sqrt(2 * self.cfg.n_layer) if name.endswith("proj.weight") else 0.02
                nn.init.normal_(p, mean=0.0, std=std)
            else:
                nn.init.zeros_(p)
        for m in [*(layer.ada for layer in self.layers), self.ada_f]:
            nn.init.zeros_(m.weight)  # zero-init adaLN: t-conditioning starts as the identity

    def forward(self, idx: torch.Tensor, t: torch.Tensor, attention_mask: torch.Tensor | None = None):
        B, T = idx.size()
        # positions count back from the end: a fixed-length completion always sits at the same
        # indices whatever the prompt length, which RoPE alone makes the model discover slowly
        pos = (T - 1 - torch.arange(T, device=idx.device)).clamp(max=self.cfg.max_seq_len - 1)
        x = self.wte(idx) + self.wpe(pos)  # (B, T, C); both N(0, 0.02): matched scales
        c = self.time(t.expand(B) if t.dim() == 0 or t.numel() == 1 else t).to(x.dtype)
        cos, sin = rope_tables(T, x.size(-1) // self.cfg.n_head, self.cfg.rope_base, idx.device)
        attn_mask = None
        if attention_mask is not None:
            attn_mask = attention_mask.bool()[:, None, None, :]  # (B, 1, 1, T): keys to attend
        for layer in self.layers:
            x = layer(x, c, cos, sin, attn_mask)
        shift, scale = self.ada_f(c)[:, None, :].chunk(2, dim=-1)
        logits = self.head(modulate(self.ln_f(x), shift, scale))  # (B, T, V)
        # [MASK] is never a valid prediction of x0 (MDLM's SUBS parameterisation)
        is_mask = torch.arange(logits.size(-1), device=idx.device) == self.cfg.mask_token_id
        return logits.masked_fill(is_mask, float("-inf"))


class BlockDiffusionLM(nn.Module):
    """B independent denoisers; ``forward`` routes to the block that owns t (or the one named)."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.cfg = cfg
        self.blocks = nn.ModuleList([DenoiserBlock(cfg) for _ in range(cfg.n_blocks)])

    def forward(self, idx, t, block: int | None = None, attention_mask=None):
        if not torch.is_tensor(t):
            t = torch.full((idx.size(0),), float(t), device=idx.device)
        if block is None:
            block = block_of_t(self.cfg, float(t.reshape(-1)[0]))
        return self.blocks[block](idx, t, attention_mask)

    def num_params(self) -> int:
        return sum(p.numel() for p in self.parameters())
