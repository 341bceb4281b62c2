"""``lapose replay``: a bag played into a subscriber process over real DDS (loopback only, a domain of
each test's own), the odometry recorded, scored and plotted.

The player/recorder and the metrics are checked exactly with a small echo process that answers every
image with the ground-truth pose it receives on /tf (so the scores must be perfect); the real node is
then replayed on bags made from KITTI 06_head, with and without ground truth, in lockstep twice, the
second time beside a CPU hog, and must give the same trajectory both times.
"""
import argparse
import json
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest

pytest.importorskip("rclpy", reason="rclpy not installed (make setup-ros)")

from lapose_ros.bag_from_sequence import write_bag_from_sequence  # noqa: E402
from lapose_ros.replay import ReplayError, replay_bag  # noqa: E402

pytestmark = pytest.mark.timeout(240)

# Answers each image with an Odometry stamped like the image, posed like the /tf ground truth of
# the same stamp (which may arrive before or after the image).
ECHO_NODE = textwrap.dedent("""
    import rclpy
    from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus
    from nav_msgs.msg import Odometry
    from rclpy.executors import ExternalShutdownException
    from rclpy.qos import QoSProfile
    from sensor_msgs.msg import Image
    from tf2_msgs.msg import TFMessage

    rclpy.init()
    node = rclpy.create_node("echo_odometry")
    publisher = node.create_publisher(Odometry, "/lapose/odom", QoSProfile(depth=100))
    # Acknowledges each image as lapose_node does (the player counts dropped frames from these).
    processed = node.create_publisher(DiagnosticArray, "/lapose_node/processed", QoSProfile(depth=100))
    images, transforms = {}, {}

    def answer(key):
        if key in images and key in transforms:
            stamp, t = images.pop(key), transforms.pop(key)
            msg = Odometry()
            msg.header.stamp, msg.header.frame_id, msg.child_frame_id = stamp, "odom", "base_link"
            p, q = msg.pose.pose.position, msg.pose.pose.orientation
            p.x, p.y, p.z = t.translation.x, t.translation.y, t.translation.z
            q.x, q.y, q.z, q.w = t.rotation.x, t.rotation.y, t.rotation.z, t.rotation.w
            publisher.publish(msg)

    def on_image(msg):
        key = (msg.header.stamp.sec, msg.header.stamp.nanosec)
        images[key] = msg.header.stamp
        answer(key)
        processed.publish(DiagnosticArray(header=msg.header, status=[DiagnosticStatus(message="frame")]))

    def on_tf(msg):
        for t in msg.transforms:
            key = (t.header.stamp.sec, t.header.stamp.nanosec)
            transforms[key] = t.transform
            answer(key)

    node.create_subscription(Image, "/camera/image_raw", on_image, QoSProfile(depth=100))
    node.create_subscription(TFMessage, "/tf", on_tf, QoSProfile(depth=100))
    try:
        rclpy.spin(node)
    except (KeyboardInterrupt, ExternalShutdownException):
        pass
    rclpy.try_shutdown()
""")


def tum_rows(path):
    text = path.read_text().strip()
    return np.loadtxt(path, ndmin=2) if text else np.zeros((0, 8))


