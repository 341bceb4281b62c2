"""Keyframe streams shared by the ROS node and the offline evaluation (no ROS imports here).

The node (``lapose_ros.odometry.VisualOdometry``) picks keyframes from the camera stream by stamp with
:class:`KeyframeSelector`; once 16 keyframes are in, the first window contributes all 15 of its steps
and every later keyframe appends the newest step of the window ending at it. :func:`stream_poses` does
exactly that offline over a sequence's frames, so ``lapose eval --method hybrid --trajectory`` writes
the trajectory the node publishes for the same frames (a replayed bag matches it to float precision).
"""
from __future__ import annotations

from collections import deque
from typing import Any, Iterable, Optional, Sequence

import numpy as np


class OdometryConfigError(ValueError):
    """A parameter of the odometry pipeline that cannot be used (the message names it)."""


def camera_period(intervals: Sequence[float]) -> float:
    """The camera's frame interval from recent frame-to-frame intervals (0 when there are none).

    A low percentile, not the median: when a node falls behind and drops frames, most received
    intervals can span several frames, but the shortest ones still are one camera period.
    """
    values = list(intervals)  # one atomic copy: a node's camera callback reads while frames are processed
    return float(np.percentile(values, 10)) if values else 0.0


class KeyframeSelector:
    """Picks keyframes from a camera stream so that they are spaced at the model's rate.

    A frame becomes a keyframe once at least one model period has passed since the last keyframe,
    less half a camera period of tolerance: with a 10 Hz camera and a 2 fps model every fifth frame
    is taken even when stamps jitter, and with a dropped frame the next one is taken. The model is
    given the real stamps, so an irregular spacing is handled by its timestamp embedding.

    The choice depends on the image stamps only, never on wall time or on how long processing
    took: replaying the same frames gives the same keyframes on any machine. The spacing stays
    within one camera period of the model period as long as the frame at the due time reaches
    the selector; a node that falls behind keeps the newest frame, so after a slow keyframe it
    catches up on the (cheap) frames in between before the next keyframe is due.
    """

    def __init__(self, fps: float):
        if not fps > 0:
            raise OdometryConfigError(f"parameter 'model_fps' must be > 0, got {fps}")
        self.period = 1.0 / fps
        self._last_keyframe: Optional[float] = None
        self._last_frame: Optional[float] = None
        self._intervals: deque[float] = deque(maxlen=15)

    def is_due(self, stamp: float) -> bool:
        """Whether the frame at ``stamp``, offered next, becomes a keyframe (changes nothing).

        Safe from another thread (the node's image callback) while the processing thread offers
        frames or resets: each field is read once."""
        last_keyframe, last_frame, intervals = self._last_keyframe, self._last_frame, list(self._intervals)
        if last_frame is not None and stamp > last_frame:
            intervals = intervals[1 - self._intervals.maxlen:] + [stamp - last_frame]
        return self._due(stamp, intervals, last_keyframe)

    def offer(self, stamp: float) -> bool:
        """Whether the frame at ``stamp`` (seconds) becomes a keyframe."""
        if self._last_frame is not None and stamp > self._last_frame:
            self._intervals.append(stamp - self._last_frame)
        self._last_frame = stamp
        if self._due(stamp, self._intervals, self._last_keyframe):
            self._last_keyframe = stamp
            return True
        return False

    def _due(self, stamp: float, intervals: Sequence[float], last_keyframe: Optional[float]) -> bool:
        if last_keyframe is None:
            return True
        tolerance = min(0.5 * camera_period(intervals), 0.25 * self.period)
        return stamp - last_keyframe >= self.period - tolerance

    def reset(self) -> None:
        self._last_keyframe = None
        self._last_frame = None
        self._intervals.clear()


def stream_poses(estimator: Any, frames: Iterable[tuple[float, np.ndarray]], fps: float,
                 intrinsics: Optional[Sequence[float]] = None) -> tuple[np.ndarray, np.ndarray, int]:
    """Keyframe stamps (N,), camera poses (N, 4, 4) relative to the first keyframe, and the number
    of fallback steps, of ``(stamp, image)`` frames streamed through ``estimator`` like the node does.

    ``estimator`` has ``encode_frame`` and ``predict_features`` (``intrinsics`` is passed to the
    latter when given, as the node passes CameraInfo's). Frames are consumed lazily (one decoded at
    a time).
    """
    selector = KeyframeSelector(fps)
    num_frames = int(estimator.num_frames)
    window: deque[tuple[float, Any]] = deque(maxlen=num_frames)
    stamps: list[float] = []
    poses: list[np.ndarray] = []
    fallbacks = 0
    extra = {} if intrinsics is None else {"intrinsics": intrinsics}
    for stamp, image in frames:
        if not selector.offer(stamp):
            continue
        window.append((float(stamp), estimator.encode_frame(image)))
        if len(window) < num_frames:
            continue
        ws = [s for s, _ in window]
        prediction = estimator.predict_features([f for _, f in window], [s - ws[0] for s in ws], **extra)
        relative = np.asarray(prediction.relative, dtype=np.float64)
        checks = getattr(prediction, "checks", None)
        if not poses:
            stamps, poses = list(ws), [np.eye(4)]
            for step in relative:
                poses.append(poses[-1] @ step)
            fallbacks += sum(not c.ok for c in checks) if checks else 0
        else:
            stamps.append(float(stamp))
            poses.append(poses[-1] @ relative[-1])
            fallbacks += int(bool(checks) and not checks[-1].ok)
    return np.asarray(stamps), np.asarray(poses).reshape(-1, 4, 4), fallbacks
