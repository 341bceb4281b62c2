"""Trajectories of a replay, their association with ground truth, their scores and TUM files.

No ROS here: poses come from a bag (through ``rosbags``) or from a recorder as arrays.

Estimate and ground truth are associated by header stamp (the node stamps its odometry with the image
stamp). ATE-S and ATE-M are computed over the whole associated trajectory; AUC over all frame pairs of
16-frame windows sampled at ``eval_fps`` along it, leaving out near-stationary windows as
``lapose eval`` does. Both trajectories are body-frame poses (REP-103); every metric is unchanged by
the fixed optical-to-body conjugation, so they score exactly like camera poses.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

import numpy as np

from lapose_core.data.rosbag_source import open_bag, stamp_ns
from lapose_core.data.sources import DataError

GROUND_TRUTH_TOPIC = "/ground_truth/odom"


@dataclass
class Trajectory:
    """Timestamped body poses: stamps in integer nanoseconds (bag time), poses (N, 4, 4)."""

    stamps_ns: np.ndarray
    poses: np.ndarray

    def __len__(self) -> int:
        return len(self.stamps_ns)

    @property
    def seconds(self) -> np.ndarray:
        return self.stamps_ns.astype(np.float64) * 1e-9

    @classmethod
    def empty(cls) -> "Trajectory":
        return cls(np.zeros(0, dtype=np.int64), np.zeros((0, 4, 4)))


def odometry_pose(pose_msg: Any) -> np.ndarray:
    """geometry_msgs/Pose (rosbags or rclpy) -> 4x4."""
    from transforms3d.quaternions import quat2mat

    q, p = pose_msg.orientation, pose_msg.position
    T = np.eye(4)
    T[:3, :3] = quat2mat([q.w, q.x, q.y, q.z])
    T[:3, 3] = [p.x, p.y, p.z]
    return T


def read_bag_odometry(bag: str | Path, topic: str = GROUND_TRUTH_TOPIC) -> Optional[Trajectory]:
    """The ``nav_msgs/Odometry`` of ``topic`` in a bag (by header stamp), or None if the bag has none."""
    reader = open_bag(bag)
    try:
        connections = [c for c in reader.connections if c.topic == topic]
        if not connections:
            return None
        if any(c.msgtype != "nav_msgs/msg/Odometry" for c in connections):
            raise DataError(f"{bag}: topic {topic} is {connections[0].msgtype}, expected nav_msgs/msg/Odometry")
        stamps, poses = [], []
        for connection, _, raw in reader.messages(connections=connections):
            msg = reader.deserialize(raw, connection.msgtype)
            stamps.append(stamp_ns(msg.header.stamp))
            poses.append(odometry_pose(msg.pose.pose))
    finally:
        reader.close()
    if not stamps:
        return None
    order = np.argsort(stamps, kind="stable")
    return Trajectory(np.asarray(stamps, dtype=np.int64)[order], np.stack(poses)[order])


def associate(estimate: Trajectory, ground_truth: Trajectory, max_diff_s: float = 0.01):
    """Pairs (estimate index, ground-truth index) of nearest stamps within ``max_diff_s``, in order.

    Each ground-truth pose is used at most once (the closest estimate wins).
    """
    if not len(estimate) or not len(ground_truth):
        return np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.int64)
    gt_ns = ground_truth.stamps_ns
    right = np.clip(np.searchsorted(gt_ns, estimate.stamps_ns), 1, max(len(gt_ns) - 1, 1))
    left = right - 1
    if len(gt_ns) == 1:
        nearest = np.zeros(len(estimate), dtype=np.int64)
    else:
        nearest = np.where(np.abs(gt_ns[left] - estimate.stamps_ns) <= np.abs(gt_ns[right] - estimate.stamps_ns),
                           left, right)
    diff = np.abs(gt_ns[nearest] - estimate.stamps_ns)
    best: dict[int, int] = {}
    for i in np.flatnonzero(diff <= max_diff_s * 1e9):
        j = int(nearest[i])
        if j not in best or diff[i] < diff[best[j]]:
            best[j] = int(i)
    pairs = sorted((i, j) for j, i in best.items())
    return (np.array([p[0] for p in pairs], dtype=np.int64), np.array([p[1] for p in pairs], dtype=np.int64))


def trajectory_metrics(estimate: Trajectory, ground_truth: Optional[Trajectory], *, eval_fps: float = 2.0,
                       num_frames: int = 16, min_mean_step_m: float = 0.1, window_stride_s: float = 1.0,
                       max_diff_s: float = 0.01) -> dict[str, Any]:
    """metrics.json content: ATE-S / ATE-M over the associated trajectory, AUC over windows along it."""
    from lapose_core.data.windows import window_indices, window_starts
    from lapose_core.eval import metrics as M

    out: dict[str, Any] = {"estimated_poses": len(estimate), "eval_fps": eval_fps, "num_frames": num_frames,
                           "min_mean_step_m": min_mean_step_m, "association_max_diff_s": max_diff_s}
    if ground_truth is None:
        out.update(ground_truth=False, note=f"the bag has no {GROUND_TRUTH_TOPIC}: no metrics")
        return out
    est_idx, gt_idx = associate(estimate, ground_truth, max_diff_s)
    out.update(ground_truth=True, ground_truth_poses=len(ground_truth), associated_poses=int(len(est_idx)))
    if len(est_idx) < 2:
        out["note"] = (f"only {len(est_idx)} odometry poses have a ground-truth pose within {max_diff_s} s: "
                       f"no metrics")
        return out
    pred, gt = estimate.poses[est_idx], ground_truth.poses[gt_idx]
    t = (estimate.stamps_ns[est_idx] - estimate.stamps_ns[est_idx[0]]) * 1e-9
    out["duration_s"] = float(t[-1] - t[0])
    out["ate_m"] = M.ate_m(pred, gt)
    try:
        out["ate_s"] = M.ate_s(pred, gt)
    except M.MetricError as e:
        out["ate_s"], out["ate_s_note"] = None, str(e)

    errors, used, stationary = [], 0, 0
    for start in window_starts(t, eval_fps, num_frames, stride_s=window_stride_s):
        idx = window_indices(t, eval_fps, num_frames, start)
        if idx is None:
            continue
        if M.is_stationary(gt[idx], min_mean_step_m):
            stationary += 1
            continue
        errors.append(M.pose_pair_errors(pred[idx], gt[idx]))
        used += 1
    out.update(windows=used, stationary_windows=stationary, window_stride_s=window_stride_s)
    if errors:
        pooled = np.concatenate(errors)
        out.update(auc_5=M.auc(pooled, 5), auc_30=M.auc(pooled, 30), pairs=int(pooled.size))
    else:
        span = (num_frames - 1) / eval_fps
        out.update(auc_5=None, auc_30=None,
                   auc_note=(f"no moving {num_frames}-frame window at {eval_fps:g} fps ({span:.1f} s) fits in "
                             f"the {out['duration_s']:.1f} s of associated odometry"
                             + (f" ({stationary} stationary windows left out)" if stationary else "")))
    return out


def write_tum(path: Path, trajectory: Trajectory) -> None:
    """TUM trajectory: ``stamp x y z qx qy qz qw`` per line, stamp in seconds (bag time)."""
    from evo.core.trajectory import PoseTrajectory3D
    from evo.tools import file_interface

    if not len(trajectory):
        path.write_text("")  # the node published nothing: an empty trajectory, still a valid file
        return
    traj = PoseTrajectory3D(poses_se3=list(trajectory.poses), timestamps=trajectory.seconds)
    file_interface.write_tum_trajectory_file(str(path), traj)
