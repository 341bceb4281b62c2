"""Test side of the node tests: KITTI frames as camera messages, and a harness that publishes them
and records what the node publishes (odometry, path, diagnostics, TF, per-image acknowledgements)."""
import time
from pathlib import Path

import cv2
import numpy as np
import rclpy
import rclpy.executors
import rclpy.time
from diagnostic_msgs.msg import DiagnosticArray
from nav_msgs.msg import Odometry, Path as PathMsg
from rclpy.node import Node
from rclpy.qos import QoSProfile
from sensor_msgs.msg import CameraInfo, Image
from std_srvs.srv import Trigger
from transforms3d.quaternions import quat2mat

from lapose_ros.image_conversion import fill_image_msg
from lapose_ros.odometry import se3

BASE_STAMP = 1_700_000_000.0  # an epoch-like stamp, as a live camera would give

try:
    from tf2_msgs.msg import TFMessage
except ImportError:  # built by tools/setup_ros.sh where no ROS distribution provides it
    TFMessage = None


class KittiStream:
    """Frames of a KITTI folder as image + camera-info messages with epoch-like stamps."""

    def __init__(self, folder: Path):
        self.folder = folder
        self.times = np.loadtxt(folder / "times.txt")
        self.calib = np.loadtxt(folder / "calib.txt")

    def gray(self, index: int) -> np.ndarray:
        return cv2.imread(str(self.folder / "images" / f"{index:06d}.jpg"), cv2.IMREAD_GRAYSCALE)

    def stamp(self, index: int, offset: float = 0.0) -> float:
        return BASE_STAMP + float(self.times[index]) + offset

    def messages(self, index: int, offset: float = 0.0, encoding: str = "mono8"):
        gray = self.gray(index)
        pixels = gray if encoding == "mono8" else np.repeat(gray[..., None], 3, -1)
        image = fill_image_msg(Image(), pixels, encoding)
        stamp = rclpy.time.Time(nanoseconds=int(round(self.stamp(index, offset) * 1e9))).to_msg()
        image.header.stamp, image.header.frame_id = stamp, "camera_optical"
        fx, fy, cx, cy, width, height = self.calib
        info = CameraInfo()
        info.header = image.header
        info.width, info.height = int(width), int(height)
        info.k = [fx, 0.0, cx, 0.0, fy, cy, 0.0, 0.0, 1.0]
        return image, info


class Harness:
    """The test side: publishes camera messages, records what the node publishes."""

    def __init__(self, context, node_name: str = "lapose_node"):
        self.node = Node("lapose_test_harness", context=context)
        self.executor = rclpy.executors.SingleThreadedExecutor(context=context)
        self.executor.add_node(self.node)
        self.image_pub = self.node.create_publisher(Image, "/camera/image_raw", 100)
        self.info_pub = self.node.create_publisher(CameraInfo, "/camera/camera_info", 100)
        self.odom, self.paths, self.diagnostics, self.tf, self.processed = [], [], [], [], []
        self.node.create_subscription(Odometry, "/lapose/odom", self.odom.append, 100)
        self.node.create_subscription(PathMsg, "/lapose/path", self.paths.append, 10)
        self.node.create_subscription(DiagnosticArray, "/diagnostics", self.diagnostics.append, 10)
        if TFMessage is not None:
            self.node.create_subscription(TFMessage, "/tf", self.tf.append, QoSProfile(depth=100))
        self.processed_topic = f"/{node_name}/processed"
        self.node.create_subscription(DiagnosticArray, self.processed_topic, self.processed.append, 100)
        self.reset_client = self.node.create_client(Trigger, f"/{node_name}/reset")

    def spin_until(self, condition, timeout: float, what: str) -> None:
        deadline = time.monotonic() + timeout
        while not condition():
            if time.monotonic() > deadline:
                raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")
            self.executor.spin_once(timeout_sec=0.05)

    def spin_for(self, seconds: float) -> None:
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            self.executor.spin_once(timeout_sec=0.01)

    def wait_for_node(self, process=None) -> None:
        """Until the node (a process, or None for one in this process) is discovered both ways."""
        def ready():
            if process is not None and process.poll() is not None:
                raise AssertionError(f"lapose_node exited with {process.returncode}:\n{process.output()}")
            return (self.image_pub.get_subscription_count() > 0 and
                    self.node.count_publishers("/lapose/odom") > 0 and
                    self.node.count_publishers(self.processed_topic) > 0)
        self.spin_until(ready, 60, "lapose_node to start and be discovered")
        self.spin_for(0.5)

    def send(self, image: Image, info: CameraInfo, period: float = 0.04) -> None:
        self.info_pub.publish(info)
        self.image_pub.publish(image)
        self.spin_for(period)

    def send_lockstep(self, image: Image, info: CameraInfo, timeout: float = 30.0) -> str:
        """Publish one frame and wait until the node acknowledges it; returns its outcome."""
        stamp = (image.header.stamp.sec, image.header.stamp.nanosec)
        start = len(self.processed)
        self.info_pub.publish(info)
        self.image_pub.publish(image)

        def acknowledged():
            return any((m.header.stamp.sec, m.header.stamp.nanosec) == stamp for m in self.processed[start:])
        self.spin_until(acknowledged, timeout, f"the node to acknowledge the image at {stamp}")
        return next(m.status[0].message for m in self.processed[start:]
                    if (m.header.stamp.sec, m.header.stamp.nanosec) == stamp)

    def latest_diagnostics(self) -> dict:
        status = self.diagnostics[-1].status[0]
        level = status.level  # a byte field: bytes of length one in rclpy
        return {"message": status.message, "level": level[0] if isinstance(level, bytes) else int(level),
                **{kv.key: kv.value for kv in status.values}}

    def wait_diagnostics(self, condition, timeout: float, what: str) -> dict:
        start = len(self.diagnostics)
        self.spin_until(lambda: len(self.diagnostics) > start and condition(self.latest_diagnostics()),
                        timeout, what)
        return self.latest_diagnostics()

def msg_pose(pose) -> np.ndarray:
    p, o = pose.position, pose.orientation
    return se3(quat2mat([o.w, o.x, o.y, o.z]), [p.x, p.y, p.z])

