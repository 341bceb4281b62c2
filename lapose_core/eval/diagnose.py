"""``lapose diagnose``: what a pose method has learned about motion, beyond its AUC.

On the evaluation windows of :mod:`lapose_core.eval.evaluate` (same sampling, same stationary and
unreadable windows left out) it measures:

per-step rotation
    The rotation between consecutive window frames, ``R_k^T R_{k+1}``, as yaw / pitch / roll in the
    camera frame (x right, y down, z forward): ``R = Ry(yaw) Rx(pitch) Rz(roll)``, so yaw is the
    rotation about the camera's y axis (positive: turning right), pitch about x, roll about z.
    Reported: the Pearson correlation of predicted and true angles pooled over all steps, and their
    mean absolute error in degrees. A predictor whose angles do not vary (the prior) has no
    correlation: NaN, written ``null`` in the JSON. For yaw also its gain (least-squares slope of
    predicted on true yaw: 1 = turns read at their size, below 1 = shrunk towards driving straight,
    which correlation does not see) and its bias (mean predicted minus true, degrees per step): over
    a 16-frame window both add up, and they are what pushes long frame pairs past 5 degrees.
backward steps
    The share of steps whose predicted direction of travel is more than 90 degrees from the true
    one: a model unsure whether the car drives forwards or backwards (windows played backwards are
    a training augmentation) gets the direction of whole windows wrong, which AUC@5 punishes at
    once while every rotation statistic above looks fine.
static test
    Every window replaced by 16 copies of its first frame: nothing moves. Reported: the predicted
    mean step divided by the true mean step of the real window (0 for a method that sees motion
    in the images, about 1 for one that predicts the average speed whatever it sees). The
    classical baseline has no metric scale (unit mean step by construction): its ratio is taken
    against its own mean step on the real window.
reversed test
    Every window played backwards (frames reversed, time still running forwards): a method that
    reads the motion from the images predicts the opposite turns. Reported: the correlation of the
    predicted yaw with minus the true yaw of the same step.
where AUC@5 is lost
    Each step's direction of travel against the true one (median angle in degrees, moving steps),
    and AUC@5 again with one half of each predicted step replaced by the truth: with the true
    rotations (what the directions alone lose) and with the true directions at the predicted step
    lengths (what the rotations alone lose).
prior
    The straight-ahead prior's AUC@5 and ATE-S on the same windows (:mod:`lapose_core.eval.prior`).
metric scale (metric methods only)
    Predicted mean step against the true mean step per window: the mean ratio and the mean absolute
    relative error.
"""
from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

import numpy as np
from transforms3d.euler import mat2euler

from lapose_core.eval import metrics, prior
from lapose_core.eval.evaluate import (DEFAULT_NUM_FRAMES, METRIC_METHODS, EvalError, Predictor,
                                       WindowScan, eval_windows, load_method_estimator,
                                       open_eval_sequence, window_predictor)

log = logging.getLogger(__name__)

ANGLES = ("yaw", "pitch", "roll")


def step_angles_deg(poses: np.ndarray) -> np.ndarray:
    """(T, 4, 4) poses -> (T-1, 3) yaw, pitch, roll in degrees of each step's rotation (camera frame)."""
    poses = np.asarray(poses, dtype=np.float64)
    steps = np.swapaxes(poses[:-1, :3, :3], -1, -2) @ poses[1:, :3, :3]
    # 'ryxz': rotating axes, first about y (yaw), then the new x (pitch), then the new z (roll).
    return np.degrees(np.array([mat2euler(R, axes="ryxz") for R in steps]))


def correlation(a: np.ndarray, b: np.ndarray) -> float:
    """Pearson correlation, NaN when either side does not vary (no correlation is defined)."""
    a, b = np.asarray(a, dtype=np.float64).ravel(), np.asarray(b, dtype=np.float64).ravel()
    if a.size < 2 or a.std() < 1e-9 or b.std() < 1e-9:
        return math.nan
    return float(np.corrcoef(a, b)[0, 1])


