"""Streaming visual odometry from windowed pose predictions (pure Python: no ROS here).

The model sees 16 keyframes at a time and returns the 15 step motions between them. A camera stream
is turned into odometry in four small pieces, each testable on its own:

* :class:`KeyframeSelector` picks keyframes at the model's rate (2 fps by default) by stamp.
* :class:`StreamMonitor` watches the stream for the conditions that invalidate the window
  (stamps going backwards, long gaps, a change of image size) and estimates dropped frames.
* :class:`TrajectoryIntegrator` chains step motions into a continuous camera trajectory and
  extrapolates it at constant velocity between keyframes.
* :class:`VisualOdometry` ties them to an estimator with the ``encode_frame`` / ``predict_features``
  interface of :class:`lapose_core.inference.PoseEstimator` (or of the geometry-checked
  :class:`lapose_core.hybrid.HybridEstimator`, whose per-step checks it counts and turns into a larger
  covariance on fallback), and converts the camera (optical frame) trajectory to the robot body frame
  (REP-103: x forward, y left, z up).

Pose conventions follow :mod:`lapose_core.geometry`: 4x4 camera-to-world matrices in the optical frame
(x right, y down, z forward); the step motion k is ``inv(P_k) @ P_{k+1}``.
"""
from __future__ import annotations

import math
import threading
from collections import deque
from dataclasses import dataclass, field
from typing import Any, Callable, Optional, Sequence

import numpy as np
from transforms3d.axangles import axangle2mat, mat2axangle
from transforms3d.quaternions import mat2quat, quat2mat

# Keyframe selection is shared with the offline streaming evaluation (lapose eval --trajectory).
from lapose_core.stream import KeyframeSelector, OdometryConfigError, camera_period  # noqa: F401 (re-exported)


# Rotation taking optical-frame vectors (x right, y down, z forward) to body-frame vectors
# (x forward, y left, z up): body x = optical z, body y = -optical x, body z = -optical y.
OPTICAL_TO_BODY = np.array([[0.0, 0.0, 1.0],
                            [-1.0, 0.0, 0.0],
                            [0.0, -1.0, 0.0]])

# The same rotation as the ROS parameter ``camera_to_base`` (x y z qx qy qz qw).
DEFAULT_CAMERA_TO_BASE = (0.0, 0.0, 0.0, -0.5, 0.5, -0.5, 0.5)


def se3(rotation: np.ndarray, translation: Sequence[float]) -> np.ndarray:
    """A 4x4 rigid transform from a 3x3 rotation and a translation."""
    T = np.eye(4)
    T[:3, :3] = rotation
    T[:3, 3] = translation
    return T


def camera_to_base_from_xyz_quat(values: Sequence[float], name: str = "camera_to_base") -> np.ndarray:
    """``x y z qx qy qz qw`` (the order of a ROS transform) -> 4x4 pose of the camera in the base frame."""
    values = [float(v) for v in values]
    if len(values) != 7:
        raise OdometryConfigError(f"parameter '{name}' needs 7 numbers (x y z qx qy qz qw), "
                                  f"got {len(values)}: {values}")
    if not all(math.isfinite(v) for v in values):
        raise OdometryConfigError(f"parameter '{name}' has a non-finite value: {values}")
    x, y, z, qx, qy, qz, qw = values
    norm = math.sqrt(qx * qx + qy * qy + qz * qz + qw * qw)
    if not 0.9 < norm < 1.1:
        raise OdometryConfigError(f"parameter '{name}': quaternion ({qx}, {qy}, {qz}, {qw}) has norm "
                                  f"{norm:.3f}; expected a unit quaternion in the order qx qy qz qw")
    return se3(quat2mat([qw, qx, qy, qz]), [x, y, z])


def default_camera_to_base() -> np.ndarray:
    """The camera at the base origin, looking along the base x axis (optical-to-body rotation)."""
    return se3(OPTICAL_TO_BODY, [0.0, 0.0, 0.0])


