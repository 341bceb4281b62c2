"""Geometry-checked LA-Pose: metric monocular odometry from feature geometry and LA-Pose's scale.

Each half does what it is good at:

* **Feature geometry** (the classical pipeline of :mod:`lapose_core.eval.classical`: SIFT, five-point
  RANSAC essential matrix, ``recoverPose``) gives each keyframe pair's rotation and translation
  direction, far more precisely than a small learned model, and, through points triangulated by two
  consecutive pairs, the ratio of consecutive step lengths. It has no metric scale and nothing to
  offer when matching fails.
* **LA-Pose** gives, in one forward pass over the 16-keyframe window, the window's mean metric step
  (its scale output), the field of view, and a full (weaker) estimate of every step.

Per pair the geometry is *checked* (:class:`StepCheck`): enough inliers, enough parallax once the
rotation is taken out (no parallax = pure rotation, a standing car, a duplicated frame: the
direction is undefined), and a rotation that agrees with LA-Pose's within a loose bound (catches a
wrong essential-matrix solution or wrong intrinsics). A pair without parallax is tested for a
rotation alone (:meth:`ClassicalVO.rotation_only`): when nearly all its matches agree with a pure
rotation, the camera stood still or turned on the spot, and the step is that rotation with no
translation (a *standing* step: geometry is confident, it is not a fallback). A pair that fails
otherwise uses LA-Pose's own rotation and direction and is counted as a fallback; a uniform, black or
badly blurred frame has too few features and fails the first check.

Step lengths: the triangulated depth ratio of consecutive confident pairs (where one is missing,
LA-Pose's own ratio of the two step lengths, else 1; standing steps have length 0) chain the steps'
relative lengths, and the window is scaled so that its mean step is the metric scale: LA-Pose's
(``scale_source="lapose"``); or, with the camera's height above the road known, the road's
(``"ground"``): each confident pair's road band is aligned densely between its two frames
(:mod:`lapose_core.road_plane`), which gives that pair's length in metres, and those lengths and the
ratios are fitted together (:mod:`lapose_core.step_lengths`), so the road both scales the window and
corrects the chain; fewer than ``min_ground_pairs`` road lengths: LA-Pose's scale. As the ablation, a
constant speed times the keyframe interval (``"constant"``).
``relative_lengths=False`` gives uniform steps (the ablation of triangulation).

Intrinsics: the sequence's or the CameraInfo's when given and consistent with LA-Pose's field of view
(within ``max_fov_ratio``); otherwise a pinhole camera with LA-Pose's field of view, centred. Which one
was used is reported. A camera image larger than ``max_geometry_pixels`` is shrunk for the geometry,
its intrinsics with it.

:class:`HybridEstimator` has the ``encode_frame`` / ``predict_features`` interface of
:class:`lapose_core.inference.PoseEstimator`, so the streaming node (``lapose_ros.odometry``) and the
offline evaluation run the same code; pair geometry is cached by keyframe, so in a stream each new
keyframe costs one SIFT pass, one matching and one LA-Pose window. No ROS imports here.
"""
from __future__ import annotations

import itertools
import math
from collections import OrderedDict
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from typing import Any, Optional, Sequence

import cv2
import numpy as np

from .eval.classical import ClassicalVO, Step
from .eval.metrics import compose_steps, rotation_angle_deg
from .road_plane import RoadFit, RoadPlaneConfig, fit_road, road_image
from .step_lengths import Length, Ratio, fuse_log_lengths

SCALE_SOURCES = ("lapose", "ground", "constant")


class HybridError(ValueError):
    """A hybrid setting that cannot be used (the message names it)."""


