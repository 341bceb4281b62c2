"""The odometry node over real DDS on loopback, fed with KITTI frames; image conversion.

Every node runs in its own process on a domain of its own (``ros_domain_id``) with
ROS_AUTOMATIC_DISCOVERY_RANGE=LOCALHOST; every wait is bounded.
"""
import importlib.util
import os
import signal
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest
import rclpy
import torch
import rclpy.time
from std_srvs.srv import Trigger

from lapose_ros.image_conversion import (ImageConversionError, ImageConverter, UnsupportedEncodingError,
                                         fill_image_msg)
from lapose_ros.launch_arguments import is_ready_line
from lapose_ros.odometry import camera_motion_to_base, default_camera_to_base
from node_harness import Harness, KittiStream, TFMessage, msg_pose
from sensor_msgs.msg import Image

REPO = Path(__file__).resolve().parents[1]

# ---------------------------------------------------------------------------- image conversion
@pytest.fixture(scope="module")
def kitti_gray(shared_data):
    return cv2.imread(str(shared_data / "kitti" / "03_head" / "images" / "000000.jpg"), cv2.IMREAD_GRAYSCALE)


def make_image(pixels: np.ndarray, encoding: str) -> Image:
    return fill_image_msg(Image(), pixels, encoding)


@pytest.mark.parametrize("prefer_cv_bridge", [True, False])
def test_every_encoding_converts_to_the_same_rgb(kitti_gray, prefer_cv_bridge):
    convert = ImageConverter(prefer_cv_bridge=prefer_cv_bridge)
    rgb = np.ascontiguousarray(np.stack([kitti_gray, np.roll(kitti_gray, 7, 1), 255 - kitti_gray], -1))
    alpha = np.full(kitti_gray.shape + (1,), 200, np.uint8)
    cases = {
        "rgb8": rgb,
        "bgr8": rgb[..., ::-1],
        "rgba8": np.concatenate([rgb, alpha], -1),
        "bgra8": np.concatenate([rgb[..., ::-1], alpha], -1),
    }
    for encoding, pixels in cases.items():
        out = convert(make_image(pixels, encoding))
        assert out.dtype == np.uint8 and out.shape == rgb.shape
        assert np.array_equal(out, rgb), encoding
    gray_rgb = np.repeat(kitti_gray[..., None], 3, -1)
    assert np.array_equal(convert(make_image(kitti_gray, "mono8")), gray_rgb)
    mono16 = kitti_gray.astype(np.uint16) * 257  # 8-bit values spread over the 16-bit range
    assert np.array_equal(convert(make_image(mono16, "mono16")), gray_rgb)


def test_compressed_images_decode_to_the_raw_ones_pixels(kitti_gray, shared_data):
    """image_transport's compressed: a JPEG's own bytes decode to what the file holds (as rclpy hands
    them over, array('B'), and as bytes); undecodable data is a conversion error (a corrupt frame)."""
    from array import array

    from sensor_msgs.msg import CompressedImage

    convert = ImageConverter(prefer_cv_bridge=False)
    jpeg = (shared_data / "kitti" / "03_head" / "images" / "000000.jpg").read_bytes()
    msg = CompressedImage(format="mono8; jpeg compressed mono8")
    msg.data = array("B", jpeg)
    assert np.array_equal(convert(msg), np.repeat(kitti_gray[..., None], 3, -1))
    msg.data = jpeg
    assert np.array_equal(convert(msg), np.repeat(kitti_gray[..., None], 3, -1))
    msg.data = jpeg[:40]
    with pytest.raises(ImageConversionError, match="compressed image .* cannot be decoded"):
        convert(msg, "/camera/image_raw/compressed")


def test_row_padding_and_byte_order(kitti_gray):
    convert = ImageConverter(prefer_cv_bridge=False)
    h, w = kitti_gray.shape
    padded = np.zeros((h, w + 3), np.uint8)
    padded[:, :w] = kitti_gray
    msg = make_image(kitti_gray, "mono8")
    msg.step, msg.data = w + 3, padded.tobytes()
    assert np.array_equal(convert(msg)[..., 0], kitti_gray)
    big = make_image(kitti_gray.astype(np.uint16) * 257, "mono16")
    big.data = (kitti_gray.astype(">u2") * 257).tobytes()
    big.is_bigendian = True
    assert np.array_equal(convert(big)[..., 0], kitti_gray)


