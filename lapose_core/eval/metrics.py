"""Camera pose metrics of a window: pairwise AUC (VGGT-style), ATE-S and ATE-M.

All functions take poses as (T, 4, 4) camera-to-world matrices (any world frame: every metric here
depends only on poses relative to each other or to the first frame), in the optical frame of
:mod:`lapose_core.geometry`.

Definitions
-----------
Pair errors
    For every pair i < j of the window the relative pose is ``inv(P_i) @ P_j`` (frame j in frame i),
    for prediction and ground truth alike. The rotation error is the angle of ``R_pred^T R_gt`` in
    degrees; the translation error is the angle in degrees between the two relative translation
    directions, in [0, 180]. A pair's error is the larger of the two.
    VGGT additionally folds the translation angle onto [0, 90] (``min(a, 180 - a)``), which forgives a
    prediction that moves backwards; for ego-motion that is a real error, so it is off by default and
    available as ``fold_sign=True`` for numbers comparable with VGGT's tables.
AUC@tau
    ``mean over thresholds t = 1, 2, ..., tau (degrees) of the fraction of pairs with error < t``;
    this is VGGT's ``calculate_auc_np`` (a cumulative histogram over integer bins, averaged). Reported
    as a fraction in [0, 1].
ATE-S
    Positions relative to the first frame, each trajectory divided by its mean distance from the
    first frame (the mean of ``|p_k - p_0|`` over k = 1..T-1), so both have unit mean distance; the
    prediction is then aligned onto the ground truth with a rigid Umeyama fit (rotation and
    translation, no scale) and the RMSE of the position differences is reported (unitless).
ATE-M
    The same on metric positions without the normalisation: rigid alignment, RMSE in metres.
"""
from __future__ import annotations

import numpy as np

# A translation shorter than this (metres, or unitless for scale-free predictions) has no direction.
_MIN_NORM = 1e-9


class MetricError(ValueError):
    """Poses that cannot be scored (wrong shape, different lengths, no motion to normalise by)."""


