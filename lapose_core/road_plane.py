"""Metric step length from the road: dense alignment of the road plane between two keyframes.

A camera at a known height ``h`` above a flat road sees the road move between two frames by the
plane-induced homography

    p_b ~ K (R + t_unit m^T) K^-1 p_a,   m = lambda * n / h,

where ``x_b = R x_a + lambda t_unit`` is the pair's motion (rotation and unit direction from feature
geometry, the length ``lambda`` in metres unknown) and ``n`` the road's unit normal in frame a (down,
about the camera's y axis). Given R and t_unit, the three numbers of ``m`` are found by aligning the
road in front of the car (a band a few metres either side of the optical axis, from the bottom of the
image to ``far_m``) in the two frames: Gauss-Newton on the photometric residual of slightly
blurred grey images, with a per-pair gain and offset for the camera's exposure, robust (Huber)
weights for whatever on the road is not road, and a prior on the road's tilt (along a short band of
road the length and the pitch trade off). Then ``lambda = h |m|``.

Why dense: a road seen at 0.5 s intervals has few SIFT features that survive matching (12-35 on
``07_head`` at 2 fps), far too few for a plane fitted to triangulated points, while the road's pixels
are thousands. A fit is kept only if the normal it finds is within ``max_tilt_deg`` of the expected
one and the aligned road correlates (``min_ncc``); a car parked on the band or a road that is not flat
gives a tilted normal or a poor correlation, and the pair does not vote.

Pure numpy and OpenCV; no ROS imports.
"""
from __future__ import annotations

import functools
import math
from dataclasses import dataclass
from typing import Optional

import cv2
import numpy as np

from . import KITTI_CAMERA_HEIGHT_M


@dataclass
class RoadPlaneConfig:
    camera_height_m: float = KITTI_CAMERA_HEIGHT_M  # camera above the road
    # The road's normal in the camera frame (y down): (0, cos p, sin p) for a camera pitched down by
    # p degrees about its x axis.
    pitch_deg: float = 0.0
    half_width_m: float = 2.0  # the band either side of the optical axis: the lane ahead
    far_m: float = 20.0  # beyond this the road is a few pixels high and carries little
    blur_sigma: float = 1.0  # pixels: the road's texture, without its pixel noise
    iterations: int = 12  # Gauss-Newton steps per pyramid level
    # Spread of the road's tilt about the expected normal. Loose, so that the road finds its own
    # normal: at 3 degrees the fit leaned on the assumed pitch, and a level camera made the labelled
    # heads' lengths 3-5 % too long (one pitched 0.5 degrees down, none); at 10 a level camera leaves
    # about 1 %, and a true pitch 0.5 degrees further off what is assumed about 2 %, against 8-10 % at
    # 3 (python training/geometry_study.py road).
    tilt_prior_deg: float = 10.0
    max_tilt_deg: float = 4.0  # fitted normal further from the expected one: not the road
    min_ncc: float = 0.5  # aligned road correlating less: not trusted
    min_pixels: int = 400  # fewer band pixels visible in both frames: no fit
    min_baseline_m: float = 0.1  # the lengths searched for a start (a pair 0.1 s to 2 s apart)
    max_baseline_m: float = 40.0


@dataclass
class RoadFit:
    baseline_m: float  # the pair's metric step length
    tilt_deg: float  # angle between the fitted and the expected road normal
    ncc: float  # correlation of the aligned road bands
    ok: bool  # within max_tilt_deg and min_ncc


# The road is looked for about the mount's pitch alone (expected_normal): a camera rolled further
# about its optical axis sees the road tilted beyond what the fit searches comfortably.
MAX_MOUNT_ROLL_DEG = 2.0


class MountError(ValueError):
    """A camera mount the road's scale cannot use (the message says why)."""


@dataclass(frozen=True)
class CameraMount:
    """How the camera sits above the road: what the road's scale needs."""

    height_m: float  # optical centre above the road
    pitch_deg: float  # optical axis below the road plane
    roll_deg: float  # about the optical axis (must be small, MAX_MOUNT_ROLL_DEG)


