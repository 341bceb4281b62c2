"""The road plane's metric step length: exact on a rendered flat road, close on KITTI, and refused
where the band is not a road at the expected attitude."""
from __future__ import annotations

import math
from pathlib import Path

import cv2
import numpy as np
import pytest

from lapose_core.eval.classical import ClassicalVO
from lapose_core.road_plane import RoadPlaneConfig, expected_normal, fit_road, road_image

KITTI = Path(__file__).resolve().parents[2] / "shared" / "data" / "kitti"
K = np.array([[353.5, 0.0, 300.7], [0.0, 353.5, 91.3], [0.0, 0.0, 1.0]])
SIZE = (185, 613)  # KITTI's half resolution


def _texture(seed: int = 0) -> np.ndarray:
    """Road-like texture, 5 cm texels over 100 m x 100 m: noise at every scale from 10 cm to 3 m
    (like asphalt, patches and stains), so it looks alike from near and far."""
    rng = np.random.default_rng(seed)
    tex = np.zeros((2000, 2000), np.float32)
    for sigma in (1.0, 2.0, 4.0, 8.0, 16.0, 32.0):
        octave = cv2.GaussianBlur(rng.standard_normal((2000, 2000)).astype(np.float32), (0, 0), sigma)
        tex += octave / octave.std()
    return tex * 20.0


def _render(texture: np.ndarray, camera_to_road: np.ndarray, height: float,
            tilt_deg: float = 0.0) -> np.ndarray:
    """A camera (pose camera_to_road: road frame with y down, origin on the road under the first
    camera) looking at the plane y = height through the origin, tilted about x by tilt_deg. Rendered
    at 4x4 samples a pixel and averaged, as a sensor integrates (point samples would alias the far
    road differently in every view)."""
    h, w = SIZE
    ss = 4
    ys, xs = np.mgrid[0:h * ss, 0:w * ss].astype(np.float64)
    ys, xs = (ys + 0.5) / ss - 0.5, (xs + 0.5) / ss - 0.5
    rays = np.stack([(xs - K[0, 2]) / K[0, 0], (ys - K[1, 2]) / K[1, 1], np.ones_like(xs)], -1)
    R, c = camera_to_road[:3, :3], camera_to_road[:3, 3]
    d = rays @ R.T
    t = math.radians(tilt_deg)
    n = np.array([0.0, math.cos(t), math.sin(t)])
    with np.errstate(divide="ignore", invalid="ignore"):
        lam = (height - n @ c) / (d @ n)
    p = c + lam[..., None] * d
    ground = (lam > 0) & np.isfinite(lam)
    u = ((p[..., 0] + 50.0) / 0.05).astype(np.float32)
    v = ((p[..., 2] + 10.0) / 0.05).astype(np.float32)
    img = cv2.remap(texture, u, v, cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT)
    sky = cv2.remap(texture, (xs * 3).astype(np.float32), (ys * 3).astype(np.float32), cv2.INTER_LINEAR)
    img = cv2.resize(np.where(ground, img, sky), (w, h), interpolation=cv2.INTER_AREA)
    return np.clip(img + 128.0, 0, 255).astype(np.uint8)


def _pose(yaw_deg: float, forward_m: float, lateral_m: float = 0.0) -> np.ndarray:
    y = math.radians(yaw_deg)
    P = np.eye(4)
    P[:3, :3] = [[math.cos(y), 0, math.sin(y)], [0, 1, 0], [-math.sin(y), 0, math.cos(y)]]
    P[:3, 3] = [lateral_m, 0.0, forward_m]
    return P


def _fit(P_a: np.ndarray, P_b: np.ndarray, height: float, tilt_deg: float = 0.0, **config):
    texture = _texture()
    img_a, img_b = (_render(texture, P, height, tilt_deg) for P in (P_a, P_b))
    rel = np.linalg.inv(P_a) @ P_b  # frame b in frame a; x_b = R x_a + t with R = rel_R^T
    R = rel[:3, :3].T
    t = -R @ rel[:3, 3]
    cfg = RoadPlaneConfig(camera_height_m=height, **config)
    return fit_road(road_image(img_a, cfg), road_image(img_b, cfg), K, R, t / np.linalg.norm(t), cfg), \
        float(np.linalg.norm(t))


@pytest.mark.parametrize("forward, yaw, height", [(4.0, 0.0, 1.65), (2.0, 3.0, 1.65), (6.0, -2.0, 1.2)])
def test_flat_road_gives_the_metric_step(forward, yaw, height):
    """Within 3 %: the earlier frame sees the same road from further away, so its texture is finer
    there and the photometric optimum sits a little off (measured: up to +2.2 % on this texture,
    where the correlation is 0.92; the length and the road's pitch trade off along the band)."""
    fit, true = _fit(np.eye(4), _pose(yaw, forward, 0.1 * forward), height)
    assert fit is not None and fit.ok, fit
    assert fit.baseline_m == pytest.approx(true, rel=0.03)
    assert fit.tilt_deg < 0.5 and fit.ncc > 0.8