def test_bad_images_raise_clear_errors(kitti_gray):
    convert = ImageConverter(prefer_cv_bridge=False)
    msg = make_image(kitti_gray.astype(np.float32), "mono8")
    msg.encoding = "32FC1"
    with pytest.raises(UnsupportedEncodingError, match="'32FC1' on /cam is not supported"):
        convert(msg, "/cam")
    short = make_image(kitti_gray, "mono8")
    short.data = short.data[:-10]
    with pytest.raises(ImageConversionError, match="expected step\\*height"):
        convert(short, "/cam")
    narrow = make_image(kitti_gray, "mono8")
    narrow.step = 10
    with pytest.raises(ImageConversionError, match="step 10 is smaller"):
        convert(narrow)


# ---------------------------------------------------------------------------- node processes


class NodeProcess:
    """``python -m lapose_ros.node`` on the test's domain; stopped with SIGINT, then killed."""

    def __init__(self, tmp_path: Path, **params):
        params = {"checkpoint": "random:tiny", "qos_depth": 100, "estimator": "lapose", **params}
        args = [f"{k}:={str(v).lower() if isinstance(v, bool) else v}" for k, v in params.items()]
        cmd = [sys.executable, "-m", "lapose_ros.node", "--ros-args"]
        for arg in args:
            cmd += ["-p", arg]
        env = dict(os.environ, PYTHONPATH=str(REPO), ROS_AUTOMATIC_DISCOVERY_RANGE="LOCALHOST",
                   PYTHONUNBUFFERED="1", OMP_NUM_THREADS="1")
        assert env["ROS_DOMAIN_ID"]  # set by the ros_domain_id fixture
        self.log_path = tmp_path / "lapose_node.log"
        self._log = open(self.log_path, "w")
        self.process = subprocess.Popen(cmd, env=env, cwd=REPO, stdout=self._log, stderr=subprocess.STDOUT)

    def poll(self):
        return self.process.poll()

    @property
    def returncode(self):
        return self.process.returncode

    def output(self) -> str:
        if not self._log.closed:
            self._log.flush()
        return self.log_path.read_text()

    def stop(self, signum: int = signal.SIGINT) -> int:
        if self.process.poll() is None:
            self.process.send_signal(signum)
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=5)
        self._log.close()
        return self.process.returncode


@pytest.fixture
def stream(shared_data):
    return KittiStream(shared_data / "kitti" / "03_head")


def offline_trajectory(stream: KittiStream, keyframe_indices: list[int]) -> np.ndarray:
    """What the node should have published at its keyframes: the first window's poses, then each
    later window's newest step, with the same estimator on the same frames."""
    from lapose_core.inference import PoseEstimator

    estimator = PoseEstimator.random(preset="tiny")
    stamps = [stream.stamp(i) for i in keyframe_indices]
    features = [estimator.encode_frame(np.repeat(stream.gray(i)[..., None], 3, -1)) for i in keyframe_indices]
    poses = list(estimator.predict_features(features[:16], stamps[:16]).poses)
    for end in range(17, len(keyframe_indices) + 1):
        window = estimator.predict_features(features[end - 16:end], stamps[end - 16:end])
        poses.append(poses[-1] @ window.relative[-1])
    return camera_motion_to_base(np.stack(poses), default_camera_to_base())



