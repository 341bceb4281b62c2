"""Classical monocular visual odometry: the baseline LA-Pose is compared against.

Per step of a window (frame k -> k+1): SIFT features matched with Lowe's ratio test, the essential
matrix from the known intrinsics (five-point RANSAC, 1 px, p = 0.999) and ``recoverPose`` for the
rotation and the unit translation direction.

SIFT rather than KLT tracking or ORB: at the evaluation rates (1-4 fps, i.e. 2.5-10 m between KITTI
frames) KLT loses most tracks at 1 fps and ORB's matches are noisier; on ``03_head`` SIFT gave the
best pairwise AUC at 1, 2 and 4 fps.

Relative scale: monocular two-view geometry fixes each step only up to scale. Consecutive steps share
a frame, so the points triangulated from step k-1 (scaled) and from step k (unit) that are matched to
the same keypoint of the shared frame give a depth ratio; its median sets step k's length relative to
step k-1. Where that is not possible (too few shared points, a failed neighbour step) the previous
step's length is kept and the fallback is counted. The window is finally normalised to unit mean
step length: the trajectory's shape is estimated, its metric scale is not (ATE-M does not apply).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple, Sequence

import cv2
import numpy as np

# Depth ratios beyond this factor between consecutive steps are treated as triangulation failures.
_MAX_STEP_RATIO = 5.0


class ClassicalWindow(NamedTuple):
    relative: np.ndarray  # (T-1, 4, 4) step motions, frame k+1 in frame k; unit mean step length
    failures: int  # steps where the essential matrix could not be estimated (identity rotation used)
    scale_fallbacks: int  # steps whose length could not be triangulated (previous length kept)


@dataclass
class Step:
    R: np.ndarray  # rotation taking frame-k coordinates to frame k+1: x_{k+1} = R x_k + t
    t: np.ndarray  # unit translation of the same map
    ok: bool
    keypoints_b: np.ndarray | None = None  # indices into frame k+1's keypoints of the inliers
    keypoints_a: np.ndarray | None = None  # indices into frame k's keypoints of the inliers
    points_a: np.ndarray | None = None  # (N, 3) inliers triangulated in frame k, unit baseline
    inliers: int = 0  # matches consistent with the essential matrix (0 when there is none)
    # Median image motion of the inliers once the rotation is taken out (pixels): the parallax that
    # the translation direction and triangulation rest on; ~0 for pure rotation or no motion.
    parallax_px: float = 0.0
    # The matches are explained by a rotation alone (:meth:`ClassicalVO.rotation_only`): no baseline,
    # t is zero. Only the hybrid asks for this model; the classical baseline never does.
    standing: bool = False

    def motion(self) -> np.ndarray:
        """Frame k+1 in frame k (4x4, unit translation): x_{k+1} = R x_k + t <=> (R^T, -R^T t)."""
        motion = np.eye(4)
        motion[:3, :3] = self.R.T
        motion[:3, 3] = -self.R.T @ self.t
        return motion


def intrinsics_matrix(intrinsics: Sequence[float]) -> np.ndarray:
    fx, fy, cx, cy = (float(v) for v in intrinsics)
    return np.array([[fx, 0.0, cx], [0.0, fy, cy], [0.0, 0.0, 1.0]])


def _gray(image: np.ndarray) -> np.ndarray:
    image = np.asarray(image)
    if image.ndim == 2:
        return image
    if image.ndim == 3 and image.shape[2] == 3:
        return cv2.cvtColor(image, cv2.COLOR_RGB2GRAY)
    raise ValueError(f"expected an (H, W) or (H, W, 3) image, got shape {image.shape}")


class ClassicalVO:
    """Two-view monocular VO over the frames of one window."""

    def __init__(self, intrinsics: Sequence[float], max_features: int = 2000, ratio: float = 0.8,
                 ransac_threshold_px: float = 1.0, ransac_prob: float = 0.999, min_inliers: int = 15,
                 min_shared_points: int = 8):
        self.K = intrinsics_matrix(intrinsics)
        self.sift = cv2.SIFT_create(nfeatures=max_features)
        self.matcher = cv2.BFMatcher(cv2.NORM_L2)
        self.ratio = ratio
        self.ransac_threshold_px = ransac_threshold_px
        self.ransac_prob = ransac_prob
        self.min_inliers = min_inliers
        self.min_shared_points = min_shared_points

    def estimate(self, images: Sequence[np.ndarray]) -> ClassicalWindow:
        if len(images) < 2:
            raise ValueError(f"a window needs at least 2 frames, got {len(images)}")
        features = [self.features(im) for im in images]
        steps = [self.two_view(a, b) for a, b in zip(features[:-1], features[1:])]
        lengths, fallbacks = self._relative_lengths(steps)

        relative = np.tile(np.eye(4), (len(steps), 1, 1))
        direction = np.array([0.0, 0.0, 1.0])  # a failed first step is taken as straight ahead
        for k, (step, length) in enumerate(zip(steps, lengths)):
            if step.ok:
                relative[k] = step.motion()
                direction = relative[k, :3, 3].copy()
            relative[k, :3, 3] = direction * length
        relative[:, :3, 3] /= np.linalg.norm(relative[:, :3, 3], axis=-1).mean()
        return ClassicalWindow(relative, sum(not s.ok for s in steps), fallbacks)

    def features(self, image: np.ndarray, mask: np.ndarray | None = None):
        """SIFT keypoints and descriptors of one frame (only where ``mask``, uint8, is non-zero)."""
        return self.sift.detectAndCompute(_gray(image), mask)

    def matches(self, feat_a, feat_b) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray] | None:
        """Ratio-test matches of two frames' :meth:`features`: keypoint indices and pixel positions
        ``(idx_a, idx_b, pts_a, pts_b)``, or None with fewer than ``min_inliers`` of them."""
        (kp_a, desc_a), (kp_b, desc_b) = feat_a, feat_b
        if desc_a is None or desc_b is None or len(kp_a) < self.min_inliers or len(kp_b) < 2:
            return None
        pairs = self.matcher.knnMatch(desc_a, desc_b, k=2)
        good = [m[0] for m in pairs if len(m) == 2 and m[0].distance < self.ratio * m[1].distance]
        if len(good) < self.min_inliers:
            return None
        idx_a = np.array([m.queryIdx for m in good])
        idx_b = np.array([m.trainIdx for m in good])
        pts_a = np.array([kp_a[i].pt for i in idx_a], dtype=np.float64)
        pts_b = np.array([kp_b[i].pt for i in idx_b], dtype=np.float64)
        return idx_a, idx_b, pts_a, pts_b

    def two_view(self, feat_a, feat_b) -> Step:
        """Relative pose of two frames from their :meth:`features` (``ok=False`` when it fails)."""
        return self.pose_from_matches(self.matches(feat_a, feat_b))

    def pose_from_matches(self, matched) -> Step:
        """Relative pose from :meth:`matches` (``ok=False`` when there are none or it fails)."""
        failed = Step(np.eye(3), np.zeros(3), ok=False)
        if matched is None:
            return failed
        idx_a, idx_b, pts_a, pts_b = matched
        try:
            E, mask = self._essential(pts_a, pts_b)
            if E is None or mask is None or int(mask.sum()) < self.min_inliers:
                return failed
            # findEssentialMat may stack several solutions; the first is the best scored.
            _, R, t, pose_mask = cv2.recoverPose(E[:3], pts_a, pts_b, self.K, mask=mask.copy())
        except cv2.error:
            return failed
        inliers = pose_mask.ravel() > 0
        if inliers.sum() < self.min_inliers:
            return failed
        t = t.ravel()
        proj_a = self.K @ np.eye(3, 4)
        proj_b = self.K @ np.hstack([R, t[:, None]])
        X = cv2.triangulatePoints(proj_a, proj_b, pts_a[inliers].T, pts_b[inliers].T)
        with np.errstate(divide="ignore", invalid="ignore"):
            points = (X[:3] / X[3]).T
        return Step(R, t, ok=True, keypoints_a=idx_a[inliers], keypoints_b=idx_b[inliers],
                     points_a=points, inliers=int(inliers.sum()),
                     parallax_px=self._parallax(R, pts_a[inliers], pts_b[inliers]))

    def rotation_only(self, matched, max_error_px: float = 0.75,
                      min_fraction: float = 0.8) -> Step | None:
        """The camera only rotated (or stood still) between two frames, if their :meth:`matches` say so.

        A rotation R maps frame k's bearing vectors onto frame k+1's (x_{k+1} = R x_k): two matches
        determine it (Kabsch on the bearings), 100 deterministic RANSAC draws pick the one most matches
        agree with to ``max_error_px``, and it is refitted to those. The model holds when at least
        ``min_fraction`` of the matches (and ``min_inliers``) agree: then nothing in view shows a
        baseline. Any real translation moves the near points off the rotation's prediction: on KITTI
        07, 9 cm of forward motion already leaves only half the matches within 0.75 px, while a
        standing camera's matches (sensor noise, exposure change) stay within it. Returns a
        ``standing`` Step with t = 0, or None.
        """
        if matched is None:
            return None
        idx_a, idx_b, pts_a, pts_b = matched
        K_inv = np.linalg.inv(self.K)
        bear_a = np.hstack([pts_a, np.ones((len(pts_a), 1))]) @ K_inv.T
        bear_b = np.hstack([pts_b, np.ones((len(pts_b), 1))]) @ K_inv.T
        bear_a /= np.linalg.norm(bear_a, axis=1, keepdims=True)
        bear_b /= np.linalg.norm(bear_b, axis=1, keepdims=True)

        def fit(sel: np.ndarray) -> np.ndarray:  # least-squares rotation with R a_i ~ b_i
            U, _, Vt = np.linalg.svd(bear_b[sel].T @ bear_a[sel])
            return U @ np.diag([1.0, 1.0, np.linalg.det(U @ Vt)]) @ Vt

        def errors(R: np.ndarray) -> np.ndarray:  # reprojection error in frame k+1, pixels
            proj = bear_a @ R.T @ self.K.T
            with np.errstate(divide="ignore", invalid="ignore"):
                return np.linalg.norm(proj[:, :2] / proj[:, 2:] - pts_b, axis=1)

        rng = np.random.default_rng(0)  # deterministic: the node and the evaluation agree
        best = None
        for _ in range(100):
            inliers = errors(fit(rng.choice(len(pts_a), 2, replace=False))) < max_error_px
            if best is None or inliers.sum() > best.sum():
                best = inliers
        if best.sum() < max(self.min_inliers, 3):
            return None
        R = fit(best)
        inliers = errors(R) < max_error_px
        if inliers.sum() < max(self.min_inliers, min_fraction * len(pts_a)):
            return None
        return Step(R, np.zeros(3), ok=True, keypoints_a=idx_a[inliers], keypoints_b=idx_b[inliers],
                    inliers=int(inliers.sum()), parallax_px=self._parallax(R, pts_a[inliers], pts_b[inliers]),
                    standing=True)

    def _essential(self, pts_a: np.ndarray, pts_b: np.ndarray):
        """Five-point RANSAC; OpenCV's USAC estimator where RANSAC throws.

        OpenCV's classic five-point solver raises (``solvePoly`` assertion) on some degenerate
        minimal samples and takes the whole estimate down with it: on KITTI 00 at 1 fps a sharp turn
        (30 degrees in a step, 104 good matches) and the start of the drive failed that way. USAC
        samples its own way and estimates the same model; both are deterministic.
        """
        try:
            return cv2.findEssentialMat(pts_a, pts_b, self.K, cv2.RANSAC, self.ransac_prob,
                                        self.ransac_threshold_px)
        except cv2.error:
            return cv2.findEssentialMat(pts_a, pts_b, self.K, cv2.USAC_DEFAULT, self.ransac_prob,
                                        self.ransac_threshold_px)

    def _parallax(self, R: np.ndarray, pts_a: np.ndarray, pts_b: np.ndarray) -> float:
        """Median distance between frame k+1's points and frame k's rotated by the infinite
        homography K R K^-1 (where they would be if the camera had only rotated)."""
        H = self.K @ R @ np.linalg.inv(self.K)
        warped = np.hstack([pts_a, np.ones((len(pts_a), 1))]) @ H.T
        with np.errstate(divide="ignore", invalid="ignore"):
            warped = warped[:, :2] / warped[:, 2:]
        return float(np.nanmedian(np.linalg.norm(warped - pts_b, axis=-1)))

    def _relative_lengths(self, steps: list[Step]) -> tuple[np.ndarray, int]:
        """Length of each step relative to the first, from depths of points seen by both steps."""
        lengths = [1.0]
        fallbacks = 0
        for prev, cur in zip(steps[:-1], steps[1:]):
            ratio = self.depth_ratio(prev, cur) if prev.ok and cur.ok else None
            if ratio is None:
                fallbacks += 1
                ratio = 1.0
            lengths.append(lengths[-1] * ratio)
        return np.array(lengths), fallbacks

    def depth_ratio(self, prev: Step, cur: Step) -> float | None:
        """Length of step ``cur`` over step ``prev`` (consecutive, sharing a frame), or None."""
        # prev's points moved into the shared frame (prev's second = cur's first), unit baseline.
        shared_prev = prev.points_a @ prev.R.T + prev.t
        _, i_prev, i_cur = np.intersect1d(prev.keypoints_b, cur.keypoints_a, return_indices=True)
        d_prev, d_cur = shared_prev[i_prev, 2], cur.points_a[i_cur, 2]
        # Far points have almost no parallax and unreliable depth: keep those within 100 baselines.
        usable = (d_prev > 0) & (d_cur > 0) & (d_prev < 100.0) & (d_cur < 100.0)
        if usable.sum() < self.min_shared_points:
            return None
        ratio = float(np.exp(np.median(np.log(d_prev[usable] / d_cur[usable]))))
        if not 1.0 / _MAX_STEP_RATIO <= ratio <= _MAX_STEP_RATIO:
            return None
        return ratio


def classical_window(images: Sequence[np.ndarray], intrinsics: Sequence[float], **options) -> ClassicalWindow:
    """Classical VO on one window: ``(relative (T-1, 4, 4), failures, scale_fallbacks)``.

    ``images`` are (H, W, 3) RGB or (H, W) grayscale uint8 frames; ``intrinsics`` is fx, fy, cx, cy of
    those frames. ``options`` go to :class:`ClassicalVO`.
    """
    return ClassicalVO(intrinsics, **options).estimate(images)
