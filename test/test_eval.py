"""Pose metrics, the classical baseline, ``evaluate_sequence`` and the ``eval`` / ``bench-eval`` commands."""
import argparse
import copy
import json
import shutil

import numpy as np
import pytest
from transforms3d.euler import euler2mat

from lapose_core.data.sources import DataError, KittiSequence
from lapose_core.data.windows import window_indices
from lapose_core.eval import metrics
from lapose_core.eval.classical import classical_window
from lapose_core.eval.cli import register
from lapose_core.eval.evaluate import EvalError, evaluate_sequence

REQUIRED_JSON_KEYS = {"method", "checkpoint", "data", "fps", "windows", "auc5", "auc30", "ate_s",
                      "ate_m", "skipped_stationary", "per_window"}


def pose(R=np.eye(3), t=(0.0, 0.0, 0.0)) -> np.ndarray:
    P = np.eye(4)
    P[:3, :3] = R
    P[:3, 3] = t
    return P


def forward_line(n: int, step: float = 1.0) -> np.ndarray:
    """Camera driving straight ahead (along its own z axis) without turning."""
    return np.stack([pose(t=(0.0, 0.0, step * k)) for k in range(n)])


def perturb(poses: np.ndarray, seed: int, rot_deg: float = 2.0, pos_m: float = 0.3) -> np.ndarray:
    rng = np.random.default_rng(seed)
    out = poses.copy()
    for P in out:
        P[:3, :3] = euler2mat(*np.radians(rng.normal(0, rot_deg, 3))) @ P[:3, :3]
        P[:3, 3] += rng.normal(0, pos_m, 3)
    return out


@pytest.fixture(scope="module")
def kitti03(shared_data):
    return KittiSequence(shared_data / "kitti" / "03_head")


def window_of(seq, fps, start):
    idx = window_indices(seq.timestamps, fps, 16, start)
    assert idx is not None
    return idx


def make_parser():
    parser = argparse.ArgumentParser(prog="lapose")
    register(parser.add_subparsers(dest="command", required=True))
    return parser


# ---------------------------------------------------------------- metric definitions