def test_node_publishes_odometry_tf_path_and_diagnostics(ros_context, stream, tmp_path):
    node = NodeProcess(tmp_path)
    harness = Harness(ros_context)
    try:
        harness.wait_for_node(node)
        indices = list(range(0, 111))
        sent = {}
        for i in indices:
            image, info = stream.messages(i)
            sent[round(stream.stamp(i), 6)] = i
            harness.send(image, info)
        last = round(stream.stamp(indices[-1]), 6)
        harness.spin_until(lambda: harness.odom and round(rclpy.time.Time.from_msg(
            harness.odom[-1].header.stamp).nanoseconds * 1e-9, 6) == last, 60, "odometry of the last frame")
        diag = harness.wait_diagnostics(lambda d: d["message"] == "tracking", 5, "diagnostics 'tracking'")
    finally:
        code = node.stop()
    assert code == 0, node.output()
    # The line a launch file waits for before it plays a bag (lapose_ros.launch_arguments).
    assert is_ready_line(node.output().encode()), node.output()

    # Odometry: frames, stamps (each one an image stamp), nothing while warming up.
    stamps = [round(rclpy.time.Time.from_msg(o.header.stamp).nanoseconds * 1e-9, 6) for o in harness.odom]
    assert all(o.header.frame_id == "odom" and o.child_frame_id == "base_link" for o in harness.odom)
    assert set(stamps) <= set(sent) and stamps == sorted(stamps)
    assert sent[stamps[0]] >= 75  # sixteen keyframes at 2 fps from ~10 Hz: frame 75 at the earliest
    assert len(stamps) >= 25
    cov = np.asarray(harness.odom[-1].pose.covariance).reshape(6, 6)
    assert np.allclose(np.diag(cov), [0.05, 0.05, 0.05, 0.01, 0.01, 0.01])
    # Twist is the last step's velocity: consecutive keyframe positions agree with it.
    assert np.isfinite([harness.odom[-1].twist.twist.linear.x, harness.odom[-1].twist.twist.angular.z]).all()

    # TF mirrors the odometry.
    if TFMessage is not None:
        transforms = [t for m in harness.tf for t in m.transforms]
        assert transforms and all(t.header.frame_id == "odom" and t.child_frame_id == "base_link"
                                  for t in transforms)
        by_stamp = {round(rclpy.time.Time.from_msg(t.header.stamp).nanoseconds * 1e-9, 6): t
                    for t in transforms}
        odom = harness.odom[-1]
        t = by_stamp[stamps[-1]].transform.translation
        assert np.allclose([t.x, t.y, t.z], [odom.pose.pose.position.x, odom.pose.pose.position.y,
                                             odom.pose.pose.position.z])
    else:
        print("tf2_msgs not importable here: TF output not checked (run tools/setup_ros.sh)")

    # Diagnostics.
    assert diag["level"] == 0 and diag["backend"] == "eager" and diag["corrupt_frames"] == "0"
    assert diag["resets"] == "0" and float(diag["latency_ms_p50"]) > 0
    assert 50 < float(diag["fov_camera_deg"]) < 120  # from the CameraInfo of the KITTI calibration

    # Path: keyframe poses, and the trajectory the same estimator gives offline on the same frames.
    path = harness.paths[-1]
    assert path.header.frame_id == "odom" and len(path.poses) >= 16
    path_stamps = [round(rclpy.time.Time.from_msg(p.header.stamp).nanoseconds * 1e-9, 6) for p in path.poses]
    keyframes = [sent[min(sent, key=lambda s: abs(s - ps))] for ps in path_stamps]
    assert np.allclose([stream.stamp(k) for k in keyframes], path_stamps, atol=1e-5)
    expected = offline_trajectory(stream, keyframes)
    published = np.stack([msg_pose(p.pose) for p in path.poses])
    assert np.abs(published[:, :3, 3] - expected[:, :3, 3]).max() < 1e-3
    assert np.abs(published[:, :3, :3] - expected[:, :3, :3]).max() < 1e-3
    assert np.linalg.norm(published[-1, :3, 3]) > 0.1  # it does move