def gain(pred: np.ndarray, true: np.ndarray) -> float:
    """Least-squares slope of ``pred`` on ``true`` (with an intercept); NaN when ``true`` is constant."""
    true = np.asarray(true, dtype=np.float64)
    if true.size < 2 or true.std() < 1e-9:
        return math.nan
    return float(np.cov(pred, true, bias=True)[0, 1] / true.var())


def moving_step_translations(pred: np.ndarray, gt: np.ndarray,
                             min_step_m: float) -> tuple[np.ndarray, np.ndarray]:
    """(T, 4, 4) predicted and true poses -> the (n, 3) predicted and true translations of the steps
    where the camera truly moved (true length above ``min_step_m``)."""
    t_pred, t_true = metrics.step_motions(pred)[:, :3, 3], metrics.step_motions(gt)[:, :3, 3]
    moving = np.linalg.norm(t_true, axis=-1) > min_step_m
    return t_pred[moving], t_true[moving]


def backward_steps(pred: np.ndarray, gt: np.ndarray) -> np.ndarray:
    """(T, 4, 4) predicted and true poses -> per step where the camera truly moved: whether the
    predicted direction of travel points away from the true one (more than 90 degrees)."""
    t_pred, t_true = moving_step_translations(pred, gt, 1e-6)
    return (t_pred * t_true).sum(-1) < 0


def direction_errors_deg(pred: np.ndarray, gt: np.ndarray, min_step_m: float = 1e-3) -> np.ndarray:
    """Angle in degrees between each predicted step's translation and the true one's, over the
    steps that move (true length above ``min_step_m``)."""
    t, t_true = moving_step_translations(pred, gt, min_step_m)
    cross = np.linalg.norm(np.cross(t, t_true), axis=-1)
    return np.degrees(np.arctan2(cross, np.einsum("nd,nd->n", t, t_true)))


def with_true_part(pred: np.ndarray, gt: np.ndarray, part: str) -> np.ndarray:
    """The predicted poses with each step's ``part`` replaced by the truth: "rotation", or
    "direction" (the true direction of travel at the predicted step length)."""
    steps, true = metrics.step_motions(pred), metrics.step_motions(gt)
    if part == "rotation":
        steps[:, :3, :3] = true[:, :3, :3]
    else:
        length = np.linalg.norm(steps[:, :3, 3], axis=-1, keepdims=True)
        norm = np.linalg.norm(true[:, :3, 3], axis=-1, keepdims=True)
        steps[:, :3, 3] = np.where(norm > 0, true[:, :3, 3] / np.maximum(norm, 1e-12), 0.0) * length
    return metrics.compose_steps(steps)


def reversed_stamps(stamps: np.ndarray) -> np.ndarray:
    """Timestamps of a window played backwards: the same intervals in reverse order, increasing."""
    stamps = np.asarray(stamps, dtype=np.float64)
    return stamps[0] + (stamps[-1] - stamps[::-1])


