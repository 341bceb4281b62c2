"""Scene cuts and repeated frames, found on small grayscale thumbnails.

Real driving footage is edited: compilations cut between drives, re-encodes repeat frames to fill a
higher container rate, dash cameras freeze. A window that spans a cut, or whose frames are stale
copies, teaches ego-motion that never happened, so such windows are dropped before training.

Each consecutive frame pair gets two dissimilarities on a 64x32 thumbnail: the mean absolute
difference (brightness change) and one minus the normalised cross-correlation (structure change).
Motion, wipers and rain change both steadily, so each is compared with its local median: a pair is a
cut when BOTH exceed ``cut_threshold`` times their local median. A pair is a repeat when almost no
thumbnail pixel changed by more than a few grey levels (encoder noise on a copied frame stays below
that; a standing car with sensor noise does not).

Calibrated on the clips in ``shared/data``: ``asia_highway_8`` (a compilation with 16 cuts) gives
about 15, ``dashcam_us_1`` 1, ``dashcam_us_3`` 2, the KITTI sequences 0; copied frames in
``city_india_traffic`` and the ``dad_*`` clips change < 0.1 % of pixels, while the stillest real
frames (a car waiting at a light) change > 0.9 %.
"""
from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

THUMBNAIL_SIZE = (64, 32)  # (width, height)
CUT_THRESHOLD = 4.0  # a cut is this many times more different than its neighbourhood (both measures)
FROZEN_THRESHOLD = 0.004  # a repeat changes less than this fraction of thumbnail pixels
NEIGHBOURHOOD = 15  # pairs in the local-median window (0.5 s at 30 fps, 1.5 s at 10 fps)
CHANGED_LEVEL = 4  # grey levels (of 255) a pixel must change by to count as changed
_MIN_DIFFERENCE = 0.005  # floors keep near-static stretches from turning noise into huge ratios
_MIN_DISSIMILARITY = 0.02


def thumbnail(image: np.ndarray) -> np.ndarray:
    """(H, W, 3) uint8 RGB -> (32, 64) uint8 grayscale thumbnail."""
    gray = cv2.cvtColor(image, cv2.COLOR_RGB2GRAY)
    return cv2.resize(gray, THUMBNAIL_SIZE, interpolation=cv2.INTER_AREA)


@dataclass
class FrameStats:
    """Frame-to-frame statistics of one source; pair ``k`` is frames (k, k+1)."""

    difference: np.ndarray  # (N-1,) mean absolute difference in [0, 1]
    dissimilarity: np.ndarray  # (N-1,) 1 - normalised cross-correlation, in [0, 2]
    changed: np.ndarray  # (N-1,) fraction of pixels that changed by more than CHANGED_LEVEL
    is_cut: np.ndarray  # (N-1,) bool
    is_repeat: np.ndarray  # (N-1,) bool: frame k+1 is a copy of frame k

    @property
    def num_cuts(self) -> int:
        """Cut events: runs of adjacent cut pairs (a one-frame flash or splice) count once."""
        c = self.is_cut
        return int(np.sum(c[1:] & ~c[:-1]) + (c[0] if len(c) else 0))

    @property
    def num_repeats(self) -> int:
        return int(self.is_repeat.sum())


def _local_median(x: np.ndarray, size: int) -> np.ndarray:
    if len(x) == 0:
        return x
    half = size // 2
    padded = np.pad(x, half, mode="edge")
    return np.median(np.lib.stride_tricks.sliding_window_view(padded, 2 * half + 1), axis=1)


def frame_stats(thumbnails: np.ndarray, valid: np.ndarray | None = None,
                cut_threshold: float = CUT_THRESHOLD,
                frozen_threshold: float = FROZEN_THRESHOLD) -> FrameStats:
    """Statistics from (N, h, w) uint8 thumbnails; ``valid`` (N,) marks frames that could be read.

    Pairs touching an unreadable frame are neither cuts nor repeats (datasets drop those windows
    for being unreadable) and do not enter the local medians.
    """
    x = thumbnails.astype(np.float32) / 255.0
    n = len(x)
    valid = np.ones(n, bool) if valid is None else np.asarray(valid, bool)
    pair_ok = valid[1:] & valid[:-1]
    diff = np.abs(np.diff(x, axis=0))
    difference = diff.mean(axis=(1, 2))
    changed = (diff > CHANGED_LEVEL / 255.0).mean(axis=(1, 2))
    z = x - x.mean(axis=(1, 2), keepdims=True)
    z /= np.sqrt((z ** 2).mean(axis=(1, 2), keepdims=True)) + 1e-6
    dissimilarity = 1.0 - (z[1:] * z[:-1]).mean(axis=(1, 2))

    def ratio(values: np.ndarray, floor: float) -> np.ndarray:
        out = np.zeros_like(values)
        if pair_ok.any():
            out[pair_ok] = values[pair_ok] / np.maximum(_local_median(values[pair_ok], NEIGHBOURHOOD),
                                                        floor)
        return out

    is_cut = ((ratio(difference, _MIN_DIFFERENCE) > cut_threshold)
              & (ratio(dissimilarity, _MIN_DISSIMILARITY) > cut_threshold) & pair_ok)
    is_repeat = (changed < frozen_threshold) & pair_ok
    return FrameStats(difference, dissimilarity, changed, is_cut, is_repeat)


def bad_window(stats: FrameStats, indices: np.ndarray) -> str | None:
    """"cut", "frozen" or None for a window of (increasing) frame indices.

    "cut": some pair between the first and last sampled frame is a cut, so two consecutive sampled
    frames show different scenes. "frozen": a sampled frame is a copy of the frame before it (its
    content belongs to an earlier time than its timestamp), or two consecutive sampled frames are
    identical because every frame between them is a copy.
    """
    idx = np.asarray(indices)
    if len(idx) < 2:
        return None
    if stats.is_cut[idx[0]:idx[-1]].any():
        return "cut"
    # A run of copies between two sampled frames ends in a copy, so checking each sampled frame
    # against its predecessor also catches identical consecutive samples.
    sampled = idx[idx > 0]
    if stats.is_repeat[sampled - 1].any():
        return "frozen"
    return None


def source_stats(source, cut_threshold: float = CUT_THRESHOLD,
                 frozen_threshold: float = FROZEN_THRESHOLD) -> FrameStats:
    """Read every frame of a :class:`FrameSource` once and compute its statistics."""
    from lapose_core.data.sources import FrameReadError

    thumbs = np.zeros((len(source), THUMBNAIL_SIZE[1], THUMBNAIL_SIZE[0]), np.uint8)
    valid = np.ones(len(source), bool)
    for i in range(len(source)):
        try:
            thumbs[i] = thumbnail(source.read(i))
        except FrameReadError:
            valid[i] = False
    return frame_stats(thumbs, valid, cut_threshold, frozen_threshold)
