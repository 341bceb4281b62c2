"""Exact augmentation of training windows: new images with labels that are still true.

Each transform changes the frames and the camera-to-world poses together so that every label stays
the exact motion of the camera that would have seen the new frames:

- rotation: each frame is warped by the homography H = K R K^-1 of a small, smoothly varying camera
  rotation R(t). A pure rotation about the optical centre moves every pixel the same way whatever
  the scene's depth, so the new poses P' = P [R^T] are exact.
- mirror: the image is reflected about the camera's true principal point (x -> 2 cx - x) and the
  world with it (P' = M P M, M = diag(-1, 1, 1)); a left turn becomes a right turn.
- reverse: the window played backwards, every step inverted.
- static: sixteen copies of one frame, a camera that stands still.
- photometric: gain, bias and gamma jitter; geometry untouched.
- time scale: the timestamps stretched or shrunk; frames and steps untouched, so the speed changes.

Frames are (T, 3, H, W) float tensors in [0, 1]; ``intrinsics`` are (fx, fy, cx, cy) of those frames
(pixel centres at integer coordinates, as :func:`lapose_core.data.transforms.fit_to_model` returns).
"""
from __future__ import annotations

import math

import cv2
import numpy as np
import torch

from lapose_core.config import DataConfig

Clip = dict[str, torch.Tensor]
MIRROR = torch.diag(torch.tensor([-1.0, 1.0, 1.0, 1.0]))


def camera_matrix(intrinsics: np.ndarray) -> torch.Tensor:
    fx, fy, cx, cy = (float(v) for v in intrinsics)
    return torch.tensor([[fx, 0.0, cx], [0.0, fy, cy], [0.0, 0.0, 1.0]], dtype=torch.float64)


def warp_frames(frames: torch.Tensor, source_from_output: torch.Tensor) -> torch.Tensor:
    """Resample (T, 3, H, W) frames: output pixel (x, y) takes the source at H_t (x, y, 1).

    ``source_from_output`` is one (3, 3) homography per frame, in pixel coordinates (pixel centres
    at integers, as OpenCV has them). Pixels that come from outside the frame repeat the border (a
    few pixels at the amplitudes used here).
    """
    T, _, H, W = frames.shape
    images = frames.permute(0, 2, 3, 1).contiguous().numpy()
    out = np.empty_like(images)
    for t in range(T):
        out[t] = cv2.warpPerspective(images[t], source_from_output[t].double().numpy(), (W, H),
                                     flags=cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP,
                                     borderMode=cv2.BORDER_REPLICATE)
    return torch.from_numpy(out).permute(0, 3, 1, 2).contiguous()


def rotation_matrices(rotvecs: torch.Tensor) -> torch.Tensor:
    """(..., 3) rotation vectors (radians) -> (..., 3, 3) rotations (Rodrigues)."""
    theta = rotvecs.norm(dim=-1, keepdim=True)[..., None]
    k = rotvecs / rotvecs.norm(dim=-1, keepdim=True).clamp_min(1e-12)
    zero = torch.zeros_like(k[..., 0])
    K = torch.stack([zero, -k[..., 2], k[..., 1], k[..., 2], zero, -k[..., 0],
                     -k[..., 1], k[..., 0], zero], -1).view(*k.shape[:-1], 3, 3)
    eye = torch.eye(3, dtype=rotvecs.dtype).expand_as(K)
    return eye + torch.sin(theta) * K + (1 - torch.cos(theta)) * K @ K


def smooth_rotations(timestamps: torch.Tensor, rng: np.random.Generator,
                     max_deg: float) -> torch.Tensor:
    """(T,) seconds -> (T, 3, 3) camera rotations that vary smoothly over the window.

    Each axis follows amplitude * sin(2 pi f t + phase) with f in [0.05, 0.5] Hz: yaw amplitude up to
    ``max_deg``, pitch and roll up to a quarter of it. The added rotation rate reaches about
    2 pi f max_deg (16 deg/s at 5 deg), while the frame never turns by more than ``max_deg``.
    """
    amplitude = np.deg2rad(max_deg) * np.array([0.25, 1.0, 0.25]) * rng.uniform(0, 1, 3)  # x, y, z
    freq = rng.uniform(0.05, 0.5, 3)
    phase = rng.uniform(0, 2 * math.pi, 3)
    t = timestamps.double()[:, None]
    rotvecs = torch.as_tensor(amplitude) * torch.sin(2 * math.pi * torch.as_tensor(freq) * t
                                                     + torch.as_tensor(phase))
    return rotation_matrices(rotvecs)