def camera_motion_to_base(camera_motion: np.ndarray, camera_to_base: np.ndarray) -> np.ndarray:
    """Conjugate camera poses or motions (..., 4, 4) into the base frame.

    A camera pose relative to the first camera, ``C``, moves the base by ``B @ C @ inv(B)`` where
    ``B`` is the camera's pose in the base frame: the odometry frame is the base frame at the start.
    """
    return camera_to_base @ camera_motion @ np.linalg.inv(camera_to_base)


def _hat(w: np.ndarray) -> np.ndarray:
    return np.array([[0.0, -w[2], w[1]], [w[2], 0.0, -w[0]], [-w[1], w[0], 0.0]])


def se3_log(motion: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """4x4 rigid motion -> (v, w): the constant body-frame velocity that produces it in unit time."""
    R, t = motion[:3, :3], motion[:3, 3]
    if _is_identity(R):
        return t.copy(), np.zeros(3)
    axis, angle = mat2axangle(R, unit_thresh=1e-5)
    w = np.asarray(axis) * angle
    W = _hat(w)
    # Inverse of the left Jacobian V = I + (1 - cos)/th^2 W + (th - sin)/th^3 W^2; its W^2 term
    # cancels catastrophically for small angles, where its Taylor series is used instead.
    if abs(angle) < 1e-3:
        c = 1.0 / 12.0 + angle ** 2 / 720.0
    else:
        c = (1.0 - angle * math.sin(angle) / (2.0 * (1.0 - math.cos(angle)))) / angle ** 2
    V_inv = np.eye(3) - 0.5 * W + c * W @ W
    return V_inv @ t, w


def se3_exp(v: np.ndarray, w: np.ndarray) -> np.ndarray:
    """Inverse of :func:`se3_log`."""
    angle = float(np.linalg.norm(w))
    if angle < 1e-12:
        return se3(np.eye(3), v)
    W = _hat(w)
    if angle < 1e-3:  # Taylor series, as in se3_log
        a, b = 0.5 - angle ** 2 / 24.0, 1.0 / 6.0 - angle ** 2 / 120.0
    else:
        a, b = (1.0 - math.cos(angle)) / angle ** 2, (angle - math.sin(angle)) / angle ** 3
    V = np.eye(3) + a * W + b * W @ W
    return se3(axangle2mat(w / angle, angle), V @ v)


def interpolate_motion(step: np.ndarray, fraction: float) -> np.ndarray:
    """The part ``fraction`` of a step motion at constant velocity (fraction may exceed 1).

    Constant body-frame velocity is a screw motion, ``exp(fraction * log(step))``: a car turning at a
    steady rate follows the arc, and extrapolating by two halves equals the whole step.
    """
    v, w = se3_log(step)
    return se3_exp(v * fraction, w * fraction)


def twist_from_step(step: np.ndarray, duration: float) -> tuple[np.ndarray, np.ndarray]:
    """Linear (m/s) and angular (rad/s) body velocity that moves through ``step`` in ``duration``."""
    if duration <= 0:
        return np.zeros(3), np.zeros(3)
    v, w = se3_log(step)
    return v / duration, w / duration


def pose_to_xyz_quat(pose: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """4x4 -> translation (3,) and quaternion (x, y, z, w) as ROS messages order it, w >= 0."""
    w, x, y, z = mat2quat(pose[:3, :3])
    q = np.array([x, y, z, w])
    return pose[:3, 3].copy(), (-q if w < 0 else q)


def _is_identity(R: np.ndarray) -> bool:
    return bool(np.allclose(R, np.eye(3), atol=1e-12))


class NewestFrameBuffer:
    """Hand-over of frames from a camera callback to a slower processing thread.

    Holds at most two frames. A frame that arrives while the previous one waits replaces it (the
    newest frame wins, the other is counted in ``dropped``), except the first frame that is due as a
    keyframe: it is kept until taken, so a processing hiccup at the moment a keyframe is due delays
    that keyframe instead of shifting it to a later frame. ``take`` hands out the kept keyframe
    first, then the newest frame, so frames are always processed in arrival order.
    """

    def __init__(self):
        self._cond = threading.Condition()
        self._keyframe: Optional[Any] = None
        self._newest: Optional[Any] = None
        self._closed = False
        self.dropped = 0

    def put(self, item: Any, due_as_keyframe: bool) -> None:
        with self._cond:
            if due_as_keyframe and self._keyframe is None:
                # Whatever waits is older than this keyframe: processed after it, it would go back in time.
                self.dropped += self._newest is not None
                self._newest = None
                self._keyframe = item
            else:
                self.dropped += self._newest is not None
                self._newest = item
            self._cond.notify()

    def take(self, timeout_s: float) -> Optional[Any]:
        """The next frame to process; None after ``timeout_s`` without one, or once closed."""
        with self._cond:
            self._cond.wait_for(lambda: self._keyframe is not None or self._newest is not None or self._closed,
                                timeout=timeout_s)
            if self._keyframe is not None:
                item, self._keyframe = self._keyframe, None
            else:
                item, self._newest = self._newest, None
            return item

    def close(self) -> None:
        with self._cond:
            self._closed = True
            self._cond.notify_all()


class StreamMonitor:
    """Checks each frame against the previous one for the conditions that invalidate the window.

    Also estimates dropped frames from holes in the stamp sequence (a frame interval well above the
    usual one), which is the only trace a best-effort subscription leaves of them.
    """

    def __init__(self, max_gap_s: float):
        if not max_gap_s > 0:
            raise OdometryConfigError(f"parameter 'max_gap_s' must be > 0, got {max_gap_s}")
        self.max_gap_s = max_gap_s
        self.dropped_frames = 0
        self._last_stamp: Optional[float] = None
        self._last_size: Optional[tuple[int, int]] = None
        self._intervals: deque[float] = deque(maxlen=31)

    def check(self, stamp: float, size: tuple[int, int]) -> Optional[str]:
        """Record a frame; return why the window must be reset, or None when it may continue."""
        last_stamp, last_size = self._last_stamp, self._last_size
        self._last_stamp, self._last_size = stamp, size
        if last_stamp is None:
            return None
        if stamp < last_stamp:
            self._intervals.clear()
            return f"time jumped backwards by {last_stamp - stamp:.3f} s (bag loop or clock reset)"
        if size != last_size:
            return f"image size changed from {last_size[1]}x{last_size[0]} to {size[1]}x{size[0]}"
        gap = stamp - last_stamp
        if gap > self.max_gap_s:
            return f"gap of {gap:.3f} s between frames exceeds max_gap_s={self.max_gap_s}"
        if self._intervals and gap > 1.5 * (usual := camera_period(self._intervals)) > 0:
            self.dropped_frames += int(round(gap / usual)) - 1
        if gap > 0:
            self._intervals.append(gap)
        return None

    @property
    def last_stamp(self) -> Optional[float]:
        return self._last_stamp

    @property
    def last_size(self) -> Optional[tuple[int, int]]:
        return self._last_size

    def forget(self) -> None:
        """Start over after a reset (the dropped-frame count is kept: it is a lifetime counter)."""
        self._last_stamp = None
        self._last_size = None
        self._intervals.clear()


class TrajectoryIntegrator:
    """A continuous camera trajectory built from step motions.

    The trajectory starts at ``anchor`` (identity at start-up). The first full window contributes all
    of its steps; every later keyframe appends one step. Poses are camera-to-odometry in the optical
    frame; between keyframes :meth:`pose_at` extrapolates the last step at constant velocity.
    """

    def __init__(self):
        self.anchor = np.eye(4)
        self.restart()

    def restart(self, anchor: Optional[np.ndarray] = None) -> None:
        """Forget the trajectory; the next :meth:`start` begins at ``anchor`` (default: identity)."""
        self.anchor = np.eye(4) if anchor is None else anchor.copy()
        self.keyframe_stamps: list[float] = []
        self.keyframe_poses: list[np.ndarray] = []
        self.last_step: Optional[np.ndarray] = None
        self.last_step_duration = 0.0

    @property
    def started(self) -> bool:
        return bool(self.keyframe_poses)

    def start(self, stamps: Sequence[float], steps: np.ndarray) -> None:
        """Begin at the anchor with a full window: ``len(stamps) == len(steps) + 1``."""
        assert len(stamps) == len(steps) + 1, "a window has one more stamp than steps"
        self.keyframe_stamps = [float(stamps[0])]
        self.keyframe_poses = [self.anchor.copy()]
        for stamp, step in zip(stamps[1:], steps):
            self.append(stamp, step)

    def append(self, stamp: float, step: np.ndarray) -> None:
        """Add the motion from the last keyframe to a new keyframe at ``stamp``."""
        self.last_step = np.asarray(step, dtype=np.float64)
        self.last_step_duration = float(stamp) - self.keyframe_stamps[-1]
        self.keyframe_stamps.append(float(stamp))
        self.keyframe_poses.append(self.keyframe_poses[-1] @ self.last_step)
        # Only the newest pose is needed to continue; keep a short tail for inspection.
        del self.keyframe_stamps[:-64], self.keyframe_poses[:-64]

    @property
    def pose(self) -> np.ndarray:
        return self.keyframe_poses[-1]

    def pose_at(self, stamp: float) -> np.ndarray:
        """Camera pose at ``stamp``: the last keyframe's, moved on at the last step's velocity."""
        if self.last_step is None or self.last_step_duration <= 0:
            return self.pose
        fraction = (float(stamp) - self.keyframe_stamps[-1]) / self.last_step_duration
        if fraction <= 0:
            return self.pose
        return self.pose @ interpolate_motion(self.last_step, fraction)


@dataclass
class OdometryEstimate:
    """Odometry of the base frame at one stamp (what a node publishes)."""

    stamp: float
    pose: np.ndarray  # 4x4 base pose in the odometry frame
    linear_velocity: np.ndarray  # m/s, in the base frame
    angular_velocity: np.ndarray  # rad/s, in the base frame
    is_keyframe: bool
    # Factor on the configured pose/twist covariance: > 1 while the newest step is the estimator's
    # fallback (the hybrid's geometry was not confident and LA-Pose's own step was used).
    covariance_scale: float = 1.0
    # Keyframe poses (stamp, 4x4 base pose) that this update added to the trajectory, oldest first:
    # all 16 when tracking starts, then one per keyframe.
    new_keyframes: list[tuple[float, np.ndarray]] = field(default_factory=list)


@dataclass
class FrameResult:
    """What processing one frame produced."""

    estimate: Optional[OdometryEstimate] = None  # None while warming up or after a reset
    reset_reason: Optional[str] = None
    restarted: bool = False  # the reset started the trajectory over at the origin
    is_keyframe: bool = False
    model_ran: bool = False
    duplicate: bool = False  # the stamp of the previous frame again: skipped

    @property
    def outcome(self) -> str:
        """One word for what happened to the frame (the node reports it per frame)."""
        if self.duplicate:
            return "duplicate"
        return "keyframe" if self.is_keyframe else "frame"


class VisualOdometry:
    """Sliding-window odometry over an estimator with ``encode_frame`` and ``predict_features``.

    Each keyframe's encoder features are cached, so a new keyframe costs one encoder pass and one
    ``predict_features`` call over the 16 cached features.

    How overlapping windows are combined: every step between two keyframes is predicted by up to 15
    windows, but only the newest window's estimate of the newest step is appended. Odometry must
    stay continuous (REP-105), so a published pose is never revised, and the newest window is the
    only one that contains the new keyframe; the inverse-dynamics model is causal, so its estimate
    of the newest step already uses every frame up to it, and the step is put in metres with that
    window's own metric scale. Averaging older windows' estimates would need to delay publication
    by several keyframes (seconds at 2 fps) for little gain.

    Resets: a backwards time jump (a bag looping) or an explicit request restarts the trajectory at
    the origin; a long gap, an image-size change or a non-finite model output only drops the window,
    and the trajectory resumes from the last pose after the next warm-up so the odometry frame stays
    continuous.
    """

    def __init__(self, estimator: Any, fps: float = 2.0, max_gap_s: float = 1.0,
                 camera_to_base: Optional[np.ndarray] = None, num_frames: Optional[int] = None,
                 fallback_covariance_scale: float = 10.0):
        self.estimator = estimator
        self.num_frames = int(num_frames or getattr(estimator, "num_frames", 16))
        self.selector = KeyframeSelector(fps)
        self.monitor = StreamMonitor(max_gap_s)
        self.trajectory = TrajectoryIntegrator()
        self.camera_to_base = default_camera_to_base() if camera_to_base is None else camera_to_base
        self.keyframes: deque[tuple[float, Any]] = deque(maxlen=self.num_frames)
        # Applied to a keyframe's image before the estimator sees it (the node's rectification):
        # frames between keyframes only carry their stamp and size, so they are not touched.
        self.prepare_keyframe: Optional[Callable[[np.ndarray], np.ndarray]] = None
        self.resets = 0
        self.last_reset_reason = ""
        self.last_prediction: Any = None
        self._last_camera_pose: Optional[np.ndarray] = None
        if not fallback_covariance_scale >= 1:
            raise OdometryConfigError(f"parameter 'fallback_covariance_scale' must be >= 1, "
                                      f"got {fallback_covariance_scale}")
        self.fallback_covariance_scale = float(fallback_covariance_scale)
        # Estimators that check their steps (the hybrid) report per-step checks; these count the
        # published steps that fell back or stood still, and keep the newest check.
        self.fallback_steps = 0
        self.standing_steps = 0
        self.last_check: Any = None
        self.last_fallback_reason = ""

    @property
    def tracking(self) -> bool:
        return self.trajectory.started

    @property
    def status(self) -> str:
        if self.tracking:
            return "tracking"
        return f"warming up ({len(self.keyframes)}/{self.num_frames} keyframes)"

    def reset(self, reason: str, restart_trajectory: bool = False) -> None:
        """Drop the window; keep the trajectory's last pose as the anchor unless restarting."""
        if restart_trajectory:
            anchor = None
        elif self._last_camera_pose is not None:
            anchor = self._last_camera_pose  # the last pose handed out: no jump in the odometry
        else:
            anchor = self.trajectory.anchor
        self.trajectory.restart(anchor)
        self._last_camera_pose = None if restart_trajectory else anchor
        self.keyframes.clear()
        self.selector.reset()
        self.monitor.forget()
        self.resets += 1
        self.last_reset_reason = reason

    def needs_pixels(self, stamp: float, size: Optional[tuple[int, int]] = None) -> bool:
        """Whether :meth:`process` will use the pixels of a frame at ``stamp`` of ``size`` (None:
        unknown, taken as the previous frame's): a keyframe, or a frame that resets the window and
        so starts the next one. Between keyframes only the stamp and size count, so a caller can
        skip decoding those frames (most of them: 14 of 15 from a 30 Hz camera at 2 fps)."""
        last = self.monitor.last_stamp
        if last is None or stamp < last or stamp - last > self.monitor.max_gap_s:
            return True
        if size is not None and size != self.monitor.last_size:
            return True
        return stamp != last and self.selector.is_due(stamp)

    def process(self, stamp: float, image: Optional[np.ndarray],
                size: Optional[tuple[int, int]] = None) -> FrameResult:
        """One camera frame, (H, W, 3) uint8 RGB, at ``stamp`` seconds.

        ``image`` may be None for a frame :meth:`needs_pixels` said is not needed; its ``size``
        (height, width) is then checked against the stream's (None: taken as unchanged; a new size
        is then noticed at the next keyframe). A frame with the stamp of the previous one (a message
        delivered twice, or sent again by a player that thought it lost) carries no new motion and
        is skipped.
        """
        if image is not None:
            size = image.shape[:2]
        elif size is None:
            size = self.monitor.last_size
        if stamp == self.monitor.last_stamp and size == self.monitor.last_size:
            return FrameResult(duplicate=True)
        if image is None and self.needs_pixels(stamp, size):
            raise ValueError(f"the frame at {stamp:.6f} s starts a keyframe or a new window: "
                             "process() needs its pixels (ask needs_pixels() before leaving them out)")
        reason = self.monitor.check(stamp, size)
        if reason is not None:
            # Hold the pose where it was when the stream broke, then start a fresh window with this
            # frame. A backwards jump starts the trajectory over: the data is being replayed.
            restart = reason.startswith("time jumped backwards")
            self.reset(reason, restart_trajectory=restart)
            self.monitor.check(stamp, size)
            result = FrameResult(reset_reason=reason, restarted=restart)
        else:
            result = FrameResult()
        if not self.selector.offer(stamp):
            if self.tracking:
                result.estimate = self._estimate(stamp, is_keyframe=False)
            return result
        result.is_keyframe = True
        if self.prepare_keyframe is not None:
            image = self.prepare_keyframe(image)
        self.keyframes.append((stamp, self.estimator.encode_frame(image)))
        if len(self.keyframes) < self.num_frames:
            return result
        stamps = [s for s, _ in self.keyframes]
        prediction = self.estimator.predict_features([f for _, f in self.keyframes],
                                                     [s - stamps[0] for s in stamps])
        result.model_ran = True
        relative = np.asarray(prediction.relative, dtype=np.float64)
        if relative.shape != (self.num_frames - 1, 4, 4) or not prediction.finite:
            reason = ("model output is not finite (scale "
                      f"{float(prediction.scale)!r}, relative motion shape {relative.shape})")
            self.reset(reason)
            result.reset_reason = reason
            return result
        self.last_prediction = prediction
        if not self.trajectory.started:
            self.trajectory.start(stamps, relative)
            added = list(zip(self.trajectory.keyframe_stamps, self.trajectory.keyframe_poses))
            self._record_checks(getattr(prediction, "checks", None) or [])
        else:
            self.trajectory.append(stamp, relative[-1])
            added = [(stamp, self.trajectory.pose)]
            self._record_checks((getattr(prediction, "checks", None) or [])[-1:])
        result.estimate = self._estimate(stamp, is_keyframe=True)
        result.estimate.new_keyframes = [(s, camera_motion_to_base(p, self.camera_to_base))
                                         for s, p in added]
        return result

    def _record_checks(self, checks: list) -> None:
        """Count the newly published steps that fell back or stood still; keep the newest check."""
        for check in checks:
            self.standing_steps += bool(getattr(check, "standing", False))
            if not check.ok:
                self.fallback_steps += 1
                self.last_fallback_reason = check.reason
        if checks:
            self.last_check = checks[-1]

    @property
    def covariance_scale(self) -> float:
        newest_fell_back = self.last_check is not None and not self.last_check.ok
        return self.fallback_covariance_scale if newest_fell_back else 1.0

    def extrapolate(self, stamp: float) -> Optional[OdometryEstimate]:
        """Odometry at an arbitrary stamp (for publishing at a fixed rate).

        None while warming up, once the camera has been silent for longer than ``max_gap_s``
        (extrapolating further would publish a guess as if it were a measurement), and for a stamp
        that far before the last frame (a clock behind the images': nothing to publish there).
        """
        last = self.monitor.last_stamp
        if not self.tracking or last is None or abs(stamp - last) > self.monitor.max_gap_s:
            return None
        return self._estimate(stamp, is_keyframe=False)

    def _estimate(self, stamp: float, is_keyframe: bool) -> OdometryEstimate:
        traj = self.trajectory
        self._last_camera_pose = traj.pose_at(stamp)
        pose = camera_motion_to_base(self._last_camera_pose, self.camera_to_base)
        if traj.last_step is not None:
            step = camera_motion_to_base(traj.last_step, self.camera_to_base)
            linear, angular = twist_from_step(step, traj.last_step_duration)
        else:
            linear, angular = np.zeros(3), np.zeros(3)
        return OdometryEstimate(stamp, pose, linear, angular, is_keyframe,
                                covariance_scale=self.covariance_scale)