def test_node_survives_bad_input_and_resets(ros_context, stream, shared_data, tmp_path):
    node = NodeProcess(tmp_path, invert_tf=True, odom_frame="odom_vo", base_frame="base_vo")
    harness = Harness(ros_context)
    try:
        harness.wait_for_node(node)
        for i in range(0, 80):
            harness.send(*stream.messages(i))
        harness.spin_until(lambda: len(harness.odom) > 0, 60, "odometry after warm-up")
        assert harness.odom[-1].header.frame_id == "odom_vo"
        assert harness.odom[-1].child_frame_id == "base_vo"
        if TFMessage is not None:
            harness.spin_until(lambda: harness.tf, 10, "TF")
            t = harness.tf[-1].transforms[0]
            assert (t.header.frame_id, t.child_frame_id) == ("base_vo", "odom_vo")  # invert_tf

        # An unsupported encoding: counted, warned once, never fatal.
        image, info = stream.messages(80)
        image.encoding = "32FC1"
        for _ in range(3):
            harness.send(image, info)
        d = harness.wait_diagnostics(lambda d: d["corrupt_frames"] == "3", 10, "3 corrupt frames")
        assert d["message"] == "tracking" and d["resets"] == "0"

        # A change of image size: the window is reset, nothing is published from it.
        other = KittiStream(shared_data / "kitti" / "07_head")
        image, info = other.messages(0)
        image.header.stamp = stream.messages(81)[0].header.stamp
        count = len(harness.odom)
        harness.send(image, info)
        d = harness.wait_diagnostics(lambda d: d["resets"] == "1", 10, "a reset after the size change")
        assert "size changed from 621x188 to 613x185" in d["last_reset_reason"]
        assert d["message"].startswith("warming up")

        # Time jumps backwards (a bag loop): reset again.
        harness.send(*stream.messages(3))
        d = harness.wait_diagnostics(lambda d: d["resets"] == "2", 10, "a reset after a backwards jump")
        assert "backwards" in d["last_reset_reason"]

        # The reset service.
        assert harness.reset_client.wait_for_service(timeout_sec=10)
        future = harness.reset_client.call_async(Trigger.Request())
        harness.spin_until(future.done, 10, "the reset service")
        assert future.result().success
        d = harness.wait_diagnostics(lambda d: d["resets"] == "3", 10, "a reset by service")
        assert d["last_reset_reason"] == "reset service called" and d["level"] == 1  # WARN: warming up
        harness.spin_for(0.5)
        assert len(harness.odom) == count  # no pose after any of the resets
        assert node.poll() is None
    finally:
        code = node.stop(signal.SIGTERM)  # what launch sends when SIGINT was not enough
    assert code == 0, node.output()
    log = node.output()
    assert log.count("image encoding '32FC1' on /camera/image_raw is not supported") == 1
    assert "odometry window reset: image size changed" in log
    # The fallbacks for the ROS packages that may be absent each say what is used instead.
    if importlib.util.find_spec("cv_bridge") is None:
        assert "cv_bridge not installed: converting images with numpy (same result)" in log
    if importlib.util.find_spec("tf2_ros") is None:
        assert "tf2_ros not installed: camera-to-base transform from parameter camera_to_base" in log
        assert ("tf2_ros not installed: publishing tf2_msgs/TFMessage on /tf directly" in log
                if TFMessage is not None else "TF is not published" in log)


def test_device_and_backend_parameters(caplog):
    import logging

    from lapose_ros.node import LaPoseNodeError, load_estimator

    logger = logging.getLogger("lapose_node_test")
    with caplog.at_level(logging.WARNING):
        estimator = load_estimator("random:tiny", "auto", "cuda", "", logger)
    assert str(estimator.device) == "cpu" and estimator.backend == "eager"  # auto on cpu = eager
    if not torch.cuda.is_available():
        assert "device 'cuda' requested but CUDA is not available: using 'cpu'" in caplog.text
    with pytest.raises(LaPoseNodeError, match="parameter 'backend' must be one of"):
        load_estimator("random:tiny", "onnx", "cpu", "", logger)
    with pytest.raises(LaPoseNodeError, match="parameter 'device'"):
        load_estimator("random:tiny", "eager", "tpu", "", logger)


