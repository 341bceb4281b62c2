"""Pose head: a learnable metric-scale token plus the T-1 action tokens through a non-causal transformer.

Per step it predicts the scale-normalised translation (3), a quaternion (4) and the field of view (1);
the scale token predicts log s, and s = exp(.) is the metric mean step length.
"""
from __future__ import annotations

import torch
from torch import nn

from ..config import ModelConfig
from .layers import MLP, Block, run_blocks


class PoseHead(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        W = cfg.pose_width
        in_dim = cfg.width
        self.proj = nn.Linear(in_dim, W)
        self.scale_token = nn.Parameter(torch.randn(1, 1, W) * 0.02)
        self.step_pos = (nn.Parameter(torch.randn(1, cfg.num_frames - 1, W) * 0.02)
                         if cfg.pose_step_embedding else None)
        self.blocks = nn.ModuleList(Block(W, cfg.pose_heads, cfg.mlp_ratio) for _ in range(cfg.pose_layers))
        self.norm = nn.LayerNorm(W)
        self.recompute = False  # layers.run_blocks; set by LaPose.recompute_activations
        self.step_mlp = MLP(W, W, 8)
        self.scale_mlp = MLP(W, W, 1)
        # Start near "identity rotation, forward motion, ~1 m steps": a sane prior speeds training.
        with torch.no_grad():
            self.step_mlp.net[-1].bias.copy_(torch.tensor([0, 0, 1.0, 1.0, 0, 0, 0, 1.2]))

    def forward(self, actions: torch.Tensor,
                log_interval: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        """(B, T-1, C) actions [, (B,) log of the mean frame interval in seconds, when the scale token
        predicts a speed] -> translation (B, T-1, 3), quaternion (B, T-1, 4) (unit, w >= 0), fov
        (B, T-1) radians, log_scale (B,), scale (B,)."""
        B, S, _ = actions.shape
        x = self.proj(actions)
        if self.step_pos is not None:
            x = x + self.step_pos[:, :S]
        x = torch.cat([self.scale_token.expand(B, 1, -1), x], dim=1)
        x = self.norm(run_blocks(self.blocks, x, self.recompute))
        steps = self.step_mlp(x[:, 1:])
        q = steps[..., 3:7]
        q = q / q.norm(dim=-1, keepdim=True).clamp_min(1e-6)
        q = torch.where(q[..., :1] < 0, -q, q)
        log_scale = self.scale_mlp(x[:, 0]).squeeze(-1)
        if log_interval is not None:  # log speed + log interval = log mean step
            log_scale = log_scale + log_interval
        return {"translation": steps[..., :3], "quaternion": q, "fov": steps[..., 7],
                "log_scale": log_scale, "scale": torch.exp(log_scale)}