def test_wrong_camera_height_scales_the_step():
    """The length is the camera height times what the image says: a height twice too large gives
    a step twice too long, which is why the height must come from the camera-to-base transform.
    (Within 5 %: the band is then laid out for a road twice as far below, and the loose tilt prior
    lets the fit settle 3.3 % long; 1.4 % under the former tight one.)"""
    texture = _texture()
    P_b = _pose(0.0, 4.0)
    img_a, img_b = _render(texture, np.eye(4), 1.65), _render(texture, P_b, 1.65)
    cfg = RoadPlaneConfig(camera_height_m=3.3)
    fit = fit_road(road_image(img_a, cfg), road_image(img_b, cfg), K, np.eye(3),
                   np.array([0.0, 0.0, -1.0]), cfg)
    assert fit is not None and fit.ok and fit.baseline_m == pytest.approx(8.0, rel=0.05)


def test_a_road_not_at_the_expected_attitude_is_refused():
    """A road tilted 8 degrees against the expected normal (a ramp, a wrong camera pitch) does not
    vote: the fitted normal says so."""
    fit, _ = _fit(np.eye(4), _pose(0.0, 4.0), 1.65, tilt_deg=8.0, tilt_prior_deg=10.0)
    assert fit is not None and not fit.ok and fit.tilt_deg > 4.0


def test_no_road_in_view_gives_no_fit():
    blank = np.zeros(SIZE, np.float32)
    cfg = RoadPlaneConfig(far_m=2.0)  # the band would start below the image: nothing to align
    assert fit_road(blank, blank, K, np.eye(3), np.array([0.0, 0.0, -1.0]), cfg) is None


@pytest.mark.skipif(not (KITTI / "00_head").is_dir(), reason="needs ../shared/data/kitti/00_head")
def test_kitti_road_gives_the_step_length_within_a_tenth():
    """00_head at 2 fps (0.5 s between frames, 2-5 m steps), rotation and direction from feature
    geometry as in the hybrid: the median step-length error of the accepted pairs is a few percent."""
    seq = KITTI / "00_head"
    fx, fy, cx, cy = np.loadtxt(seq / "calib.txt", max_rows=1)[:4]
    Kk = np.array([[fx, 0, cx], [0, fy, cy], [0, 0, 1.0]])
    poses = np.loadtxt(seq / "poses.txt").reshape(-1, 3, 4)
    images = sorted((seq / "images").iterdir())
    vo, cfg = ClassicalVO((fx, fy, cx, cy)), RoadPlaneConfig()
    errors = []
    for i in range(0, 190, 20):
        a, b = (cv2.imread(str(images[k]), cv2.IMREAD_GRAYSCALE) for k in (i, i + 5))
        step = vo.pose_from_matches(vo.matches(vo.features(a), vo.features(b)))
        fit = fit_road(road_image(a, cfg), road_image(b, cfg), Kk, step.R, step.t, cfg)
        if fit is not None and fit.ok:
            errors.append(fit.baseline_m / np.linalg.norm(poses[i + 5][:, 3] - poses[i][:, 3]) - 1)
    assert len(errors) >= 7
    assert abs(np.median(errors)) < 0.1


def test_kitti_road_at_full_resolution():
    """A camera at KITTI's full resolution (the stored half resolution upsampled 2x) gives the same
    step length: its road band has more pixels than OpenCV's remap takes in one row (32767)."""
    seq = KITTI / "00_head"
    fx, fy, cx, cy = np.loadtxt(seq / "calib.txt", max_rows=1)[:4]
    images = sorted((seq / "images").iterdir())
    a, b = (cv2.imread(str(images[k]), cv2.IMREAD_GRAYSCALE) for k in (40, 45))
    vo, cfg = ClassicalVO((fx, fy, cx, cy)), RoadPlaneConfig()
    step = vo.pose_from_matches(vo.matches(vo.features(a), vo.features(b)))
    half = fit_road(road_image(a, cfg), road_image(b, cfg), np.array([[fx, 0, cx], [0, fy, cy], [0, 0, 1.0]]),
                    step.R, step.t, cfg)
    big = [cv2.resize(im, None, fx=2, fy=2, interpolation=cv2.INTER_LINEAR) for im in (a, b)]
    K2 = np.array([[2 * fx, 0, 2 * cx + 0.5], [0, 2 * fy, 2 * cy + 0.5], [0, 0, 1.0]])
    full = fit_road(road_image(big[0], cfg), road_image(big[1], cfg), K2, step.R, step.t, cfg)
    assert half.ok and full.ok
    assert full.baseline_m == pytest.approx(half.baseline_m, rel=0.03)