@dataclass
class HybridConfig:
    # Fewer essential-matrix inliers: geometry not confident (the classical pipeline's own floor).
    # On the labelled 00/07/06 heads at 1-2.5 s steps (`python training/geometry_study.py pairs`),
    # geometry with 15-29 inliers has a median error of 1.3-1.9 degrees, about LA-Pose's at 1 fps
    # on those same (its training) windows; below 15 it is mostly wrong.
    min_inliers: int = 15
    min_parallax_px: float = 1.0  # less rotation-compensated median image motion: no baseline
    # Geometry and LA-Pose rotations further apart: not confident. Loose on purpose: the bound is
    # there to catch a wrong essential-matrix solution (a decomposition twisted by 180 degrees),
    # not to overrule good geometry. On 07_head, 00_head and 06_head at 1-4 fps, with the
    # validation model, LA-Pose's rotation missed steps whose geometry was right (0.3 degrees) by
    # up to 45.5 degrees in sharp 1 fps turns, while no accepted geometry was off by more than 1.5
    # degrees; a 45-degree bound threw away that good geometry for LA-Pose's.
    max_rotation_gap_deg: float = 90.0
    scale_source: str = "lapose"
    relative_lengths: bool = True  # triangulated step-length ratios (False: uniform steps)
    # Standard deviations (log units) of the step-length measurements fitted together
    # (lapose_core.step_lengths). On the labelled 00/07 heads at 1 and 2 fps a road length is a
    # median 5 % off its true length, and ATE-S moves less than 0.006 for ratio 0.03-0.1 and road
    # 0.05-0.15 (python training/geometry_study.py lengths).
    ratio_sigma: float = 0.05  # a triangulated ratio of consecutive steps
    lapose_ratio_sigma: float = 0.5  # LA-Pose's ratio, where the pair has no triangulated one
    constant_speed_sigma: float = 1.0  # ratio 1, where neither has one
    road_sigma: float = 0.08  # a pair's length from its road (scale_source "ground")
    constant_speed_mps: float = 7.0  # scale_source="constant": mean speed of the labelled 00/06/07 heads (6.97)
    # scale_source="ground": the camera's height above the road (metres; None = unknown, LA-Pose's
    # scale is used) and its pitch (degrees down): how the camera is mounted. KITTI's camera is
    # 1.65 m above the road and level.
    camera_height_m: Optional[float] = None
    camera_pitch_deg: float = 0.0
    road_tilt_prior_deg: float = RoadPlaneConfig.tilt_prior_deg  # spread of the road's tilt about it
    min_ground_pairs: int = 2  # fewer pairs whose road was aligned in the window: LA-Pose's scale
    max_fov_ratio: float = 1.5  # given intrinsics whose field of view differs more are not trusted
    max_features: int = 2000
    # Larger camera images are shrunk to this many pixels for the geometry (features, road): SIFT and
    # the road's alignment grow with the pixels, while every figure here was measured at 0.12 MP
    # (KITTI's half resolution). The sample upsampled to 1.05 MP took the road hybrid's keyframe p95
    # in `lapose bench --quick` from 399 ms to 216 ms (the target is 250), the hybrid's from 259 to 183.
    max_geometry_pixels: int = 250_000
    cache_pairs: int = 64  # pair geometries kept (a stream needs the last 15)

    @classmethod
    def for_camera(cls, height_m: Optional[float], pitch_deg: float = 0.0) -> "HybridConfig":
        """The hybrid for a camera mounted ``height_m`` above the road (the road's scale), or at an
        unknown height (None or <= 0: LA-Pose's scale). The node, the demo and the benchmark all
        build it here, so their hybrids are the same one."""
        known = height_m is not None and height_m > 0
        return cls(scale_source="ground" if known else "lapose",
                   camera_height_m=float(height_m) if known else None, camera_pitch_deg=pitch_deg)

    def validate(self) -> "HybridConfig":
        if self.scale_source not in SCALE_SOURCES:
            raise HybridError(f"hybrid scale_source must be one of {', '.join(SCALE_SOURCES)}, "
                              f"got '{self.scale_source}'")
        for name in ("min_parallax_px", "max_rotation_gap_deg", "constant_speed_mps", "ratio_sigma",
                     "lapose_ratio_sigma", "constant_speed_sigma", "road_sigma", "road_tilt_prior_deg",
                     "max_geometry_pixels"):
            if not getattr(self, name) > 0:
                raise HybridError(f"hybrid {name} must be > 0, got {getattr(self, name)}")
        if self.scale_source == "ground" and not (self.camera_height_m or 0) > 0:
            raise HybridError("hybrid scale_source 'ground' needs camera_height_m > 0 (the camera's "
                              f"height above the road), got {self.camera_height_m}")
        if not abs(self.camera_pitch_deg) < 45:
            raise HybridError(f"hybrid camera_pitch_deg must be within +-45 degrees (the road below the "
                              f"camera), got {self.camera_pitch_deg}")
        if not self.max_fov_ratio > 1:
            raise HybridError(f"hybrid max_fov_ratio must be > 1, got {self.max_fov_ratio}")
        return self


