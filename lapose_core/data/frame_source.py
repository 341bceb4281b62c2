"""What every frame source is: the :class:`FrameSource` interface, its errors and timestamp checks.

A module of its own so that the concrete sources (``sources.py``: KITTI folders, videos, image
folders; ``rosbag_source.py``: rosbag2 bags) build on it without importing each other.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

BAG_SUFFIXES = (".db3", ".mcap")


class DataError(ValueError):
    """A data file or folder that cannot be used; the message names it and says what is wrong."""


class FrameReadError(DataError):
    """One frame could not be read (missing or corrupt file); the rest of the source is fine."""


class FrameSource:
    """A sequence of timestamped frames with optional intrinsics and ground-truth poses.

    Subclasses set the fields below in ``__init__`` and implement :meth:`read`.
    """

    path: Path
    name: str
    timestamps: np.ndarray  # (N,) float64 seconds, first frame at 0.0, strictly increasing
    intrinsics: np.ndarray | None  # (4,) fx, fy, cx, cy at native resolution
    image_size: tuple[int, int]  # native (width, height)
    poses: np.ndarray | None = None  # (N, 4, 4) float64 camera-to-world

    def __len__(self) -> int:
        return len(self.timestamps)

    def read(self, i: int) -> np.ndarray:
        """Frame ``i`` as (H, W, 3) uint8 RGB; raises :class:`FrameReadError` naming the frame."""
        raise NotImplementedError

    @property
    def duration(self) -> float:
        return float(self.timestamps[-1]) if len(self.timestamps) else 0.0

    def intrinsics_for(self, width: int, height: int) -> np.ndarray | None:
        """Native intrinsics rescaled to a frame of ``width`` x ``height`` (e.g. a downscaled decode)."""
        if self.intrinsics is None:
            return None
        sx, sy = width / self.image_size[0], height / self.image_size[1]
        fx, fy, cx, cy = self.intrinsics
        # Pixel centres sit at integer coordinates, so the principal point scales about -0.5.
        return np.array([fx * sx, fy * sy, (cx + 0.5) * sx - 0.5, (cy + 0.5) * sy - 0.5])

    def _check_index(self, i: int) -> int:
        if not -len(self) <= i < len(self):
            raise IndexError(f"{self.path}: frame {i} out of range (0..{len(self) - 1})")
        return i % len(self)

    def __repr__(self) -> str:
        return (f"{type(self).__name__}({str(self.path)!r}, frames={len(self)}, "
                f"duration={self.duration:.1f}s, size={self.image_size})")


def relative_timestamps(stamps: np.ndarray, where: str) -> np.ndarray:
    """Timestamps from zero; a DataError naming ``where`` unless finite and strictly increasing."""
    stamps = np.asarray(stamps, dtype=np.float64).reshape(-1)
    if len(stamps) == 0:
        raise DataError(f"{where}: no frames")
    if not np.all(np.isfinite(stamps)):
        raise DataError(f"{where}: timestamps contain NaN or inf")
    steps = np.diff(stamps)
    if np.any(steps <= 0):
        k = int(np.argmax(steps <= 0))
        raise DataError(f"{where}: timestamps must increase strictly, but frame {k + 1} "
                        f"({stamps[k + 1]:.6f}s) does not follow frame {k} ({stamps[k]:.6f}s)")
    return stamps - stamps[0]