@pytest.mark.parametrize("change,message", [
    ({"odom_frame": "/odom"}, "'odom_frame' must be a frame id without a leading '/'"),
    ({"base_frame": ""}, "'base_frame' must name a frame, got ''"),
    ({"base_frame": "odom"}, "'odom_frame' and 'base_frame' are both 'odom'"),
    ({"fx": 360.0}, "fx fy cx cy must all be > 0 when fx is given, got 360.0 0.0 0.0 0.0"),
    ({"model_fps": -2.0}, r"'model_fps' must be >= 0 \(0 = the model's own rate\), got -2.0"),
    ({"publish_rate": -1.0}, "'publish_rate' must be >= 0"),
    ({"path_max_length": 0}, "'path_max_length' must be >= 1"),
])
def test_parameters_are_checked_before_the_model_loads(change, message):
    from lapose_ros.node import PARAMETERS, LaPoseNodeError, check_parameters

    check_parameters(dict(PARAMETERS))
    with pytest.raises(LaPoseNodeError, match=message):
        check_parameters(dict(PARAMETERS, **change))


def test_camera_intrinsics_reach_the_lapose_estimator(ros_context):
    """Without the hybrid the node still hands LA-Pose the camera's intrinsics, for the principal
    point its rotation refit lays the flow out about: from the fx fy cx cy parameters, then from
    each CameraInfo."""
    from rclpy.parameter import Parameter
    from sensor_msgs.msg import CameraInfo

    from lapose_ros.node import LaPoseNode, PARAMETERS, wrap_estimator

    from lapose_core.inference import PoseEstimator

    params = dict(PARAMETERS, estimator="lapose", fx=360.0, fy=361.0, cx=304.5, cy=86.4)
    assert wrap_estimator(PoseEstimator.random("tiny"), params).intrinsics == (360.0, 361.0, 304.5, 86.4)
    assert wrap_estimator(PoseEstimator.random("tiny"), dict(params, fx=0.0)).intrinsics is None
    node = LaPoseNode(estimator=PoseEstimator.random("tiny"), context=ros_context,
                      parameter_overrides=[Parameter("publish_tf", value=False)])
    try:
        info = CameraInfo(width=621, height=188)
        info.k = [353.5, 0.0, 300.7, 0.0, 353.6, 91.3, 0.0, 0.0, 1.0]
        node._on_camera_info(info)
        assert node.estimator.intrinsics == (353.5, 353.6, 300.7, 91.3)
    finally:
        node.destroy_node()


def test_road_scale_takes_the_camera_mount_from_the_camera_to_base_transform(ros_context, capfd):
    """base_height_m >= 0: the hybrid's road scale takes the camera's height and pitch from the
    camera-to-base transform (the parameter, then TF while warming up); camera_height_m, when given,
    wins; a mount the road cannot use is refused at start and ignored from TF, with the reason."""
    import math

    from rclpy.parameter import Parameter
    from transforms3d.euler import euler2mat
    from transforms3d.quaternions import mat2quat

    from lapose_core.inference import PoseEstimator
    from lapose_ros.node import LaPoseNode, LaPoseNodeError, PARAMETERS, wrap_estimator

    def camera_to_base(z, pitch_deg=0.0, roll_deg=0.0):
        T = default_camera_to_base()
        T[:3, :3] = euler2mat(math.radians(roll_deg), math.radians(pitch_deg), 0.0, "sxyz") @ T[:3, :3]
        T[:3, 3] = (1.5, 0.0, z)  # on the roof, ahead of the base's origin
        return T

    def xyz_quat(T):
        w, x, y, z = mat2quat(T[:3, :3])
        return [*map(float, T[:3, 3]), float(x), float(y), float(z), float(w)]

    params = dict(PARAMETERS, base_height_m=0.45, camera_to_base=xyz_quat(camera_to_base(1.2, 2.0)))
    config = wrap_estimator(PoseEstimator.random("tiny"), params).config
    assert config.scale_source == "ground"
    assert (config.camera_height_m, config.camera_pitch_deg) == pytest.approx((1.65, 2.0), abs=1e-9)
    given = wrap_estimator(PoseEstimator.random("tiny"), dict(params, camera_height_m=1.4)).config
    assert (given.camera_height_m, given.camera_pitch_deg) == (1.4, 0.0)
    unknown = wrap_estimator(PoseEstimator.random("tiny"), dict(params, base_height_m=-1.0)).config
    assert unknown.scale_source == "lapose"
    with pytest.raises(LaPoseNodeError, match="'camera_to_base' and 'base_height_m'.*rolled 6.0 degrees"):
        wrap_estimator(PoseEstimator.random("tiny"),
                       dict(params, camera_to_base=xyz_quat(camera_to_base(1.2, roll_deg=6.0))))

    node = LaPoseNode(context=ros_context, parameter_overrides=[
        Parameter("checkpoint", value="random:tiny"), Parameter("publish_tf", value=False),
        Parameter("base_height_m", value=0.45), Parameter("camera_to_base", value=params["camera_to_base"])])
    try:
        assert node.diagnostic_values()["metric_scale"] == "road: camera 1.650 m above it, 2.00 deg down"
        # The transform from TF (what _lookup_camera_to_base hands on while warming up).
        node.vo.camera_to_base = camera_to_base(1.25, 1.0)
        node._camera_to_base_source = "TF base_link <- camera"
        node._follow_camera_mount()
        assert (node.estimator.config.camera_height_m, node.estimator.config.camera_pitch_deg) == \
            pytest.approx((1.70, 1.0), abs=1e-9)
        assert node.diagnostic_values()["metric_scale"] == "road: camera 1.700 m above it, 1.00 deg down"
        node.vo.camera_to_base = camera_to_base(1.25, roll_deg=10.0)
        capfd.readouterr()
        node._follow_camera_mount()
        assert node.estimator.config.camera_height_m == pytest.approx(1.70)  # kept
        assert ("TF base_link <- camera with base_height_m 0.45: the camera is rolled 10.0 degrees"
                in capfd.readouterr().err)
    finally:
        node.destroy_node()


