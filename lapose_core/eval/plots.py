"""Figures for evaluation reports: window trajectories and per-window AUC distributions."""
from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from lapose_core.eval.metrics import relative_to_first, umeyama_rigid, unit_mean_distance  # noqa: E402

FRUSTUM_FRAMES = (0, 5, 10, 15)
_GT_COLOR = "black"


def _aligned_scaled(poses: np.ndarray, gt_xyz: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Positions and rotations of a trajectory as ATE-S sees it: unit mean distance, rigidly aligned.

    Returns (T, 3) positions and (T, 3, 3) camera rotations, both in the first GT camera's frame.
    """
    rel = relative_to_first(poses)
    xyz = unit_mean_distance(rel[:, :3, 3])
    R, t = umeyama_rigid(xyz, gt_xyz)
    return xyz @ R.T + t, R @ rel[:, :3, :3]


def _draw_frustum(ax, center: np.ndarray, rotation: np.ndarray, size: float, color: str) -> None:
    """A camera seen from above: apex at the centre, opening along the optical axis (z)."""
    corners = np.array([[-0.6, 0.0, 1.0], [0.6, 0.0, 1.0]]) * size  # camera frame, x right, z forward
    world = corners @ rotation.T + center
    outline = np.array([world[0], center, world[1], world[0]])
    ax.plot(outline[:, 0], outline[:, 2], color=color, lw=1.0, alpha=0.9)


def plot_window_trajectories(gt: np.ndarray, methods: dict[str, np.ndarray], out_png: str | Path,
                             title: str | None = None) -> Path:
    """Top view (x-z plane of the first camera: x right, z forward) of one window.

    Every trajectory is normalised and aligned as ATE-S does (unit mean distance from the first
    frame, rigid Umeyama fit onto the ground truth), so shapes compare regardless of scale. Small
    camera frustums mark frames 0, 5, 10 and 15.
    """
    gt_rel = relative_to_first(gt)
    gt_xyz = unit_mean_distance(gt_rel[:, :3, 3])
    tracks = {"ground truth": (gt_xyz, gt_rel[:, :3, :3], _GT_COLOR)}
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for k, (name, poses) in enumerate(methods.items()):
        if len(poses) != len(gt):
            raise ValueError(f"method '{name}' has {len(poses)} poses but the ground truth {len(gt)}")
        xyz, rot = _aligned_scaled(np.asarray(poses, dtype=np.float64), gt_xyz)
        tracks[name] = (xyz, rot, colors[k % len(colors)])

    extent = max(np.ptp(np.concatenate([v[0] for v in tracks.values()])[:, [0, 2]], axis=0).max(), 1e-6)
    fig, ax = plt.subplots(figsize=(5.5, 5.5), dpi=120)
    for name, (xyz, rot, color) in tracks.items():
        # Ground truth dashed and on top, so a method that follows it closely does not hide it.
        style = dict(lw=1.8, ls="--", zorder=5) if name == "ground truth" else dict(lw=1.6, zorder=2)
        ax.plot(xyz[:, 0], xyz[:, 2], color=color, marker="o", ms=2.5, label=name, **style)
        for f in FRUSTUM_FRAMES:
            if f < len(xyz):
                _draw_frustum(ax, xyz[f], rot[f], 0.06 * extent, color)
    ax.set_aspect("equal", adjustable="datalim")
    ax.set_xlabel("x (right), unit mean distance")
    ax.set_ylabel("z (forward), unit mean distance")
    ax.set_title(title or "window trajectory, top view (ATE-S normalisation)")
    ax.grid(alpha=0.3)
    ax.legend(loc="best", fontsize=8)
    return _save(fig, out_png)


def plot_auc_distribution(per_window_auc: dict[str, list[float]], out_png: str | Path,
                          tau: int = 5) -> Path:
    """Box plot with every window as a dot: per-window AUC@tau for each method."""
    names = list(per_window_auc)
    if not names:
        raise ValueError("no methods to plot")
    fig, ax = plt.subplots(figsize=(1.6 + 1.6 * len(names), 4.2), dpi=120)
    values = [np.asarray(per_window_auc[n], dtype=np.float64) for n in names]
    ax.boxplot(values, widths=0.5, showfliers=False, medianprops=dict(color="black"))
    ax.set_xticks(range(1, len(names) + 1), names)
    rng = np.random.default_rng(0)  # fixed jitter: the same data gives the same figure
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for k, v in enumerate(values):
        x = k + 1 + rng.uniform(-0.15, 0.15, len(v))
        ax.scatter(x, v, s=14, alpha=0.7, color=colors[k % len(colors)], zorder=3)
        if len(v):
            ax.annotate(f"mean {v.mean():.3f}\nn={len(v)}", (k + 1, 1.02), ha="center",
                        va="bottom", fontsize=8)
    ax.set_ylim(-0.02, 1.15)
    ax.set_ylabel(f"AUC@{tau} per window")
    ax.set_title(f"per-window AUC@{tau}")
    ax.grid(axis="y", alpha=0.3)
    return _save(fig, out_png)


def _save(fig, out_png: str | Path) -> Path:
    out = Path(out_png)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(out)
    plt.close(fig)
    return out