@dataclass
class Diagnosis:
    method: str
    data: str
    fps: float
    windows: int
    auc5: float
    ate_s: float
    angles: dict[str, dict[str, float]]  # yaw/pitch/roll -> corr, mae_deg
    static_step_ratio: float
    reversed_yaw_corr: float
    prior: dict[str, Any]
    yaw_gain: float = math.nan
    yaw_bias_deg: float = math.nan
    backward_step_share: float = math.nan
    scale_ratio: Optional[float] = None  # metric methods: mean over windows of predicted/true mean step
    scale_abs_rel_error: Optional[float] = None
    fallback_steps: int = 0
    direction_error_deg: float = math.nan  # median over moving steps
    auc5_true_rotation: float = math.nan  # the predicted steps with the true rotations
    auc5_true_direction: float = math.nan  # ... with the true directions, at the predicted lengths
    extra: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"method": self.method, "data": self.data, "fps": self.fps,
                               "windows": self.windows, "auc5": self.auc5, "ate_s": self.ate_s}
        for name in ANGLES:
            out[f"{name}_corr"] = self.angles[name]["corr"]
            out[f"{name}_mae_deg"] = self.angles[name]["mae_deg"]
        out.update(yaw_gain=self.yaw_gain, yaw_bias_deg=self.yaw_bias_deg,
                   backward_step_share=self.backward_step_share,
                   static_step_ratio=self.static_step_ratio, reversed_yaw_corr=self.reversed_yaw_corr,
                   prior_auc5=self.prior["auc5"], prior_ate_s=self.prior["ate_s"],
                   ate_s_uniform_steps=self.prior["ate_s_uniform_steps"],
                   scale_ratio=self.scale_ratio, scale_abs_rel_error=self.scale_abs_rel_error,
                   fallback_steps=self.fallback_steps, direction_error_deg=self.direction_error_deg,
                   auc5_true_rotation=self.auc5_true_rotation, auc5_true_direction=self.auc5_true_direction,
                   **self.extra)
        # JSON has no NaN: an undefined value is null.
        return {k: (None if isinstance(v, float) and not math.isfinite(v) else v) for k, v in out.items()}

    def table(self) -> str:
        fmt = lambda v, spec=".4f": "n/a" if v is None or not math.isfinite(v) else format(v, spec)  # noqa: E731
        rows = [("method", self.method), ("data", self.data), ("fps", f"{self.fps:g}"),
                ("windows", str(self.windows)), ("AUC@5", fmt(self.auc5)), ("ATE-S", fmt(self.ate_s))]
        for name in ANGLES:
            a = self.angles[name]
            rows.append((f"{name} per step", f"corr {fmt(a['corr'], '.3f')}, MAE {fmt(a['mae_deg'], '.3f')} deg"))
        rows.append(("yaw gain", f"{fmt(self.yaw_gain, '.3f')} (1 = turns at their size), bias "
                                 f"{fmt(self.yaw_bias_deg, '+.3f')} deg per step"))
        rows.append(("direction per step",
                     f"median error {fmt(self.direction_error_deg, '.3f')} deg; AUC@5 with the true "
                     f"rotations {fmt(self.auc5_true_rotation, '.3f')}, with the true directions "
                     f"{fmt(self.auc5_true_direction, '.3f')}"))
        rows.append(("backward steps", f"{fmt(self.backward_step_share, '.3f')} of the steps point more "
                                       "than 90 deg from the true direction (0 = knows forwards)"))
        rows += [("static test", f"predicted / true mean step {fmt(self.static_step_ratio, '.3f')} "
                                 "(0 = sees that nothing moves)"),
                 ("reversed test", f"corr(yaw, -true yaw) {fmt(self.reversed_yaw_corr, '.3f')} "
                                   "(1 = reads the turns from the images)")]
        if self.scale_ratio is not None:
            rows.append(("metric scale", f"predicted / true mean step {fmt(self.scale_ratio, '.3f')}, "
                                         f"mean |relative error| {fmt(self.scale_abs_rel_error, '.3f')}"))
        if self.fallback_steps:
            rows.append(("fallback steps", str(self.fallback_steps)))
        rows.append(("prior", prior.describe(self.prior)))
        width = max(len(k) for k, _ in rows)
        return "\n".join(f"{k:<{width}}  {v}" for k, v in rows) + "\n" + prior.ATE_S_NOTE


