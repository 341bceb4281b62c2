"""Frames from a rosbag2 recording (sqlite3 ``.db3`` or ``.mcap``), read with the pure-Python ``rosbags``.

No ROS installation is needed: ``rosbags`` parses the storage and deserialises CDR itself. The image
topic may carry ``sensor_msgs/Image`` (mono8, mono16, rgb8, bgr8, rgba8, bgra8) or
``sensor_msgs/CompressedImage`` (anything OpenCV decodes). Timestamps are the header stamps, so the
timing is the camera's, not the recorder's; intrinsics come from the ``camera_info`` topic next to the
image topic when the bag has one.

Frames are not held in memory: the constructor indexes the topic (one pass), and :meth:`read` fetches a
single message by its recording time, which both storage back ends look up through an index.
"""
from __future__ import annotations

import logging
from pathlib import Path

import cv2
import numpy as np

from lapose_core.data.frame_source import (BAG_SUFFIXES, DataError, FrameReadError, FrameSource,
                                           relative_timestamps)

log = logging.getLogger(__name__)

IMAGE_TYPE = "sensor_msgs/msg/Image"
COMPRESSED_TYPE = "sensor_msgs/msg/CompressedImage"
CAMERA_INFO_TYPE = "sensor_msgs/msg/CameraInfo"

# encoding -> (numpy dtype, channels, OpenCV conversion to RGB or None)
IMAGE_ENCODINGS: dict[str, tuple[str, int, int | None]] = {
    "mono8": ("u1", 1, cv2.COLOR_GRAY2RGB),
    "mono16": ("u2", 1, cv2.COLOR_GRAY2RGB),
    "rgb8": ("u1", 3, None),
    "bgr8": ("u1", 3, cv2.COLOR_BGR2RGB),
    "rgba8": ("u1", 4, cv2.COLOR_RGBA2RGB),
    "bgra8": ("u1", 4, cv2.COLOR_BGRA2RGB),
}


def resolve_bag_path(path: str | Path) -> Path:
    """The path ``rosbags`` should open: a bag folder with ``metadata.yaml``, or a single storage file.

    A folder without ``metadata.yaml`` (copied without it) is accepted when it holds exactly one
    ``.db3`` or ``.mcap`` file. So is a bag folder named ``*.bag`` (``ros2 bag record -o drive.bag``):
    ``rosbags`` takes any path ending in ``.bag`` for a ROS 1 bag file, so its storage file is
    opened instead.
    """
    path = Path(path)
    if not path.exists():
        raise DataError(f"{path}: rosbag2 bag not found")
    if path.is_file():
        if path.suffix.lower() not in BAG_SUFFIXES:
            raise DataError(f"{path}: not a rosbag2 storage file (expected {' or '.join(BAG_SUFFIXES)})")
        return path
    has_metadata = (path / "metadata.yaml").is_file()
    if has_metadata and path.suffix != ".bag":
        return path
    files = sorted(f for f in path.iterdir() if f.suffix.lower() in BAG_SUFFIXES)
    if len(files) != 1 and has_metadata:
        raise DataError(f"{path}: a rosbag2 folder named *.bag is read through its one storage file, "
                        f"and it holds {len(files)}; rename the folder")
    if len(files) != 1:
        raise DataError(f"{path}: not a rosbag2 bag (no metadata.yaml, and {len(files)} "
                        f"{'/'.join(BAG_SUFFIXES)} files instead of one)")
    return files[0]


def open_bag(path: str | Path):
    """An opened ``rosbags`` AnyReader; errors of a broken bag become :class:`DataError`."""
    from rosbags.highlevel import AnyReader, AnyReaderError
    from rosbags.typesys import Stores, get_typestore

    bag = resolve_bag_path(path)
    # Bags written before definitions were embedded (rosbag2 < Iron) fall back to a standard store.
    reader = AnyReader([bag], default_typestore=get_typestore(Stores.ROS2_KILTED))
    try:
        reader.open()
    except (AnyReaderError, OSError, ValueError, KeyError) as e:
        raise DataError(f"{path}: cannot open rosbag2 bag ({type(e).__name__}: {e})") from None
    return reader


def stamp_ns(stamp) -> int:
    """builtin_interfaces/Time -> integer nanoseconds."""
    return int(stamp.sec) * 1_000_000_000 + int(stamp.nanosec)