@pytest.mark.parametrize("topic", ["/camera/image_raw", "/camera/image_rect"])
def test_distorted_camera_images_are_rectified_before_odometry(ros_context, topic):
    """A CameraInfo with distortion: the node remaps each keyframe's image to P's pinhole camera
    before the estimator sees it, and hands the estimator P's intrinsics; an image_rect topic is rectified
    already and is left alone, and its camera is P's too (K is the raw camera's)."""
    import time

    from rclpy.parameter import Parameter

    from lapose_core import ASSETS_DIR
    from lapose_core.inference import PoseEstimator
    from lapose_ros.node import LaPoseNode

    stream = KittiStream(ASSETS_DIR / "sample_sequence")
    image_msg, info = stream.messages(0, encoding="rgb8")
    fx, fy, cx, cy = info.k[0], info.k[4], info.k[2], info.k[5]
    info.distortion_model = "plumb_bob"
    info.d = [-0.25, 0.06, 0.0005, -0.0005, 0.0]
    info.p = [1.1 * fx, 0.0, cx + 3.0, 0.0, 0.0, 1.1 * fy, cy - 2.0, 0.0, 0.0, 0.0, 1.0, 0.0]
    node = LaPoseNode(estimator=PoseEstimator.random("tiny"), context=ros_context, parameter_overrides=[
        Parameter("publish_tf", value=False), Parameter("image_topic", value=topic)])
    try:
        node._handle_image(image_msg, time.perf_counter())  # an image before the first CameraInfo
        node._on_camera_info(info)
        node._on_camera_info(info)  # every image brings one: the maps are built once
        rectified = topic.endswith("image_raw")
        # Frames seen through another camera leave the window (once).
        assert node.vo.resets == int(rectified)
        assert node.vo.last_reset_reason == ("camera model changed: images rectified anew" if rectified else "")
        seen = []  # what the estimator is given: keyframes only (the next keyframe, 0.5 s on)
        encode = node.estimator.encode_frame
        node.estimator.encode_frame = lambda image: (seen.append(image), encode(image))[1]
        lookups = []  # TF's camera-to-base transform is still looked for: the reset came before tracking
        node._lookup_camera_to_base = lambda: lookups.append(1)
        for index in (5, 7, 10):
            node._process_image(stream.messages(index, encoding="rgb8")[0], time.perf_counter())
        assert len(seen) == 2 and len(lookups) == 3
        raw = np.repeat(stream.gray(5)[..., None], 3, -1)
        if topic.endswith("image_raw"):
            assert node.estimator.intrinsics == pytest.approx((1.1 * fx, 1.1 * fy, cx + 3.0, cy - 2.0))
            assert node.diagnostic_values()["rectification"] == "plumb_bob, 5 coefficients, to P's pinhole camera"
            expected = cv2.remap(raw, *cv2.initUndistortRectifyMap(
                np.reshape(info.k, (3, 3)), np.asarray(info.d), None, np.reshape(info.p, (3, 4))[:, :3],
                (info.width, info.height), cv2.CV_32FC1), cv2.INTER_LINEAR)
            # Rectified as OpenCV's own maps do it (the node's are fixed-point: within a grey level).
            assert np.abs(seen[0].astype(int) - expected).mean() < 1.0
            assert np.abs(seen[0].astype(int) - raw).mean() > 10
        else:
            assert node.estimator.intrinsics == pytest.approx((1.1 * fx, 1.1 * fy, cx + 3.0, cy - 2.0))
            assert "is rectified already" in node.diagnostic_values()["rectification"]
            np.testing.assert_array_equal(seen[0], raw)
    finally:
        node.destroy_node()


