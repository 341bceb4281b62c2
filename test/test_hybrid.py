"""The hybrid estimator (feature geometry checked against LA-Pose) on real frames and on bad input.

Every bad input of the issue gets a test: black, uniform, blurred and duplicated frames, a window of
pure rotation, wrong and missing intrinsics. Frames without features make the hybrid fall back to
LA-Pose's own step for the affected pairs and say why; frames that show no baseline (a duplicate, a
camera turning on the spot, a standing car) give the measured rotation and no translation. Motion is
always finite.
"""
import cv2
import numpy as np
import pytest

from lapose_core import ASSETS_DIR
from lapose_core.data.sources import KittiSequence
from lapose_core.eval import metrics, prior
from lapose_core.eval.classical import classical_window
from lapose_core.eval.evaluate import eval_windows
from lapose_core.hybrid import HybridConfig, HybridError, HybridEstimator, intrinsics_from_fov
from lapose_core.inference import PoseEstimator
from lapose_core.stream import stream_poses

SAMPLE = ASSETS_DIR / "sample_sequence"


@pytest.fixture(scope="module")
def lapose():
    return PoseEstimator.load()


@pytest.fixture(scope="module")
def sample():
    seq = KittiSequence(SAMPLE)
    idx = eval_windows(seq, 2.0, 16, 1.0)[0]
    return seq, idx, [seq.read(int(i)) for i in idx]


def rgb(gray_or_rgb: np.ndarray) -> np.ndarray:
    return gray_or_rgb if gray_or_rgb.ndim == 3 else np.repeat(gray_or_rgb[..., None], 3, -1)


def assert_finite(p):
    assert p.finite and np.isfinite(p.poses).all() and p.scale > 0


def test_geometry_sets_rotation_and_direction_lapose_the_scale(lapose, sample):
    seq, idx, images = sample
    hybrid = HybridEstimator(lapose)
    p = hybrid.predict_window(images, seq.timestamps[idx], intrinsics=seq.intrinsics)
    assert_finite(p)
    assert p.fallbacks == 0 and p.intrinsics_source == "given"
    gt = metrics.relative_to_first(seq.poses[idx])
    classical = metrics.compose_steps(classical_window(images, seq.intrinsics).relative)
    pair_h, pair_c = metrics.pose_pair_errors(p.poses, gt), metrics.pose_pair_errors(classical, gt)
    # Same rotations and directions as the classical pipeline (to the step-length profile) ...
    assert metrics.auc(pair_h, 5) >= metrics.auc(pair_c, 5) - 0.02
    # ... far better than LA-Pose alone, and in metres: its mean step is LA-Pose's scale.
    assert metrics.auc(pair_h, 5) > metrics.auc(metrics.pose_pair_errors(p.lapose.poses, gt), 5)
    assert metrics.mean_step_length(p.poses) == pytest.approx(p.lapose.scale, rel=1e-9)


def test_constant_speed_and_ground_plane_scales(lapose, sample):
    seq, idx, images = sample
    stamps = seq.timestamps[idx]
    const = HybridEstimator(lapose, HybridConfig(scale_source="constant", constant_speed_mps=10.0))
    p = const.predict_window(images, stamps, intrinsics=seq.intrinsics)
    assert metrics.mean_step_length(p.poses) == pytest.approx(10.0 * np.diff(stamps).mean())
    ground = HybridEstimator(lapose, HybridConfig(scale_source="ground", camera_height_m=1.65))
    g = ground.predict_window(images, stamps, intrinsics=seq.intrinsics)
    assert_finite(g)
    # The KITTI camera is 1.65 m above the road: the road of this rural stretch gives the window's
    # metric scale, from the images alone.
    assert g.scale_source == "ground plane"
    true_step = metrics.mean_step_length(metrics.relative_to_first(seq.poses[idx]))
    assert g.scale / true_step == pytest.approx(1.0, abs=0.1)
    assert metrics.mean_step_length(g.poses) == pytest.approx(g.scale, rel=1e-9)
    with pytest.raises(HybridError, match="camera_height_m"):
        HybridConfig(scale_source="ground").validate()
    # The node, the demo and the benchmark build their hybrid from the camera's mounting here.
    assert HybridConfig.for_camera(0.0).scale_source == "lapose"
    assert HybridConfig.for_camera(None).camera_height_m is None
    mounted = HybridConfig.for_camera(1.65, 2.0).validate()
    assert (mounted.scale_source, mounted.camera_height_m, mounted.camera_pitch_deg) == ("ground", 1.65, 2.0)
    with pytest.raises(HybridError, match="camera_pitch_deg"):
        HybridConfig(scale_source="ground", camera_height_m=1.65, camera_pitch_deg=80.0).validate()


