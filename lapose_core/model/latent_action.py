"""The Genie-style latent action model: tokenizer, per-frame encoder, inverse and forward dynamics.

Shapes: B clips of T frames, N = patch tokens per frame, C = width. Action t describes the motion
between frames t and t+1 and may only see frames <= t+1 (causal inverse dynamics).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .. import geometry
from ..config import ModelConfig
from .layers import MLP, Block, STBlock, TimestampEmbedding, run_blocks


class ImageTokenizer(nn.Module):
    """ViT tokenizer: non-overlapping patch embedding plus a learnable positional embedding."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        gh, gw = cfg.grid
        self.patch = nn.Conv2d(3, cfg.width, cfg.patch_size, stride=cfg.patch_size)
        self.pos = nn.Parameter(torch.randn(1, gh * gw, cfg.width) * 0.02)
        self.appearance = cfg.appearance_tokens

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """(M, 3, H, W) in [0, 1] -> (M, N, C); positions alone without appearance tokens."""
        if not self.appearance:
            return self.pos.expand(images.shape[0], -1, -1)
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
        self.recompute = False  # layers.run_blocks; set by LaPose.recompute_activations

    def forward(self, images: torch.Tensor, time_emb: torch.Tensor | None = None) -> torch.Tensor:
        """(M, 3, H, W) [+ (M, C) timestamp embedding when it enters here] -> (M, N, C)."""
        x = self.tokenizer(images)
        if time_emb is not None:
            x = x + time_emb[:, None]
        return self.norm(run_blocks(self.blocks, x, self.recompute))


def local_correlation(a: torch.Tensor, b: torch.Tensor, radius: int) -> torch.Tensor:
    """(M, D, h, w) unit feature maps -> (M, (2r+1)^2, h, w) cosine similarities of a's cell (y, x)
    with b's cell (y + dy, x + dx) for every |dy|, |dx| <= r (zero outside b).

    Per row offset dy, one batched matmul correlates every cell of a row of ``a`` with the whole
    padded row of ``b``; the band |dx| <= r is read off its diagonals. That is ~15x faster on a CPU
    than (2r+1)^2 shifted products, and exact.
    """
    M, D, h, w = a.shape
    k = 2 * radius + 1
    padded = F.pad(b, (radius, radius, radius, radius))
    rows_a = a.permute(0, 2, 3, 1).reshape(M * h, w, D)
    bands = []
    for dy in range(k):
        rows_b = padded[:, :, dy:dy + h].permute(0, 2, 1, 3).reshape(M * h, D, w + 2 * radius)
        full = torch.bmm(rows_a, rows_b)  # (M*h, w, w + 2r): cell x of a against cell x' of b
        bands.append(torch.stack([full.diagonal(dx, 1, 2) for dx in range(k)], 1))
    return torch.stack(bands, 1).view(M, h, k * k, w).permute(0, 2, 1, 3)


def mutual_matches(volume: torch.Tensor, radius: int) -> torch.Tensor:
    """(M, (2r+1)^2, h, w) :func:`local_correlation` volume -> (M, h, w) whether each cell's best match
    in the later frame has that cell as its own best match back (the classical left-right check).

    A cell whose content left the view or was hidden still has a best match, something else, which
    as a rule matches another cell better: on a car camera at 2 fps the road just ahead has gone
    under the car by the next frame. The backward correlations are the forward ones re-indexed
    (later cell (y, x) against earlier cell (y - dy, x - dx) is the forward entry of that earlier
    cell at offset (dy, dx)), so the check costs no new correlation.
    """
    M, _, h, w = volume.shape
    k = 2 * radius + 1
    best = volume.argmax(1)  # (M, h, w) each earlier cell's best offset
    padded = F.pad(volume, (radius, radius, radius, radius), value=-2.0)  # below any cosine
    backward = torch.stack([padded[:, i * k + j, k - 1 - i:k - 1 - i + h, k - 1 - j:k - 1 - j + w]
                            for i in range(k) for j in range(k)], 1)  # later cell's correlations
    best_back = backward.argmax(1).flatten(1)  # (M, h*w) each later cell's best offset
    dy, dx = best // k - radius, best % k - radius
    ty, tx = torch.arange(h, device=volume.device)[:, None] + dy, torch.arange(w, device=volume.device) + dx
    lands = (ty >= 0) & (ty < h) & (tx >= 0) & (tx < w)
    target = (ty.clamp(0, h - 1) * w + tx.clamp(0, w - 1)).flatten(1)
    return lands & (best_back.gather(1, target).view(M, h, w) == best)