def rotate_clip(clip: Clip, intrinsics: np.ndarray, rotations: torch.Tensor) -> Clip:
    """Frame t seen by the camera turned by ``rotations[t]`` (new camera coordinates X' = R X)."""
    K = camera_matrix(intrinsics)
    # Output pixel x' = K R K^-1 x, so the source of x' is K R^T K^-1 x'.
    source_from_output = K @ rotations.transpose(1, 2) @ torch.linalg.inv(K)
    out = dict(clip, frames=warp_frames(clip["frames"], source_from_output))
    if "poses" in clip:
        turn = torch.eye(4, dtype=torch.float64).repeat(len(rotations), 1, 1)
        turn[:, :3, :3] = rotations.transpose(1, 2)
        out["poses"] = (clip["poses"].double() @ turn).to(clip["poses"].dtype)
    return out


def mirror_clip(clip: Clip, intrinsics: np.ndarray | None = None) -> Clip:
    """The same drive seen in a mirror about the principal point; motion reflected to match.

    Flipping the image is the camera frame's x -> -x; reflecting the world the same way keeps every
    pose a proper rigid motion: P' = M P M, so each step becomes M rel M. The reflection is about the
    true principal point (x -> 2 cx - x), so the mirrored camera is the same camera; without
    intrinsics it is about the image centre. The field of view is unchanged.
    """
    frames = clip["frames"]
    W = frames.shape[-1]
    cx = float(intrinsics[2]) if intrinsics is not None else (W - 1) / 2
    if abs(2 * cx - (W - 1)) < 1e-6:
        frames = frames.flip(-1)
    else:
        reflect = torch.tensor([[-1.0, 0.0, 2 * cx], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0]],
                               dtype=torch.float64)
        frames = warp_frames(frames, reflect.expand(len(frames), 3, 3))
    out = dict(clip, frames=frames)
    if "poses" in clip:
        out["poses"] = MIRROR.to(clip["poses"].dtype) @ clip["poses"] @ MIRROR.to(clip["poses"].dtype)
    return out


def reverse_clip(clip: Clip) -> Clip:
    """The window played backwards: frame order and time reversed, every step inverted."""
    ts = clip["timestamps"]
    out = dict(clip, frames=clip["frames"].flip(0), timestamps=(ts[-1] - ts).flip(0))
    if "poses" in clip:
        out["poses"] = clip["poses"].flip(0)
    return out


def static_clip(clip: Clip) -> Clip:
    """A camera standing still: every frame (and pose) is the first one."""
    T = len(clip["frames"])
    out = dict(clip, frames=clip["frames"][:1].expand(T, -1, -1, -1).clone())
    if "poses" in clip:
        out["poses"] = clip["poses"][:1].expand(T, -1, -1).clone()
    return out


def time_scaled_clip(clip: Clip, factor: float) -> Clip:
    """The same frames and poses with every interval ``factor`` times as long: a camera ``factor``
    times slower. The steps (poses) are unchanged; only the speed they imply is."""
    return dict(clip, timestamps=clip["timestamps"] * factor)


def photometric_clip(clip: Clip, rng: np.random.Generator) -> Clip:
    """Exposure changes: one gain / bias / gamma per window, a few percent of gain per frame."""
    T = len(clip["frames"])
    gain = rng.uniform(0.7, 1.3) * rng.uniform(0.97, 1.03, T)
    bias = rng.uniform(-0.08, 0.08)
    gamma = math.exp(rng.uniform(-0.25, 0.25))
    frames = clip["frames"].clamp(0, 1) ** gamma
    frames = frames * torch.as_tensor(gain, dtype=frames.dtype)[:, None, None, None] + bias
    return dict(clip, frames=frames.clamp(0, 1))


def augment_clip(clip: Clip, intrinsics: np.ndarray | None, rng: np.random.Generator,
                 data: DataConfig) -> Clip:
    """Apply each transform with its chance from ``data`` (geometric ones need intrinsics)."""
    if rng.uniform() < data.hflip_prob:
        clip = mirror_clip(clip, intrinsics)
    if intrinsics is not None and rng.uniform() < data.rotation_aug_prob:
        clip = rotate_clip(clip, intrinsics,
                           smooth_rotations(clip["timestamps"], rng, data.rotation_aug_max_deg))
    if rng.uniform() < data.reverse_prob:
        clip = reverse_clip(clip)
    if rng.uniform() < data.static_prob:
        clip = static_clip(clip)
    if rng.uniform() < data.photometric_prob:
        clip = photometric_clip(clip, rng)
    # Drawn only when enabled, so that runs without it keep their random stream (and results).
    if data.time_scale_prob > 0 and rng.uniform() < data.time_scale_prob:
        bound = math.log(data.time_scale_max)
        clip = time_scaled_clip(clip, math.exp(rng.uniform(-bound, bound)))
    return clip