def test_a_mount_set_later_gives_the_road_scale_of_a_hybrid_built_with_it(lapose, sample):
    """The node learns the camera's mount from TF after it built its hybrid: set then, the mount
    gives what a hybrid built with it gives, bit for bit, although the keyframes' pairs were
    matched and their road aligned for the mount before (they are matched again)."""
    seq, idx, images = sample
    stamps = seq.timestamps[idx]
    later = HybridEstimator(lapose, HybridConfig.for_camera(1.2), intrinsics=seq.intrinsics)
    frames = [later.encode_frame(im) for im in images]
    before = later.predict_features(frames, stamps)
    later.set_camera_mount(1.65, 0.5)
    after = later.predict_features(frames, stamps)
    built = HybridEstimator(lapose, HybridConfig.for_camera(1.65, 0.5), intrinsics=seq.intrinsics)
    expected = built.predict_window(images, stamps)
    assert after.scale_source == expected.scale_source == "ground plane"
    np.testing.assert_array_equal(after.relative, expected.relative)
    # The road's lengths scale with the height: not the lengths of the mount before.
    assert after.scale / before.scale == pytest.approx(1.65 / 1.2, rel=0.05)
    with pytest.raises(HybridError, match="camera_pitch_deg"):
        later.set_camera_mount(1.65, 60.0)


def test_a_large_camera_image_is_shrunk_for_the_geometry(lapose, sample):
    """A 1.05 MP camera (the sample upsampled 3x) is seen by the geometry at max_geometry_pixels,
    with its intrinsics scaled to match: the motion is the sample's own within half a degree a step
    and the same AUC@5, and the road gives the same scale."""
    seq, idx, images = sample
    stamps = seq.timestamps[idx]
    big = [cv2.resize(im, None, fx=3, fy=3, interpolation=cv2.INTER_LINEAR) for im in images]
    fx, fy, cx, cy = seq.intrinsics[:4]
    big_K = (3 * fx, 3 * fy, 3 * (cx + 0.5) - 0.5, 3 * (cy + 0.5) - 0.5)
    config = HybridConfig.for_camera(1.65)
    small = HybridEstimator(lapose, config).predict_window(images, stamps, intrinsics=seq.intrinsics)
    shrunk = HybridEstimator(lapose, config)
    p = shrunk.predict_window(big, stamps, intrinsics=big_K)
    gh, gw = shrunk._geometry_size(big[0].shape[:2])
    assert gh * gw <= config.max_geometry_pixels < big[0].shape[0] * big[0].shape[1]
    assert shrunk._vo.K[0, 0] == pytest.approx(3 * fx * gw / big[0].shape[1])
    assert p.intrinsics == big_K and p.scale_source == "ground plane"
    gt = metrics.relative_to_first(seq.poses[idx])
    auc_big, auc_small = (metrics.auc(metrics.pose_pair_errors(q.poses, gt), 5) for q in (p, small))
    turns = [metrics.rotation_angle_deg(a[:3, :3].T @ b[:3, :3]) for a, b in zip(p.relative, small.relative)]
    assert auc_big == pytest.approx(auc_small, abs=0.03) and max(turns) < 0.5
    assert p.scale == pytest.approx(small.scale, rel=0.03)
    with pytest.raises(HybridError, match="max_geometry_pixels"):
        HybridConfig(max_geometry_pixels=0).validate()