def test_player_recorder_and_metrics_with_echo_process(shared_data, tmp_path, ros_domain_id):
    pytest.importorskip("tf2_msgs.msg", reason="tf2_msgs not built (tools/setup_ros.sh)")
    bag = tmp_path / "bag07"
    write_bag_from_sequence(shared_data / "kitti" / "07_head", bag)
    script = tmp_path / "echo_node.py"
    script.write_text(ECHO_NODE)
    out = tmp_path / "replay"
    rate = 4.0
    result = replay_bag(bag, out, rate=rate, mode="realtime", command=[sys.executable, str(script)],
                        domain_id=ros_domain_id, startup_timeout_s=60, drain_timeout_s=20)

    # Every image arrived and was answered, with its own stamp, at the requested speed.
    assert result.images_played == 160
    assert len(result.estimate) == 160
    assert result.stamps_match_images
    assert result.playback.frames_dropped == 0 and result.playback.wall_s < 2 * 16 / rate
    np.testing.assert_array_equal(np.sort(result.estimate.stamps_ns), result.image_stamps_ns)
    assert result.node_returncode == 0
    # The echoed poses are the ground truth (raw CDR through DDS and back): perfect scores.
    m = json.loads((out / "metrics.json").read_text())
    assert m["mode"] == "realtime" and m["frames_dropped"] == 0 and "depend on the machine's load" in m["load_note"]
    assert m["associated_poses"] == 160
    assert m["ate_m"] < 1e-6 and m["ate_s"] < 1e-6
    assert m["windows"] + m["stationary_windows"] >= 8
    assert m["windows"] >= 1 and m["auc_5"] == 1.0 and m["auc_30"] == 1.0
    assert m["pairs"] == m["windows"] * 16 * 15 // 2
    est, gt = tum_rows(out / "lapose.tum"), tum_rows(out / "ground_truth.tum")
    assert est.shape == gt.shape == (160, 8)
    np.testing.assert_allclose(est[np.argsort(est[:, 0])], gt, atol=1e-9)
    assert (out / "trajectory.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def cpu_hogs(seconds: float):
    """One busy-loop process per core, each ending by itself after ``seconds``."""
    loop = f"import time\nend = time.monotonic() + {seconds}\nwhile time.monotonic() < end:\n    pass\n"
    return [subprocess.Popen([sys.executable, "-c", loop]) for _ in range(os.cpu_count() or 2)]


def test_lockstep_replay_through_the_node_is_the_same_under_load(shared_data, tmp_path, ros_domain_id):
    bag = tmp_path / "bag06"
    write_bag_from_sequence(shared_data / "kitti" / "06_head", bag, storage="sqlite3")
    out = tmp_path / "replay"
    # Random weights (no trained model needed) and keyframes at the camera rate, so the 5 s bag gets
    # past the node's 16-keyframe warm-up.
    params = {"model_fps": 10.0}
    result = replay_bag(bag, out, checkpoint="random:tiny", node_params=params, domain_id=ros_domain_id)
    log = (out / "node.log").read_text()
    assert result.images_played == 51
    assert result.playback.frames_dropped == 0 and result.playback.resent == 0
    # Every image is a keyframe; the first 15 only fill the window.
    assert result.playback.outcomes == {"keyframe": 51}
    assert len(result.estimate) == 51 - 15
    assert len(result.estimate) > 0, f"the node published no odometry; its log:\n{log}"
    # The node stamps each odometry message with the stamp of the image it comes from.
    assert result.stamps_match_images
    assert np.all(np.diff(result.estimate.stamps_ns) > 0)
    assert result.node_returncode == 0, log

    m = json.loads((out / "metrics.json").read_text())
    assert m["ground_truth"] and m["odometry_stamps_equal_image_stamps"]
    assert m["associated_poses"] == len(result.estimate)
    if m["associated_poses"] >= 2:
        assert np.isfinite(m["ate_m"]) and m["ate_m"] >= 0
    # 16 frames at 2 fps span 7.5 s: no AUC window fits into 06_head, and the file says so.
    assert m["auc_5"] is None and "no moving 16-frame window" in m["auc_note"]
    assert tum_rows(out / "lapose.tum").shape == (len(result.estimate), 8)
    assert tum_rows(out / "ground_truth.tum").shape == (51, 8)
    assert (out / "trajectory.png").stat().st_size > 10_000

    # The same bag again while every core runs a busy loop: the same trajectory, bit for bit.
    hogs = cpu_hogs(120)
    try:
        again = replay_bag(bag, tmp_path / "replay_loaded", checkpoint="random:tiny", node_params=params,
                           domain_id=ros_domain_id)
        assert all(h.poll() is None for h in hogs)  # the load was there all along
    finally:
        for h in hogs:
            h.kill()
            h.wait()
    np.testing.assert_array_equal(again.estimate.stamps_ns, result.estimate.stamps_ns)
    np.testing.assert_array_equal(again.estimate.poses, result.estimate.poses)
    assert json.loads((tmp_path / "replay_loaded" / "metrics.json").read_text())["ate_m"] == m["ate_m"]


def test_replay_bag_without_ground_truth(shared_data, tmp_path, ros_domain_id, capsys):
    from lapose_ros import cli

    bag = tmp_path / "no_gt"
    write_bag_from_sequence(shared_data / "kitti" / "06_head", bag, ground_truth=False, max_frames=30)
    parser = argparse.ArgumentParser(prog="lapose")
    cli.register(parser.add_subparsers(dest="command"))
    out, metrics_copy = tmp_path / "replay", tmp_path / "copy" / "m.json"
    args = parser.parse_args(["replay", str(bag), "--out", str(out), "--json", str(metrics_copy),
                              "--checkpoint", "random:tiny", "--param", "model_fps:=10.0"])
    assert args.func(args) == 0
    printed = capsys.readouterr().out
    assert "no ground truth" in printed
    m = json.loads((out / "metrics.json").read_text())
    assert m["ground_truth"] is False and "no metrics" in m["note"] and "ate_m" not in m
    assert json.loads(metrics_copy.read_text()) == m
    assert m["images_played"] == 30
    assert (out / "lapose.tum").exists() and not (out / "ground_truth.tum").exists()
    assert (out / "trajectory.png").stat().st_size > 10_000


def test_replay_errors(shared_data, tmp_path, ros_domain_id, monkeypatch, capsys):
    from lapose_ros import cli

    bag = tmp_path / "bag"
    write_bag_from_sequence(shared_data / "kitti" / "06_head", bag, max_frames=3)
    with pytest.raises(ReplayError, match=r"no playable image topic '/front/image'.*/camera/image_raw"):
        replay_bag(bag, tmp_path / "a", image_topic="/front/image", domain_id=ros_domain_id)
    # A node that cannot start: the error carries the end of its log instead of a hang.
    with pytest.raises(ReplayError, match=r"node exited \(code 1\)[\s\S]*cannot start"):
        replay_bag(bag, tmp_path / "b", checkpoint=str(tmp_path / "missing.safetensors"),
                   domain_id=ros_domain_id, startup_timeout_s=120)

    parser = argparse.ArgumentParser(prog="lapose")
    cli.register(parser.add_subparsers(dest="command"))
    args = parser.parse_args(["replay", str(bag), "--param", "model_fps"])
    assert args.func(args) == 2
    assert "--param 'model_fps': expected NAME:=VALUE" in capsys.readouterr().err
    monkeypatch.setitem(sys.modules, "rclpy", None)  # as if rclpy were not installed
    assert args.func(args) == 2
    assert "make setup-ros" in capsys.readouterr().err
