"""The Genie-style latent action model: tokenizer, per-frame encoder, inverse and forward dynamics.

Shapes: B clips of T frames, N = patch tokens per frame, C = width. Action t describes the motion
between frames t and t+1 and may only see frames <= t+1 (causal inverse dynamics).
"""
from __future__ import annotations

import torch
from torch import nn

from ..config import ModelConfig
from .layers import MLP, Block, STBlock, TimestampEmbedding


class ImageTokenizer(nn.Module):
    """ViT tokenizer: non-overlapping patch embedding plus a learnable positional embedding."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        gh, gw = cfg.grid
        self.patch = nn.Conv2d(3, cfg.width, cfg.patch_size, stride=cfg.patch_size)
        self.pos = nn.Parameter(torch.randn(1, gh * gw, cfg.width) * 0.02)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """(M, 3, H, W) in [0, 1] -> (M, N, C)."""
        x = self.patch(images * 2 - 1).flatten(2).transpose(1, 2)
        return x + self.pos


class FrameEncoder(nn.Module):
    """Tokenizer + per-frame transformer. Each frame is encoded on its own, so outputs can be cached."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.tokenizer = ImageTokenizer(cfg)
        self.blocks = nn.ModuleList(Block(cfg.width, cfg.heads, cfg.mlp_ratio)
                                    for _ in range(cfg.encoder_layers))
        self.norm = nn.LayerNorm(cfg.width)

    def forward(self, images: torch.Tensor, time_emb: torch.Tensor | None = None) -> torch.Tensor:
        """(M, 3, H, W) [+ (M, C) timestamp embedding when it enters here] -> (M, N, C)."""
        x = self.tokenizer(images)
        if time_emb is not None:
            x = x + time_emb[:, None]
        for blk in self.blocks:
            x = blk(x)
        return self.norm(x)


class InverseDynamics(nn.Module):
    """Causal ST-transformer turning T frames of tokens into T-1 latent actions.

    Every frame carries one extra learnable query token; the query of frame t+1 is the query of the
    pair (t, t+1), and its output after causal temporal attention is action t. Frame 0's query has no
    pair; its output is discarded.
    """

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.queries = nn.Parameter(torch.randn(cfg.num_frames, cfg.width) * 0.02)
        self.blocks = nn.ModuleList(STBlock(cfg.width, cfg.heads, cfg.mlp_ratio, causal=True)
                                    for _ in range(cfg.idm_layers))
        self.norm = nn.LayerNorm(cfg.width)

    def forward(self, tokens: torch.Tensor, time_emb: torch.Tensor | None = None) -> torch.Tensor:
        """(B, T, N, C) frame tokens [+ (B, T, C) timestamp embedding] -> (B, T-1, C) actions."""
        B, T, N, C = tokens.shape
        q = self.queries[:T].expand(B, T, C)[:, :, None]
        x = torch.cat([tokens, q], dim=2)
        if time_emb is not None:
            x = x + time_emb[:, :, None]
        for blk in self.blocks:
            x = blk(x)
        return self.norm(x[:, 1:, -1])


class ActionBottleneck(nn.Module):
    """Optional squeeze of each action to ``action_dim`` and back, three-layer MLPs each way."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.compress = MLP(cfg.width, cfg.width, cfg.action_dim, layers=3)
        self.decompress = MLP(cfg.action_dim, cfg.width, cfg.width, layers=3)

    def forward(self, actions: torch.Tensor) -> torch.Tensor:
        return self.decompress(self.compress(actions))


class ForwardDynamics(nn.Module):
    """Predicts the VQ codes of frame t+1 from the codes of frames <= t and actions <= t.

    A causal ST-transformer over the code grid, then ``fdm_extra_layers`` per-frame blocks and a linear
    read-out to codebook logits.
    """

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        h, w = cfg.code_grid
        self.code_embed = nn.Embedding(cfg.vq_codebook_size, cfg.width)
        self.pos = nn.Parameter(torch.randn(1, 1, h * w, cfg.width) * 0.02)
        self.action_proj = nn.Linear(cfg.width, cfg.width)
        self.blocks = nn.ModuleList(STBlock(cfg.width, cfg.heads, cfg.mlp_ratio, causal=True)
                                    for _ in range(cfg.fdm_layers))
        self.extra = nn.ModuleList(Block(cfg.width, cfg.heads, cfg.mlp_ratio)
                                   for _ in range(cfg.fdm_extra_layers))
        self.norm = nn.LayerNorm(cfg.width)
        self.head = nn.Linear(cfg.width, cfg.vq_codebook_size)

    def forward(self, codes: torch.Tensor, actions: torch.Tensor,
                time_emb: torch.Tensor) -> torch.Tensor:
        """codes (B, T-1, h, w) of frames 0..T-2, actions (B, T-1, C), time_emb (B, T-1, C)
        -> logits (B, T-1, h*w, K) for the codes of frames 1..T-1."""
        B, S = codes.shape[:2]
        x = self.code_embed(codes.flatten(2)) + self.pos
        x = x + (self.action_proj(actions) + time_emb)[:, :, None]
        for blk in self.blocks:
            x = blk(x)
        x = x.flatten(0, 1)
        for blk in self.extra:
            x = blk(x)
        return self.head(self.norm(x)).view(B, S, -1, self.head.out_features)