def diagnose_sequence(seq_dir: str | Path, method: str = "lapose", estimator=None, fps: float = 2.0,
                      stride_s: float = 1.0, max_windows: Optional[int] = None, *,
                      checkpoint: str | Path | None = None, device: str = "cpu",
                      min_mean_step_m: float = 0.1, predictor: Optional[Predictor] = None,
                      metric: Optional[bool] = None) -> Diagnosis:
    """Run the diagnostics of the module docstring for ``method`` on a KITTI-format sequence.

    ``predictor`` replaces the method's own (tests use a ground-truth oracle); ``metric`` says whether
    its steps are in metres (default: whether ``method`` predicts metric scale).
    """
    seq = open_eval_sequence(seq_dir)
    metric = (method in METRIC_METHODS) if metric is None else metric
    if predictor is None:
        if method in METRIC_METHODS and estimator is None:
            estimator = load_method_estimator(method, checkpoint, device)
        predictor = window_predictor(method, seq, estimator)
    num_frames = getattr(estimator, "num_frames", DEFAULT_NUM_FRAMES)
    windows = eval_windows(seq, fps, num_frames, stride_s)

    pooled, ate_s, gts = [], [], []
    directions, pooled_true_rotation, pooled_true_direction = [], [], []
    true_angles, pred_angles, reversed_yaw, true_reversed_yaw = [], [], [], []
    static_ratios, scale_ratios, backward = [], [], []
    fallbacks = 0
    for idx, gt, images in WindowScan(seq, windows, min_mean_step_m, max_windows):
        stamps = seq.timestamps[idx]
        pred, failed = predictor(images, stamps)
        fallbacks += sum(failed.values())
        gts.append(gt)
        pooled.append(metrics.pose_pair_errors(pred, gt))
        ate_s.append(metrics.ate_s(pred, gt))
        true = step_angles_deg(gt)
        true_angles.append(true)
        pred_angles.append(step_angles_deg(pred))
        backward.append(backward_steps(pred, gt))
        directions.append(direction_errors_deg(pred, gt))
        pooled_true_rotation.append(metrics.pose_pair_errors(with_true_part(pred, gt, "rotation"), gt))
        pooled_true_direction.append(metrics.pose_pair_errors(with_true_part(pred, gt, "direction"), gt))

        true_step, pred_step = metrics.mean_step_length(gt), metrics.mean_step_length(pred)
        static, _ = predictor([images[0]] * len(images), stamps)
        static_ratios.append(metrics.mean_step_length(static) / (true_step if metric else pred_step))
        if metric:
            scale_ratios.append(pred_step / true_step)

        backwards, _ = predictor(images[::-1], reversed_stamps(stamps))
        reversed_yaw.append(step_angles_deg(backwards)[:, 0])
        true_reversed_yaw.append(-true[::-1, 0])  # reversed step k is the inverse of step T-2-k
    if not gts:
        raise EvalError(f"{seq.path}: none of the {len(windows)} windows at {fps:g} fps can be scored")

    true_all, pred_all = np.concatenate(true_angles), np.concatenate(pred_angles)
    angles = {name: {"corr": correlation(pred_all[:, i], true_all[:, i]),
                     "mae_deg": float(np.abs(pred_all[:, i] - true_all[:, i]).mean())}
              for i, name in enumerate(ANGLES)}
    ratios = np.asarray(scale_ratios)
    yaw_true, yaw_pred = true_all[:, 0], pred_all[:, 0]
    direction_all = np.concatenate(directions)
    return Diagnosis(
        method=method, data=str(seq.path), fps=float(fps), windows=len(gts),
        auc5=metrics.auc(np.concatenate(pooled), 5), ate_s=float(np.mean(ate_s)), angles=angles,
        static_step_ratio=float(np.mean(static_ratios)),
        reversed_yaw_corr=correlation(np.concatenate(reversed_yaw), np.concatenate(true_reversed_yaw)),
        prior=prior.score_prior(gts), yaw_gain=gain(yaw_pred, yaw_true),
        yaw_bias_deg=float((yaw_pred - yaw_true).mean()),
        backward_step_share=float(np.concatenate(backward).mean()),
        scale_ratio=float(ratios.mean()) if metric else None,
        scale_abs_rel_error=float(np.abs(ratios - 1.0).mean()) if metric else None,
        fallback_steps=fallbacks,
        direction_error_deg=float(np.median(direction_all)) if direction_all.size else math.nan,
        auc5_true_rotation=metrics.auc(np.concatenate(pooled_true_rotation), 5),
        auc5_true_direction=metrics.auc(np.concatenate(pooled_true_direction), 5))
