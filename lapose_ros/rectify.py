"""Rectifying a distorted camera's images in the node: what ``image_proc``'s rectify node does.

A car's camera publishes raw images (``image_raw``) whose lens distortion its ``CameraInfo`` describes.
Everything downstream assumes a pinhole camera: the hybrid's essential matrix and road homography,
and the model's rotation refit, which reads the flow at a pinhole field of view. Fed raw images, a
wide lens bends straight lines, and the rotation and direction it reads drift. So when ``CameraInfo``
carries distortion, each keyframe's image is remapped to the rectified pinhole camera of its
projection matrix ``P`` (where ``P`` is unset, ``K``), exactly as ``image_rect`` would be, and
``P``'s fx fy cx cy are the intrinsics (frames between keyframes carry only their stamps: untouched). Without distortion images pass as they are, and so do the images of a topic that
is rectified already (``image_rect``, ``image_rect_color``), whose ``CameraInfo`` still describes the
raw camera's distortion (:func:`should_rectify`).

No rclpy import: a ``CameraInfo`` is read through its fields only.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import cv2
import numpy as np

from lapose_core.data.rosbag_source import image_transport_base

# CameraInfo's distortion models (sensor_msgs/distortion_models) that OpenCV rectifies.
PINHOLE_MODELS = ("plumb_bob", "rational_polynomial")
FISHEYE_MODELS = ("equidistant",)


class RectificationError(ValueError):
    """A camera model or image that cannot be rectified (the message says why)."""


RECTIFY_CHOICES = ("auto", "always", "never")


def is_rectified_topic(image_topic: str) -> bool:
    """Whether ``image_topic`` carries rectified images, as image_proc names them (``image_rect``,
    ``image_rect_color``, and their ``/compressed``): their camera is CameraInfo's P, not K."""
    return image_transport_base(image_topic)[0].split("/")[-1].startswith("image_rect")


def should_rectify(choice: str, image_topic: str) -> bool:
    """Whether distorted images of ``image_topic`` are rectified: ``auto`` unless the topic is a
    rectified one already (:func:`is_rectified_topic`)."""
    if choice not in RECTIFY_CHOICES:
        raise RectificationError(f"parameter 'rectify' must be one of {', '.join(RECTIFY_CHOICES)}, "
                                 f"got '{choice}'")
    if choice == "auto":
        return not is_rectified_topic(image_topic)
    return choice == "always"


@dataclass(frozen=True)
class CameraModel:
    """The fields of a ``sensor_msgs/CameraInfo`` that rectification needs, as plain tuples."""

    width: int
    height: int
    distortion_model: str
    K: tuple[float, ...]  # 3x3 row-major
    D: tuple[float, ...]
    R: tuple[float, ...]  # 3x3 row-major rectification rotation (identity for a monocular camera)
    P: tuple[float, ...]  # 3x4 row-major projection of the rectified camera

    @classmethod
    def from_camera_info(cls, msg: Any) -> "CameraModel":
        """The camera of the images as sent. CameraInfo's K, P, width and height describe the full
        sensor; a driver that bins (``binning_x/y`` > 1) or crops (``roi``, in full-sensor pixels)
        sends smaller images, whose camera is K and P shifted by the crop's corner and divided by
        the binning, as image_geometry reads them."""
        bx, by = max(1, int(getattr(msg, "binning_x", 0))), max(1, int(getattr(msg, "binning_y", 0)))
        roi = getattr(msg, "roi", None)
        x0, y0, w, h = 0, 0, int(msg.width), int(msg.height)
        if roi is not None and roi.width > 0 and roi.height > 0:
            x0, y0, w, h = int(roi.x_offset), int(roi.y_offset), int(roi.width), int(roi.height)
        to_image = np.array([[1.0 / bx, 0.0, -x0 / bx], [0.0, 1.0 / by, -y0 / by], [0.0, 0.0, 1.0]])
        K = np.asarray(msg.k, dtype=np.float64).reshape(3, 3)
        P = np.asarray(msg.p, dtype=np.float64).reshape(3, 4)
        if (bx, by, x0, y0) != (1, 1, 0, 0):
            K = to_image @ K
            P = to_image @ P if P.any() else P
        return cls(w // bx, h // by, str(msg.distortion_model), tuple(float(v) for v in K.reshape(-1)),
                   tuple(float(v) for v in msg.d), tuple(float(v) for v in msg.r),
                   tuple(float(v) for v in P.reshape(-1)))

    @property
    def distorted(self) -> bool:
        return any(v != 0.0 for v in self.D)

    @property
    def raw_intrinsics(self) -> tuple[float, float, float, float]:
        """fx fy cx cy of the raw images (K)."""
        K = self.K
        return K[0], K[4], K[2], K[5]

    @property
    def rectified_intrinsics(self) -> tuple[float, float, float, float]:
        """fx fy cx cy of the rectified images (P; K where P is unset)."""
        P = self.P
        if len(P) == 12 and P[0] > 0 and P[5] > 0:
            return P[0], P[5], P[2], P[6]
        return self.raw_intrinsics


