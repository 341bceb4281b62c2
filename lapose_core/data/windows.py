"""Windows of frames at a chosen frame rate, picked from the real timestamps.

A window of ``num_frames`` frames at ``fps`` wants frames at ``t_start + k / fps``. Each wanted time
takes the nearest recorded frame; a window whose wanted time has no frame close enough (a gap in the
recording) is rejected instead of silently stretching time, because the model sees the timestamps.
"""
from __future__ import annotations

import numpy as np


def nearest_indices(t: np.ndarray, wanted: np.ndarray) -> np.ndarray:
    """Index of the element of increasing ``t`` nearest to each of ``wanted`` (the earlier on a tie)."""
    if len(t) == 1:
        return np.zeros(len(wanted), dtype=np.int64)
    right = np.clip(np.searchsorted(t, wanted), 1, len(t) - 1)
    left = right - 1
    return np.where(np.abs(t[left] - wanted) <= np.abs(t[right] - wanted), left, right)


def window_indices(timestamps: np.ndarray, fps: float, num_frames: int = 16, start: int = 0,
                   tolerance: float = 0.5) -> np.ndarray | None:
    """Indices (num_frames,) of the frames nearest to ``t[start] + k / fps``, or None.

    None when the window runs past the last frame, when a wanted time has no frame within
    ``tolerance / fps`` seconds, or when two wanted times fall on the same frame (rate too high).
    """
    t = np.asarray(timestamps, dtype=np.float64)
    if fps <= 0:
        raise ValueError(f"fps must be positive, got {fps}")
    if not 0 <= start < len(t):
        return None
    slack = tolerance / fps
    wanted = t[start] + np.arange(num_frames) / fps
    if wanted[-1] > t[-1] + slack:
        return None
    idx = nearest_indices(t, wanted)
    if np.any(np.abs(t[idx] - wanted) > slack) or np.any(np.diff(idx) <= 0):
        return None
    return idx.astype(np.int64)


def window_starts(timestamps: np.ndarray, fps: float, num_frames: int = 16,
                  stride_s: float = 1.0) -> list[int]:
    """Start frames every ``stride_s`` seconds whose windows are valid, covering the whole sequence.

    The last start is pulled back so that its window ends at the last frame, so the tail of the
    sequence is evaluated too. Starts whose window falls into a gap are left out.
    """
    t = np.asarray(timestamps, dtype=np.float64)
    if stride_s <= 0:
        raise ValueError(f"stride_s must be positive, got {stride_s}")
    if len(t) == 0:
        return []
    span = (num_frames - 1) / fps
    starts: list[int] = []
    for s in np.arange(t[0], t[-1] - span + 1e-9, stride_s):
        i = int(np.argmin(np.abs(t - s)))
        if (not starts or i > starts[-1]) and window_indices(t, fps, num_frames, i) is not None:
            starts.append(i)
    # Tail: the latest start whose window is still valid.
    last = int(np.searchsorted(t, t[-1] - span, side="right")) - 1
    for i in range(last + 1, max(last - num_frames, -1), -1):
        if i < len(t) and window_indices(t, fps, num_frames, i) is not None:
            if not starts or i > starts[-1]:
                starts.append(i)
            break
    return starts