_serials = itertools.count()


@dataclass
class HybridFrame:
    """What a keyframe keeps: LA-Pose's cached encoding and the frame's SIFT features."""

    lapose: Any
    keypoints: Any
    descriptors: Optional[np.ndarray]
    size: tuple[int, int]  # (height, width) of the camera image
    road: Optional[np.ndarray] = None  # grey image the road is aligned on (scale_source "ground")
    serial: int = field(default_factory=lambda: next(_serials))


@dataclass
class PairGeometry:
    """What the geometry says of one keyframe pair: its motion and, with a known camera height,
    the metric length its road gives (None: not asked or no road visible)."""

    step: Step
    road: Optional[RoadFit] = None


@dataclass
class StepCheck:
    """Whether one pair's geometry is trusted, and why not."""

    ok: bool
    inliers: int
    parallax_px: float
    rotation_gap_deg: float  # angle between the geometry's and LA-Pose's rotation (NaN: no geometry)
    reason: str = ""  # empty when ok
    standing: bool = False  # ok, and the matches show a rotation alone: no translation
    # The check that failed, without its figures ("" when ok; "no geometry", "inliers", "parallax"
    # or "rotation gap"): what evaluations count.
    failed_check: str = ""


@dataclass
class HybridPrediction:
    relative: np.ndarray  # (T-1, 4, 4) step motions in metres, frame k+1 in frame k (optical)
    poses: np.ndarray  # (T, 4, 4) camera-to-first-frame poses
    scale: float  # mean step length of the window, metres
    fov: float  # LA-Pose's horizontal field of view of its input, radians
    checks: list[StepCheck]
    intrinsics: tuple[float, float, float, float]
    intrinsics_source: str  # "given", "lapose fov", or "lapose fov (given ... disagree)"
    lapose: Any  # LA-Pose's own WindowPrediction of the window
    scale_source: str = "lapose"  # what set the metric scale of this window

    @property
    def fallbacks(self) -> int:
        """Steps of the window that use LA-Pose's own step (geometry not confident)."""
        return sum(not c.ok for c in self.checks)

    @property
    def standing(self) -> int:
        """Steps of the window in which geometry saw a rotation alone (no translation)."""
        return sum(c.standing for c in self.checks)

    @property
    def finite(self) -> bool:
        return bool(np.isfinite(self.relative).all() and math.isfinite(self.scale))


def intrinsics_from_fov(fov: float, image_hw: tuple[int, int], model_hw: tuple[int, int]
                        ) -> tuple[float, float, float, float]:
    """Pinhole intrinsics of the camera image from the field of view of the model's input.

    The model sees the image resized to cover its input and centre-cropped
    (:func:`lapose_core.data.transforms.fit_to_model`), so its field of view is that of the crop.
    """
    h, w = image_hw
    out_h, out_w = model_hw
    scale = max(out_w / w, out_h / h)
    new_w = max(out_w, round(w * scale))
    fx_model = out_w / (2.0 * math.tan(fov / 2.0))
    fx = fx_model * w / new_w
    return fx, fx, (w - 1) / 2.0, (h - 1) / 2.0


def _fov_of(fx: float, width: float) -> float:
    return 2.0 * math.atan(width / (2.0 * fx))