def mount_from_camera_pose(camera_to_base: np.ndarray, base_height_m: float) -> CameraMount:
    """The camera's mount from its pose in a body frame (REP-103: x forward, z up) whose xy-plane is
    parallel to the road and ``base_height_m`` above it (0 for ``base_footprint``, or a car's
    ``base_link`` on the ground under its rear axle). ``camera_to_base`` (4x4) takes optical-frame
    points (x right, y down, z forward) to the body frame, as the camera-to-base transform does.
    Raises :class:`MountError` for a camera at or below the road, one not looking ahead at it
    (within 45 degrees of level, upright), or one rolled more than ``MAX_MOUNT_ROLL_DEG``."""
    T = np.asarray(camera_to_base, dtype=np.float64)
    height = float(base_height_m) + float(T[2, 3])
    # The road's downward normal in the optical frame: (0, cos p, sin p) for a camera pitched down
    # by p and not rolled (expected_normal).
    down = T[:3, :3].T @ np.array([0.0, 0.0, -1.0])
    pitch = math.degrees(math.atan2(down[2], down[1]))
    roll = math.degrees(math.atan2(down[0], math.hypot(down[1], down[2])))
    if not (math.isfinite(height) and height > 0):
        raise MountError(f"the camera is {height:.3f} m above the road (base {base_height_m:g} m + "
                         f"{T[2, 3]:.3f} m of the camera in the base frame): it must be above it")
    if not (abs(pitch) < 45 and down[1] > 0):
        raise MountError(f"the camera looks {pitch:.1f} degrees below the road plane: the road's scale "
                         "needs a camera looking ahead at the road (within 45 degrees)")
    if abs(roll) > MAX_MOUNT_ROLL_DEG:
        raise MountError(f"the camera is rolled {roll:.1f} degrees about its optical axis: the road's "
                         f"scale looks for the road about the camera's pitch alone (at most "
                         f"{MAX_MOUNT_ROLL_DEG:g} degrees of roll)")
    return CameraMount(height, pitch, roll)


def road_image(image: np.ndarray, config: RoadPlaneConfig) -> np.ndarray:
    """The grey image (float32, slightly blurred) that :func:`fit_road` aligns.

    Not band-passed: a filter applied before the warp is not the same filter after it (the far
    road is seen smaller in the earlier frame), and removing the shading (a second blur of 5-20
    px subtracted) did not make the lengths better on the validation sequences 07_head and
    00_head."""
    image = np.asarray(image)
    grey = cv2.cvtColor(image, cv2.COLOR_RGB2GRAY) if image.ndim == 3 else image
    return cv2.GaussianBlur(grey.astype(np.float32), (0, 0), config.blur_sigma)


def expected_normal(config: RoadPlaneConfig) -> np.ndarray:
    p = math.radians(config.pitch_deg)
    return np.array([0.0, math.cos(p), math.sin(p)])


def _band(shape: tuple[int, int], K: np.ndarray, config: RoadPlaneConfig) -> np.ndarray:
    """(3, N) homogeneous pixels of frame b's road band (where a flat road at the camera's height
    would be, nearer than far_m and within half_width_m of the axis)."""
    return _band_cached(tuple(shape), tuple(K[[0, 1, 0, 1], [0, 1, 2, 2]]),
                        tuple(expected_normal(config)), config.camera_height_m, config.half_width_m,
                        config.far_m)


@functools.lru_cache(maxsize=8)  # one camera, two pyramid levels: the band is the same every pair
def _band_cached(shape: tuple[int, int], intrinsics: tuple, normal: tuple, height: float,
                 half_width_m: float, far_m: float) -> np.ndarray:
    h, w = shape
    fx, fy, cx, cy = intrinsics
    ys, xs = np.mgrid[0:h, 0:w].astype(np.float64)
    rays = np.stack([(xs - cx) / fx, (ys - cy) / fy, np.ones_like(xs)], -1)
    down = rays @ np.asarray(normal)  # a ray (z = 1) meets the road at depth height / down
    with np.errstate(divide="ignore", invalid="ignore"):
        depth = np.where(down > 1e-6, height / down, np.inf)
    lateral = np.abs(rays[..., 0] * depth)
    keep = (depth < far_m) & (lateral < half_width_m)
    band = np.stack([xs[keep], ys[keep], np.ones(keep.sum())])
    band.setflags(write=False)  # shared by every pair through the cache
    return band


