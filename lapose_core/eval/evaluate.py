"""Evaluate a pose method on a KITTI-format sequence with ground truth.

Windows of ``num_frames`` frames at ``fps`` are cut from the real timestamps, one starting every
``stride_s`` seconds so the whole sequence is covered (the last window ends at the last frame).
Windows whose mean ground-truth step is below ``min_mean_step_m`` (a standing car) are left out and
counted. Aggregation:

- AUC@5 / AUC@30: pooled over all frame pairs of all windows (every pair weighs the same);
- ATE-S / ATE-M: the mean over windows of the per-window value (every window weighs the same).

ATE-M is only defined for methods that predict metric scale (LA-Pose and the hybrid); it is None for
the classical baseline. Every result carries the straight-ahead prior's scores on the same windows
(:mod:`lapose_core.eval.prior`), the floor any learned method must clear. See :mod:`lapose_core.eval.metrics` for the metric definitions.
"""
from __future__ import annotations

import logging
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np

from lapose_core.data.sources import DataError, FrameReadError, KittiSequence
from lapose_core.data.windows import window_indices, window_starts
from lapose_core.eval import metrics, prior
from lapose_core.eval.classical import ClassicalVO

log = logging.getLogger(__name__)

METHODS = ("lapose", "classical", "hybrid")
METRIC_METHODS = ("lapose", "hybrid")  # methods with metric scale: ATE-M is defined
DEFAULT_NUM_FRAMES = 16


class EvalError(DataError):
    """A sequence or request that cannot be evaluated; the message names the file and the reason."""


@dataclass
class WindowResult:
    start: int  # index of the window's first frame
    indices: np.ndarray  # (T,) frame indices
    timestamps: np.ndarray  # (T,) seconds from the start of the sequence
    gt_poses: np.ndarray  # (T, 4, 4) ground truth relative to the first frame, metres
    pred_poses: np.ndarray  # (T, 4, 4) prediction relative to the first frame (metres for lapose)
    pair_errors: np.ndarray  # (T(T-1)/2,) max(rotation, translation) error per pair, degrees
    auc5: float
    auc30: float
    ate_s: float
    ate_m: float | None
    mean_step_m: float  # ground truth
    pred_mean_step: float = float("nan")  # the prediction's (metres for metric methods)
    failed_steps: int = 0  # classical: no essential matrix; hybrid: LA-Pose fallbacks
    failed_checks: dict[str, int] = field(default_factory=dict)  # failed_steps by the check that failed

    def summary(self) -> dict[str, Any]:
        return {"start": self.start, "start_time": round(float(self.timestamps[0]), 4),
                "auc5": self.auc5, "auc30": self.auc30, "ate_s": self.ate_s, "ate_m": self.ate_m,
                "mean_step_m": self.mean_step_m, "pred_mean_step": self.pred_mean_step,
                "failed_steps": self.failed_steps}


@dataclass
class EvalResult:
    method: str
    checkpoint: str | None  # None for the classical baseline
    data: str
    fps: float
    stride_s: float
    num_frames: int
    windows: int  # windows evaluated
    skipped_stationary: int
    skipped_unreadable: int  # windows with a frame that could not be read
    auc5: float
    auc30: float
    ate_s: float
    ate_m: float | None
    seconds: float  # wall time of the evaluation
    per_window: list[WindowResult] = field(default_factory=list)
    prior: dict[str, float] = field(default_factory=dict)  # the straight-ahead prior, same windows

    def to_dict(self) -> dict[str, Any]:
        return {"method": self.method, "checkpoint": self.checkpoint, "data": self.data,
                "fps": self.fps, "stride_s": self.stride_s, "num_frames": self.num_frames,
                "windows": self.windows, "skipped_stationary": self.skipped_stationary,
                "skipped_unreadable": self.skipped_unreadable, "auc5": self.auc5,
                "auc30": self.auc30, "ate_s": self.ate_s, "ate_m": self.ate_m,
                "failed_steps": sum(w.failed_steps for w in self.per_window),
                "failed_checks": self.failed_checks(),
                "seconds": round(self.seconds, 3), "prior": self.prior,
                "per_window": [w.summary() for w in self.per_window]}

    def failed_checks(self) -> dict[str, int]:
        """Failed steps by the check that failed (hybrid: inliers, parallax, ...; classical: no geometry)."""
        total: Counter[str] = Counter()
        for w in self.per_window:
            total.update(w.failed_checks)
        return dict(sorted(total.items()))

    def table(self) -> str:
        """A readable two-column summary for the terminal."""
        fmt = lambda v, spec: "n/a" if v is None else format(v, spec)  # noqa: E731
        rows = [("method", self.method), ("checkpoint", self.checkpoint or "-"), ("data", self.data),
                ("fps", fmt(self.fps, "g")), ("windows", str(self.windows)),
                ("skipped", f"{self.skipped_stationary} stationary, {self.skipped_unreadable} unreadable"),
                ("AUC@5", fmt(self.auc5, ".4f")), ("AUC@30", fmt(self.auc30, ".4f")),
                ("ATE-S", fmt(self.ate_s, ".4f")), ("ATE-M", fmt(self.ate_m, ".3f") +
                                                    ("" if self.ate_m is None else " m"))]
        if self.method != "lapose":
            failed = self.failed_checks()
            rows.append(("failed steps", str(sum(failed.values())) + (" (" + ", ".join(
                f"{check} {n}" for check, n in failed.items()) + ")" if failed else "")))
        if self.prior:
            rows.append(("prior", prior.describe(self.prior)))
        width = max(len(k) for k, _ in rows)
        return "\n".join(f"{k:<{width}}  {v}" for k, v in rows) + "\n" + prior.ATE_S_NOTE