def image_msg_to_rgb(msg, where: str) -> np.ndarray:
    """A deserialised ``sensor_msgs/Image`` -> (H, W, 3) uint8 RGB. mono16 maps 65535 -> 255.

    Rows may be padded (``step`` > width * bytes per pixel); big-endian 16-bit data is swapped.
    """
    if msg.encoding not in IMAGE_ENCODINGS:
        raise FrameReadError(f"{where}: image encoding '{msg.encoding}' is not supported "
                             f"(supported: {', '.join(IMAGE_ENCODINGS)})")
    dtype_code, channels, to_rgb = IMAGE_ENCODINGS[msg.encoding]
    dtype = np.dtype(dtype_code).newbyteorder(">" if msg.is_bigendian else "<")
    height, width, step = int(msg.height), int(msg.width), int(msg.step)
    row_bytes = width * channels * dtype.itemsize
    data = message_bytes(msg.data)
    if height == 0 or width == 0:
        raise FrameReadError(f"{where}: empty image ({width}x{height})")
    if step < row_bytes or data.size < step * height:
        raise FrameReadError(f"{where}: {msg.encoding} image {width}x{height} needs {row_bytes} bytes per "
                             f"row, but step is {step} and data has {data.size} bytes")
    rows = data[: step * height].reshape(height, step)[:, :row_bytes]
    pixels = np.ascontiguousarray(rows).view(dtype).reshape(height, width, channels)
    if dtype.itemsize == 2:
        pixels = np.rint(pixels.astype(np.float32) * (255.0 / 65535.0)).astype(np.uint8)
    pixels = pixels[..., 0] if channels == 1 else pixels
    return np.ascontiguousarray(pixels if to_rgb is None else cv2.cvtColor(pixels, to_rgb))


def message_bytes(data) -> np.ndarray:
    """A message's ``data`` field as flat uint8: an array from rosbags, a list from a test; bytes or
    array('B') from rclpy, read without a copy."""
    if isinstance(data, (list, tuple, np.ndarray)):
        return np.asarray(data, dtype=np.uint8).reshape(-1)
    return np.frombuffer(data, dtype=np.uint8)


def compressed_msg_to_rgb(msg, where: str) -> np.ndarray:
    """A deserialised ``sensor_msgs/CompressedImage`` (jpeg, png, ...) -> (H, W, 3) uint8 RGB."""
    data = message_bytes(msg.data)
    image = cv2.imdecode(data, cv2.IMREAD_COLOR) if data.size else None
    if image is None:
        raise FrameReadError(f"{where}: compressed image (format '{msg.format}', {data.size} bytes) "
                             f"cannot be decoded")
    return cv2.cvtColor(image, cv2.COLOR_BGR2RGB)


def image_transport_base(image_topic: str) -> tuple[str, bool]:
    """image_transport's layout: ``/ns/image_raw/compressed`` -> (``/ns/image_raw``, True), the raw
    topic it is a transport of and whether it is the compressed one; ``/ns/image_raw`` -> (itself,
    False)."""
    topic = image_topic.rstrip("/")
    if topic.endswith("/compressed"):
        return topic[: -len("/compressed")], True
    return topic, False


def camera_info_topic_for(image_topic: str) -> str:
    """``/ns/image_raw`` (or ``/ns/image_raw/compressed``) -> ``/ns/camera_info``, image_transport's layout."""
    namespace = image_transport_base(image_topic)[0].rsplit("/", 1)[0]
    return f"{namespace}/camera_info"


