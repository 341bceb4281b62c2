"""Image preprocessing shared by training, evaluation and the ROS node.

Frames are resized so they cover the model's input size (aspect ratio kept) and centre-cropped; the
pinhole intrinsics follow the same transform so FoV targets and metric reasoning stay consistent.
"""
from __future__ import annotations

import cv2
import numpy as np
import torch


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
    scale = max(out_w / w, out_h / h)
    new_w, new_h = max(out_w, round(w * scale)), max(out_h, round(h * scale))
    if (new_w, new_h) != (w, h):
        # Area averaging when shrinking avoids aliasing; bilinear when enlarging.
        interp = cv2.INTER_AREA if new_w < w else cv2.INTER_LINEAR
        image = cv2.resize(image, (new_w, new_h), interpolation=interp)
    x0, y0 = (new_w - out_w) // 2, (new_h - out_h) // 2
    image = np.ascontiguousarray(image[y0:y0 + out_h, x0:x0 + out_w])
    if intrinsics is None:
        return image, None
    sx, sy = new_w / w, new_h / h  # per-axis, exact after rounding
    fx, fy, cx, cy = np.asarray(intrinsics, dtype=np.float64)
    # cv2.resize maps pixel centres as x' = (x + 0.5) * s - 0.5; the crop then shifts the origin.
    return image, np.array([fx * sx, fy * sy, (cx + 0.5) * sx - 0.5 - x0, (cy + 0.5) * sy - 0.5 - y0])


def to_tensor(image: np.ndarray) -> torch.Tensor:
    """(..., H, W, 3) uint8 -> (..., 3, H, W) float32 in [0, 1]."""
    if image.dtype != np.uint8 or image.shape[-1] != 3:
        raise ValueError(f"to_tensor expects (..., H, W, 3) uint8, got {image.dtype} {image.shape}")
    return torch.from_numpy(np.ascontiguousarray(image)).movedim(-1, -3).float().div_(255.0)
