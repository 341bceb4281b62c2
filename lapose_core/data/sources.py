"""Frame sources: one interface over KITTI-format folders, video files, image folders and bags.

Every source exposes the same few fields (timestamps from zero, native intrinsics if known, native
image size, optional camera-to-world poses) and random access to RGB uint8 frames. Windows are cut by
real timestamps, never by frame count, so irregular rates and gaps stay visible to the model.
"""
from __future__ import annotations

import glob
import logging
from fractions import Fraction
from pathlib import Path

import cv2
import numpy as np

from lapose_core.data.frame_source import (BAG_SUFFIXES, DataError, FrameReadError, FrameSource,
                                           relative_timestamps)
from lapose_core.data.rosbag_source import RosbagSource

__all__ = ["BAG_SUFFIXES", "DataError", "FrameReadError", "FrameSource", "ImageFolder", "KittiSequence",
           "RosbagSource", "VideoSource", "expand_sources", "open_source", "read_image_file"]

log = logging.getLogger(__name__)

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png")
VIDEO_SUFFIXES = (".mp4", ".mkv", ".avi", ".mov", ".webm", ".m4v")


def read_image_file(path: Path) -> np.ndarray:
    """Decode a JPEG/PNG into (H, W, 3) uint8 RGB, grayscale expanded; FrameReadError if unusable."""
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise FrameReadError(f"{path}: image file missing") from None
    except OSError as e:
        raise FrameReadError(f"{path}: cannot read image file ({e.strerror})") from None
    # libjpeg decodes a truncated file with only a warning and grey fill; the end-of-image marker
    # tells a complete JPEG from a cut-off one.
    if path.suffix.lower() in (".jpg", ".jpeg") and not data.rstrip(b"\x00").endswith(b"\xff\xd9"):
        raise FrameReadError(f"{path}: truncated or corrupt JPEG (no end-of-image marker)")
    image = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
    if image is None:
        raise FrameReadError(f"{path}: not a decodable image ({len(data)} bytes)")
    return cv2.cvtColor(image, cv2.COLOR_BGR2RGB)


class KittiSequence(FrameSource):
    """A KITTI-format folder: ``images/NNNNNN.jpg``, ``poses.txt``, ``times.txt``, ``calib.txt``.

    Frame ``i`` is ``images/{i:06d}.<ext>``. ``times.txt`` defines the frame count; ``poses.txt`` and
    the image numbering must agree with it. A single image missing inside that range is not fatal:
    :meth:`read` raises :class:`FrameReadError` for it and datasets skip the windows touching it.
    """

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.name = self.path.name
        if not self.path.is_dir():
            raise DataError(f"{self.path}: KITTI sequence folder not found")
        image_dir = self.path / "images"
        if not image_dir.is_dir():
            raise DataError(f"{self.path}: no images/ folder (expected images/NNNNNN.jpg)")

        times = self._load_table("times.txt", columns=1)
        self.timestamps = relative_timestamps(times[:, 0], str(self.path / "times.txt"))
        n = len(self.timestamps)

        poses_file = self.path / "poses.txt"
        if poses_file.exists():
            rows = self._load_table("poses.txt", columns=12)
            if len(rows) != n:
                raise DataError(f"{poses_file}: {len(rows)} poses but times.txt has {n} frames")
            self.poses = np.tile(np.eye(4), (n, 1, 1))
            self.poses[:, :3, :] = rows.reshape(n, 3, 4)
        else:
            self.poses = None

        calib = self._load_table("calib.txt", columns=6)
        if len(calib) != 1:
            raise DataError(f"{self.path / 'calib.txt'}: expected one line 'fx fy cx cy width height', "
                            f"got {len(calib)} lines")
        fx, fy, cx, cy, width, height = calib[0]
        if fx <= 0 or fy <= 0 or width <= 0 or height <= 0:
            raise DataError(f"{self.path / 'calib.txt'}: fx, fy, width and height must be positive")
        self.intrinsics = np.array([fx, fy, cx, cy], dtype=np.float64)
        self.image_size = (int(width), int(height))

        # Index the images by frame number; the numbering must cover exactly the frames of times.txt.
        self._files: dict[int, Path] = {}
        for f in image_dir.iterdir():
            if f.suffix.lower() in IMAGE_SUFFIXES and f.stem.isdigit():
                self._files[int(f.stem)] = f
        if not self._files:
            raise DataError(f"{image_dir}: no images named NNNNNN.jpg/.png")
        image_count = max(self._files) + 1
        if image_count != n:
            raise DataError(f"{image_dir}: images are numbered for {image_count} frames but times.txt "
                            f"has {n} frames" + (f" and poses.txt {n} poses" if self.poses is not None
                                                  else ""))
        self._suffix = self._files[max(self._files)].suffix
        missing = n - len(self._files)
        if missing:
            log.warning("%s: %d of %d images missing; windows touching them will be skipped",
                        image_dir, missing, n)

    def _load_table(self, name: str, columns: int) -> np.ndarray:
        file = self.path / name
        if not file.is_file():
            raise DataError(f"{file}: missing")
        try:
            table = np.loadtxt(file, dtype=np.float64, ndmin=2)
        except ValueError as e:
            raise DataError(f"{file}: not a table of numbers ({e})") from None
        if table.size == 0:
            raise DataError(f"{file}: empty")
        if table.shape[1] != columns:
            raise DataError(f"{file}: expected {columns} numbers per line, got {table.shape[1]}")
        return table

    def image_path(self, i: int) -> Path:
        i = self._check_index(i)
        return self._files.get(i, self.path / "images" / f"{i:06d}{self._suffix}")

    def read(self, i: int) -> np.ndarray:
        return read_image_file(self.image_path(i))


