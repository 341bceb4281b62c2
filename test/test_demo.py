"""The README's main job (`lapose demo`) on the bundled model and sample, and the bundled model itself."""
import json
import os
import subprocess
import sys
from pathlib import Path


from lapose_core.eval.diagnose import diagnose_sequence
from lapose_core.eval.evaluate import evaluate_sequence
from lapose_core.inference import DEFAULT_CHECKPOINT, PoseEstimator
from lapose_ros.demo import SAMPLE_SEQUENCE


def test_bundled_files_are_present():
    for name in ("model.safetensors", "config.json", "MODEL_CARD.md"):
        assert (DEFAULT_CHECKPOINT / name).is_file(), name
    assert (DEFAULT_CHECKPOINT / "model.safetensors").stat().st_size < 40 * 2**20
    assert "CC BY-NC-SA" in (SAMPLE_SEQUENCE / "README.md").read_text()


def test_bundled_model_is_trained():
    """On the bundled sample, the bundled weights must beat random weights of the same preset."""
    trained = PoseEstimator.load()
    random = PoseEstimator.random(trained.config.preset, seed=0)
    scores = {name: evaluate_sequence(SAMPLE_SEQUENCE, method="lapose", estimator=est, fps=2.0,
                                      max_windows=4)
              for name, est in (("trained", trained), ("random", random))}
    assert scores["trained"].auc30 > scores["random"].auc30 + 0.2
    assert scores["trained"].ate_m < scores["random"].ate_m


def test_bundled_model_reads_motion_on_the_sample():
    """Before any of its accuracy figures is believed: the bundled model's yaw follows the sample's
    turn, turns the other way when the windows are played backwards, and knows the car drives
    forwards (`lapose diagnose`)."""
    d = diagnose_sequence(SAMPLE_SEQUENCE, "lapose", PoseEstimator.load(), fps=2.0)
    assert d.angles["yaw"]["corr"] > 0.8
    assert d.reversed_yaw_corr > 0.8
    assert d.backward_step_share == 0.0


def test_bundled_model_sees_a_standing_camera():
    """Sixteen copies of one frame: the bundled model predicts (almost) no motion."""
    d = diagnose_sequence(SAMPLE_SEQUENCE, "lapose", PoseEstimator.load(), fps=2.0)
    assert d.static_step_ratio < 0.1


def test_demo_replays_the_sample_through_the_node(tmp_path, ros_domain_id):
    env = {**os.environ, "ROS_DOMAIN_ID": str(ros_domain_id), "ROS_AUTOMATIC_DISCOVERY_RANGE": "LOCALHOST"}
    out = subprocess.run([sys.executable, "-m", "lapose_core.cli", "demo", "--out", str(tmp_path),
                          "--rate", "2"], capture_output=True, text=True, timeout=600, env=env)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    replay = tmp_path / "replay"
    for name in ("trajectory.png", "metrics.json", "lapose.tum", "ground_truth.tum"):
        assert (replay / name).is_file(), name
    summary = json.loads((tmp_path / "demo.json").read_text())
    node = summary["replay"]
    assert node["odometry_messages"] > 50  # published after the 7.5 s warm-up, at the camera rate
    assert node["odometry_stamps_equal_image_stamps"]
    assert summary["offline"]["lapose"]["windows"] > 0 and summary["offline"]["classical"]["windows"] > 0
    tum = (replay / "lapose.tum").read_text().split("\n")
    assert len([line for line in tum if line and not line.startswith("#")]) == node["odometry_messages"]