def _check_poses(pred: np.ndarray, gt: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    pred = np.asarray(pred, dtype=np.float64)
    gt = np.asarray(gt, dtype=np.float64)
    for name, p in (("predicted", pred), ("ground-truth", gt)):
        if p.ndim != 3 or p.shape[1:] != (4, 4):
            raise MetricError(f"{name} poses must have shape (T, 4, 4), got {p.shape}")
        if not np.isfinite(p).all():
            raise MetricError(f"{name} poses contain NaN or inf")
    if pred.shape[0] != gt.shape[0]:
        raise MetricError(f"predicted and ground-truth windows differ in length: "
                          f"{pred.shape[0]} vs {gt.shape[0]} poses")
    if pred.shape[0] < 2:
        raise MetricError("a window needs at least 2 poses")
    return pred, gt


def rotation_angle_deg(R: np.ndarray) -> np.ndarray:
    """Angle in degrees of rotation matrices (..., 3, 3), accurate near 0 and 180 degrees.

    ``atan2(sin, cos)`` from the skew part and the trace: ``arccos`` of the trace alone loses half
    the digits near zero (stored KITTI rotations would show ~0.03 degree errors against themselves).
    """
    sin = 0.5 * np.linalg.norm(np.stack([R[..., 2, 1] - R[..., 1, 2], R[..., 0, 2] - R[..., 2, 0],
                                         R[..., 1, 0] - R[..., 0, 1]], -1), axis=-1)
    cos = 0.5 * (np.trace(R, axis1=-2, axis2=-1) - 1.0)
    return np.degrees(np.arctan2(sin, cos))


def step_motions(poses: np.ndarray) -> np.ndarray:
    """(T, 4, 4) camera-to-world -> (T-1, 4, 4) step motions, frame k+1 in frame k."""
    poses = np.asarray(poses, dtype=np.float64)
    return np.linalg.inv(poses[:-1]) @ poses[1:]


def compose_steps(steps: np.ndarray) -> np.ndarray:
    """(T-1, 4, 4) step motions -> (T, 4, 4) poses relative to the first frame."""
    poses = [np.eye(4)]
    for step in steps:
        poses.append(poses[-1] @ step)
    return np.stack(poses)


def relative_to_first(poses: np.ndarray) -> np.ndarray:
    """(T, 4, 4) camera-to-world -> poses relative to the first frame (the first becomes identity)."""
    poses = np.asarray(poses, dtype=np.float64)
    return np.linalg.inv(poses[0]) @ poses


def pair_errors(pred: np.ndarray, gt: np.ndarray, fold_sign: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """Rotation and translation errors in degrees over all pairs i < j of a window.

    Returns two arrays of length T(T-1)/2 in the order of ``np.triu_indices(T, 1)``.
    A pair whose translation is (near) zero in both prediction and ground truth scores 0 translation
    error (both agree there was no motion); a pair where only one of them is (near) zero has no
    direction to compare and scores 180 degrees, i.e. it is counted as wrong at every threshold.
    """
    pred, gt = _check_poses(pred, gt)
    i, j = np.triu_indices(len(pred), 1)
    rel_pred = np.linalg.inv(pred[i]) @ pred[j]
    rel_gt = np.linalg.inv(gt[i]) @ gt[j]

    rot_err = rotation_angle_deg(np.swapaxes(rel_pred[:, :3, :3], -1, -2) @ rel_gt[:, :3, :3])

    t_pred, t_gt = rel_pred[:, :3, 3], rel_gt[:, :3, 3]
    n_pred = np.linalg.norm(t_pred, axis=-1)
    n_gt = np.linalg.norm(t_gt, axis=-1)
    has_pred, has_gt = n_pred > _MIN_NORM, n_gt > _MIN_NORM
    cos = np.einsum("nd,nd->n", t_pred, t_gt) / np.maximum(n_pred * n_gt, _MIN_NORM ** 2)
    trans_err = np.degrees(np.arccos(np.clip(cos, -1.0, 1.0)))
    if fold_sign:
        trans_err = np.minimum(trans_err, 180.0 - trans_err)
    trans_err = np.where(has_pred & has_gt, trans_err, np.where(has_pred | has_gt, 180.0, 0.0))
    return rot_err, trans_err


def pose_pair_errors(pred: np.ndarray, gt: np.ndarray, fold_sign: bool = False) -> np.ndarray:
    """Per-pair error max(rotation, translation) in degrees, the quantity AUC thresholds."""
    rot_err, trans_err = pair_errors(pred, gt, fold_sign=fold_sign)
    return np.maximum(rot_err, trans_err)


def auc(errors: np.ndarray, tau: int) -> float:
    """Area under the accuracy curve up to ``tau`` degrees, as a fraction in [0, 1].

    ``mean_{t=1..tau} mean(errors < t)``: identical to VGGT's ``calculate_auc_np`` (histogram over
    integer bins [k, k+1), cumulative sum, mean), except that an error of exactly ``tau`` counts as a
    miss here where numpy's closed last bin would count it.
    """
    errors = np.asarray(errors, dtype=np.float64).ravel()
    if errors.size == 0:
        raise MetricError("AUC of an empty set of pair errors")
    if int(tau) != tau or tau < 1:
        raise MetricError(f"AUC threshold must be a positive integer number of degrees, got {tau}")
    thresholds = np.arange(1, int(tau) + 1, dtype=np.float64)
    return float((errors[None, :] < thresholds[:, None]).mean())


def umeyama_rigid(source: np.ndarray, target: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Least-squares rotation R and translation t with ``R @ source_k + t ~ target_k`` (no scale).

    Umeyama (1991), with the reflection guard; points are (N, 3).
    """
    mu_s, mu_t = source.mean(0), target.mean(0)
    cov = (target - mu_t).T @ (source - mu_s) / len(source)
    U, _, Vt = np.linalg.svd(cov)
    S = np.eye(3)
    if np.linalg.det(U) * np.linalg.det(Vt) < 0:
        S[2, 2] = -1.0
    R = U @ S @ Vt
    return R, mu_t - R @ mu_s


def aligned_rmse(pred_xyz: np.ndarray, gt_xyz: np.ndarray) -> float:
    """RMSE of positions after rigidly aligning the prediction onto the ground truth."""
    R, t = umeyama_rigid(pred_xyz, gt_xyz)
    residual = pred_xyz @ R.T + t - gt_xyz
    return float(np.sqrt((residual ** 2).sum(-1).mean()))


def positions_from_first(poses: np.ndarray) -> np.ndarray:
    """(T, 4, 4) -> (T, 3) camera positions in the frame of the first camera."""
    return relative_to_first(poses)[:, :3, 3]


def unit_mean_distance(xyz: np.ndarray) -> np.ndarray:
    """Scale positions (first one at the origin) to unit mean distance from the first frame.

    A trajectory that does not move has no scale to normalise by and is returned unchanged (zeros).
    """
    mean_dist = np.linalg.norm(xyz[1:] - xyz[0], axis=-1).mean()
    return xyz / mean_dist if mean_dist > _MIN_NORM else xyz


def ate_s(pred: np.ndarray, gt: np.ndarray) -> float:
    """Scale-free absolute trajectory error (see module docstring): unitless RMSE."""
    pred, gt = _check_poses(pred, gt)
    gt_xyz = positions_from_first(gt)
    if np.linalg.norm(gt_xyz[1:], axis=-1).mean() <= _MIN_NORM:
        raise MetricError("ATE-S is undefined for a ground-truth window without motion")
    return aligned_rmse(unit_mean_distance(positions_from_first(pred)), unit_mean_distance(gt_xyz))


def ate_m(pred: np.ndarray, gt: np.ndarray) -> float:
    """Metric absolute trajectory error (see module docstring): RMSE in metres."""
    pred, gt = _check_poses(pred, gt)
    return aligned_rmse(positions_from_first(pred), positions_from_first(gt))


def mean_step_length(poses: np.ndarray) -> float:
    """Mean distance in metres between consecutive camera positions."""
    xyz = np.asarray(poses, dtype=np.float64)[:, :3, 3]
    return float(np.linalg.norm(np.diff(xyz, axis=0), axis=-1).mean())


def is_stationary(gt_poses: np.ndarray, min_mean_step_m: float = 0.1) -> bool:
    """True for a near-stationary window (mean ground-truth step below ``min_mean_step_m``).

    Such windows carry no usable translation direction and are left out of the evaluation.
    """
    return mean_step_length(gt_poses) < min_mean_step_m
