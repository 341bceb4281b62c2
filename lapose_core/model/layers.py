"""Transformer building blocks shared by every LA-Pose part.

Pre-norm blocks (nanoGPT style) on top of ``F.scaled_dot_product_attention``. The ST (space-time) block
factorises attention as in Genie: tokens of one frame attend to each other (spatial), then each token
position attends along time (temporal), optionally causally. Causal masking is exact: a masked position
gets zero weight, so changing a future frame cannot change an earlier output at all.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint


class Attention(nn.Module):
    def __init__(self, width: int, heads: int):
        super().__init__()
        self.heads = heads
        self.qkv = nn.Linear(width, 3 * width)
        self.proj = nn.Linear(width, width)

    def forward(self, x: torch.Tensor, causal: bool = False) -> torch.Tensor:
        B, N, C = x.shape
        q, k, v = self.qkv(x).view(B, N, 3, self.heads, C // self.heads).permute(2, 0, 3, 1, 4)
        y = F.scaled_dot_product_attention(q, k, v, is_causal=causal)
        return self.proj(y.transpose(1, 2).reshape(B, N, C))


class MLP(nn.Module):
    def __init__(self, width: int, hidden: int, out: int | None = None, layers: int = 2):
        super().__init__()
        dims = [width] + [hidden] * (layers - 1) + [out or width]
        mods: list[nn.Module] = []
        for i in range(layers):
            mods.append(nn.Linear(dims[i], dims[i + 1]))
            if i < layers - 1:
                mods.append(nn.GELU())
        self.net = nn.Sequential(*mods)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


def run_blocks(blocks: nn.ModuleList, x: torch.Tensor, recompute: bool = False) -> torch.Tensor:
    """``x`` through each block in turn. With ``recompute`` (while gradients are on), each block keeps
    only its input for the backward pass and recomputes its activations there: about one block's
    activations in memory instead of all of them, for a second forward pass. The paper preset's
    pretraining needs it (8 windows per process ran out of a 141 GB GPU without it); the results are
    the same."""
    for blk in blocks:
        x = checkpoint(blk, x, use_reentrant=False) if recompute and torch.is_grad_enabled() else blk(x)
    return x


class Block(nn.Module):
    """Pre-norm transformer block over a (B, N, C) token sequence."""

    def __init__(self, width: int, heads: int, mlp_ratio: float = 4.0):
        super().__init__()
        self.norm1 = nn.LayerNorm(width)
        self.attn = Attention(width, heads)
        self.norm2 = nn.LayerNorm(width)
        self.mlp = MLP(width, int(width * mlp_ratio))

    def forward(self, x: torch.Tensor, causal: bool = False) -> torch.Tensor:
        x = x + self.attn(self.norm1(x), causal=causal)
        return x + self.mlp(self.norm2(x))


class STBlock(nn.Module):
    """Space-time block over (B, T, N, C): spatial attention per frame, then temporal per position."""

    def __init__(self, width: int, heads: int, mlp_ratio: float = 4.0, causal: bool = True):
        super().__init__()
        self.causal = causal
        self.norm_s = nn.LayerNorm(width)
        self.attn_s = Attention(width, heads)
        self.norm_t = nn.LayerNorm(width)
        self.attn_t = Attention(width, heads)
        self.norm_m = nn.LayerNorm(width)
        self.mlp = MLP(width, int(width * mlp_ratio))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, T, N, C = x.shape
        s = x.reshape(B * T, N, C)
        s = s + self.attn_s(self.norm_s(s))
        t = s.view(B, T, N, C).transpose(1, 2).reshape(B * N, T, C)
        t = t + self.attn_t(self.norm_t(t), causal=self.causal)
        t = t + self.mlp(self.norm_m(t))
        return t.view(B, N, T, C).transpose(1, 2).contiguous()


def sinusoidal_embedding(t: torch.Tensor, dim: int, min_period: float = 0.05,
                         max_period: float = 200.0) -> torch.Tensor:
    """Embed real-valued times in seconds, (...,) -> (..., dim).

    Periods are spaced geometrically between ``min_period`` and ``max_period`` seconds, so the
    embedding resolves a 30 Hz frame gap as well as a 16 s window: any frame rate works.
    """
    half = dim // 2
    periods = torch.exp(torch.linspace(math.log(min_period), math.log(max_period), half,
                                       device=t.device, dtype=torch.float32))
    angles = 2 * math.pi * t.float()[..., None] / periods
    emb = torch.cat([angles.sin(), angles.cos()], dim=-1)
    return F.pad(emb, (0, dim - 2 * half)) if dim % 2 else emb


class TimestampEmbedding(nn.Module):
    """Sinusoidal embedding of the real timestamp through an MLP (the paper's tokenizer)."""

    def __init__(self, width: int):
        super().__init__()
        self.width = width
        self.mlp = MLP(width, width)

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        return self.mlp(sinusoidal_embedding(t, self.width))
