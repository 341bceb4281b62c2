"""The picture of a replay: estimated and ground-truth trajectories, x-y top view."""
from __future__ import annotations

from pathlib import Path
from typing import Optional

import numpy as np

from .replay_metrics import Trajectory, associate


def plot_trajectories(path: Path, estimate: Trajectory, ground_truth: Optional[Trajectory],
                      title: str) -> None:
    """x-y top view in the odometry frame.

    The node's odometry frame starts where it starts tracking (after warming up), so its trajectory
    is drawn from the ground-truth pose at its first stamp (no other alignment); without ground
    truth it is drawn as published.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.5, 6.0), dpi=110)
    label = "LA-Pose"
    poses = estimate.poses
    if ground_truth is not None:
        ax.plot(ground_truth.poses[:, 0, 3], ground_truth.poses[:, 1, 3], "-", color="0.3", lw=2,
                label="ground truth")
        ax.plot(*ground_truth.poses[0, :2, 3], "o", color="0.3")
        if len(estimate):
            est_idx, gt_idx = associate(estimate, ground_truth)
            if len(est_idx):
                anchor = ground_truth.poses[gt_idx[0]] @ np.linalg.inv(estimate.poses[est_idx[0]])
                poses = anchor @ estimate.poses
                label = "LA-Pose (from the ground-truth pose where tracking starts)"
    if len(poses):
        ax.plot(poses[:, 0, 3], poses[:, 1, 3], "-", color="tab:red", lw=1.5, label=label)
        ax.plot(*poses[0, :2, 3], "o", color="tab:red")
    else:
        ax.text(0.5, 0.5, "no odometry published", transform=ax.transAxes, ha="center")
    ax.set_xlabel("x [m] (forward at start)")
    ax.set_ylabel("y [m] (left at start)")
    ax.set_aspect("equal", adjustable="datalim")
    ax.grid(alpha=0.3)
    ax.legend(loc="best", fontsize=8)
    ax.set_title(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