def test_a_camera_info_that_cannot_be_rectified_leaves_the_images_as_they_are(ros_context):
    from rclpy.parameter import Parameter

    from lapose_core import ASSETS_DIR
    from lapose_core.inference import PoseEstimator
    from lapose_ros.node import LaPoseNode

    _, info = KittiStream(ASSETS_DIR / "sample_sequence").messages(0)
    info.distortion_model = "plumb_bob"
    info.d = [float("nan")] * 5
    node = LaPoseNode(estimator=PoseEstimator.random("tiny"), context=ros_context,
                      parameter_overrides=[Parameter("publish_tf", value=False)])
    try:
        for _ in range(3):  # NaN != NaN: every message looks new; the warning is throttled
            node._on_camera_info(info)
        assert node.diagnostic_values()["rectification"].startswith("none (CameraInfo D has a non-finite")
        assert node.estimator.intrinsics == pytest.approx((info.k[0], info.k[4], info.k[2], info.k[5]))
        assert node.vo.resets == 0
    finally:
        node.destroy_node()


def test_bench_measures_the_node_in_process(ros_domain_id, shared_data, capsys):
    from lapose_ros import bench

    code = bench.main(["--quick", "--frames", "6", "--domain-id", str(ros_domain_id),
                       "--sequence", str(shared_data / "kitti" / "03_head")])
    out = capsys.readouterr().out
    assert code == 0, out
    table = out[out.index("latency from image publication"):].splitlines()[2:]
    rows = [line.split() for line in table if line.split()[1:3] == ["cpu", "eager"] and " at " not in line]
    # LA-Pose alone and the hybrid around the same model, with LA-Pose's and with the road's scale.
    assert [r[0] for r in rows] == ["bundled", "hybrid:bundled", "hybrid-road"], out
    for row in rows:
        key_p50, key_p95, key_max, mid_p50, mid_p95, max_hz = map(float, row[3:9])
        assert 0 < key_p50 <= key_p95 <= key_max and 0 < mid_p50 <= mid_p95 and max_hz > 0
    assert "at 10 Hz (period 100 ms)" in out and "at 30 Hz (period 33 ms)" in out
    assert "paper-size model skipped: --quick" in out
    assert bench.main(["--frames", "0"]) == 2  # a bad option is an error message, not a traceback


def test_bench_sends_compressed_images_when_asked(ros_domain_id, shared_data, capsys):
    from lapose_ros import bench

    code = bench.main(["--quick", "--frames", "6", "--domain-id", str(ros_domain_id), "--compressed",
                       "--camera-height-m", "0", "--sequence", str(shared_data / "kitti" / "03_head")])
    out = capsys.readouterr().out
    assert code == 0, out
    assert "images sent as JPEG sensor_msgs/CompressedImage" in out
    table = out[out.index("latency from image publication"):].splitlines()[2:]
    rows = [line.split() for line in table if line.split()[1:3] == ["cpu", "eager"] and " at " not in line]
    assert [r[0] for r in rows] == ["bundled", "hybrid:bundled"], out


