"""``lapose diagnose`` and the straight-ahead prior, on real KITTI windows."""
import argparse
import hashlib
import json

import numpy as np
import pytest

from lapose_core.data.sources import KittiSequence
from lapose_core.eval import metrics, prior
from lapose_core.eval.cli import register
from lapose_core.eval.diagnose import correlation, diagnose_sequence, step_angles_deg
from lapose_core.eval.evaluate import eval_windows

REQUIRED_KEYS = {"windows", "auc5", "ate_s", "yaw_corr", "yaw_mae_deg", "static_step_ratio",
                 "reversed_yaw_corr", "prior_auc5", "prior_ate_s"}


def oracle_for(seq: KittiSequence):
    """A perfect predictor: recognises each frame and returns its ground-truth pose."""
    by_content = {hashlib.sha1(seq.read(i).tobytes()).hexdigest(): i for i in range(len(seq))}

    def predict(images, stamps):
        idx = [by_content[hashlib.sha1(im.tobytes()).hexdigest()] for im in images]
        return metrics.relative_to_first(seq.poses[idx]), {}
    return predict


def with_each_step(predictor, change):
    """``predictor`` with ``change`` applied in place to each of its steps (frame k+1 in frame k)."""
    def predict(images, stamps):
        poses, failed = predictor(images, stamps)
        steps = metrics.step_motions(poses)
        for step in steps:
            change(step)
        return metrics.compose_steps(steps), failed
    return predict


def prior_predictor(images, stamps):
    return prior.straight_ahead_poses(len(images)), {}


def test_step_angles_follow_the_camera_axes():
    from transforms3d.euler import euler2mat

    poses = np.tile(np.eye(4), (2, 1, 1))
    poses[1, :3, :3] = euler2mat(np.radians(10), np.radians(-3), np.radians(1), axes="ryxz")
    np.testing.assert_allclose(step_angles_deg(poses), [[10.0, -3.0, 1.0]], atol=1e-9)
    # A positive yaw turns the optical axis (z) towards the camera's right (+x).
    assert poses[1, 0, 2] > 0
    assert np.isnan(correlation(np.zeros(5), np.arange(5.0)))


def test_oracle_passes_every_diagnostic(shared_data):
    seq_dir = shared_data / "kitti" / "07_head"
    d = diagnose_sequence(seq_dir, predictor=oracle_for(KittiSequence(seq_dir)), metric=True,
                          max_windows=3)
    assert d.windows == 3 and d.auc5 == 1.0 and d.ate_s < 1e-9
    assert d.angles["yaw"]["corr"] > 0.9999 and d.angles["yaw"]["mae_deg"] < 1e-6
    assert d.static_step_ratio == 0.0  # sixteen copies of one frame: the oracle sees no motion
    assert d.reversed_yaw_corr > 0.999
    assert d.scale_ratio == pytest.approx(1.0) and d.scale_abs_rel_error < 1e-9
    assert d.yaw_gain == pytest.approx(1.0) and abs(d.yaw_bias_deg) < 1e-9
    assert d.backward_step_share == 0.0
    assert d.direction_error_deg < 1e-6 and d.auc5_true_rotation == d.auc5_true_direction == 1.0


def test_backward_steps_see_a_car_driving_the_wrong_way(shared_data):
    """Turns read right and every step pointing backwards: the rotation statistics are perfect,
    the backward share is 1 (and AUC@5 collapses)."""
    seq_dir = shared_data / "kitti" / "07_head"
    oracle = oracle_for(KittiSequence(seq_dir))

    def reverse_direction(step):
        step[:3, 3] *= -1

    backwards = with_each_step(oracle, reverse_direction)

    d = diagnose_sequence(seq_dir, predictor=backwards, metric=True, max_windows=3)
    assert d.angles["yaw"]["corr"] > 0.9999 and d.backward_step_share == 1.0
    assert d.auc5 < 0.1 and d.to_dict()["backward_step_share"] == 1.0
    # Where AUC@5 is lost: all of it in the directions, none in the rotations.
    assert d.direction_error_deg == pytest.approx(180.0)
    assert d.auc5_true_direction == 1.0 and d.auc5_true_rotation < 0.1