def shift_scores(a: torch.Tensor, b: torch.Tensor, reach: int, radius: int) -> torch.Tensor:
    """(M, D, h, w) unit feature maps of frames t and t+1 -> (M, 2 reach + 1): for every horizontal
    shift s in -reach..reach cells, how much of a matches better around it than by chance.

    Each cell of a has, at every s, its peak: its best cosine with b's cells (y + dy, x + s + dx),
    |dx|, |dy| <= radius, what a local search of that radius centred at s would find. Its chance
    level is the median of its peaks over all s (texture matches something anywhere; a road cell
    scores high everywhere). The score of s is the sum of the cells' peaks above that level, over
    the cells whose shifted position lies in b, divided by all cells: a centre far to one side is
    not favoured by having fewer cells to average. The mean correlation at one offset is no such
    score at a low frame rate: the car's own travel spreads a sharp turn's flow over more than a
    cell (parallax), and no single offset matches much of the image. One matmul of each row of a
    against its 2 radius + 1 rows of b; the shifts are gathered off its diagonals, the local search
    is a sliding max.
    """
    M, D, h, w = a.shape
    offsets = torch.arange(-reach - radius, reach + radius + 1, device=a.device)
    columns = torch.arange(w, device=a.device)[:, None] + offsets
    inside = (columns >= 0) & (columns < w)  # (w, 2 (reach + radius) + 1): b's column x + s + dx exists
    rows_a = a.permute(0, 2, 3, 1).reshape(M * h, w, D)
    padded = F.pad(b, (0, 0, radius, radius))
    rows_b = torch.cat([padded[:, :, dy:dy + h] for dy in range(2 * radius + 1)], -1)  # (M, D, h, k w)
    cosine = torch.bmm(rows_a, rows_b.permute(0, 2, 1, 3).reshape(M * h, D, -1))
    best = cosine.unflatten(-1, (2 * radius + 1, w)).amax(2)  # (M h, w, w): each pair of columns' best row
    best = best.gather(2, columns.clamp(0, w - 1).expand(M * h, -1, -1)).masked_fill(~inside, -1.0)
    peaks = F.max_pool1d(best, 2 * radius + 1, stride=1)  # (M h, w, 2 reach + 1)
    lands = inside[:, radius:radius + 2 * reach + 1]  # a's cell x shifted by s lies in b
    chance = peaks.masked_fill(~lands, float("nan")).nanmedian(-1, keepdim=True).values
    above = (peaks - chance).clamp_min(0) * lands
    return above.view(M, h * w, -1).sum(1) / (h * w)