def _direction(translation: np.ndarray) -> np.ndarray:
    norm = float(np.linalg.norm(translation))
    return translation / norm if norm > 1e-9 else np.array([0.0, 0.0, 1.0])


class HybridEstimator:
    """LA-Pose with feature geometry; see the module docstring."""

    def __init__(self, lapose: Any, config: Optional[HybridConfig] = None,
                 intrinsics: Optional[Sequence[float]] = None):
        self.lapose = lapose
        self.config = (config or HybridConfig()).validate()
        self.num_frames = lapose.num_frames
        self.fps = lapose.fps
        self.checkpoint_name = f"hybrid:{lapose.checkpoint_name}"
        self.backend = getattr(lapose, "backend", "")
        self.device = getattr(lapose, "device", "")
        self.intrinsics = None if intrinsics is None else tuple(float(v) for v in intrinsics)
        self._vo = ClassicalVO((1.0, 1.0, 0.0, 0.0), max_features=self.config.max_features)
        self._vo_intrinsics: Optional[tuple] = None  # the camera intrinsics self._vo.K is made from
        self._vo_size: Optional[tuple[int, int]] = None  # ... for camera images of this size
        self._pairs: OrderedDict[tuple[int, int], PairGeometry] = OrderedDict()
        self._road = self._road_config()
        m = lapose.config.model
        self._model_hw = (m.image_height, m.image_width)
        # One helper thread: the geometry (OpenCV) runs beside LA-Pose (torch), both release the GIL,
        # so a keyframe takes about the longer of the two rather than their sum. Same results.
        self._helper = ThreadPoolExecutor(max_workers=1, thread_name_prefix="lapose-geometry")
        # Consecutive encoded frames are matched as soon as the second arrives (with the given
        # intrinsics), so the first full window does not match all 15 pairs at once.
        self._last_frame: Optional[HybridFrame] = None
        self._early: dict[tuple[int, int], tuple[tuple, Any]] = {}  # pair -> (intrinsics, future)

    # ------------------------------------------------------------------ per frame
    def encode_frame(self, image: np.ndarray) -> HybridFrame:
        sift = self._helper.submit(self._features, image)
        encoded = self.lapose.encode_frame(image)
        keypoints, descriptors, road = sift.result()
        frame = HybridFrame(encoded, keypoints, descriptors, tuple(int(v) for v in image.shape[:2]),
                            road)
        given = self._given_intrinsics(None)
        if given is not None and self._last_frame is not None:
            previous = self._last_frame
            self._early[(previous.serial, frame.serial)] = (
                given, self._helper.submit(self._match, [(previous, frame)], given))
            while len(self._early) > self.config.cache_pairs:
                self._early.pop(next(iter(self._early)))
        self._last_frame = frame
        return frame

    def set_camera_mount(self, height_m: float, pitch_deg: float) -> None:
        """Take the metric scale from the road, the camera mounted ``height_m`` above it and pitched
        ``pitch_deg`` down: the node calls it when the camera-to-base transform arrives from TF
        after the estimator was built. Pairs matched for another mount are matched again; frames
        encoded while no road was asked for give their pairs no road length."""
        config = replace(self.config, scale_source="ground", camera_height_m=float(height_m),
                         camera_pitch_deg=float(pitch_deg)).validate()
        if config == self.config:
            return
        self.config = config
        self._road = self._road_config()
        self._pairs.clear()
        self._early.clear()  # matched with the old mount's road; a match still running is let go

    # ------------------------------------------------------------------ per window
    def predict_features(self, frames: Sequence[HybridFrame], timestamps: Sequence[float],
                         intrinsics: Optional[Sequence[float]] = None) -> HybridPrediction:
        """The window's metric step motions from its keyframes (``encode_frame`` outputs)."""
        pairs = list(zip(frames[:-1], frames[1:]))
        # With intrinsics given, the new pairs are matched while LA-Pose runs; they are kept only if
        # LA-Pose's field of view does not overrule those intrinsics (then they are matched again).
        given = self._given_intrinsics(intrinsics)
        new = [(a, b) for a, b in pairs if (a.serial, b.serial) not in self._pairs
               and self._early.get((a.serial, b.serial), (None,))[0] != given]
        early = self._helper.submit(self._match, new, given) if given and new else None
        lp = self.lapose.predict_features([f.lapose for f in frames], timestamps, intrinsics=given)
        lp_relative = np.asarray(lp.relative, dtype=np.float64)
        K, source = self._choose_intrinsics(frames[0].size, lp.fov, given)
        if K == given:
            for a, b in pairs:  # pairs matched when their second frame arrived
                key = (a.serial, b.serial)
                if key not in self._pairs and self._early.get(key, (None,))[0] == given:
                    self._remember(a, b, self._early.pop(key)[1].result()[0])
        if early is not None:
            matched = early.result()
            if K == given:
                for (a, b), pair in zip(new, matched):
                    self._remember(a, b, pair)
        self._use_intrinsics(K, frames[0].size)
        geometry = [self._pair(a, b) for a, b in pairs]
        steps = [g.step for g in geometry]
        checks = [self._check(step, lp_step[:3, :3]) for step, lp_step in zip(steps, lp_relative)]

        relative = np.tile(np.eye(4), (len(steps), 1, 1))
        for k, (step, check) in enumerate(zip(steps, checks)):
            if check.ok:
                relative[k] = step.motion()
                if check.standing:
                    relative[k, :3, 3] = 0.0
            else:
                relative[k, :3, :3] = lp_relative[k, :3, :3]
                relative[k, :3, 3] = _direction(lp_relative[k, :3, 3])
        lengths, road_lengths = self._step_lengths(steps, checks, geometry, lp_relative)
        scale, scale_source = self._window_scale(lp, timestamps, lengths, road_lengths)
        if lengths.max() > 0:
            relative[:, :3, 3] *= (scale * lengths / lengths.mean())[:, None]
        else:  # every step standing: the window did not move, whatever LA-Pose's scale says
            scale, scale_source = 0.0, "standing"

        return HybridPrediction(relative=relative, poses=compose_steps(relative), scale=float(scale),
                                fov=float(lp.fov), checks=checks, intrinsics=tuple(K),
                                intrinsics_source=source, lapose=lp, scale_source=scale_source)

    def predict_window(self, images: Sequence[np.ndarray], timestamps: Sequence[float],
                       intrinsics: Optional[Sequence[float]] = None) -> HybridPrediction:
        """One window of camera images; a frame repeated in the window is encoded once."""
        encoded: dict[int, HybridFrame] = {}
        for im in images:
            if id(im) not in encoded:
                encoded[id(im)] = self.encode_frame(im)
        return self.predict_features([encoded[id(im)] for im in images], timestamps, intrinsics)

    # ------------------------------------------------------------------ pieces
    def _road_config(self) -> Optional[RoadPlaneConfig]:
        cfg = self.config
        if cfg.scale_source != "ground":
            return None
        return RoadPlaneConfig(camera_height_m=cfg.camera_height_m, pitch_deg=cfg.camera_pitch_deg,
                               tilt_prior_deg=cfg.road_tilt_prior_deg)

    def _given_intrinsics(self, given: Optional[Sequence[float]]) -> Optional[tuple]:
        """The intrinsics passed in (else the estimator's own), when usable: 4 finite, fx, fy > 0."""
        given = self.intrinsics if given is None else tuple(float(v) for v in given)
        if given is None or len(given) < 4 or not all(math.isfinite(v) for v in given[:4]) \
                or given[0] <= 0 or given[1] <= 0:
            return None
        return tuple(given[:4])

    def _choose_intrinsics(self, image_hw: tuple[int, int], fov: float,
                           given: Optional[tuple]) -> tuple[tuple, str]:
        from_fov = intrinsics_from_fov(fov, image_hw, self._model_hw)
        if given is None:
            return from_fov, "lapose fov"
        width = image_hw[1]
        ratio = _fov_of(given[0], width) / _fov_of(from_fov[0], width)
        if not 1.0 / self.config.max_fov_ratio <= ratio <= self.config.max_fov_ratio:
            return from_fov, (f"lapose fov (given fx {given[0]:.1f} gives a field of view {ratio:.2f}x "
                              f"LA-Pose's)")
        return given, "given"

    def _use_intrinsics(self, K: tuple, size: tuple[int, int]) -> None:
        """Intrinsics (of camera images of ``size``) for the pairs computed from now on. A cached
        pair keeps the intrinsics it was computed with (in a stream: those of the first window that
        contained it), so LA-Pose's field of view changing from window to window does not make every
        pair be matched again. The geometry's own are those of its image (``_geometry_size``)."""
        if (K, size) != (self._vo_intrinsics, self._vo_size):
            (h, w), (gh, gw) = size, self._geometry_size(size)
            fx, fy, cx, cy = K[:4]
            if (gh, gw) != (h, w):  # shrunk: pixel centres map as x' + 0.5 = s (x + 0.5)
                sx, sy = gw / w, gh / h
                fx, fy, cx, cy = fx * sx, fy * sy, (cx + 0.5) * sx - 0.5, (cy + 0.5) * sy - 0.5
            self._vo.K = np.array([[fx, 0.0, cx], [0.0, fy, cy], [0.0, 0.0, 1.0]])
            self._vo_intrinsics, self._vo_size = K, size

    def _geometry_size(self, size: tuple[int, int]) -> tuple[int, int]:
        """(height, width) the geometry sees a camera image of ``size`` at: shrunk to at most
        ``max_geometry_pixels``."""
        h, w = size
        f = math.sqrt(self.config.max_geometry_pixels / (h * w))
        return (h, w) if f >= 1.0 else (max(1, round(h * f)), max(1, round(w * f)))

    def _features(self, image: np.ndarray) -> tuple[Any, Optional[np.ndarray], Optional[np.ndarray]]:
        gh, gw = self._geometry_size(image.shape[:2])
        if (gh, gw) != image.shape[:2]:
            image = cv2.resize(image, (gw, gh), interpolation=cv2.INTER_AREA)
        keypoints, descriptors = self._vo.features(image)
        return keypoints, descriptors, (road_image(image, self._road) if self._road else None)

    def _match(self, pairs: list[tuple[HybridFrame, HybridFrame]], K: tuple) -> list[PairGeometry]:
        if pairs:
            self._use_intrinsics(K, pairs[0][0].size)
        out = []
        for a, b in pairs:
            matched = self._vo.matches((a.keypoints, a.descriptors), (b.keypoints, b.descriptors))
            step = self._vo.pose_from_matches(matched)
            if not (step.ok and step.parallax_px >= self.config.min_parallax_px):
                step = self._vo.rotation_only(matched) or step  # a standing or spinning camera
            road = None
            if self._road and step.ok and not step.standing and a.road is not None \
                    and b.road is not None:
                road = fit_road(a.road, b.road, self._vo.K, step.R, step.t, self._road)
            out.append(PairGeometry(step, road))
        return out

    def _remember(self, a: HybridFrame, b: HybridFrame, pair: PairGeometry) -> None:
        self._pairs[(a.serial, b.serial)] = pair
        while len(self._pairs) > self.config.cache_pairs:
            self._pairs.popitem(last=False)

    def _pair(self, a: HybridFrame, b: HybridFrame) -> PairGeometry:
        pair = self._pairs.get((a.serial, b.serial))
        if pair is None:
            pair = self._match([(a, b)], self._vo_intrinsics)[0]
            self._remember(a, b, pair)
        return pair

    def _check(self, step: Step, lapose_rotation: np.ndarray) -> StepCheck:
        cfg = self.config
        if not step.ok:
            return StepCheck(False, step.inliers, 0.0, math.nan,
                             "no essential matrix (too few features or matches)",
                             failed_check="no geometry")
        gap = float(rotation_angle_deg(step.R @ lapose_rotation))  # R_geo^T vs R_lapose: R_geo R_lp
        few_inliers = f"{step.inliers} inliers < {cfg.min_inliers}"
        if step.standing:  # nearly every match agrees with a rotation alone: trusted as it is
            ok = step.inliers >= cfg.min_inliers
            return StepCheck(ok, step.inliers, step.parallax_px, gap, "" if ok else few_inliers,
                             standing=ok, failed_check="" if ok else "inliers")
        if step.inliers < cfg.min_inliers:
            failed, reason = "inliers", few_inliers
        elif not step.parallax_px >= cfg.min_parallax_px:
            failed, reason = "parallax", f"parallax {step.parallax_px:.2f} px < {cfg.min_parallax_px:g}"
        elif not gap <= cfg.max_rotation_gap_deg:
            failed, reason = "rotation gap", (f"rotation {gap:.1f} deg from LA-Pose's > "
                                              f"{cfg.max_rotation_gap_deg:g}")
        else:
            failed, reason = "", ""
        return StepCheck(not reason, step.inliers, step.parallax_px, gap, reason, failed_check=failed)

    def _step_lengths(self, steps: list[Step], checks: list[StepCheck], pairs: list[PairGeometry],
                      lp_relative: np.ndarray) -> tuple[np.ndarray, int]:
        """Each step's length and how many road lengths set it: in metres when that count is at
        least ``min_ground_pairs`` (``scale_source="ground"``), otherwise relative (the caller scales
        their mean). Standing steps have length 0. See :mod:`lapose_core.step_lengths`."""
        cfg = self.config
        moving = [k for k, c in enumerate(checks) if not c.standing]
        lengths = np.zeros(len(steps))
        if not moving:
            return lengths, 0
        if not cfg.relative_lengths:
            lengths[moving] = 1.0
            return lengths, 0
        lp_lengths = np.linalg.norm(lp_relative[:, :3, 3], axis=-1)
        ratios = []  # between consecutive moving steps; standing steps in between have no length
        for i, (ref, k) in enumerate(zip(moving[:-1], moving[1:])):
            ratio = (self._vo.depth_ratio(steps[ref], steps[k])
                     if ref == k - 1 and checks[ref].ok and checks[k].ok else None)
            sigma = cfg.ratio_sigma
            if ratio is None and lp_lengths[ref] > 1e-6 and lp_lengths[k] > 1e-6:
                ratio, sigma = float(lp_lengths[k] / lp_lengths[ref]), cfg.lapose_ratio_sigma
            if ratio is None or not math.isfinite(ratio):
                ratio, sigma = 1.0, cfg.constant_speed_sigma
            ratios.append(Ratio(i, i + 1, math.log(ratio), sigma))
        road = []
        if cfg.scale_source == "ground":
            # Each pair whose road was aligned measures its own length in metres (road_plane).
            road = [Length(i, math.log(pairs[k].road.baseline_m), cfg.road_sigma)
                    for i, k in enumerate(moving) if checks[k].ok and pairs[k].road is not None
                    and pairs[k].road.ok and pairs[k].road.baseline_m > 0]
            if len(road) < cfg.min_ground_pairs:
                road = []
        lengths[moving] = np.exp(fuse_log_lengths(len(moving), ratios, road))
        return lengths, len(road)

    def _window_scale(self, lp: Any, timestamps: Sequence[float], lengths: np.ndarray,
                      road_lengths: int) -> tuple[float, str]:
        """The window's mean metric step and where it came from."""
        cfg = self.config
        if cfg.scale_source == "constant":
            ts = np.asarray(timestamps, dtype=np.float64)
            return float(cfg.constant_speed_mps * np.diff(ts).mean()), "constant speed"
        if road_lengths:  # the lengths are the road's, in metres
            return float(lengths.mean()), "ground plane"
        return float(lp.scale), "lapose"
