"""The node through faults during a run, and falling behind a camera on purpose.

Each test runs :class:`LaPoseNode` in this process (spun by its own executor thread, as ``rclpy.spin``
would) and talks to it over DDS on loopback, on a domain of its own. Frames are sent in lockstep
(each once the node has acknowledged the previous one on ``~/processed``), so what the node publishes
must equal :class:`VisualOdometry` run offline on the same frames; on top of that the published
odometry is checked for finiteness and continuity: a dropped window resumes from the last pose
published, a restart (backwards time, ``~/reset``) begins a new path at the origin.

Keyframes are taken at the camera rate (``model_fps`` 10 on the ~10 Hz KITTI stream) so that the
16-keyframe warm-up takes 16 frames.
"""
import threading
import time

import numpy as np
import pytest
import rclpy.time
from rclpy.parameter import Parameter
from sensor_msgs.msg import Image
from std_srvs.srv import Trigger

from lapose_ros.image_conversion import ImageConverter, fill_image_msg
from lapose_ros.odometry import DEFAULT_CAMERA_TO_BASE, VisualOdometry, camera_to_base_from_xyz_quat
from lapose_ros.playback import SpinningThread
from node_harness import BASE_STAMP, Harness, KittiStream, msg_pose

pytestmark = pytest.mark.timeout(120)
MODEL_FPS = 10.0
MAX_GAP_S = 1.0


class InProcessNode:
    """LaPoseNode in this process on its own executor thread."""

    def __init__(self, context, estimator, **params):
        from lapose_ros.node import LaPoseNode

        params = {"publish_tf": False, "max_gap_s": MAX_GAP_S, **params}
        self.node = LaPoseNode(estimator=estimator, context=context,
                               parameter_overrides=[Parameter(k, value=v) for k, v in params.items()])
        self.spinner = SpinningThread(self.node, context)

    def stop(self):
        self.spinner.stop()
        self.node.destroy_node()


class SlowEstimator:
    """The real estimator, with a delay in every encoder pass (or in the window model once armed)."""

    def __init__(self, estimator, encode_delay_s: float = 0.0, predict_delay_s: float = 0.0):
        self.estimator = estimator
        self.encode_delay_s, self.predict_delay_s = encode_delay_s, predict_delay_s
        self.predict_started = threading.Event()

    def __getattr__(self, name):
        return getattr(self.estimator, name)

    def encode_frame(self, image):
        time.sleep(self.encode_delay_s)
        return self.estimator.encode_frame(image)

    def predict_features(self, features, stamps):
        self.predict_started.set()
        time.sleep(self.predict_delay_s)
        return self.estimator.predict_features(features, stamps)


@pytest.fixture(scope="module")
def estimator():
    from lapose_core.inference import PoseEstimator

    return PoseEstimator.random(preset="tiny", seed=0)


@pytest.fixture
def live(ros_context, estimator):
    """start(**params) -> (node, harness): a node in this process and the test side, discovered."""
    nodes = []

    def start(node_estimator=None, **params):
        node = InProcessNode(ros_context, node_estimator or estimator, **{"model_fps": MODEL_FPS, **params})
        nodes.append(node)
        harness = Harness(ros_context)
        harness.wait_for_node()
        return node, harness

    yield start
    for node in nodes:
        node.stop()


@pytest.fixture(scope="module")
def kitti(shared_data):
    return KittiStream(shared_data / "kitti" / "03_head")


def stamp_of(msg) -> float:
    return rclpy.time.Time.from_msg(msg.header.stamp).nanoseconds * 1e-9


def frame(stream: KittiStream, index: int, stamp: float):
    """Image + camera info of frame ``index`` of ``stream``, stamped ``stamp`` (seconds)."""
    return stream.messages(index, offset=stamp - stream.stamp(index))


