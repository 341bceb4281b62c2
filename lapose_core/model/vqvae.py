"""VQ-VAE image tokenizer (stage 0): the forward-dynamics model predicts its codes.

The codebook is learned by exponential moving averages (k-means in the limit), which is stabler than
a gradient-trained codebook. Codebook collapse is guarded against by restarting dead codes (codes whose
running usage fell below a threshold) at encoder outputs of the current batch; usage and perplexity are
reported so collapse is visible in TensorBoard. Under DDP the EMA statistics are all-reduced and the
restart is decided on rank 0 and broadcast, so every rank keeps the same codebook.
"""
from __future__ import annotations

import math

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

from ..config import ModelConfig


def _distributed() -> bool:
    return dist.is_available() and dist.is_initialized()


class VectorQuantizer(nn.Module):
    def __init__(self, codebook_size: int, dim: int, decay: float = 0.99, eps: float = 1e-5):
        super().__init__()
        self.decay, self.eps = decay, eps
        embed = torch.randn(codebook_size, dim)
        self.register_buffer("codebook", embed)
        self.register_buffer("cluster_size", torch.ones(codebook_size))
        self.register_buffer("embed_sum", embed.clone())
        self.register_buffer("usage", torch.zeros(codebook_size))  # running usage, for restarts
        self.register_buffer("initialized", torch.tensor(False))
        self._last_inputs: torch.Tensor | None = None

    def codes(self, z: torch.Tensor) -> torch.Tensor:
        """(M, D) vectors -> (M,) nearest code indices."""
        d = (z.pow(2).sum(1, keepdim=True) - 2 * z @ self.codebook.t()
             + self.codebook.pow(2).sum(1)[None])
        return d.argmin(1)

    def forward(self, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(M, D) -> quantised (M, D) with straight-through gradient, indices (M,), commitment loss."""
        if self.training and not bool(self.initialized):
            self._init_from_data(z.detach().float())
        idx = self.codes(z.detach().float())
        zq = F.embedding(idx, self.codebook).to(z.dtype)
        if self.training:
            self._ema_update(z.detach().float(), idx)
        commit = F.mse_loss(z, zq.detach())
        return z + (zq - z).detach(), idx, commit

    @torch.no_grad()
    def _init_from_data(self, z: torch.Tensor) -> None:
        """Place the codebook on encoder outputs of the first batch: a random Gaussian codebook far
        from the data would leave all but a few codes unused from the first step on."""
        pick = z[torch.randint(len(z), (self.codebook.shape[0],), device=z.device)]
        if _distributed():
            dist.broadcast(pick, src=0)
        self.codebook.copy_(pick)
        self.embed_sum.copy_(pick)
        self.cluster_size.fill_(1.0)
        self.initialized.fill_(True)

    @torch.no_grad()
    def _ema_update(self, z: torch.Tensor, idx: torch.Tensor) -> None:
        onehot = F.one_hot(idx, self.codebook.shape[0]).type(z.dtype)
        counts, sums = onehot.sum(0), onehot.t() @ z
        if _distributed():
            dist.all_reduce(counts)
            dist.all_reduce(sums)
        self.cluster_size.mul_(self.decay).add_(counts, alpha=1 - self.decay)
        self.embed_sum.mul_(self.decay).add_(sums, alpha=1 - self.decay)
        self.usage.mul_(0.95).add_(counts, alpha=0.05)
        n = self.cluster_size.sum()
        size = (self.cluster_size + self.eps) / (n + self.codebook.shape[0] * self.eps) * n
        self.codebook.copy_(self.embed_sum / size[:, None])
        self._last_inputs = z

    @torch.no_grad()
    def restart_dead_codes(self, threshold: float = 0.03) -> int:
        """Move codes with running usage below ``threshold`` onto random recent encoder outputs."""
        if self._last_inputs is None:
            return 0
        dead = self.usage < threshold
        n_dead = int(dead.sum())
        if n_dead:
            z = self._last_inputs
            pick = z[torch.randint(len(z), (n_dead,), device=z.device)]
            pick = pick + 0.01 * pick.std() * torch.randn_like(pick)
            self.codebook[dead] = pick
            self.embed_sum[dead] = pick
            self.cluster_size[dead] = 1.0
            self.usage[dead] = 1.0
        if _distributed():
            for buf in (self.codebook, self.embed_sum, self.cluster_size, self.usage):
                dist.broadcast(buf, src=0)
        return n_dead


def _down(cin: int, cout: int) -> nn.Module:
    return nn.Sequential(nn.Conv2d(cin, cout, 4, stride=2, padding=1), nn.GroupNorm(8, cout), nn.SiLU())


def _up(cin: int, cout: int) -> nn.Module:
    return nn.Sequential(nn.ConvTranspose2d(cin, cout, 4, stride=2, padding=1), nn.GroupNorm(8, cout),
                         nn.SiLU())


class VQVAE(nn.Module):
    """Convolutional VQ-VAE: (B, 3, H, W) in [0, 1] -> a (H/d, W/d) grid of codebook indices."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        levels = int(math.log2(cfg.vq_downsample))
        if 2 ** levels != cfg.vq_downsample:
            raise ValueError(f"vq_downsample must be a power of two, got {cfg.vq_downsample}")
        h = cfg.vq_hidden
        self.encoder = nn.Sequential(_down(3, h), *[_down(h, h) for _ in range(levels - 1)],
                                     nn.Conv2d(h, cfg.vq_code_dim, 1))
        self.quantizer = VectorQuantizer(cfg.vq_codebook_size, cfg.vq_code_dim, cfg.vq_ema_decay)
        self.decoder = nn.Sequential(nn.Conv2d(cfg.vq_code_dim, h, 3, padding=1),
                                     *[_up(h, h) for _ in range(levels)], nn.Conv2d(h, 3, 3, padding=1))
        self.beta = cfg.vq_beta
        self.codebook_size = cfg.vq_codebook_size

    def _quantize(self, images: torch.Tensor):
        z = self.encoder(images * 2 - 1)
        B, D, h, w = z.shape
        flat = z.permute(0, 2, 3, 1).reshape(-1, D)
        zq, idx, commit = self.quantizer(flat)
        return zq.view(B, h, w, D).permute(0, 3, 1, 2), idx.view(B, h, w), commit

    @torch.no_grad()
    def encode(self, images: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) -> (B, h, w) code indices."""
        z = self.encoder(images * 2 - 1)
        B, D, h, w = z.shape
        return self.quantizer.codes(z.permute(0, 2, 3, 1).reshape(-1, D).float()).view(B, h, w)

    def decode(self, zq: torch.Tensor) -> torch.Tensor:
        return (self.decoder(zq) + 1) / 2

    def loss(self, images: torch.Tensor) -> tuple[torch.Tensor, dict[str, float]]:
        zq, idx, commit = self._quantize(images)
        recon = F.mse_loss(self.decode(zq), images)
        counts = torch.bincount(idx.flatten(), minlength=self.codebook_size).float()
        p = counts / counts.sum()
        perplexity = torch.exp(-(p * (p + 1e-10).log()).sum())
        return recon + self.beta * commit, {
            "recon": recon.item(), "commit": commit.item(), "perplexity": perplexity.item(),
            "codes_used": (counts > 0).float().mean().item()}