def _line_fit(x: np.ndarray, y: np.ndarray) -> tuple[float, float]:
    """Least-squares gain and offset of y ~ gain * x + offset."""
    xm, ym = x.mean(), y.mean()
    var = float(((x - xm) ** 2).mean())
    gain = float(((x - xm) * (y - ym)).mean()) / var if var > 1e-12 else 1.0
    return gain, float(ym - gain * xm)


_SAMPLE_ROW = 4096


def _sample(image: np.ndarray, pts: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Bilinear samples of image at (2, N) points and which points lie inside it."""
    h, w = image.shape
    inside = (pts[0] >= 0) & (pts[0] <= w - 2) & (pts[1] >= 0) & (pts[1] <= h - 2)
    # remap takes maps under 32767 pixels a side: the points are laid out in rows of _SAMPLE_ROW
    # (a band at full KITTI resolution has more than 32767 pixels). Each sample is its own, so the
    # layout does not change a value.
    n = pts.shape[1]
    rows = max(1, -(-n // _SAMPLE_ROW))
    pad = rows * _SAMPLE_ROW - n if n > _SAMPLE_ROW else 0
    grid = [np.pad(pts[k].astype(np.float32), (0, pad)).reshape(rows, -1) for k in (0, 1)]
    values = cv2.remap(image, grid[0], grid[1], cv2.INTER_LINEAR,
                       borderMode=cv2.BORDER_REPLICATE).reshape(-1)[:n]
    return values, inside


@dataclass
class _Level:
    """One pyramid level of a pair: frame a's image and gradients, frame b's band and its values,
    and the parts of the road homography."""

    image_a: np.ndarray
    grad_a: tuple[np.ndarray, np.ndarray]
    band: np.ndarray
    target: np.ndarray
    KRK_inv: np.ndarray  # K R K^-1
    Kt: np.ndarray  # K t_unit
    K_inv: np.ndarray

    def warp(self, m: np.ndarray) -> np.ndarray:
        """Frame a's pixels of the band under the road homography of m:
        H = K (R + t m^T) K^-1 = K R K^-1 + (K t)(K^-T m)^T."""
        H = self.KRK_inv + np.outer(self.Kt, self.K_inv.T @ m)
        pa = np.linalg.inv(H) @ self.band
        return pa[:2] / pa[2]

    def sample(self, m: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        pa = self.warp(m)
        values, inside = _sample(self.image_a, pa)
        return pa, values, inside

    def ncc(self, m: np.ndarray) -> tuple[float, int]:
        _, values, inside = self.sample(m)
        if inside.sum() < 3:
            return -1.0, 0
        return float(np.corrcoef(values[inside], self.target[inside])[0, 1]), int(inside.sum())


def _level(road_a: np.ndarray, road_b: np.ndarray, K: np.ndarray, R: np.ndarray, t_unit: np.ndarray,
           level: int, cfg: RoadPlaneConfig) -> _Level:
    f = 0.5 ** level
    for _ in range(level):
        road_a, road_b = cv2.pyrDown(road_a), cv2.pyrDown(road_b)
    Kl = np.diag([f, f, 1.0]) @ K
    Kl[0, 2], Kl[1, 2] = (K[0, 2] + 0.5) * f - 0.5, (K[1, 2] + 0.5) * f - 0.5
    band = _band(road_b.shape, Kl, cfg)
    target = road_b[band[1].astype(int), band[0].astype(int)]
    grad = (cv2.Sobel(road_a, cv2.CV_32F, 1, 0, ksize=3) / 8.0,
            cv2.Sobel(road_a, cv2.CV_32F, 0, 1, ksize=3) / 8.0)
    Kl_inv = np.linalg.inv(Kl)
    return _Level(road_a, grad, band, target, Kl @ R @ Kl_inv, Kl @ t_unit, Kl_inv)


def fit_road(road_a: np.ndarray, road_b: np.ndarray, K: np.ndarray, R: np.ndarray,
             t_unit: np.ndarray, config: Optional[RoadPlaneConfig] = None) -> Optional[RoadFit]:
    """The metric length of the pair's step (``x_b = R x_a + lambda t_unit``) from its road, or None
    when too little road is visible in both frames. ``road_a``/``road_b`` come from
    :func:`road_image`. Nothing but the road sets the length: the search starts from the
    best-correlating of lengths between ``min_baseline_m`` and ``max_baseline_m``."""
    cfg = config or RoadPlaneConfig()
    K, R = np.asarray(K, dtype=np.float64), np.asarray(R, dtype=np.float64)
    t_unit = np.asarray(t_unit, dtype=np.float64)
    n0 = expected_normal(cfg)
    # Coarse to fine: half resolution finds the basin, full resolution the length.
    coarse = _level(road_a, road_b, K, R, t_unit, 1, cfg)
    if coarse.band.shape[1] < cfg.min_pixels / 4:
        return None
    m = _line_search(n0, coarse, cfg)
    if m is None:
        return None
    for lv, min_pixels in ((coarse, cfg.min_pixels / 4),
                           (_level(road_a, road_b, K, R, t_unit, 0, cfg), cfg.min_pixels)):
        m = _gauss_newton(m, n0, lv, min_pixels, cfg)
        if m is None:
            return None
    # Judged at half resolution: the road's finest texture changes with the distance it is seen
    # from, which lowers a full-resolution correlation on long steps whatever the fit.
    ncc, _ = coarse.ncc(m)
    norm = float(np.linalg.norm(m))
    tilt = math.degrees(math.acos(min(1.0, abs(float(m @ n0)) / max(norm, 1e-12))))
    ok = bool(m @ n0 > 0 and tilt <= cfg.max_tilt_deg and ncc >= cfg.min_ncc)
    return RoadFit(baseline_m=cfg.camera_height_m * norm, tilt_deg=tilt, ncc=ncc, ok=ok)


def _gauss_newton(m: np.ndarray, n0: np.ndarray, lv: _Level, min_pixels: float,
                  cfg: RoadPlaneConfig) -> Optional[np.ndarray]:
    """Robust Gauss-Newton on the road band's photometric residual, over m; None when the band
    leaves frame a."""
    for _ in range(cfg.iterations):
        pa, va, sel = lv.sample(m)
        if sel.sum() < min_pixels:
            return None
        # Exposure: target ~ gain * va + offset, fitted in closed form each step.
        gain, offset = _line_fit(va[sel], lv.target[sel])
        r = gain * va[sel] + offset - lv.target[sel]
        # d(pa)/dm by finite differences of the point map (cheap), chained with a's gradient.
        gx, _ = _sample(lv.grad_a[0], pa)
        gy, _ = _sample(lv.grad_a[1], pa)
        J = np.empty((sel.sum(), 3))
        for j in range(3):
            dm = np.zeros(3)
            dm[j] = 1e-4 * max(np.linalg.norm(m), 1e-3)
            dp = (lv.warp(m + dm) - pa)[:, sel] / dm[j]
            J[:, j] = gain * (gx[sel] * dp[0] + gy[sel] * dp[1])
        scale = 1.4826 * np.median(np.abs(r)) + 1e-6  # Huber on the robust spread
        w = np.minimum(1.0, 1.345 * scale / np.maximum(np.abs(r), 1e-12)) / (scale ** 2 * len(r))
        # The road's tilt away from the expected normal has a prior (tilt_prior_deg): along the
        # road the length and the pitch trade off against each other, so the prior keeps a short
        # band of road from tilting far; loose enough that a mount's pitch need not be known.
        P = (np.eye(3) - np.outer(n0, n0)) / (np.linalg.norm(m) * math.radians(cfg.tilt_prior_deg))
        JW = J * w[:, None]
        H = JW.T @ J + P.T @ P
        H = H + 1e-6 * np.eye(3) * np.trace(H)
        step = -np.linalg.solve(H, JW.T @ r + P.T @ (P @ m))
        m = m + step
        if np.linalg.norm(step) < 1e-5 * np.linalg.norm(m):
            break
    return m


def _line_search(n0: np.ndarray, lv: _Level, cfg: RoadPlaneConfig) -> Optional[np.ndarray]:
    """The best-correlating length along the expected normal, on a grid 10 % apart: a start inside
    Gauss-Newton's basin."""
    best, best_ncc = None, -np.inf
    count = int(math.ceil(math.log(cfg.max_baseline_m / cfg.min_baseline_m) / math.log(1.1))) + 1
    for length in np.geomspace(cfg.min_baseline_m, cfg.max_baseline_m, count):
        cand = n0 * length / cfg.camera_height_m
        ncc, inside = lv.ncc(cand)
        if inside >= cfg.min_pixels / 4 and ncc > best_ncc:
            best, best_ncc = cand, ncc
    return best