def corrupt(stream: KittiStream, index: int, stamp: float):
    image, info = frame(stream, index, stamp)
    image.data = image.data[: len(image.data) // 2]  # truncated in transit
    return image, info


def send(harness, events):
    """Send ``events`` to the node in lockstep; returns the outcome it acknowledged for each image.

    events: ("frame" | "corrupt", stream, index, stamp) or ("reset",).
    """
    outcomes = []
    for event in events:
        if event[0] == "reset":
            call_reset(harness)
            continue
        kind, stream, index, stamp = event
        messages = frame(stream, index, stamp) if kind == "frame" else corrupt(stream, index, stamp)
        outcomes.append(harness.send_lockstep(*messages))
    return outcomes


def offline(estimator, events):
    """The same events through VisualOdometry without ROS: [(stamp, base pose)] it would publish."""
    vo = VisualOdometry(estimator, fps=MODEL_FPS, max_gap_s=MAX_GAP_S,
                        camera_to_base=camera_to_base_from_xyz_quat(DEFAULT_CAMERA_TO_BASE))
    expected = []
    for event in events:
        if event[0] == "reset":
            vo.reset("reset service called", restart_trajectory=True)
        elif event[0] == "frame":
            _, stream, index, stamp = event
            result = vo.process(stamp, np.repeat(stream.gray(index)[..., None], 3, -1))
            if result.estimate is not None:
                expected.append((stamp, result.estimate.pose))
    return expected


def drive(harness, estimator, events):
    """Send ``events`` in lockstep and compute them offline; returns (outcomes, expected odometry)."""
    outcomes = send(harness, events)
    expected = offline(estimator, events)
    harness.spin_until(lambda: len(harness.odom) >= len(expected), 10, "the odometry of the last frame")
    harness.spin_for(0.2)
    return outcomes, expected


def call_reset(harness):
    assert harness.reset_client.wait_for_service(timeout_sec=10)
    future = harness.reset_client.call_async(Trigger.Request())
    harness.spin_until(future.done, 20, "the reset service")
    assert future.result().success


def published(harness):
    """(stamps, poses) of the odometry the node published, with every field checked finite."""
    stamps, poses = [], []
    for odom in harness.odom:
        values = [odom.pose.pose.position.x, odom.pose.pose.position.y, odom.pose.pose.position.z,
                  odom.pose.pose.orientation.w, odom.twist.twist.linear.x, odom.twist.twist.angular.z,
                  *odom.pose.covariance, *odom.twist.covariance]
        assert np.isfinite(values).all(), f"non-finite odometry at {stamp_of(odom):.3f}"
        stamps.append(stamp_of(odom))
        poses.append(msg_pose(odom.pose.pose))
    return np.asarray(stamps), np.stack(poses) if poses else np.zeros((0, 4, 4))


def assert_matches_offline(harness, expected):
    stamps, poses = published(harness)
    np.testing.assert_allclose(stamps, [s for s, _ in expected], atol=1e-6)
    # float32 inference on differently aligned buffers (message bytes vs. a decoded JPEG) may round
    # differently in the last digits: ~1e-6 here.
    np.testing.assert_allclose(poses, np.stack([p for _, p in expected]), rtol=0, atol=1e-4)
    return stamps, poses


def latest_path(harness):
    path = harness.paths[-1]
    return (np.asarray([stamp_of(p) for p in path.poses]), np.stack([msg_pose(p.pose) for p in path.poses]))


def assert_resumes_from_held_pose(harness, stamps, poses, resume_stamp):
    """A dropped window: the new trajectory starts exactly at the last pose published before it."""
    before = stamps < resume_stamp - 1e-6
    assert before.any() and (~before).any(), "odometry before and after the fault"
    assert np.all(np.diff(stamps) > 0)  # time runs forward, no pose revised
    path_stamps, path_poses = latest_path(harness)
    first = int(np.argmin(np.abs(path_stamps - resume_stamp)))
    assert abs(path_stamps[first] - resume_stamp) < 1e-6
    np.testing.assert_allclose(path_poses[first], poses[before][-1], atol=1e-6)


def test_camera_silent_longer_than_max_gap_resumes_from_the_held_pose(live, estimator, kitti):
    node, harness = live()
    events = [("frame", kitti, i, kitti.stamp(i)) for i in range(30)]
    resume = kitti.stamp(30) + 3 * MAX_GAP_S  # the camera was silent for ~3 s
    events += [("frame", kitti, i, kitti.stamp(i) + 3 * MAX_GAP_S) for i in range(30, 50)]
    outcomes, expected = drive(harness, estimator, events)
    assert outcomes == ["keyframe"] * 50
    stamps, poses = assert_matches_offline(harness, expected)
    assert len(stamps) == (30 - 15) + (20 - 15)  # a fresh warm-up after the gap
    assert_resumes_from_held_pose(harness, stamps, poses, resume)
    d = node.node.diagnostic_values()
    assert d["resets"] == "1" and "exceeds max_gap_s=1.0" in d["last_reset_reason"]


def test_image_size_change_resumes_from_the_held_pose(live, estimator, kitti, shared_data):
    node, harness = live()
    other = KittiStream(shared_data / "kitti" / "07_head")  # 613x185 instead of 621x188
    events = [("frame", kitti, i, kitti.stamp(i)) for i in range(30)]
    resume = kitti.stamp(29) + 0.1
    events += [("frame", other, k, resume + 0.1 * k) for k in range(20)]
    _, expected = drive(harness, estimator, events)
    stamps, poses = assert_matches_offline(harness, expected)
    assert len(stamps) == 15 + 5
    assert_resumes_from_held_pose(harness, stamps, poses, resume)
    d = node.node.diagnostic_values()
    assert d["resets"] == "1" and "size changed from 621x188 to 613x185" in d["last_reset_reason"]


def test_clock_jumping_backwards_restarts_the_same_trajectory(live, estimator, kitti):
    node, harness = live()
    loop = [("frame", kitti, i, kitti.stamp(i)) for i in range(25)]
    _, expected = drive(harness, estimator, loop + loop)  # a bag played twice in a loop
    stamps, poses = assert_matches_offline(harness, expected)
    first, second = np.split(np.arange(len(stamps)), 2)
    # Each pass is one continuous trajectory from the origin; the second repeats the first exactly.
    assert np.all(np.diff(stamps[first]) > 0) and np.all(np.diff(stamps[second]) > 0)
    np.testing.assert_array_equal(stamps[first], stamps[second])
    np.testing.assert_allclose(poses[first], poses[second], atol=1e-9)
    # The path starts over with the new trajectory, at the origin.
    path_stamps, path_poses = latest_path(harness)
    assert len(path_stamps) == 25 and np.all(np.diff(path_stamps) > 0)
    np.testing.assert_allclose(path_poses[0], np.eye(4), atol=1e-9)
    d = node.node.diagnostic_values()
    assert d["resets"] == "1" and "backwards" in d["last_reset_reason"]


def test_burst_of_corrupt_images_is_skipped_without_a_reset(live, estimator, kitti):
    node, harness = live()
    events = [("frame", kitti, i, kitti.stamp(i)) for i in range(25)]
    events += [("corrupt", kitti, i, kitti.stamp(i)) for i in range(25, 30)]  # 0.5 s, under max_gap_s
    events += [("frame", kitti, i, kitti.stamp(i)) for i in range(30, 45)]
    outcomes, expected = drive(harness, estimator, events)
    assert outcomes[25:30] == ["corrupt"] * 5 and set(outcomes[:25] + outcomes[30:]) == {"keyframe"}
    stamps, poses = assert_matches_offline(harness, expected)
    # Tracking went on across the hole: one continuous trajectory, odometry for every good frame.
    assert len(stamps) == 10 + 15 and np.all(np.diff(stamps) > 0)
    assert np.linalg.norm(np.diff(poses[:, :3, 3], axis=0), axis=1).max() < 10 * np.median(
        np.linalg.norm(np.diff(poses[:, :3, 3], axis=0), axis=1)) + 1e-9
    d = node.node.diagnostic_values()
    assert d["corrupt_frames"] == "5" and d["resets"] == "0" and d["status"] == "tracking"


def test_reset_during_a_keyframe(live, estimator, kitti):
    slow = SlowEstimator(estimator)
    node, harness = live(node_estimator=slow)
    before = [("frame", kitti, i, kitti.stamp(i)) for i in range(20)]
    _, expected = drive(harness, estimator, before)
    assert len(expected) == 20 - 15
    # The next keyframe's window model takes 0.5 s; the reset is requested while it runs.
    slow.predict_delay_s = 0.5
    slow.predict_started.clear()
    image, info = frame(kitti, 20, kitti.stamp(20))
    harness.info_pub.publish(info)
    harness.image_pub.publish(image)
    assert slow.predict_started.wait(timeout=20)
    call_reset(harness)
    slow.predict_delay_s = 0.0
    harness.spin_until(lambda: any(abs(stamp_of(m) - kitti.stamp(20)) < 1e-6 for m in harness.processed), 10,
                       "the keyframe's acknowledgement")
    # The keyframe finished before the reset took effect (callbacks never interleave): its pose was
    # published with the old trajectory; everything after belongs to the new one.
    assert len(harness.odom) == len(expected) + 1
    after = [("frame", kitti, i, kitti.stamp(i)) for i in range(21, 40)]
    outcomes = send(harness, after)
    assert outcomes == ["keyframe"] * 19
    expected_all = offline(estimator, before + [("frame", kitti, 20, kitti.stamp(20)), ("reset",)] + after)
    harness.spin_until(lambda: len(harness.odom) >= len(expected_all), 10, "the odometry of the last frame")
    stamps, poses = assert_matches_offline(harness, expected_all)
    assert len(stamps) == (21 - 15) + (19 - 15)
    path_stamps, path_poses = latest_path(harness)
    assert len(path_stamps) == 19 and abs(path_stamps[0] - kitti.stamp(21)) < 1e-6
    np.testing.assert_allclose(path_poses[0], np.eye(4), atol=1e-9)
    d = node.node.diagnostic_values()
    assert d["resets"] == "1" and d["last_reset_reason"] == "reset service called"
    assert d["model_errors"] == "0" and d["status"] == "tracking"


def test_slow_inference_keeps_the_newest_frame_and_the_keyframe_rate(live, estimator, kitti):
    """A 30 Hz camera in real time into a node whose keyframes take over 3 camera periods each.

    The premise of the bound: a keyframe costs less than the model period (here 112 of 333 ms).
    """
    camera_hz, fps, count = 30.0, 3.0, 200
    slow = SlowEstimator(estimator, encode_delay_s=3 / camera_hz)
    node, harness = live(node_estimator=slow, model_fps=fps)  # qos_depth: the default, 1
    assert node.node.params["qos_depth"] == 1
    images = []
    for i in range(count):
        image = fill_image_msg(Image(), kitti.gray(i % 100), "mono8")
        image.header.stamp = rclpy.time.Time(nanoseconds=int(round((BASE_STAMP + i / camera_hz) * 1e9))).to_msg()
        image.header.frame_id = "camera_optical"
        images.append(image)
    start = time.monotonic()
    for i, image in enumerate(images):
        harness.image_pub.publish(image)
        harness.spin_for(start + (i + 1) / camera_hz - time.monotonic())
    last = len(harness.processed)
    harness.spin_for(0.5)
    while len(harness.processed) != last:  # until the node has caught up
        last = len(harness.processed)
        harness.spin_for(0.3)

    outcomes = {round((stamp_of(m) - BASE_STAMP) * camera_hz): m.status[0].message for m in harness.processed}
    processed = sorted(outcomes)
    dropped = count - len(processed)
    assert dropped > count / 10, f"the node kept up ({dropped} dropped): the test needs it to fall behind"
    # Keyframes every 1/fps of image time, to within one camera period, although most keyframes
    # cost more than three camera periods.
    keyframes = np.asarray([i for i in processed if outcomes[i] == "keyframe"]) / camera_hz
    assert len(keyframes) >= 16
    spacing = np.diff(keyframes)
    assert np.all(np.abs(spacing - 1 / fps) <= 1 / camera_hz + 1e-6), spacing
    # The node counts what it never saw (holes in the stamps it received) in its diagnostics, once it
    # knows the camera's interval: from the second frame it received on.
    holes = (processed[-1] - processed[1] + 1) - (len(processed) - 1)
    d = node.node.diagnostic_values()
    assert int(d["dropped_frames"]) == holes > 0
    assert d["status"] == "tracking" and float(d["keyframe_latency_ms_p50"]) >= 1e3 * 3 / camera_hz
    # Odometry for every frame the node took from the 16th keyframe on, and only for those.
    tracking_from = round(keyframes[15] * camera_hz)
    stamps, _ = published(harness)
    np.testing.assert_array_equal(np.round((stamps - BASE_STAMP) * camera_hz).astype(int),
                                  [i for i in processed if i >= tracking_from])


def test_a_message_rclpy_cannot_take_is_counted_and_the_node_goes_on(ros_context, estimator):
    """rclpy sometimes cannot hand a received message to Python (ros2/rclpy#848, seen under load):
    the node's spin counts and logs it, and keeps spinning; any other error still stops it."""
    from rclpy.executors import SingleThreadedExecutor

    from lapose_ros.node import UNTAKEN_MESSAGE, LaPoseNode, spin

    class FlakyExecutor(SingleThreadedExecutor):
        def __init__(self, context):
            super().__init__(context=context)
            self.calls = 0

        def spin_once(self, timeout_sec=None):
            self.calls += 1
            if self.calls <= 2:
                raise RuntimeError(f"{UNTAKEN_MESSAGE} '0' to Python object")
            if self.calls == 3:
                return super().spin_once(timeout_sec=0.01)
            raise RuntimeError("something else")

    node = LaPoseNode(estimator=estimator, context=ros_context,
                      parameter_overrides=[Parameter("publish_tf", value=False)])
    try:
        executor = FlakyExecutor(ros_context)
        with pytest.raises(RuntimeError, match="something else"):
            spin(node, executor)
        assert executor.calls == 4
        assert node.counters["untaken_messages"] == 2
        assert node.diagnostic_values()["untaken_messages"] == "2"
    finally:
        node.destroy_node()


def test_spin_ends_when_asked_to_stop(ros_context, estimator):
    """``main`` stops the spin loop through an event (set by SIGINT/SIGTERM), so that it can join
    the processing thread and destroy the node before the context shuts down."""
    from rclpy.executors import SingleThreadedExecutor

    from lapose_ros.node import LaPoseNode, spin

    node = LaPoseNode(estimator=estimator, context=ros_context,
                      parameter_overrides=[Parameter("publish_tf", value=False)])
    stop = threading.Event()
    spinner = threading.Thread(target=spin, args=(node, SingleThreadedExecutor(context=ros_context), stop))
    try:
        spinner.start()
        spinner.join(timeout=1.0)
        assert spinner.is_alive()  # spins while the context is up and nobody asked it to stop
        stop.set()
        spinner.join(timeout=3.0)
        assert not spinner.is_alive()
        assert rclpy.ok(context=ros_context)  # the context is left for main to shut down
    finally:
        stop.set()
        spinner.join(timeout=3.0)
        node.destroy_node()


def test_start_up_objects_are_frozen_out_of_full_collections(estimator):
    """``main`` freezes what is alive once the node is built: a full collection then walks only what
    came later (with torch and a model loaded it walked ~10^5 objects, ~85 ms on a 2-core CPU, the
    length of a keyframe's worst case)."""
    import gc

    from lapose_ros.node import freeze_start_up_objects

    assert estimator is not None  # the model is loaded: its objects are among those frozen
    try:
        freeze_start_up_objects()
        assert gc.get_freeze_count() > 10_000
        made_later = [[i] for i in range(100)]  # containers: tracked by the collector
        tracked = gc.get_objects()
        assert len(tracked) < 1_000
        assert any(x is made_later[0] for x in tracked)
    finally:
        gc.unfreeze()  # the rest of the test session collects as usual


def test_only_keyframes_are_converted(live, kitti):
    """Between keyframes the node reads an image's header, not its pixels: at 2 fps from the ~10 Hz
    stream one frame in five is converted, and a frame cut short in transit is still counted."""
    node, harness = live(model_fps=2.0)
    converted = []

    class Counting(ImageConverter):
        def __call__(self, msg, topic=""):
            converted.append(stamp_of(msg))
            return super().__call__(msg, topic)

    node.node.convert = Counting()
    events = [("frame", kitti, i, kitti.stamp(i)) for i in range(22)]
    events += [("corrupt", kitti, 22, kitti.stamp(22))]  # between keyframes 20 and 25
    events += [("frame", kitti, i, kitti.stamp(i)) for i in range(23, 30)]
    outcomes = send(harness, events)
    keyframes = [i for i, outcome in enumerate(outcomes) if outcome == "keyframe"]
    assert keyframes == list(range(0, 30, 5))
    assert outcomes[22] == "corrupt" and outcomes.count("frame") == 30 - 6 - 1
    np.testing.assert_allclose(converted, [kitti.stamp(i) for i in keyframes], atol=1e-6)
    assert node.node.diagnostic_values()["corrupt_frames"] == "1"


def test_a_silent_camera_is_reported(live, kitti):
    """Once no image has come for longer than max_gap_s (and a diagnostics period), diagnostics warn
    and say for how long: the odometry has stopped, whatever the last status was. Counted from the
    node's start too, so a wrong image_topic shows."""
    import re

    from diagnostic_msgs.msg import DiagnosticStatus

    def silence(status):
        found = re.search(r"; no image for (\d+\.\d) s on /camera/image_raw$", status.message)
        return None if found is None else float(found.group(1))

    node, harness = live()
    status = node.node.diagnostic_status()
    assert status.message == "warming up (0/16 keyframes)"  # just started: not silent yet
    node.node._started -= MAX_GAP_S + 1.5  # as if it had started that long ago, and no image came
    status = node.node.diagnostic_status()
    assert status.message.startswith("warming up (0/16 keyframes); ") and silence(status) >= 2.5
    send(harness, [("frame", kitti, i, kitti.stamp(i)) for i in range(20)])
    status = node.node.diagnostic_status()
    assert (status.message, status.level) == ("tracking", DiagnosticStatus.OK)
    node.node._last_handled -= MAX_GAP_S + 1.5  # as if the camera had stopped that long ago
    node.node._last_received -= MAX_GAP_S + 1.5
    status = node.node.diagnostic_status()
    assert status.level == DiagnosticStatus.WARN
    assert status.message.startswith("tracking; ") and silence(status) >= 2.5
    assert float({kv.key: kv.value for kv in status.values}["seconds_since_image"]) >= 2.5
    # Images still arriving while a slow keyframe holds the processing: the camera is not silent.
    node.node._last_received += MAX_GAP_S + 1.5
    assert node.node.diagnostic_status().level == DiagnosticStatus.OK


def test_path_carries_the_images_own_stamps(live, kitti):
    """Stamps to the nanosecond: through float seconds at today's epoch they lose their last digits."""
    node, harness = live()
    sent = []
    for i in range(20):
        image, info = frame(kitti, i, kitti.stamp(i))
        image.header.stamp.nanosec = image.header.stamp.nanosec // 1000 * 1000 + 789
        info.header.stamp = image.header.stamp
        sent.append((image.header.stamp.sec, image.header.stamp.nanosec))
        harness.send_lockstep(image, info)
    harness.spin_until(lambda: harness.paths and len(harness.paths[-1].poses) == 20, 10, "the path")
    path = harness.paths[-1]  # every frame a keyframe at model_fps 10
    assert [(p.header.stamp.sec, p.header.stamp.nanosec) for p in path.poses] == sent
    assert (path.header.stamp.sec, path.header.stamp.nanosec) == sent[-1]
    odom = harness.odom[-1].header.stamp
    assert (odom.sec, odom.nanosec) == sent[-1]


def test_publish_rate_publishes_at_the_node_clock_and_says_when_it_cannot(live, kitti):
    """publish_rate > 0: odometry from a timer at the node's clock, extrapolated from the last
    keyframes. A clock far from the images' stamps while they keep coming (a bag played without
    use_sim_time, or sim time without /clock) publishes nothing, and the node says why instead of
    staying silent; a camera that stopped is left to diagnostics."""
    # A timer every 100 s: its ticks are the test's own calls, none of the node's in between.
    node, harness = live(publish_rate=0.01)
    send(harness, [("frame", kitti, i, kitti.stamp(i)) for i in range(20)])
    harness.spin_for(0.3)
    assert not harness.odom  # a timer publishes, not each image
    last = node.node.vo.monitor.last_stamp
    warnings = []

    class Clock:
        seconds = last + 0.05

        def now(self):
            return rclpy.time.Time(nanoseconds=int(round(self.seconds * 1e9)))

    class Logger:
        def warning(self, message, **kwargs):
            warnings.append(message)

    node.node.get_clock, node.node.get_logger = Clock, Logger  # the timer's view of time and its log
    node.node._on_publish_timer()
    harness.spin_until(lambda: harness.odom, 5, "odometry from the timer")
    assert abs(stamp_of(harness.odom[0]) - (last + 0.05)) < 1e-6 and not warnings
    expected = node.node.vo.extrapolate(last + 0.05).pose
    # atol: the stamp goes through integer nanoseconds, the offline pose through float seconds.
    np.testing.assert_allclose(msg_pose(harness.odom[0].pose.pose), expected, atol=1e-5)
    for offset in (3600.0, -last):  # a bag's stamps in the past; sim time without /clock (now = 0)
        Clock.seconds = last + offset
        node.node._on_publish_timer()
        assert warnings and f"clock is {offset:+.1f} s from the images' stamps" in warnings[-1]
        assert "use_sim_time" in warnings[-1]
    harness.spin_for(0.2)
    assert len(harness.odom) == 1  # nothing published at either clock
    node.node._last_handled -= 60.0  # the camera stopped a minute ago: not the clock's fault
    node.node._last_received -= 60.0
    count = len(warnings)
    node.node._on_publish_timer()
    assert len(warnings) == count