def open_eval_sequence(seq_dir: str | Path) -> KittiSequence:
    """A KITTI-format sequence that has ground-truth poses, or an :class:`EvalError` naming the file."""
    seq = KittiSequence(seq_dir)
    if seq.poses is None:
        raise EvalError(f"{Path(seq_dir) / 'poses.txt'}: missing; evaluation needs ground-truth poses")
    return seq


def eval_windows(seq: KittiSequence, fps: float, num_frames: int, stride_s: float) -> list[np.ndarray]:
    """Frame indices of every evaluation window, or an :class:`EvalError` if none fits."""
    if fps <= 0:
        raise EvalError(f"--fps must be positive, got {fps}")
    if stride_s <= 0:
        raise EvalError(f"--stride-s must be positive, got {stride_s}")
    span = (num_frames - 1) / fps
    starts = window_starts(seq.timestamps, fps, num_frames, stride_s)
    windows = [window_indices(seq.timestamps, fps, num_frames, s) for s in starts]
    windows = [w for w in windows if w is not None]
    if not windows:
        times = seq.path / "times.txt"
        if seq.duration < span:
            raise EvalError(f"{times}: sequence is {seq.duration:.2f} s long ({len(seq)} frames), "
                            f"too short for one window of {num_frames} frames at {fps:g} fps, "
                            f"which spans {span:.2f} s")
        raise EvalError(f"{times}: no window of {num_frames} frames at {fps:g} fps fits the recorded "
                        f"timestamps (gaps between frames longer than half a window step)")
    return windows


def evaluate_sequence(seq_dir: str | Path, method: str = "lapose", estimator=None, fps: float = 2.0,
                      stride_s: float = 1.0, max_windows: int | None = None, *,
                      checkpoint: str | Path | None = None, device: str = "cpu",
                      min_mean_step_m: float = 0.1, progress: bool = False) -> EvalResult:
    """Evaluate ``method`` on every window of a KITTI-format sequence.

    ``estimator`` is a :class:`lapose_core.inference.PoseEstimator` for ``method="lapose"``; when None,
    ``checkpoint`` (None = the bundled model) is loaded on ``device``. ``max_windows`` caps the number
    of evaluated (non-stationary) windows, taken in order from the start of the sequence.
    """
    if method not in METHODS:
        raise EvalError(f"unknown method '{method}' (choose from {', '.join(METHODS)})")
    t0 = time.perf_counter()
    seq = open_eval_sequence(seq_dir)
    if method in METRIC_METHODS and estimator is None:
        estimator = load_method_estimator(method, checkpoint, device)
    num_frames = estimator.num_frames if method != "classical" else DEFAULT_NUM_FRAMES
    windows = eval_windows(seq, fps, num_frames, stride_s)
    predict = window_predictor(method, seq, estimator)

    results: list[WindowResult] = []
    bar = _progress(len(windows) if max_windows is None else min(len(windows), max_windows), progress)
    scan = WindowScan(seq, windows, min_mean_step_m, max_windows)
    for idx, gt, images in scan:
        stamps = seq.timestamps[idx]
        pred, failed = predict(images, stamps)
        errors = metrics.pose_pair_errors(pred, gt)
        results.append(WindowResult(
            start=int(idx[0]), indices=idx, timestamps=stamps, gt_poses=gt, pred_poses=pred,
            pair_errors=errors, auc5=metrics.auc(errors, 5), auc30=metrics.auc(errors, 30),
            ate_s=metrics.ate_s(pred, gt),
            ate_m=metrics.ate_m(pred, gt) if method in METRIC_METHODS else None,
            mean_step_m=metrics.mean_step_length(gt), pred_mean_step=metrics.mean_step_length(pred),
            failed_steps=sum(failed.values()), failed_checks=failed))
        bar.update(1)
    bar.close()
    stationary, unreadable = scan.stationary, scan.unreadable

    if not results:
        raise EvalError(f"{seq.path}: none of the {len(windows)} windows at {fps:g} fps can be scored "
                        f"({stationary} near-stationary with mean step < {min_mean_step_m} m, "
                        f"{unreadable} with unreadable frames)")
    pooled = np.concatenate([w.pair_errors for w in results])
    return EvalResult(
        method=method, checkpoint=None if method == "classical" else estimator.checkpoint_name,
        data=str(seq.path), fps=float(fps), stride_s=float(stride_s), num_frames=num_frames,
        windows=len(results), skipped_stationary=stationary, skipped_unreadable=unreadable,
        auc5=metrics.auc(pooled, 5), auc30=metrics.auc(pooled, 30),
        ate_s=float(np.mean([w.ate_s for w in results])),
        ate_m=float(np.mean([w.ate_m for w in results])) if method in METRIC_METHODS else None,
        seconds=time.perf_counter() - t0, per_window=results,
        prior=prior.score_prior([w.gt_poses for w in results]))