class Rectifier:
    """Remaps images of ``camera`` to its rectified pinhole camera; ``intrinsics`` are that camera's."""

    def __init__(self, camera: CameraModel):
        model = camera.distortion_model
        if model not in PINHOLE_MODELS + FISHEYE_MODELS:
            raise RectificationError(
                f"CameraInfo distortion model '{model}' is not supported (supported: "
                f"{', '.join(PINHOLE_MODELS + FISHEYE_MODELS)})")
        for name in ("K", "D", "R", "P"):
            if not all(np.isfinite(getattr(camera, name))):
                raise RectificationError(f"CameraInfo {name} has a non-finite value: {getattr(camera, name)}")
        if camera.width <= 0 or camera.height <= 0:
            raise RectificationError(f"CameraInfo size {camera.width}x{camera.height} is not an image size")
        K = np.asarray(camera.K, dtype=np.float64).reshape(3, 3)
        if not (K[0, 0] > 0 and K[1, 1] > 0):
            raise RectificationError(f"CameraInfo K has no focal length (fx {K[0, 0]}, fy {K[1, 1]})")
        R = np.asarray(camera.R, dtype=np.float64).reshape(3, 3) if any(camera.R) else np.eye(3)
        P = np.asarray(camera.P, dtype=np.float64).reshape(3, 4) if any(camera.P) else None
        has_P = P is not None and P[0, 0] > 0 and P[1, 1] > 0
        new_K = P[:, :3] if has_P else K
        D = np.asarray(camera.D, dtype=np.float64)
        size = (camera.width, camera.height)
        if model in FISHEYE_MODELS:
            if len(D) < 4:
                raise RectificationError(f"CameraInfo model '{model}' needs 4 coefficients, got {len(D)}")
            self._maps = cv2.fisheye.initUndistortRectifyMap(K, D[:4], R, new_K, size, cv2.CV_16SC2)
        else:
            if len(D) not in (4, 5, 8, 12, 14):
                raise RectificationError(f"CameraInfo model '{model}' with {len(D)} coefficients: OpenCV "
                                         "takes 4, 5, 8, 12 or 14")
            self._maps = cv2.initUndistortRectifyMap(K, D, R, new_K, size, cv2.CV_16SC2)
        self.size = (camera.height, camera.width)
        self.intrinsics = (float(new_K[0, 0]), float(new_K[1, 1]), float(new_K[0, 2]), float(new_K[1, 2]))
        self.description = f"{model}, {len(D)} coefficients, to {'P' if has_P else 'K (no P)'}'s pinhole camera"

    def __call__(self, image: np.ndarray) -> np.ndarray:
        if tuple(image.shape[:2]) != self.size:
            raise RectificationError(f"image {image.shape[1]}x{image.shape[0]} but CameraInfo "
                                     f"{self.size[1]}x{self.size[0]}: not rectified")
        return cv2.remap(image, self._maps[0], self._maps[1], cv2.INTER_LINEAR,
                         borderMode=cv2.BORDER_CONSTANT)