def test_kitti_road_lengths_hardly_depend_on_the_assumed_pitch(shared_data):
    """With the ground-truth motion of 1 s steps on 07_head (a labelled training sequence): under a
    tight tilt prior (3 degrees) the road's lengths follow the pitch the camera is assumed to have, a
    level camera making them too long by several percent and the labelled heads' pitch leaving none;
    under the default loose prior the road finds its own normal, and an assumed pitch anywhere from
    level to a degree down moves the lengths a fraction as much."""
    from lapose_core import KITTI_CAMERA_HEIGHT_M, LABELLED_KITTI_PITCH_DEG

    seq = shared_data / "kitti" / "07_head"
    fx, fy, cx, cy = np.loadtxt(seq / "calib.txt", max_rows=1)[:4]
    Kk = np.array([[fx, 0, cx], [0, fy, cy], [0, 0, 1.0]])
    poses = np.tile(np.eye(4), (160, 1, 1))
    poses[:, :3] = np.loadtxt(seq / "poses.txt").reshape(-1, 3, 4)
    images = sorted((seq / "images").iterdir())

    def median_error(prior: float, pitch: float) -> float:
        cfg = RoadPlaneConfig(camera_height_m=KITTI_CAMERA_HEIGHT_M, pitch_deg=pitch, tilt_prior_deg=prior)
        errors = []
        for i in range(0, 149, 6):
            a, b = (road_image(cv2.imread(str(images[k]), cv2.IMREAD_GRAYSCALE), cfg) for k in (i, i + 10))
            motion = np.linalg.inv(poses[i + 10]) @ poses[i]  # x_b = R x_a + t
            length = np.linalg.norm(motion[:3, 3])
            fit = fit_road(a, b, Kk, motion[:3, :3], motion[:3, 3] / length, cfg)
            if fit is not None and fit.ok:
                errors.append(fit.baseline_m / length - 1)
        assert len(errors) >= 20
        return float(np.median(errors))

    tight = {pitch: median_error(3.0, pitch) for pitch in (0.0, LABELLED_KITTI_PITCH_DEG, 1.0)}
    assert tight[0.0] > 0.03 and abs(tight[LABELLED_KITTI_PITCH_DEG]) < 0.015 and tight[1.0] < -0.03
    loose = {pitch: median_error(RoadPlaneConfig.tilt_prior_deg, pitch) for pitch in (0.0, 1.0)}
    assert RoadPlaneConfig.tilt_prior_deg >= 10
    assert abs(loose[0.0] - loose[1.0]) < 0.4 * (tight[0.0] - tight[1.0])
    assert all(abs(v) < 0.06 for v in loose.values())


def test_camera_mount_from_its_pose_in_the_base_frame():
    """The node's camera-to-base transform and the base's height above the road give the road scale
    its mount: a camera 1.2 m up a base 0.45 m above the road, pitched 3 degrees down, is 1.65 m up
    and 3 degrees down; a mount the road fit cannot use is refused with the reason."""
    from transforms3d.euler import euler2mat

    from lapose_core.road_plane import MountError, mount_from_camera_pose
    from lapose_ros.odometry import default_camera_to_base

    def mounted(z, pitch_deg=0.0, roll_deg=0.0):
        T = default_camera_to_base()  # optical axis along the base's x, level
        # REP-103 body frame: a positive turn about y tips the nose (x) down, about x rolls.
        T[:3, :3] = euler2mat(math.radians(roll_deg), math.radians(pitch_deg), 0.0, "sxyz") @ T[:3, :3]
        T[2, 3] = z
        return T

    level = mount_from_camera_pose(mounted(1.2), 0.45)
    assert (level.height_m, level.pitch_deg, level.roll_deg) == pytest.approx((1.65, 0.0, 0.0), abs=1e-12)
    pitched = mount_from_camera_pose(mounted(1.2, pitch_deg=3.0), 0.45)
    assert (pitched.height_m, pitched.pitch_deg) == pytest.approx((1.65, 3.0), abs=1e-9)
    # The mount's pitch is the road normal the fit expects: (0, cos p, sin p) in the optical frame.
    down = mounted(1.2, pitch_deg=3.0)[:3, :3].T @ np.array([0.0, 0.0, -1.0])
    assert down == pytest.approx(expected_normal(RoadPlaneConfig(pitch_deg=pitched.pitch_deg)), abs=1e-12)
    assert mount_from_camera_pose(mounted(1.2, roll_deg=1.5), 0.45).roll_deg == pytest.approx(1.5)
    with pytest.raises(MountError, match="above the road"):
        mount_from_camera_pose(mounted(-0.5), 0.45)
    with pytest.raises(MountError, match="rolled 5.0 degrees"):
        mount_from_camera_pose(mounted(1.2, roll_deg=5.0), 0.45)
    with pytest.raises(MountError, match="below the road plane"):
        mount_from_camera_pose(mounted(1.2, pitch_deg=60.0), 0.45)