class VideoSource(FrameSource):
    """A video file decoded with PyAV, once, into memory (optionally downscaled to ``max_width``).

    Clips here are small and random access into H.264 is slow, so the whole clip is decoded up front.
    Timestamps come from each frame's presentation time, so variable-rate files keep their timing.
    """

    def __init__(self, path: str | Path, max_width: int | None = None):
        import av

        self.path = Path(path)
        self.name = self.path.stem
        self.intrinsics = None
        self.poses = None
        if not self.path.is_file():
            raise DataError(f"{self.path}: video file not found")
        frames, stamps = [], []
        try:
            with av.open(str(self.path)) as container:
                if not container.streams.video:
                    raise DataError(f"{self.path}: no video stream")
                stream = container.streams.video[0]
                stream.thread_type = "AUTO"
                width, height = stream.codec_context.width, stream.codec_context.height
                self.image_size = (int(width), int(height))
                out_w, out_h = width, height
                if max_width is not None and width > max_width:
                    out_w = int(max_width)
                    out_h = max(2, int(round(height * out_w / width)))
                rate = stream.average_rate or stream.guessed_rate or Fraction(30)
                for k, frame in enumerate(container.decode(stream)):
                    if (out_w, out_h) != (width, height):
                        # Area averaging: no aliasing, and faster than swscale's default bicubic.
                        frame = frame.reformat(width=out_w, height=out_h, interpolation="AREA")
                    frames.append(frame.to_ndarray(format="rgb24"))
                    # A frame without a presentation time falls back to the nominal rate.
                    stamps.append(float(frame.time) if frame.pts is not None else k / float(rate))
        except DataError:
            raise
        except (av.error.FFmpegError, UnicodeDecodeError) as e:
            raise DataError(f"{self.path}: cannot decode video ({e})") from None
        if not frames:
            raise DataError(f"{self.path}: video contains no decodable frames")
        stamps = np.asarray(stamps)
        order = np.argsort(stamps, kind="stable")
        self._frames = np.stack([frames[k] for k in order])
        self.timestamps = relative_timestamps(stamps[order], str(self.path))

    def read(self, i: int) -> np.ndarray:
        return self._frames[self._check_index(i)]


class ImageFolder(FrameSource):
    """A folder of .jpg/.png frames sorted by name; no timestamps, so frame i is at ``i / fps``."""

    def __init__(self, path: str | Path, fps: float = 10.0):
        self.path = Path(path)
        self.name = self.path.name
        if not self.path.is_dir():
            raise DataError(f"{self.path}: image folder not found")
        if fps <= 0:
            raise DataError(f"{self.path}: image folder fps must be positive, got {fps}")
        self._files = sorted(f for f in self.path.iterdir() if f.suffix.lower() in IMAGE_SUFFIXES)
        if not self._files:
            raise DataError(f"{self.path}: no .jpg or .png images")
        self.timestamps = np.arange(len(self._files), dtype=np.float64) / fps
        self.intrinsics = None
        self.poses = None
        first = read_image_file(self._files[0])
        self.image_size = (first.shape[1], first.shape[0])

    def read(self, i: int) -> np.ndarray:
        return read_image_file(self._files[self._check_index(i)])


def open_source(path: str | Path, *, image_topic: str = "/camera/image_raw",
                image_folder_fps: float = 10.0, max_width: int | None = None) -> FrameSource:
    """Open any supported source by what ``path`` is.

    A folder with ``times.txt`` and ``images/`` is a KITTI sequence, a folder with ``metadata.yaml``
    or a ``.db3``/``.mcap`` file is a rosbag2 bag, a video file goes to PyAV, any other folder of
    images is an image folder.
    """
    path = Path(path)
    if not path.exists():
        raise DataError(f"{path}: no such file or folder")
    if path.is_dir():
        if (path / "metadata.yaml").is_file() or any(path.glob("*.db3")) or any(path.glob("*.mcap")):
            return RosbagSource(path, image_topic=image_topic, max_width=max_width)
        if (path / "times.txt").is_file() or (path / "images").is_dir():
            return KittiSequence(path)
        return ImageFolder(path, fps=image_folder_fps)
    suffix = path.suffix.lower()
    if suffix in BAG_SUFFIXES:
        return RosbagSource(path, image_topic=image_topic, max_width=max_width)
    if suffix in VIDEO_SUFFIXES:
        return VideoSource(path, max_width=max_width)
    raise DataError(f"{path}: unsupported source (expected a KITTI folder, an image folder, a video "
                    f"{'/'.join(VIDEO_SUFFIXES)} or a rosbag2 bag)")


def expand_sources(patterns: list[str], root: Path) -> list[Path]:
    """Expand glob patterns (relative ones resolved against ``root``) into sorted, unique paths."""
    if isinstance(patterns, (str, Path)):
        patterns = [str(patterns)]
    paths: list[Path] = []
    for pattern in patterns:
        full = Path(pattern).expanduser()
        if not full.is_absolute():
            full = Path(root) / full
        matches = sorted(Path(m) for m in glob.glob(str(full)))
        if not matches:
            raise DataError(f"source pattern {pattern!r} (resolved to {full}) matches nothing")
        paths.extend(m for m in matches if m not in paths)
    return paths