def patch_descriptors(images: torch.Tensor, cell: int = 4) -> torch.Tensor:
    """(M, 3, H, W) in [0, 1] -> (M, 16, H/cell, W/cell) unit-length local patch descriptors.

    Each cell is described by the 8x8-pixel neighbourhood around it (two cells wide), averaged down
    to 4x4 values, with its mean removed: the dot product of two descriptors is the normalised
    cross-correlation of the two patches, which is what classical matchers rely on, unchanged by
    exposure and contrast.
    """
    gray = images.mean(1, keepdim=True)
    pooled = F.avg_pool2d(gray, cell // 2)  # 2x2-pixel units
    patches = F.unfold(F.pad(pooled, (1, 2, 1, 2), mode="replicate"), 4, stride=2)  # (M, 16, h*w)
    patches = patches - patches.mean(1, keepdim=True)
    h, w = images.shape[-2] // cell, images.shape[-1] // cell
    return F.normalize(patches, dim=1, eps=1e-3).view(images.shape[0], 16, h, w)


# fine_flow: the refinement searches +-FINE_FLOW_RADIUS whole pixels around each cell's 4 px flow
# (on 07_head, 3 instead of 2 changed AUC@5 by under 0.003 at a third more time).
FINE_FLOW_RADIUS = 2


def peak_offsets(volume: torch.Tensor, radius: int) -> torch.Tensor:
    """(M, (2r+1)^2, h, w) scores of every offset (dy, dx), row-major, -r..r each -> (M, 2, h, w) each
    cell's best offset, refined between offsets by a parabola through the best score and its two
    neighbours along each axis (the classical sub-pixel peak; none at the search window's edge)."""
    k = 2 * radius + 1
    dtype, volume = volume.dtype, volume.float()  # the parabola divides small differences
    best = volume.argmax(1, keepdim=True)
    by, bx = best // k, best % k
    at = lambda y, x: volume.gather(1, y.clamp(0, k - 1) * k + x.clamp(0, k - 1))  # noqa: E731

    def refine(before: torch.Tensor, peak: torch.Tensor, after: torch.Tensor,
               index: torch.Tensor) -> torch.Tensor:
        curvature = before - 2 * peak + after
        inside = (index > 0) & (index < k - 1) & (curvature < -1e-6)
        step = 0.5 * (before - after) / torch.where(inside, curvature, -torch.ones_like(curvature))
        return torch.where(inside, step.clamp(-0.5, 0.5), torch.zeros_like(step))

    peak = at(by, bx)
    dy = by + refine(at(by - 1, bx), peak, at(by + 1, bx), by)
    dx = bx + refine(at(by, bx - 1), peak, at(by, bx + 1), bx)
    return (torch.cat([dy, dx], 1) - radius).to(dtype)


def gray_cells(images: torch.Tensor, cell: int = 4) -> torch.Tensor:
    """(M, 3, H, W) in [0, 1] -> (M, cell^2, H/cell, W/cell): the grey image, each cell's pixels as
    its channels (lossless; :func:`refine_flow` folds it back). Cached beside the descriptors, it
    keeps what a frame caches one map of cells."""
    return F.pixel_unshuffle(images.mean(1, keepdim=True), cell)


def replicate_pad(x: torch.Tensor, pad: int) -> torch.Tensor:
    """(..., H, W) -> (..., H + 2 pad, W + 2 pad), the edge rows and columns repeated: F.pad's
    "replicate", written out because torch.compile's inductor fails on F.pixel_shuffle, then F.pad
    replicate, then F.unfold (each alone compiles)."""
    x = torch.cat([x[..., :1].expand(*x.shape[:-1], pad), x, x[..., -1:].expand(*x.shape[:-1], pad)], -1)
    return torch.cat([x[..., :1, :].expand(*x.shape[:-2], pad, x.shape[-1]), x,
                      x[..., -1:, :].expand(*x.shape[:-2], pad, x.shape[-1])], -2)


@geometry.full_precision
def refine_flow(gray_a: torch.Tensor, gray_b: torch.Tensor, flow: torch.Tensor,
                radius: int = FINE_FLOW_RADIUS, cell: int = 4) -> torch.Tensor:
    """(M, cell^2, h, w) grey cells of frames t and t+1 (:func:`gray_cells`), (M, 2, h, w) each 4 px
    cell's flow (dy, dx) in pixels -> that flow refined to a fraction of a pixel.

    The 4 px level matches descriptors of 2x2-pixel units on a 4 px grid and places the peak between
    cells by a parabola through three cells' scores: on an exact zoom of a real frame its flows of
    6-16 px came out a tenth to a quarter short (median), which a triangulation of step lengths
    reads as a slower car wherever points come closer. Here each cell's 8x8 pixels in frame t (the
    descriptor's own footprint) are compared by normalised cross-correlation with frame t+1 at every
    whole-pixel offset within ``radius`` of where the flow puts them (the region read once,
    bilinearly; one grouped convolution and box sums give every offset's score), and a parabola
    through the best offset's neighbours places the peak between pixels (:func:`peak_offsets`, as
    the 4 px level does between cells; on the same zoom: 1-7 % short up to 10 px; beyond, where the
    4 px flow is more than 2 px off, about as short as before). A best offset on the search's edge
    stays there. Float32 whatever the autocast: pixel
    positions in fp16 are an eighth of a pixel apart at the image's right edge."""
    gray_a, gray_b, dtype, flow = gray_a.float(), gray_b.float(), flow.dtype, flow.float()
    M, _, h, w = flow.shape
    a, b = F.pixel_shuffle(gray_a, cell), F.pixel_shuffle(gray_b, cell)  # (M, 1, H, W)
    H, W = a.shape[-2:]
    size, k, n = 2 * cell, 2 * radius + 1, M * h * w
    # Frame t's patches: 8x8 pixels centred on each cell's centre, cell j's at (cell - 1) / 2 + cell j.
    patches = F.unfold(replicate_pad(a, cell // 2), size, stride=cell)  # (M, 64, h*w)
    patches = patches - patches.mean(1, keepdim=True)
    patches = patches / patches.norm(dim=1, keepdim=True).clamp_min(1e-3)
    # Frame t+1's region every offset's window lies in, (size + 2 radius)^2 pixels per cell.
    span = size + 2 * radius
    grid = torch.arange(span, device=flow.device, dtype=flow.dtype) - (span - 1) / 2
    centre_y = (torch.arange(h, device=flow.device, dtype=flow.dtype) * cell + (cell - 1) / 2)[:, None]
    centre_x = (torch.arange(w, device=flow.device, dtype=flow.dtype) * cell + (cell - 1) / 2)[None, :]
    at_y = (centre_y + flow[:, 0])[..., None, None] + grid[:, None]  # (M, h, w, span, span)
    at_x = (centre_x + flow[:, 1])[..., None, None] + grid[None, :]
    at = torch.stack(torch.broadcast_tensors(2 * at_x / (W - 1) - 1, 2 * at_y / (H - 1) - 1), -1)
    region = F.grid_sample(b, at.reshape(M, h * w * span, span, 2), mode="bilinear",
                           padding_mode="border", align_corners=True).reshape(n, 1, span, span)
    # Each offset's score: the patch (zero mean, unit length) dotted with the window there, over the
    # window's spread about its own mean (box sums).
    dot = F.conv2d(region.reshape(1, n, span, span), patches.transpose(1, 2).reshape(n, 1, size, size),
                   groups=n).reshape(M, h * w, k * k)
    box = lambda x: x.unfold(2, size, 1).sum(-1).unfold(3, size, 1).sum(-1).reshape(M, h * w, k * k)  # noqa: E731
    sums, squares = box(region), box(region * region)
    score = dot / (squares - sums * sums / size**2).clamp_min(1e-6).sqrt().clamp_min(1e-3)  # (dy, dx) row-major
    step = peak_offsets(score.transpose(1, 2).reshape(M, k * k, h, w), radius)
    return (flow + step).to(dtype)


def shift_cells(x: torch.Tensor, cells: torch.Tensor) -> torch.Tensor:
    """(M, D, h, w) maps, (M, 2) integer (dy, dx) -> maps whose cell (y, x) is x's cell
    (y + dy, x + dx), zero outside. A gather by ``grid_sample`` keeps the shapes static."""
    M, _, h, w = x.shape
    ys = torch.arange(h, device=x.device, dtype=x.dtype)[None, :, None] + cells[:, 0, None, None]
    xs = torch.arange(w, device=x.device, dtype=x.dtype)[None, None, :] + cells[:, 1, None, None]
    grid = torch.stack([(2 * xs / max(w - 1, 1) - 1).expand(M, h, w),
                        (2 * ys / max(h - 1, 1) - 1).expand(M, h, w)], -1)
    return F.grid_sample(x, grid, mode="nearest", padding_mode="zeros", align_corners=True)


class MotionEncoder(nn.Module):
    """Motion evidence for the inverse-dynamics model: how each fine cell moved between two frames.

    Local patch descriptors on a 4-px grid (:func:`patch_descriptors`); local correlation volumes
    between consecutive frames at 4, 8 and 16 px cells (radius ``motion_radius`` cells: +-16, +-32
    and +-64 px; a sharp turn at 1 fps, 30 degrees or 100 px, needs ``wide_shift``) are read out by
    a small learned network into one token per patch, added to the later frame's patch tokens. With
    ``motion_centred`` the 4 and 8 px levels are searched around the pair's global shift (the 16 px
    level's best offset over the whole image), which the network is also given. Frame t+1 only ever
    sees frames t and t+1, so the inverse dynamics stays causal; frame 0 of a window gets no motion
    tokens. The descriptors have no weights, so the correlations need no backward pass: at CPU scale
    that is most of a training step.
    """

    LEVELS = (1, 2, 4)  # cell sizes in units of 4 px: 4, 8 and 16 px cells

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        D = cfg.motion_feature_dim
        self.radius = cfg.motion_radius
        self.centred = cfg.motion_centred
        self.flow = cfg.motion_flow
        self.rotation_from_flow = cfg.rotation_from_flow
        self.cfg = cfg  # read live: refit_matches and wide_shift are inference switches
        k = cfg.patch_size // 4  # fine cells per patch side
        volume = (len(self.LEVELS) * ((2 * self.radius + 1) ** 2 + (2 if self.flow else 0))
                  + (2 if self.centred else 0))
        self.to_tokens = nn.Sequential(
            nn.Conv2d(volume, D, 1), nn.GELU(), nn.Conv2d(D, cfg.width, k, stride=k))

    @property
    def fine(self) -> bool:
        """Whether pairs refine their pixel flow to a fraction of a pixel (``fine_flow``, inference)."""
        return self.cfg.fine_flow and self.rotation_from_flow and not self.training

    @property
    def map_channels(self) -> int:
        """Channels of a frame's cached map: 16 descriptors [+ 16 grey pixels with ``fine_flow``]."""
        return 32 if self.fine else 16

    def feature_maps(self, images: torch.Tensor) -> torch.Tensor:
        """(M, 3, H, W) in [0, 1] -> (M, 16, H/4, W/4) descriptors: what a frame caches; with
        ``fine_flow`` (M, 32, H/4, W/4), each cell's grey pixels after them (:func:`gray_cells`)."""
        maps = patch_descriptors(images)
        return torch.cat([maps, gray_cells(images)], 1) if self.fine else maps

    def global_shift(self, coarse_volume: torch.Tensor) -> torch.Tensor:
        """(M, (2r+1)^2, h, w) coarsest-level correlations -> (M, 2) integer (dy, dx) in its cells:
        the offset that matches best on average over the image."""
        k = 2 * self.radius + 1
        best = coarse_volume.mean((2, 3)).argmax(1)
        return torch.stack([best // k, best % k], 1).to(coarse_volume.dtype) - self.radius

    def wide_shift(self, a: torch.Tensor, b: torch.Tensor, shift: torch.Tensor) -> torch.Tensor:
        """(M, 16, h, w) finest descriptor maps of frames t and t+1 and their (M, 2) global shift ->
        that shift, searched again on the finest level twice as far across (+-2 r coarse cells,
        still half the image in view): where the centre that matches best (:func:`shift_scores`)
        lies beyond the finest level's own search around the pair's shift, that centre in whole
        coarse cells, with no vertical shift (the search looked +-r finest cells, 16 px, about
        level; a car pitches a few px a step)."""
        cells = self.LEVELS[-1] // self.LEVELS[0]  # finest cells per coarse cell
        reach = 2 * self.radius * cells
        best = (shift_scores(a, b, reach, self.radius).argmax(1, keepdim=True) - reach).to(shift.dtype)
        missed = (best - shift[:, 1:] * cells).abs() > self.radius
        wide = torch.cat([torch.zeros_like(best), torch.round(best / cells)], 1)
        return torch.where(missed, wide, shift)

    @torch.no_grad()
    def correlations(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        """(M, 16, h, w) descriptor maps of frames t and t+1 -> (M, V, h, w) what the read-out sees:
        each level's (2r+1)^2 correlations [and its flow (dy, dx) in 4 px cells / r], finest first,
        [then the global shift (dy, dx) / r]."""
        return self.read_pair(a, b)[0]

    @torch.no_grad()
    @geometry.full_precision  # bf16 correlations would blur the sub-cell peaks the flow is read from
    def read_pair(self, a: torch.Tensor, b: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """:meth:`correlations`, and with ``rotation_from_flow`` the finest level's flow (M, 3, h, w):
        (dy, dx) in pixels, the input of :func:`geometry.rotation_from_flow`, and whether each cell's
        match is mutual (1 or 0, :func:`mutual_matches`), else None. Only the refit at inference
        with ``refit_matches`` mutual reads the check; elsewhere (training, other fits) the channel
        is all 1, every match taken, and the check is not made. With ``fine_flow`` (maps of 32
        channels, :meth:`feature_maps`) the flow refined below a pixel follows, (M, 5, h, w)."""
        volumes, shift, pixel_flow = [], None, None
        gray = None
        if a.shape[1] > 16:  # fine_flow: each cell's grey pixels after its descriptor
            (a, gray_a), (b, gray_b) = a.split(16, 1), b.split(16, 1)
            gray = (gray_a, gray_b) if self.rotation_from_flow else None
        for level in reversed(self.LEVELS):  # coarsest first: it finds the global shift
            pa, pb = ((F.normalize(F.avg_pool2d(x, level), dim=1, eps=1e-3) if level > 1 else x)
                      for x in (a, b))
            in_cells = self.LEVELS[-1] // level  # one coarse cell in this level's cells
            if shift is not None:  # centred: search around the global shift, in this level's cells
                pb = shift_cells(pb, shift * in_cells)
            volume = local_correlation(pa, pb, self.radius)
            finest = level == self.LEVELS[0]
            if self.flow or (self.rotation_from_flow and finest):  # where each cell moved
                offsets = peak_offsets(volume, self.radius)  # in the level's cells
                if shift is not None:
                    offsets = offsets + (shift * in_cells)[:, :, None, None]
                if finest and self.rotation_from_flow:
                    if self.cfg.refit_matches == "mutual" and not self.training:
                        mutual = mutual_matches(volume, self.radius)[:, None].to(offsets.dtype)
                    else:
                        mutual = torch.ones_like(offsets[:, :1])
                    pixel_flow = torch.cat([offsets * 4.0, mutual], 1)
                    if gray is not None:  # fine_flow: the refined flow after them
                        pixel_flow = torch.cat([pixel_flow, refine_flow(*gray, offsets * 4.0)], 1)
                if self.flow:  # in 4 px cells over the radius
                    volume = torch.cat([volume, offsets * (level / self.radius)], 1)
            if self.centred and shift is None:
                shift = self.global_shift(volume[:, :(2 * self.radius + 1) ** 2])
                if self.cfg.wide_shift and not self.training:
                    # A turn past the search's reach (over ~19 degrees: a sharp turn at 1 fps) leaves
                    # no match inside it, and its best offset there is anywhere, not on the edge;
                    # the finest level says where the match is.
                    shift = self.wide_shift(a, b, shift)
            volumes.append(F.interpolate(volume, size=a.shape[-2:], mode="nearest")
                           if level > 1 else volume)
        volumes.reverse()  # finest first, the order the read-out was trained on
        if self.centred:
            volumes.append((shift / self.radius)[:, :, None, None].expand(-1, -1, *a.shape[-2:]))
        return torch.cat(volumes, 1), pixel_flow

    def pair(self, a: torch.Tensor, b: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """(M, 16, h, w) descriptor maps of frames t and t+1 -> (M, N, C) motion tokens of frame t+1
        and, with ``rotation_from_flow``, the pair's (M, 3, h, w) pixel flow and mutual matches
        (:meth:`read_pair`; else None).

        A pair's outputs depend on its two frames only, so a streaming window computes them once per
        new frame and keeps them while the pair stays in the window.
        """
        volume, pixel_flow = self.read_pair(a, b)
        return self.to_tokens(volume).flatten(2).transpose(1, 2), pixel_flow

    @staticmethod
    def per_frame(pairs: torch.Tensor) -> torch.Tensor:
        """(B, T-1, N, C) tokens of the pairs (t, t+1) -> (B, T, N, C) tokens of frames, frame t+1
        getting pair t's and frame 0, with no pair in the window, zeros."""
        return torch.cat([torch.zeros_like(pairs[:, :1]), pairs], 1)

    def forward(self, maps: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """(B, T, 16, h, w) descriptor maps -> (B, T, N, C) motion tokens (zeros for frame 0) and, with
        ``rotation_from_flow``, the pairs' (B, T-1, 3, h, w) pixel flows and mutual matches (else None)."""
        B, T = maps.shape[:2]
        tokens, pixel_flow = self.pair(maps[:, :-1].flatten(0, 1), maps[:, 1:].flatten(0, 1))
        if pixel_flow is not None:
            pixel_flow = pixel_flow.unflatten(0, (B, T - 1))
        return self.per_frame(tokens.unflatten(0, (B, T - 1))), pixel_flow


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
        self.recompute = False

    def forward(self, tokens: torch.Tensor, time_emb: torch.Tensor | None = None,
                motion: torch.Tensor | None = None) -> torch.Tensor:
        """(B, T, N, C) frame tokens [+ (B, T, C) timestamp embedding] [+ (B, T, N, C) motion
        tokens] -> (B, T-1, C) actions."""
        B, T, N, C = tokens.shape
        if motion is not None:
            tokens = tokens + motion
        q = self.queries[:T].expand(B, T, C)[:, :, None]
        x = torch.cat([tokens, q], dim=2)
        if time_emb is not None:
            x = x + time_emb[:, :, None]
        return self.norm(run_blocks(self.blocks, x, self.recompute)[:, 1:, -1])


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
        self.recompute = False

    def forward(self, codes: torch.Tensor, actions: torch.Tensor,
                time_emb: torch.Tensor) -> torch.Tensor:
        """codes (B, T-1, h, w) of frames 0..T-2, actions (B, T-1, C), time_emb (B, T-1, C)
        -> logits (B, T-1, h*w, K) for the codes of frames 1..T-1."""
        B, S = codes.shape[:2]
        x = self.code_embed(codes.flatten(2)) + self.pos
        x = x + (self.action_proj(actions) + time_emb)[:, :, None]
        x = run_blocks(self.blocks, x, self.recompute).flatten(0, 1)
        x = run_blocks(self.extra, x, self.recompute)
        return self.head(self.norm(x)).view(B, S, -1, self.head.out_features)
