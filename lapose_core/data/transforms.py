"""Image preprocessing shared by training, evaluation and the ROS node.

Frames are resized so they cover the model's input size (aspect ratio kept) and centre-cropped; the
pinhole intrinsics follow the same transform so FoV targets and metric reasoning stay consistent.
"""
from __future__ import annotations

import cv2
import numpy as np
import torch


def _fit(image_hw: tuple[int, int], out_hw: tuple[int, int]) -> tuple[int, int, int, int]:
    """The resize (new width, new height) that covers ``out_hw`` keeping the aspect ratio, and the
    centre crop's origin (x0, y0)."""
    out_h, out_w = int(out_hw[0]), int(out_hw[1])
    h, w = int(image_hw[0]), int(image_hw[1])
    scale = max(out_w / w, out_h / h)
    new_w, new_h = max(out_w, round(w * scale)), max(out_h, round(h * scale))
    return new_w, new_h, (new_w - out_w) // 2, (new_h - out_h) // 2


def fitted_intrinsics(intrinsics, image_hw: tuple[int, int], out_hw: tuple[int, int]) -> np.ndarray:
    """Intrinsics (fx, fy, cx, cy) of an ``image_hw`` camera -> those of its :func:`fit_to_model`
    output."""
    new_w, new_h, x0, y0 = _fit(image_hw, out_hw)
    sx, sy = new_w / image_hw[1], new_h / image_hw[0]  # per-axis, exact after rounding
    fx, fy, cx, cy = np.asarray(intrinsics, dtype=np.float64)
    # cv2.resize maps pixel centres as x' = (x + 0.5) * s - 0.5; the crop then shifts the origin.
    return np.array([fx * sx, fy * sy, (cx + 0.5) * sx - 0.5 - x0, (cy + 0.5) * sy - 0.5 - y0])


def fit_to_model(image: np.ndarray, intrinsics: np.ndarray | None, out_hw: tuple[int, int]
                 ) -> tuple[np.ndarray, np.ndarray | None]:
    """Resize ``image`` (H, W, 3) uint8 to cover ``out_hw`` keeping aspect ratio, then centre-crop.

    Returns the (out_h, out_w, 3) uint8 image and the intrinsics (fx, fy, cx, cy) of the output, or
    None when ``intrinsics`` is None.
    """
    if image.ndim != 3 or image.shape[2] != 3:
        raise ValueError(f"fit_to_model expects an (H, W, 3) image, got shape {image.shape}")
    out_h, out_w = int(out_hw[0]), int(out_hw[1])
    h, w = image.shape[:2]
    new_w, new_h, x0, y0 = _fit((h, w), out_hw)
    if (new_w, new_h) != (w, h):
        # Area averaging when shrinking avoids aliasing; bilinear when enlarging.
        interp = cv2.INTER_AREA if new_w < w else cv2.INTER_LINEAR
        image = cv2.resize(image, (new_w, new_h), interpolation=interp)
    image = np.ascontiguousarray(image[y0:y0 + out_h, x0:x0 + out_w])
    return image, None if intrinsics is None else fitted_intrinsics(intrinsics, (h, w), out_hw)


def to_tensor(image: np.ndarray) -> torch.Tensor:
    """(..., H, W, 3) uint8 -> (..., 3, H, W) float32 in [0, 1]."""
    if image.dtype != np.uint8 or image.shape[-1] != 3:
        raise ValueError(f"to_tensor expects (..., H, W, 3) uint8, got {image.dtype} {image.shape}")
    return torch.from_numpy(np.ascontiguousarray(image)).movedim(-1, -3).float().div_(255.0)