class RosbagSource(FrameSource):
    """The frames of one image topic of a rosbag2 bag (a bag folder, or its ``.db3``/``.mcap`` file).

    ``max_width`` downscales frames on read (``image_size`` and ``intrinsics`` stay native; use
    :meth:`intrinsics_for`). Poses are None: a bag's ground truth is not a camera pose stream.
    """

    def __init__(self, path: str | Path, image_topic: str = "/camera/image_raw",
                 max_width: int | None = None):
        self.path = Path(path)
        self.name = self.path.stem if self.path.is_file() else self.path.name
        self.image_topic = image_topic
        self.max_width = max_width
        self.poses = None
        self._reader = None
        where = f"{self.path} topic {image_topic}"

        reader = open_bag(self.path)
        try:
            connections = [c for c in reader.connections if c.topic == image_topic]
            if not connections:
                image_topics = sorted({c.topic for c in reader.connections
                                       if c.msgtype in (IMAGE_TYPE, COMPRESSED_TYPE)})
                raise DataError(f"{self.path}: no topic '{image_topic}' in the bag; its image topics are: "
                                f"{', '.join(image_topics) if image_topics else 'none'}")
            msgtypes = {c.msgtype for c in connections}
            if not msgtypes <= {IMAGE_TYPE, COMPRESSED_TYPE} or len(msgtypes) > 1:
                raise DataError(f"{where}: type {' and '.join(sorted(msgtypes))} is not an image type "
                                f"(expected {IMAGE_TYPE} or {COMPRESSED_TYPE})")
            self.msgtype = msgtypes.pop()
            self._index_images(reader, connections, where)
            self.intrinsics = self._read_intrinsics(reader, where)
        finally:
            reader.close()

    # ------------------------------------------------------------------ indexing
    def _index_images(self, reader, connections, where: str) -> None:
        """One pass over the topic: header stamps, recording times, encodings, the first frame's size."""
        header_ns, log_ns = [], []
        first = None
        for k, (connection, timestamp, raw) in enumerate(reader.messages(connections=connections)):
            try:
                msg = reader.deserialize(raw, connection.msgtype)
            except Exception as e:  # noqa: BLE001 - rosbags raises several types for corrupt CDR
                raise DataError(f"{where}: message {k} cannot be deserialised ({e})") from None
            if self.msgtype == IMAGE_TYPE and msg.encoding not in IMAGE_ENCODINGS:
                raise DataError(f"{where}: image encoding '{msg.encoding}' (message {k}) is not supported "
                                f"(supported: {', '.join(IMAGE_ENCODINGS)})")
            if first is None:
                first = self._to_rgb(msg, f"{where} message 0")
            header_ns.append(stamp_ns(msg.header.stamp))
            log_ns.append(timestamp)
        if first is None:
            raise DataError(f"{where}: topic has no messages")
        header_ns = np.asarray(header_ns, dtype=np.int64)
        log_ns = np.asarray(log_ns, dtype=np.int64)
        if not header_ns.any():
            log.warning("%s: header stamps are all zero; using recording times instead", where)
            header_ns = log_ns
        order = np.argsort(header_ns, kind="stable")
        self._log_ns = log_ns[order]
        # Messages recorded at the same nanosecond are told apart by their rank among them.
        self._rank = np.zeros(len(order), dtype=np.int64)
        for k in range(1, len(order)):
            if self._log_ns[k] == self._log_ns[k - 1]:
                self._rank[k] = self._rank[k - 1] + 1
        self.stamps_ns = header_ns[order]  # absolute header stamps, for writing results back in bag time
        self.timestamps = relative_timestamps((self.stamps_ns - self.stamps_ns[0]) * 1e-9, where)
        self.image_size = (first.shape[1], first.shape[0])

    def _read_intrinsics(self, reader, where: str) -> np.ndarray | None:
        """fx fy cx cy from the first valid CameraInfo next to the image topic, rescaled if its size differs."""
        info_topic = camera_info_topic_for(self.image_topic)
        connections = [c for c in reader.connections if c.topic == info_topic and c.msgtype == CAMERA_INFO_TYPE]
        if not connections:  # (rosbags reads every topic when given no connections)
            return None
        for connection, _, raw in reader.messages(connections=connections):
            info = reader.deserialize(raw, connection.msgtype)
            k = np.asarray(info.k, dtype=np.float64)
            fx, fy, cx, cy = k[0], k[4], k[2], k[5]
            if fx <= 0 or fy <= 0:
                continue
            intrinsics = np.array([fx, fy, cx, cy])
            width, height = int(info.width), int(info.height)
            if width and height and (width, height) != self.image_size:
                log.warning("%s: %s is for %dx%d images but the frames are %dx%d; rescaling intrinsics",
                            where, info_topic, width, height, *self.image_size)
                sx, sy = self.image_size[0] / width, self.image_size[1] / height
                intrinsics = np.array([fx * sx, fy * sy, (cx + 0.5) * sx - 0.5, (cy + 0.5) * sy - 0.5])
            return intrinsics
        return None

    # ------------------------------------------------------------------ frames
    def _to_rgb(self, msg, where: str) -> np.ndarray:
        if self.msgtype == COMPRESSED_TYPE:
            return compressed_msg_to_rgb(msg, where)
        return image_msg_to_rgb(msg, where)

    def read(self, i: int) -> np.ndarray:
        i = self._check_index(i)
        where = f"{self.path} topic {self.image_topic} frame {i}"
        if self._reader is None:
            self._reader = open_bag(self.path)
        reader = self._reader
        connections = [c for c in reader.connections if c.topic == self.image_topic]
        t = int(self._log_ns[i])
        found = None
        for rank, (connection, _, raw) in enumerate(reader.messages(connections=connections,
                                                                    start=t, stop=t + 1)):
            if rank == self._rank[i]:
                found = (connection, raw)
                break
        if found is None:
            raise FrameReadError(f"{where}: message recorded at {t} ns is missing from the bag")
        try:
            msg = reader.deserialize(found[1], found[0].msgtype)
        except Exception as e:  # noqa: BLE001
            raise FrameReadError(f"{where}: message cannot be deserialised ({e})") from None
        image = self._to_rgb(msg, where)
        if (image.shape[1], image.shape[0]) != self.image_size:
            raise FrameReadError(f"{where}: frame is {image.shape[1]}x{image.shape[0]}, the first frame "
                                 f"was {self.image_size[0]}x{self.image_size[1]}")
        if self.max_width is not None and image.shape[1] > self.max_width:
            height = max(2, int(round(image.shape[0] * self.max_width / image.shape[1])))
            image = cv2.resize(image, (int(self.max_width), height), interpolation=cv2.INTER_AREA)
        return image

    def close(self) -> None:
        if self._reader is not None:
            self._reader.close()
            self._reader = None

    def __del__(self):
        try:
            self.close()
        except Exception:  # noqa: BLE001 - interpreter shutdown
            pass

    def __getstate__(self):
        # An open bag (sqlite connection, file handle) does not cross into data-loader workers.
        state = self.__dict__.copy()
        state["_reader"] = None
        return state