Predictor = Callable[[list, np.ndarray], tuple[np.ndarray, dict[str, int]]]


def load_method_estimator(method: str, checkpoint: str | Path | None = None, device: str = "cpu",
                          hybrid_config=None):
    """The estimator a metric method runs on: LA-Pose, or the hybrid built around it."""
    from lapose_core.inference import PoseEstimator

    lapose = PoseEstimator.load(checkpoint, device=device)
    if method == "hybrid":
        from lapose_core.hybrid import HybridEstimator

        return HybridEstimator(lapose, hybrid_config)
    return lapose


def stream_sequence(seq_dir: str | Path, estimator, fps: float = 2.0) -> tuple[np.ndarray, np.ndarray, int]:
    """The continuous trajectory the node publishes for a sequence's frames, computed offline.

    Keyframe stamps (N,), camera poses (N, 4, 4) in the optical frame of the first keyframe, and the
    fallback steps; see :func:`lapose_core.stream.stream_poses`. The sequence's intrinsics go to the
    estimator as the node's CameraInfo does.
    """
    from lapose_core.stream import stream_poses

    seq = KittiSequence(seq_dir)
    frames = ((float(seq.timestamps[i]), seq.read(i)) for i in range(len(seq)))
    return stream_poses(estimator, frames, fps, intrinsics=seq.intrinsics)


def write_tum(path: str | Path, stamps: np.ndarray, poses: np.ndarray) -> None:
    """TUM trajectory: ``stamp x y z qx qy qz qw`` per line."""
    from transforms3d.quaternions import mat2quat

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w") as f:
        f.write("# stamp x y z qx qy qz qw (camera optical frame of the first keyframe)\n")
        for stamp, P in zip(stamps, poses):
            w, x, y, z = mat2quat(P[:3, :3])
            f.write(f"{stamp:.9f} " + " ".join(f"{v:.9f}" for v in (*P[:3, 3], x, y, z, w)) + "\n")


def window_predictor(method: str, seq: KittiSequence, estimator=None) -> Predictor:
    """``predict(images, stamps) -> (poses (T, 4, 4) relative to the first frame, failed steps)``.

    ``failed steps`` counts, by the check that failed, the steps the method could not estimate from
    the images themselves (classical: no essential matrix; hybrid: geometry not confident, LA-Pose's
    step used; see :attr:`lapose_core.hybrid.StepCheck.failed_check`).
    """
    if method == "classical":
        classical = ClassicalVO(seq.intrinsics)

        def predict(images, stamps):
            window = classical.estimate(images)
            return metrics.compose_steps(window.relative), ({"no geometry": window.failures} if window.failures else {})
    elif method == "hybrid":
        def predict(images, stamps):
            prediction = estimator.predict_window(images, stamps, intrinsics=seq.intrinsics)
            failed = Counter(c.failed_check for c in prediction.checks if not c.ok)
            return np.asarray(prediction.poses, dtype=np.float64), dict(failed)
    else:
        def predict(images, stamps):
            # A frame repeated in the window (the static test of lapose diagnose) is encoded once.
            encoded: dict[int, Any] = {}
            for im in images:
                if id(im) not in encoded:
                    encoded[id(im)] = estimator.encode_frame(im)
            prediction = estimator.predict_features([encoded[id(im)] for im in images], stamps,
                                                    intrinsics=seq.intrinsics)
            return np.asarray(prediction.poses, dtype=np.float64), {}
    return predict


class WindowScan:
    """Iterates ``(indices, ground truth relative to the first frame, images)`` over the windows
    that can be scored, counting the near-stationary and unreadable ones it leaves out."""

    def __init__(self, seq: KittiSequence, windows: list[np.ndarray], min_mean_step_m: float = 0.1,
                 max_windows: int | None = None):
        self.seq, self.windows = seq, windows
        self.min_mean_step_m, self.max_windows = min_mean_step_m, max_windows
        self.stationary = self.unreadable = 0

    def __iter__(self) -> Iterator[tuple[np.ndarray, np.ndarray, list[np.ndarray]]]:
        scored = 0
        for idx in self.windows:
            if self.max_windows is not None and scored >= self.max_windows:
                return
            gt = metrics.relative_to_first(self.seq.poses[idx])
            if metrics.is_stationary(gt, self.min_mean_step_m):
                self.stationary += 1
                continue
            try:
                images = [self.seq.read(int(i)) for i in idx]
            except FrameReadError as e:
                log.warning("skipping window at frame %d: %s", idx[0], e)
                self.unreadable += 1
                continue
            scored += 1
            yield idx, gt, images


def _progress(total: int, enabled: bool):
    from tqdm import tqdm

    return tqdm(total=total, unit="window", disable=not enabled, leave=False)