@pytest.mark.parametrize("kind", ["black", "uniform", "blurred", "duplicated"])
def test_bad_frames_fall_back_and_say_why(lapose, sample, kind):
    seq, idx, images = sample
    images = list(images)
    k = 8
    if kind == "black":
        images[k] = np.zeros_like(images[k])
    elif kind == "uniform":
        images[k] = np.full_like(images[k], 128)
    elif kind == "blurred":
        images[k] = cv2.blur(images[k], (41, 41))
    else:
        images[k] = images[k - 1]
    p = HybridEstimator(lapose).predict_window(images, seq.timestamps[idx], intrinsics=seq.intrinsics)
    assert_finite(p)
    reasons = {j: c.reason for j, c in enumerate(p.checks) if not c.ok}
    if kind == "duplicated":  # the step into the copy has no motion at all: a standing step
        assert reasons == {} and [j for j, c in enumerate(p.checks) if c.standing] == [k - 1]
        np.testing.assert_allclose(p.relative[k - 1], np.eye(4), atol=1e-6)
        assert np.linalg.norm(p.relative[k, :3, 3]) > 0  # and the step out of it moves again
    else:  # both steps touching the bad frame, and only those
        assert set(reasons) == {k - 1, k}
        # A black or uniform frame has no features; a blurred one keeps a few, whose spurious
        # essential matrix (18 inliers into it here) is caught by its rotation, far from LA-Pose's.
        failed = {"inliers", "no geometry"} | ({"rotation gap"} if kind == "blurred" else set())
        assert {p.checks[j].failed_check for j in reasons} <= failed
        assert all(("inliers" in r or "no essential matrix" in r or "from LA-Pose's" in r)
                   for r in reasons.values())
    for j in reasons:  # a fallback step is LA-Pose's own rotation
        np.testing.assert_allclose(p.relative[j, :3, :3], p.lapose.relative[j, :3, :3], atol=1e-9)


def test_pure_rotation_window_is_rotation_without_translation(lapose, sample):
    """A camera turning on the spot: frames warped from one image by K R K^-1, no parallax. Geometry
    measures each 0.8 degree turn and no translation; nothing falls back to LA-Pose."""
    seq, idx, images = sample
    fx, fy, cx, cy = seq.intrinsics
    K = np.array([[fx, 0, cx], [0, fy, cy], [0, 0, 1.0]])
    base = images[0]
    frames = []
    for k in range(16):
        yaw = np.radians(0.8 * k)
        R = np.array([[np.cos(yaw), 0, np.sin(yaw)], [0, 1, 0], [-np.sin(yaw), 0, np.cos(yaw)]])
        frames.append(cv2.warpPerspective(base, K @ R.T @ np.linalg.inv(K), base.shape[1::-1]))
    p = HybridEstimator(lapose).predict_window(frames, seq.timestamps[idx], intrinsics=seq.intrinsics)
    assert p.finite and np.isfinite(p.poses).all()
    assert p.standing == 15 and p.fallbacks == 0
    assert p.scale == 0.0 and np.abs(p.poses[:, :3, 3]).max() == 0.0
    np.testing.assert_allclose(metrics.rotation_angle_deg(p.relative[:, :3, :3]), 0.8, atol=0.05)
    np.testing.assert_allclose(metrics.rotation_angle_deg(p.poses[-1, :3, :3]), 12.0, atol=0.2)


def test_standing_camera_with_sensor_noise_does_not_move(lapose, sample):
    """A car at a red light: one view, every frame with its own sensor noise and exposure. Every
    step is a standing step and the window does not move, whatever LA-Pose's own scale says."""
    seq, idx, images = sample
    rng = np.random.default_rng(0)
    frames = [np.clip(images[0] * rng.uniform(0.9, 1.1) + rng.normal(0, 3, images[0].shape), 0, 255
                      ).astype(np.uint8) for _ in range(16)]
    p = HybridEstimator(lapose).predict_window(frames, seq.timestamps[idx], intrinsics=seq.intrinsics)
    assert p.standing == 15 and p.fallbacks == 0 and p.scale == 0.0
    assert np.abs(p.poses[:, :3, 3]).max() == 0.0
    assert metrics.rotation_angle_deg(p.poses[-1, :3, :3]) < 0.2
    assert p.lapose.scale > 0  # LA-Pose alone would have moved


