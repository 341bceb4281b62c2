"""``sensor_msgs/Image`` (or ``CompressedImage``) -> (H, W, 3) uint8 RGB, the input of the pose estimator.

The buffer is unpacked by ``cv_bridge`` where it is importable (it knows every encoding, row padding
and byte order) and by numpy otherwise; the colour and bit-depth conversion after that is shared, so
both paths give the same array. ``mono16`` is scaled linearly to 8 bits (65535 -> 255). A
``CompressedImage`` (image_transport's ``compressed``: JPEG, PNG) is decoded by OpenCV, as the bag
reader decodes one (:func:`lapose_core.data.rosbag_source.compressed_msg_to_rgb`).

No rclpy import here: a message is read through its fields only.
"""
from __future__ import annotations

import logging
import sys
from typing import Any, Callable, Optional

import numpy as np

from lapose_core.data.frame_source import FrameReadError
from lapose_core.data.rosbag_source import compressed_msg_to_rgb, message_bytes

log = logging.getLogger(__name__)

# encoding -> (numpy dtype, channels)
SUPPORTED_ENCODINGS: dict[str, tuple[str, int]] = {
    "mono8": ("u1", 1),
    "mono16": ("u2", 1),
    "rgb8": ("u1", 3),
    "bgr8": ("u1", 3),
    "rgba8": ("u1", 4),
    "bgra8": ("u1", 4),
}


class ImageConversionError(ValueError):
    """An image message that cannot be turned into an RGB frame (the message says why)."""


class UnsupportedEncodingError(ImageConversionError):
    """An image encoding outside :data:`SUPPORTED_ENCODINGS`."""

    def __init__(self, encoding: str, topic: str = ""):
        self.encoding = encoding
        where = f" on {topic}" if topic else ""
        super().__init__(f"image encoding '{encoding}'{where} is not supported "
                         f"(supported: {', '.join(SUPPORTED_ENCODINGS)})")


def check_raw_image(msg: Any, topic: str = "") -> tuple[int, int]:
    """(height, width) of a ``sensor_msgs/Image`` whose header and buffer agree; raises
    :class:`ImageConversionError` naming what does not. Reads no pixel."""
    if msg.encoding not in SUPPORTED_ENCODINGS:
        raise UnsupportedEncodingError(msg.encoding, topic)
    height, width, step = int(msg.height), int(msg.width), int(msg.step)
    if height == 0 or width == 0:
        raise ImageConversionError(f"empty image ({width}x{height}) on {topic or 'input'}")
    dtype_code, channels = SUPPORTED_ENCODINGS[msg.encoding]
    row_bytes = width * channels * np.dtype(dtype_code).itemsize
    if step < row_bytes:
        raise ImageConversionError(f"image step {step} is smaller than width*channels*bytes "
                                   f"= {row_bytes} ({msg.encoding}, {width}x{height})")
    size = len(msg.data)
    if size < step * height:
        raise ImageConversionError(f"image data has {size} bytes, expected step*height = "
                                   f"{step}*{height} = {step * height} ({msg.encoding})")
    return height, width


def unpack_with_numpy(msg: Any) -> np.ndarray:
    """The raw pixel array of an image message, (H, W) or (H, W, C), native byte order."""
    height, width = check_raw_image(msg)
    data = message_bytes(msg.data)
    dtype_code, channels = SUPPORTED_ENCODINGS[msg.encoding]
    dtype = np.dtype(dtype_code).newbyteorder(">" if msg.is_bigendian else "<")
    step, row_bytes = int(msg.step), width * channels * dtype.itemsize
    rows = data[: step * height].reshape(height, step)[:, :row_bytes]
    pixels = rows.copy().view(dtype).reshape(height, width, channels)
    pixels = pixels.astype(dtype.newbyteorder("="), copy=False)
    return pixels[..., 0] if channels == 1 else pixels


def _cv_bridge_unpacker() -> Optional[Callable[[Any], np.ndarray]]:
    try:
        from cv_bridge import CvBridge, CvBridgeError
    except ImportError:
        return None
    bridge = CvBridge()

    def unpack(msg: Any) -> np.ndarray:
        try:
            return np.asarray(bridge.imgmsg_to_cv2(msg, desired_encoding="passthrough"))
        except (CvBridgeError, TypeError, ValueError) as e:
            raise ImageConversionError(f"cv_bridge cannot read the {msg.encoding} image: {e}") from None

    return unpack


def to_rgb8(pixels: np.ndarray, encoding: str) -> np.ndarray:
    """Raw pixels in ``encoding`` -> contiguous (H, W, 3) uint8 RGB."""
    if encoding == "mono16":
        pixels = np.rint(pixels.astype(np.float32) * (255.0 / 65535.0)).astype(np.uint8)
        encoding = "mono8"
    if encoding == "mono8":
        return np.ascontiguousarray(np.repeat(pixels[..., None], 3, axis=-1))
    if encoding in ("bgr8", "bgra8"):
        return np.ascontiguousarray(pixels[..., 2::-1])
    return np.ascontiguousarray(pixels[..., :3])


class ImageConverter:
    """Converts image messages to RGB frames; ``backend`` says which unpacker is in use."""

    def __init__(self, prefer_cv_bridge: bool = True):
        self._unpack = _cv_bridge_unpacker() if prefer_cv_bridge else None
        self.backend = "cv_bridge" if self._unpack is not None else "numpy"
        if self._unpack is None:
            self._unpack = unpack_with_numpy

    @staticmethod
    def frame_size(msg: Any, topic: str = "") -> Optional[tuple[int, int]]:
        """(height, width) of an image message without converting it, after the checks that need
        no pixels (a raw image's encoding and buffer length; a compressed image's data is there);
        None for a compressed image, whose size only decoding tells. Raises
        :class:`ImageConversionError` as converting would."""
        if hasattr(msg, "format"):
            if not len(msg.data):
                raise ImageConversionError(f"{topic or 'input'}: compressed image (format "
                                           f"'{msg.format}') has no data")
            return None
        return check_raw_image(msg, topic)

    def __call__(self, msg: Any, topic: str = "") -> np.ndarray:
        if hasattr(msg, "format"):  # sensor_msgs/CompressedImage (image_transport's compressed)
            try:
                return compressed_msg_to_rgb(msg, topic or "input")
            except FrameReadError as e:
                raise ImageConversionError(str(e)) from None
        check_raw_image(msg, topic)
        pixels = self._unpack(msg)
        expected = (int(msg.height), int(msg.width))
        if pixels.shape[:2] != expected:
            raise ImageConversionError(f"image on {topic or 'input'} unpacked to {pixels.shape}, "
                                       f"expected {expected[0]}x{expected[1]}")
        return to_rgb8(pixels, msg.encoding)


def fill_image_msg(msg: Any, pixels: np.ndarray, encoding: str) -> Any:
    """Fill an image message's data fields from an array in ``encoding`` (for publishers and tests)."""
    dtype_code, channels = SUPPORTED_ENCODINGS[encoding]
    pixels = np.ascontiguousarray(pixels, dtype=np.dtype(dtype_code))
    msg.height, msg.width = int(pixels.shape[0]), int(pixels.shape[1])
    msg.encoding = encoding
    msg.is_bigendian = sys.byteorder == "big"
    msg.step = msg.width * channels * pixels.dtype.itemsize
    msg.data = pixels.tobytes()
    return msg