def test_perfect_prediction_in_another_world_frame_scores_perfectly(kitti03):
    gt = kitti03.poses[window_of(kitti03, 2.0, 120)]
    world_change = pose(euler2mat(0.3, -1.1, 0.7), (12.0, -3.0, 40.0))
    pred = world_change @ gt
    errors = metrics.pose_pair_errors(pred, gt)
    assert errors.shape == (16 * 15 // 2,)
    assert errors.max() < 1e-4
    assert metrics.auc(errors, 5) == 1.0 and metrics.auc(errors, 30) == 1.0
    assert metrics.ate_s(pred, gt) < 1e-9
    assert metrics.ate_m(pred, gt) < 1e-9


def test_known_rotation_error_gives_exact_pair_errors_and_auc():
    gt = forward_line(4)
    # Pred rolls 10 degrees per frame about the optical axis: pair (i, j) is off by 10 (j - i) degrees
    # in rotation and not at all in translation direction (a roll keeps the z axis).
    pred = np.stack([pose(euler2mat(0, 0, np.radians(10 * k)), (0, 0, k)) for k in range(4)])
    rot, trans = metrics.pair_errors(pred, gt)
    i, j = np.triu_indices(4, 1)
    np.testing.assert_allclose(rot, 10.0 * (j - i), atol=1e-9)
    np.testing.assert_allclose(trans, 0.0, atol=1e-6)
    errors = metrics.pose_pair_errors(pred[:2], gt[:2])
    np.testing.assert_allclose(errors, [10.0], atol=1e-9)
    assert metrics.auc(errors, 5) == 0.0
    # One pair off by exactly 10 degrees: AUC@30 = mean over t=1..30 of [10 < t] = 20/30.
    assert metrics.auc(np.array([10.0]), 30) == pytest.approx(20 / 30)
    # Pooled thresholds: a 0.5 degree error is under every threshold, a 3.5 degree one under 4 and 5.
    assert metrics.auc(np.array([0.5, 3.5]), 5) == pytest.approx((5 + 2) / 10)


def test_known_translation_direction_error():
    gt = forward_line(5)
    direction = euler2mat(0, np.radians(30), 0) @ np.array([0.0, 0.0, 1.0])  # 30 degrees to the right
    pred = np.stack([pose(t=direction * 2.0 * k) for k in range(5)])  # different length: irrelevant
    rot, trans = metrics.pair_errors(pred, gt)
    np.testing.assert_allclose(rot, 0.0, atol=1e-9)
    np.testing.assert_allclose(trans, 30.0, atol=1e-6)
    # Driving backwards is a 180 degree error; VGGT's folded variant forgives it.
    backwards = forward_line(5, step=-1.0)
    np.testing.assert_allclose(metrics.pair_errors(backwards, gt)[1], 180.0, atol=1e-6)
    np.testing.assert_allclose(metrics.pair_errors(backwards, gt, fold_sign=True)[1], 0.0, atol=1e-6)


def test_zero_translation_is_handled_without_nan():
    still = np.stack([np.eye(4)] * 3)
    moving = forward_line(3)
    _, both_still = metrics.pair_errors(still, still)
    np.testing.assert_array_equal(both_still, 0.0)
    _, one_still = metrics.pair_errors(still, moving)
    np.testing.assert_array_equal(one_still, 180.0)
    assert metrics.is_stationary(still) and not metrics.is_stationary(moving)
    with pytest.raises(metrics.MetricError, match="without motion"):
        metrics.ate_s(moving, still)


def test_ate_s_is_scale_invariant_and_ate_m_is_not(kitti03):
    gt = kitti03.poses[window_of(kitti03, 2.0, 200)]
    noisy = perturb(metrics.relative_to_first(gt), seed=1)
    scaled = noisy.copy()
    scaled[:, :3, 3] *= 3.7
    moved = pose(euler2mat(0.2, 0.5, -0.4), (5.0, 1.0, -2.0)) @ scaled  # plus a rigid change of world
    assert metrics.ate_s(moved, gt) == pytest.approx(metrics.ate_s(noisy, gt), rel=1e-9)
    assert metrics.ate_s(noisy, gt) > 1e-3
    assert metrics.ate_m(moved, gt) > 5 * metrics.ate_m(noisy, gt)


def test_bad_pose_arrays_are_rejected():
    with pytest.raises(metrics.MetricError, match="differ in length"):
        metrics.pose_pair_errors(forward_line(4), forward_line(5))
    with pytest.raises(metrics.MetricError, match=r"shape \(T, 4, 4\)"):
        metrics.ate_m(np.zeros((4, 3, 4)), forward_line(4))
    with pytest.raises(metrics.MetricError, match="positive integer"):
        metrics.auc(np.ones(3), 2.5)


@pytest.mark.parametrize("start", [0, 150, 330])
def test_ate_matches_evo_ape_on_real_windows(kitti03, start):
    from evo.core import metrics as evo_metrics
    from evo.core.trajectory import PosePath3D

    gt = kitti03.poses[window_of(kitti03, 2.0, start)]
    pred = perturb(metrics.relative_to_first(gt), seed=start, rot_deg=3.0, pos_m=0.8)

    def evo_rmse(pred_xyz, gt_xyz):
        def path(xyz):
            return PosePath3D(poses_se3=[pose(t=p) for p in xyz])
        ref, est = path(gt_xyz), path(pred_xyz)
        est.align(copy.deepcopy(ref), correct_scale=False)
        ape = evo_metrics.APE(evo_metrics.PoseRelation.translation_part)
        ape.process_data((ref, est))
        return ape.get_statistic(evo_metrics.StatisticsType.rmse)

    pred_xyz, gt_xyz = metrics.positions_from_first(pred), metrics.positions_from_first(gt)
    assert metrics.ate_m(pred, gt) == pytest.approx(evo_rmse(pred_xyz, gt_xyz), rel=1e-6)
    assert metrics.ate_s(pred, gt) == pytest.approx(
        evo_rmse(metrics.unit_mean_distance(pred_xyz), metrics.unit_mean_distance(gt_xyz)), rel=1e-6)


# ---------------------------------------------------------------- classical baseline

def test_classical_vo_beats_random_rotations_on_real_window(kitti03):
    idx = window_of(kitti03, 2.0, 100)
    gt = kitti03.poses[idx]
    result = classical_window([kitti03.read(int(i)) for i in idx], kitti03.intrinsics)
    assert result.relative.shape == (15, 4, 4)
    assert result.failures == 0
    np.testing.assert_allclose(np.linalg.norm(result.relative[:, :3, 3], axis=-1).mean(), 1.0)
    classical_auc30 = metrics.auc(metrics.pose_pair_errors(metrics.compose_steps(result.relative), gt), 30)

    rng = np.random.default_rng(0)
    random_steps = np.stack([pose(euler2mat(*rng.uniform(-np.pi, np.pi, 3)), rng.normal(size=3))
                             for _ in range(15)])
    random_auc30 = metrics.auc(metrics.pose_pair_errors(metrics.compose_steps(random_steps), gt), 30)
    assert classical_auc30 > 0.8
    assert classical_auc30 > random_auc30 + 0.5


@pytest.mark.parametrize("a, b, max_rot_err, max_dir_err", [(0, 10, 2.0, 5.0), (107, 116, 3.0, 8.0)],
                         ids=["start", "sharp_turn"])
def test_classical_pair_survives_a_five_point_solver_failure(shared_data, a, b, max_rot_err, max_dir_err):
    """Two 1 fps pairs of 00_head on which OpenCV's classic five-point RANSAC raises (a degenerate
    minimal sample): the estimate still comes, and it is close (the turn is 30 degrees in one step;
    LA-Pose, the hybrid's fallback, misses such a step by tens of degrees)."""
    from lapose_core.eval.classical import ClassicalVO

    seq = KittiSequence(shared_data / "kitti" / "00_head")
    vo = ClassicalVO(seq.intrinsics)
    step = vo.two_view(vo.features(seq.read(a)), vo.features(seq.read(b)))
    assert step.ok and step.inliers >= 40
    true = np.linalg.inv(seq.poses[a]) @ seq.poses[b]  # frame b in frame a
    estimated = step.R.T  # x_b = R x_a + t
    assert metrics.rotation_angle_deg(true[:3, :3].T @ estimated) < max_rot_err
    direction = -step.R.T @ step.t
    cos = direction @ true[:3, 3] / np.linalg.norm(true[:3, 3])
    assert np.degrees(np.arccos(min(1.0, cos))) < max_dir_err
    again = vo.two_view(vo.features(seq.read(a)), vo.features(seq.read(b)))
    assert np.array_equal(again.R, step.R) and again.inliers == step.inliers  # deterministic


# ---------------------------------------------------------------- evaluate_sequence

def test_evaluate_classical_on_01_head_at_4fps(shared_data):
    result = evaluate_sequence(shared_data / "kitti" / "01_head", method="classical", fps=4.0,
                               max_windows=2)
    assert result.windows == 2 and len(result.per_window) == 2
    assert result.checkpoint is None and result.ate_m is None
    assert result.auc30 > 0.8 and 0 <= result.auc5 <= 1
    assert 0 < result.ate_s < 0.2
    w = result.per_window[0]
    assert w.gt_poses.shape == w.pred_poses.shape == (16, 4, 4)
    np.testing.assert_allclose(w.gt_poses[0], np.eye(4), atol=1e-12)
    pooled = np.concatenate([w.pair_errors for w in result.per_window])
    assert result.auc5 == pytest.approx(metrics.auc(pooled, 5))


def test_evaluate_lapose_random_weights_on_03_head(shared_data):
    from lapose_core.inference import PoseEstimator

    estimator = PoseEstimator.random(preset="tiny", seed=0)
    result = evaluate_sequence(shared_data / "kitti" / "03_head", method="lapose",
                               estimator=estimator, fps=2.0, stride_s=5.0, max_windows=2)
    assert result.windows == 2 and result.checkpoint == estimator.checkpoint_name
    assert result.ate_m is not None and np.isfinite(result.ate_m) and np.isfinite(result.ate_s)
    assert result.ate_m == pytest.approx(np.mean([w.ate_m for w in result.per_window]))
    # Random weights know nothing about motion: far from what the classical method reaches.
    assert result.auc5 < 0.5


def _fake_sequence(tmp_path, source, poses_lines=None):
    """A KITTI folder reusing the real images, with poses.txt cut to ``poses_lines`` (None: no file)."""
    seq = tmp_path / "seq"
    seq.mkdir()
    (seq / "images").symlink_to(source / "images")
    shutil.copy(source / "times.txt", seq)
    shutil.copy(source / "calib.txt", seq)
    if poses_lines is not None:
        lines = (source / "poses.txt").read_text().splitlines()[:poses_lines]
        (seq / "poses.txt").write_text("\n".join(lines) + "\n")
    return seq


def test_folder_without_poses_is_an_error_naming_the_file(shared_data, tmp_path):
    seq = _fake_sequence(tmp_path, shared_data / "kitti" / "06_head")
    with pytest.raises(EvalError, match=r"seq/poses\.txt: missing"):
        evaluate_sequence(seq, method="classical")


def test_mismatched_pose_count_is_an_error_naming_the_file(shared_data, tmp_path):
    seq = _fake_sequence(tmp_path, shared_data / "kitti" / "06_head", poses_lines=40)
    with pytest.raises(DataError, match=r"seq/poses\.txt: 40 poses but times\.txt has 51 frames"):
        evaluate_sequence(seq, method="classical")


def test_sequence_too_short_says_how_long_it_is(shared_data):
    with pytest.raises(EvalError, match=r"01_head/times\.txt: sequence is 5\.19 s long .* spans 7\.50 s"):
        evaluate_sequence(shared_data / "kitti" / "01_head", method="classical", fps=2.0)


# ---------------------------------------------------------------- commands

def test_eval_command_writes_json_and_plots(shared_data, tmp_path, capsys):
    out = tmp_path / "result.json"
    args = make_parser().parse_args([
        "eval", "--data", str(shared_data / "kitti" / "01_head"), "--method", "classical",
        "--fps", "4", "--max-windows", "1", "--json", str(out), "--plots", str(tmp_path / "plots")])
    assert args.func(args) == 0
    printed = capsys.readouterr().out
    for label in ("method", "AUC@5", "AUC@30", "ATE-S", "ATE-M", "windows", "skipped"):
        assert label in printed
    result = json.loads(out.read_text())
    assert REQUIRED_JSON_KEYS <= set(result)
    assert result["method"] == "classical" and result["windows"] == 1 and result["fps"] == 4.0
    assert {"auc5", "ate_s"} <= set(result["per_window"][0])
    pngs = sorted(p.name for p in (tmp_path / "plots").glob("*.png"))
    assert "auc5_per_window.png" in pngs and len(pngs) == 4
    assert all((tmp_path / "plots" / p).stat().st_size > 10_000 for p in pngs)


def test_eval_command_reports_user_errors_without_traceback(shared_data, tmp_path, capsys):
    parser = make_parser()
    args = parser.parse_args(["eval", "--data", str(shared_data / "kitti" / "01_head"),
                              "--method", "classical", "--fps", "2"])
    assert args.func(args) == 2
    assert "01_head/times.txt: sequence is 5.19 s long" in capsys.readouterr().err
    args = parser.parse_args(["eval", "--data", str(shared_data / "kitti" / "01_head"),
                              "--checkpoint", str(tmp_path / "missing_run")])
    assert args.func(args) == 2
    assert "missing_run" in capsys.readouterr().err


def test_bench_eval_prints_windows_per_second(shared_data, capsys):
    args = make_parser().parse_args(["bench-eval", "--data", str(shared_data / "kitti" / "01_head"),
                                     "--fps", "4", "--windows", "1"])
    assert args.func(args) == 0
    lines = capsys.readouterr().out.splitlines()
    rows = {line.split()[0]: line.split() for line in lines[2:]}
    assert set(rows) == {"lapose", "classical"}
    assert all(float(row[-1]) > 0 for row in rows.values())


def test_trajectory_plot_rejects_mismatched_lengths(tmp_path):
    from lapose_core.eval.plots import plot_window_trajectories

    with pytest.raises(ValueError, match="'lapose' has 3 poses but the ground truth 4"):
        plot_window_trajectories(forward_line(4), {"lapose": forward_line(3)}, tmp_path / "x.png")