def test_wrong_and_missing_intrinsics(lapose, sample):
    seq, idx, images = sample
    stamps = seq.timestamps[idx]
    hybrid = HybridEstimator(lapose)
    wrong = list(seq.intrinsics)
    wrong[0] = wrong[1] = 5 * wrong[0]  # a 5x focal length: a field of view LA-Pose contradicts
    p = hybrid.predict_window(images, stamps, intrinsics=wrong)
    assert p.intrinsics_source.startswith("lapose fov (given fx")
    missing = hybrid.predict_window(images, stamps)
    assert missing.intrinsics_source == "lapose fov"
    gt = metrics.relative_to_first(seq.poses[idx])
    auc5 = lambda poses: metrics.auc(metrics.pose_pair_errors(poses, gt), 5)  # noqa: E731
    straight_ahead = prior.score_prior([gt])["auc5"]  # 0.47 on this window; 0.82 with LA-Pose's fov
    for q in (p, missing):
        assert_finite(q)
        expected = intrinsics_from_fov(q.fov, images[0].shape[:2], (96, 256))
        np.testing.assert_allclose(q.intrinsics, expected)
        # LA-Pose's field of view is close enough for the geometry to carry the window.
        assert auc5(q.poses) > straight_ahead + 0.25
    # Where the given intrinsics are wrong, LA-Pose read with them is misled; the hybrid is not.
    assert auc5(p.poses) > auc5(p.lapose.poses) + 0.1


def test_stream_is_what_the_node_publishes(lapose, sample):
    """stream_poses (lapose eval --trajectory) and VisualOdometry (the node) give one trajectory."""
    from lapose_ros.odometry import VisualOdometry

    seq, _, _ = sample
    frames = [(float(seq.timestamps[i]), rgb(seq.read(i))) for i in range(100)]
    stamps, poses, _ = stream_poses(HybridEstimator(lapose), frames, 2.0, intrinsics=seq.intrinsics)
    vo = VisualOdometry(HybridEstimator(lapose, intrinsics=seq.intrinsics), fps=2.0,
                        camera_to_base=np.eye(4))
    published = {}
    for stamp, image in frames:
        estimate = vo.process(stamp, image).estimate
        for s, pose in (estimate.new_keyframes if estimate else []):
            published[s] = pose
    assert len(stamps) == len(published) >= 17
    np.testing.assert_allclose(np.stack([published[s] for s in stamps]), poses, atol=1e-9)


def test_eval_command_hybrid_with_streamed_trajectory(shared_data, tmp_path, capsys):
    import argparse
    import json

    from lapose_core.eval.cli import register

    parser = argparse.ArgumentParser(prog="lapose")
    register(parser.add_subparsers(dest="command", required=True))
    out, tum = tmp_path / "h.json", tmp_path / "h.tum"
    args = parser.parse_args(["eval", "--data", str(shared_data / "kitti" / "06_head"), "--method", "hybrid",
                              "--fps", "4", "--max-windows", "1", "--json", str(out), "--trajectory", str(tum)])
    assert args.func(args) == 0
    result = json.loads(out.read_text())
    assert result["method"] == "hybrid" and result["windows"] == 1 and result["ate_m"] > 0
    assert result["failed_steps"] == 0 and result["failed_checks"] == {}
    assert result["prior"]["auc5"] < result["auc5"]
    rows = np.loadtxt(tum)
    assert rows.shape[1] == 8 and len(rows) >= 16 and np.all(np.diff(rows[:, 0]) > 0)
    assert "streamed trajectory" in capsys.readouterr().out
    args = parser.parse_args(["eval", "--data", str(shared_data / "kitti" / "06_head"), "--method", "hybrid",
                              "--scale-source", "ground"])
    assert args.func(args) == 2 and "camera_height_m" in capsys.readouterr().err