def test_bench_loops_a_short_sequence_with_time_running_on():
    from lapose_core import ASSETS_DIR
    from lapose_ros.bench import load_frames

    sample = ASSETS_DIR / "sample_sequence"
    once, once_times = load_frames(sample, 10_000)
    looped, times = load_frames(sample, len(once) + 20, loop=True)
    assert len(looped) == len(times) == len(once) + 20
    assert np.array_equal(looped[len(once)], once[0]) and np.array_equal(looped[-1], once[19])
    assert np.all(np.diff(times) > 0)  # a later play is later in time: the node sees no restart
    period = np.diff(once_times).mean()
    assert times[len(once)] - times[len(once) - 1] == pytest.approx(period)


def test_soak_streams_through_the_live_node(ros_domain_id, shared_data, capsys, tmp_path):
    from lapose_ros import bench

    code = bench.main(["--soak", "0.15", "--soak-interval-s", "3", "--checkpoint", "random:tiny",
                       "--param", "model_fps:=10.0", "--param", "path_max_length:=12",
                       "--domain-id", str(ros_domain_id), "--soak-log", str(tmp_path / "node.log"),
                       "--sequence", str(shared_data / "kitti" / "06_head")])
    out = capsys.readouterr().out
    assert code == 0, out + (tmp_path / "node.log").read_text()
    rows = [[c.strip() for c in line.strip("|").split("|")] for line in out.splitlines()
            if line.startswith("| ") and not line.startswith("| interval")]
    assert [r[0] for r in rows] == ["1", "2", "3"], out
    for r in rows:
        rss, frames, dropped, odometry, path = float(r[2]), int(r[6]), int(r[7]), int(r[8]), int(r[9])
        assert 50 < rss < 4000 and 80 <= frames <= 92 and 0 <= dropped < frames
        assert path <= 12  # bounded by path_max_length
    # It tracked: odometry, and latencies of keyframes that ran the model (the rows of a soak this
    # short are a few seconds each, so a starved interval on a busy machine may have none).
    assert sum(int(r[8]) for r in rows) > 0 and any(r[4] != "-" and float(r[4]) > 0 for r in rows)
    assert "memory growth after interval 1" in out and "bounded by path_max_length=12" in out


def test_soak_verdict_flags_growing_memory_and_an_unbounded_path():
    from lapose_ros.soak import SoakRow, format_table, verdict

    def row(i, rss, path, latency):
        return SoakRow(i, 60.0 * (i + 1), rss, np.asarray(latency), 1800, 1790, 1800, path)

    flat = [row(0, 400.0, 900, [50, 60]), row(1, 410.0, 1000, [55, 70]), row(2, 405.0, 1000, [52, 65])]
    text = "\n".join(verdict(flat, 1000))
    assert "+10.0 MiB (flat" in text and "1000 poses (bounded" in text and "no queue builds up" in text
    assert "frames dropped by the node: 30 of 5400" in text
    leaking = [row(0, 400.0, 900, [50]), row(1, 430.0, 1200, [500])]
    text = "\n".join(verdict(leaking, 1000))
    assert "GROWS: limit" in text and "UNBOUNDED" in text and "a queue builds up" in text
    table = format_table(flat).splitlines()
    assert len(table) == 2 + 3 and table[2].split("|")[1:4] == [" 1 ", " 60 ", " 400.0 "]


def test_path_length_read_from_serialized_bytes():
    from geometry_msgs.msg import PoseStamped
    from nav_msgs.msg import Path as PathMsg
    from rclpy.serialization import serialize_message

    from lapose_ros.soak import path_length_from_cdr

    for frame_id, count in (("odom", 0), ("odom_vo", 7), ("a_much_longer_frame_name", 1000)):
        msg = PathMsg(poses=[PoseStamped() for _ in range(count)])
        msg.header.frame_id = frame_id
        assert path_length_from_cdr(serialize_message(msg)) == count
