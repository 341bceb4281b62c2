"""The straight-ahead prior: no rotation, unit forward steps.

It knows nothing about the images, only that a car mostly drives forward. Any method worth running
must beat it; it is printed beside every evaluation so that a number can be read against it.
On ``03_head`` at 2 fps it scores AUC@5 about 0.22 and ATE-S about 0.08.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np

from lapose_core.eval import metrics

DESCRIPTION = "straight ahead: no rotation, unit forward steps"

ATE_S_NOTE = ("note: ATE-S mostly measures the speed profile: with exact rotations and directions but "
              "uniform step lengths it cannot go below a floor (about 0.06 on 03_head at 2 fps; the "
              "'exact geometry with uniform steps' figure is that floor on these windows)")


def straight_ahead_poses(num_frames: int) -> np.ndarray:
    """(T, 4, 4) poses of a camera moving 1 unit per frame along its optical axis, never turning."""
    poses = np.tile(np.eye(4), (num_frames, 1, 1))
    poses[:, 2, 3] = np.arange(num_frames, dtype=np.float64)
    return poses


def uniform_step_poses(gt: np.ndarray) -> np.ndarray:
    """Ground truth with every step's rotation and direction exact but all step lengths equal.

    Its ATE-S is the floor of a method that gets the geometry exactly right and the speed profile
    wrong (constant speed).
    """
    steps = metrics.step_motions(gt)
    lengths = np.linalg.norm(steps[:, :3, 3], axis=-1)
    mean = lengths.mean()
    with np.errstate(invalid="ignore", divide="ignore"):
        scale = np.where(lengths > 1e-9, mean / lengths, 0.0)
    steps[:, :3, 3] *= scale[:, None]
    return metrics.compose_steps(steps)


def score_prior(gt_windows: Sequence[np.ndarray]) -> dict[str, float]:
    """AUC@5, AUC@30 and ATE-S of the prior on ground-truth windows (each (T, 4, 4), first frame at
    the identity), aggregated like :func:`lapose_core.eval.evaluate.evaluate_sequence`; also the
    uniform-step ATE-S floor on the same windows."""
    if not gt_windows:
        return {}
    pooled, ate_s, floor = [], [], []
    for gt in gt_windows:
        pred = straight_ahead_poses(len(gt))
        pooled.append(metrics.pose_pair_errors(pred, gt))
        ate_s.append(metrics.ate_s(pred, gt))
        floor.append(metrics.ate_s(uniform_step_poses(gt), gt))
    errors = np.concatenate(pooled)
    return {"description": DESCRIPTION, "auc5": metrics.auc(errors, 5), "auc30": metrics.auc(errors, 30),
            "ate_s": float(np.mean(ate_s)), "ate_s_uniform_steps": float(np.mean(floor))}


def describe(scores: dict) -> str:
    return (f"AUC@5 {scores['auc5']:.4f}, AUC@30 {scores['auc30']:.4f}, ATE-S {scores['ate_s']:.4f} "
            f"({scores['description']}); exact geometry with uniform steps: ATE-S "
            f"{scores['ate_s_uniform_steps']:.4f}")