def test_yaw_gain_sees_turns_read_at_half_their_size(shared_data):
    """Correlation cannot tell a model that shrinks every turn; the gain can."""
    from transforms3d.axangles import axangle2mat, mat2axangle

    seq_dir = shared_data / "kitti" / "00_head"  # a 90 degree right turn
    oracle = oracle_for(KittiSequence(seq_dir))

    def half_turn(step):
        axis, angle = mat2axangle(step[:3, :3])
        step[:3, :3] = axangle2mat(axis, angle / 2)

    half_turns = with_each_step(oracle, half_turn)

    d = diagnose_sequence(seq_dir, predictor=half_turns, metric=True, max_windows=6)
    assert d.angles["yaw"]["corr"] > 0.999
    assert d.yaw_gain == pytest.approx(0.5, abs=0.01)
    assert d.to_dict()["yaw_gain"] == d.yaw_gain
    # Every step goes where it should: all of the lost AUC@5 is in the rotations.
    assert d.direction_error_deg < 1e-6 and d.auc5_true_direction == pytest.approx(d.auc5) and d.auc5 < 0.9
    assert d.auc5_true_rotation == 1.0


def test_prior_has_no_yaw_correlation_and_scores_its_own_reference(shared_data, tmp_path):
    seq_dir = shared_data / "kitti" / "07_head"
    d = diagnose_sequence(seq_dir, predictor=prior_predictor, metric=False, max_windows=4)
    out = d.to_dict()
    assert out["yaw_corr"] is None and out["reversed_yaw_corr"] is None  # undefined, not 0 or NaN
    json.dumps(out, allow_nan=False)
    assert out["auc5"] == pytest.approx(out["prior_auc5"]) and out["ate_s"] == pytest.approx(out["prior_ate_s"])
    assert out["static_step_ratio"] == pytest.approx(1.0)  # it predicts motion whatever it sees


def test_prior_reference_on_03_head_at_2fps(shared_data):
    """The data README's reference: AUC@5 ~0.22, ATE-S ~0.08, uniform-step floor ~0.06."""
    seq = KittiSequence(shared_data / "kitti" / "03_head")
    gts = [metrics.relative_to_first(seq.poses[idx]) for idx in eval_windows(seq, 2.0, 16, 1.0)
           if not metrics.is_stationary(metrics.relative_to_first(seq.poses[idx]))]
    scores = prior.score_prior(gts)
    assert 0.20 < scores["auc5"] < 0.25
    assert 0.07 < scores["ate_s"] < 0.09
    assert 0.055 < scores["ate_s_uniform_steps"] < 0.07


def test_diagnose_command_classical_writes_the_keys(shared_data, tmp_path, capsys):
    parser = argparse.ArgumentParser(prog="lapose")
    register(parser.add_subparsers(dest="command", required=True))
    out = tmp_path / "d.json"
    args = parser.parse_args(["diagnose", "--data", str(shared_data / "kitti" / "07_head"),
                              "--method", "classical", "--max-windows", "3", "--json", str(out)])
    assert args.func(args) == 0
    values = json.loads(out.read_text())
    assert REQUIRED_KEYS <= values.keys() and values["windows"] == 3
    assert values["yaw_corr"] > 0.9 and values["reversed_yaw_corr"] > 0.9
    assert "straight ahead: no rotation, unit forward steps" in capsys.readouterr().out


def test_hybrid_sees_a_standing_camera(shared_data):
    """Sixteen copies of one frame: every step is a rotation alone, so the hybrid's static ratio is
    0 whatever LA-Pose's own scale says, while it still reads the real windows' turns."""
    d = diagnose_sequence(shared_data / "kitti" / "07_head", "hybrid", fps=2.0, max_windows=3)
    assert d.static_step_ratio == 0.0
    assert d.angles["yaw"]["corr"] > 0.9 and d.reversed_yaw_corr > 0.9


def test_eval_json_carries_the_prior(shared_data, tmp_path):
    from lapose_core.eval.evaluate import evaluate_sequence

    result = evaluate_sequence(shared_data / "kitti" / "06_head", method="classical", fps=4.0,
                               max_windows=2)
    d = result.to_dict()
    assert d["prior"]["description"] == prior.DESCRIPTION
    assert 0 <= d["prior"]["auc5"] <= 1 and d["prior"]["ate_s"] > d["prior"]["ate_s_uniform_steps"] > 0
    assert "straight ahead" in result.table()
