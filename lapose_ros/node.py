"""``lapose_node``: LA-Pose visual odometry as a ROS 2 node.

Subscribes a camera (``sensor_msgs/Image``, or ``CompressedImage`` on a ``.../compressed`` topic, +
``sensor_msgs/CameraInfo``; a distorted camera's keyframes are rectified) and publishes
``nav_msgs/Odometry``, the ``odom -> base_link`` transform, a ``nav_msgs/Path`` of keyframe poses and
``diagnostic_msgs/DiagnosticArray`` at 1 Hz. The node is thin: keyframe selection, the feature cache,
trajectory integration and the reset rules live in :mod:`lapose_ros.odometry`.

Falling behind: the image callback only hands the message to a processing thread through a
:class:`~lapose_ros.odometry.NewestFrameBuffer`, so the subscription (sensor-data QoS, depth
``qos_depth`` = 1) is always drained at once. When inference is slower than the camera the node
works on the newest frame instead of an ever older queue, but keeps the frame that is due as a
keyframe, so keyframe spacing stays within one camera period of ``1/model_fps``. Frames it skipped
are counted in diagnostics: ``dropped_by_node`` (exact) and ``dropped_frames`` (holes in the stamp
sequence, which includes frames lost before they reached the node). Keyframes are chosen by image
stamp alone. All odometry state is touched under one lock, by the processing thread and the
reset service.

Per image taken off the queue the node publishes a ``diagnostic_msgs/DiagnosticArray`` on
``~/processed`` (header = the image's header; message = keyframe, frame, duplicate, corrupt or
model_error), after its odometry: a player can wait on it to send the next image only when the node
is done with the previous one (``lapose replay`` in lockstep), and during warm-up, when no odometry
is published, it is the only sign that an image was handled.

Output while warming up (fewer than 16 keyframes, ~7.5 s at 2 fps): nothing is published on the
odometry topic or TF; diagnostics say "warming up". An identity pose with a large covariance would be
read as "standing still" by consumers that ignore covariance, which is worse than silence.

Run: ``ros2 run lapose_ros lapose_node --ros-args --params-file config/lapose.yaml`` or
``python -m lapose_ros.node --ros-args -p image_topic:=/my/camera``.
"""
from __future__ import annotations

import gc
import logging
import signal
import sys
import threading
import time
from collections import OrderedDict, deque
from typing import Any, Optional

import numpy as np
import rclpy
from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus, KeyValue
from geometry_msgs.msg import PoseStamped, TransformStamped
from nav_msgs.msg import Odometry, Path
from rcl_interfaces.msg import ParameterDescriptor
from rclpy.exceptions import InvalidParameterTypeException
from rclpy.executors import ExternalShutdownException, SingleThreadedExecutor
from rclpy.node import Node
from rclpy.qos import DurabilityPolicy, HistoryPolicy, QoSProfile, ReliabilityPolicy
from rclpy.signals import SignalHandlerOptions
from rclpy.time import Time
from sensor_msgs.msg import CameraInfo, CompressedImage, Image
from std_msgs.msg import Header
from std_srvs.srv import Trigger

from lapose_core.data.rosbag_source import image_transport_base

from .image_conversion import ImageConversionError, ImageConverter, UnsupportedEncodingError
from .launch_arguments import NODE_READY_LOG
from .odometry import (DEFAULT_CAMERA_TO_BASE, NewestFrameBuffer, OdometryConfigError, OdometryEstimate,
                       VisualOdometry, camera_to_base_from_xyz_quat, pose_to_xyz_quat)
from .rectify import CameraModel, RectificationError, Rectifier, is_rectified_topic, should_rectify

NODE_NAME = "lapose_node"
PROCESSED_TOPIC = "~/processed"  # one DiagnosticArray per image handled (see the module docstring)
BACKEND_CHOICES = ("auto", "tensorrt", "compile", "eager")
ESTIMATOR_CHOICES = ("hybrid", "lapose")

DIAGNOSTICS_PERIOD_S = 1.0
CLOCK_MISMATCH_S = 10.0  # publish_rate > 0: the node's clock this far from the image stamps is a setup error

# name -> default. The same names and values are in config/lapose.yaml (a test keeps them in step).
PARAMETERS: dict[str, Any] = {
    "image_topic": "/camera/image_raw",
    "camera_info_topic": "/camera/camera_info",
    "odom_topic": "/lapose/odom",
    "path_topic": "/lapose/path",
    "odom_frame": "odom",
    "base_frame": "base_link",
    # Depth of the image subscription: 1 keeps the newest frame when the node falls behind.
    "qos_depth": 1,
    # The model's window rate: keyframes are picked from the camera stream at this rate.
    "model_fps": 2.0,
    # 0: publish once per camera image (stamp = image stamp); > 0: publish at this rate from a timer,
    # extrapolating to the current time.
    "publish_rate": 0.0,
    "publish_tf": True,
    "invert_tf": False,
    "path_max_length": 1000,
    "max_gap_s": 1.0,
    # '' = the bundled model; a checkpoint or run folder; 'random:<preset>' = random weights of a
    # preset (timing and plumbing checks only, the poses are meaningless).
    "checkpoint": "",
    # hybrid: rotation and direction from feature geometry checked against LA-Pose, LA-Pose's metric
    # scale, LA-Pose's own step where geometry is not confident (lapose_core/hybrid.py); lapose: the
    # model alone. hybrid is the default: it validates better (docs/results.md).
    "estimator": "hybrid",
    # hybrid: camera height above the road in metres; > 0 takes the metric scale from the road,
    # aligned between keyframes (LA-Pose's where no road is seen), 0 = LA-Pose's scale. The pitch
    # is the optical axis's angle below the road plane (degrees), where the road's normal is
    # looked for; the fit finds the road's own normal near it (`python training/geometry_study.py road`).
    "camera_height_m": 0.0,
    "camera_pitch_deg": 0.0,
    # hybrid, camera_height_m 0: the height of base_frame's origin above the road (its xy-plane
    # parallel to the road: 0 for base_footprint, or a car's base_link on the ground under the rear
    # axle). >= 0 takes the camera's height and pitch from the camera-to-base transform (TF, else
    # camera_to_base) and the metric scale from the road; < 0 = unknown.
    "base_height_m": -1.0,
    # Pose and twist covariances are multiplied by this while the newest step is a fallback.
    "fallback_covariance_scale": 10.0,
    # auto = eager on cpu (torch.compile takes minutes to warm up on a small CPU for little gain),
    # tensorrt on cuda. An unavailable backend falls back tensorrt -> compile -> eager.
    "backend": "auto",
    "device": "cpu",
    "engine_cache_dir": "",
    # Camera pose in the base frame, x y z qx qy qz qw. Used when TF has no base_frame <- camera
    # transform (or tf2_ros is absent). Default: camera at the base origin looking along base x.
    "camera_to_base": list(DEFAULT_CAMERA_TO_BASE),
    # A CameraInfo with lens distortion: each keyframe is remapped to its rectified pinhole camera (P),
    # as image_proc's image_rect is. auto: unless image_topic is rectified already (image_rect...);
    # always; never.
    "rectify": "auto",
    # Intrinsics used when no CameraInfo arrives (0 = unknown). The hybrid matches features with them
    # (without any, with LA-Pose's field of view); a model that refits its rotations reads them at
    # their field of view and about their principal point (without any, the predicted field of view
    # and the image centre); diagnostics report them next to the predicted one.
    "fx": 0.0,
    "fy": 0.0,
    "cx": 0.0,
    "cy": 0.0,
    "pose_covariance_diagonal": [0.05, 0.05, 0.05, 0.01, 0.01, 0.01],
    "twist_covariance_diagonal": [0.1, 0.1, 0.1, 0.02, 0.02, 0.02],
}


class LaPoseNodeError(RuntimeError):
    """The node cannot start with its parameters (the message names the parameter)."""


def sensor_qos(depth: int) -> QoSProfile:
    """rclpy's sensor-data profile (best effort, volatile) with a configurable depth."""
    if depth < 1:
        raise LaPoseNodeError(f"parameter 'qos_depth' must be >= 1, got {depth}")
    return QoSProfile(history=HistoryPolicy.KEEP_LAST, depth=depth,
                      reliability=ReliabilityPolicy.BEST_EFFORT, durability=DurabilityPolicy.VOLATILE)


def stamp_seconds(stamp: Any) -> float:
    return stamp.sec + stamp.nanosec * 1e-9


def stamp_msg(seconds: float):
    return Time(nanoseconds=int(round(seconds * 1e9))).to_msg()


def fill_pose(msg_pose: Any, pose: np.ndarray) -> None:
    xyz, q = pose_to_xyz_quat(pose)
    msg_pose.position.x, msg_pose.position.y, msg_pose.position.z = (float(v) for v in xyz)
    o = msg_pose.orientation
    o.x, o.y, o.z, o.w = (float(v) for v in q)


def transform_to_matrix(t: Any) -> np.ndarray:
    """geometry_msgs/Transform -> 4x4."""
    r = t.rotation
    return camera_to_base_from_xyz_quat([t.translation.x, t.translation.y, t.translation.z,
                                         r.x, r.y, r.z, r.w], name="TF camera transform")


def diagonal_covariance(values: list[float], name: str) -> list[float]:
    if len(values) != 6 or any(v < 0 for v in values):
        raise LaPoseNodeError(f"parameter '{name}' needs 6 non-negative numbers "
                              f"(x y z roll pitch yaw variances), got {values}")
    return np.diag(np.asarray(values, dtype=float)).reshape(-1).tolist()


def load_estimator(checkpoint: str, backend: str, device: str, engine_cache_dir: str, logger: Any):
    """The pose estimator the parameters ask for, resolving 'auto' and an absent CUDA device."""
    import torch

    from lapose_core.inference import PoseEstimator

    if device.startswith("cuda") and not torch.cuda.is_available():
        logger.warning(f"device '{device}' requested but CUDA is not available: using 'cpu'")
        device = "cpu"
    if device != "cpu" and not device.startswith("cuda"):
        raise LaPoseNodeError(f"parameter 'device' must be 'cpu' or 'cuda[:N]', got '{device}'")
    if backend not in BACKEND_CHOICES:
        raise LaPoseNodeError(f"parameter 'backend' must be one of {', '.join(BACKEND_CHOICES)}, "
                              f"got '{backend}'")
    if backend == "auto":
        backend = "tensorrt" if device.startswith("cuda") else "eager"
    if checkpoint.startswith("random:"):
        logger.warning(f"checkpoint '{checkpoint}': random weights, poses are meaningless")
        return PoseEstimator.random(preset=checkpoint.split(":", 1)[1], device=device, backend=backend)
    return PoseEstimator.load(checkpoint or None, device=device, backend=backend,
                              engine_cache_dir=engine_cache_dir or None)


def check_parameters(p: dict[str, Any]) -> None:
    """The checks that need no model, made before it loads (seconds on a car's computer)."""
    for name in ("odom_frame", "base_frame"):
        if not p[name]:
            raise LaPoseNodeError(f"parameter '{name}' must name a frame, got ''")
        if p[name].startswith("/"):
            raise LaPoseNodeError(f"parameter '{name}' must be a frame id without a leading '/' (tf2 "
                                  f"rejects those), got '{p[name]}'")
    if p["odom_frame"] == p["base_frame"]:
        raise LaPoseNodeError(f"parameters 'odom_frame' and 'base_frame' are both '{p['odom_frame']}': "
                              "the odometry moves one frame in the other")
    if p["fx"] > 0 and not (p["fy"] > 0 and p["cx"] > 0 and p["cy"] > 0):
        raise LaPoseNodeError(f"parameters fx fy cx cy must all be > 0 when fx is given, got "
                              f"{p['fx']} {p['fy']} {p['cx']} {p['cy']}")
    for name, meaning in (("model_fps", "0 = the model's own rate"), ("publish_rate", "0 = one per image")):
        if p[name] < 0:
            raise LaPoseNodeError(f"parameter '{name}' must be >= 0 ({meaning}), got {p[name]}")
    if p["path_max_length"] < 1:
        raise LaPoseNodeError(f"parameter 'path_max_length' must be >= 1, got {p['path_max_length']}")


def wrap_estimator(lapose: Any, params: dict[str, Any]):
    """The estimator the ``estimator`` parameter asks for, around a loaded LA-Pose estimator."""
    if params["estimator"] not in ESTIMATOR_CHOICES:
        raise LaPoseNodeError(f"parameter 'estimator' must be one of {', '.join(ESTIMATOR_CHOICES)}, "
                              f"got '{params['estimator']}'")
    intrinsics = [params[k] for k in ("fx", "fy", "cx", "cy")] if params["fx"] > 0 else None
    if params["estimator"] == "lapose":
        lapose.intrinsics = None if intrinsics is None else tuple(float(v) for v in intrinsics)
        return lapose
    from lapose_core.hybrid import HybridConfig, HybridError, HybridEstimator

    height, pitch = road_mount(params, camera_to_base_from_xyz_quat(params["camera_to_base"]))
    try:
        return HybridEstimator(lapose, HybridConfig.for_camera(height, pitch), intrinsics=intrinsics)
    except HybridError as e:
        raise LaPoseNodeError(f"parameter 'camera_height_m': {e}") from None


def road_mount(params: dict[str, Any], camera_to_base: np.ndarray) -> tuple[float, float]:
    """The camera's height above the road and pitch that the hybrid's road scale uses (height 0:
    unknown, LA-Pose's scale): ``camera_height_m`` and ``camera_pitch_deg`` when the height is
    given, else from the camera-to-base transform when ``base_height_m`` >= 0."""
    from lapose_core.road_plane import MountError

    try:
        mount = mount_from_transform(params, camera_to_base)
    except MountError as e:
        raise LaPoseNodeError(f"parameters 'camera_to_base' and 'base_height_m': {e}") from None
    if mount is None:
        return float(params["camera_height_m"]), float(params["camera_pitch_deg"])
    return mount.height_m, mount.pitch_deg


def mount_from_transform(params: dict[str, Any], camera_to_base: np.ndarray):
    """The camera's mount from the camera-to-base transform, when the parameters take it from there
    (``base_height_m`` >= 0 and no ``camera_height_m``); else None. Raises
    :class:`lapose_core.road_plane.MountError` for a mount the road's scale cannot use."""
    from lapose_core.road_plane import mount_from_camera_pose

    if params["camera_height_m"] > 0 or params["base_height_m"] < 0:
        return None
    return mount_from_camera_pose(camera_to_base, float(params["base_height_m"]))


class LaPoseNode(Node):
    """The odometry node. ``estimator`` may be passed in (benchmarks); otherwise it is loaded."""

    def __init__(self, estimator: Any = None, node_name: str = NODE_NAME, **node_kwargs):
        super().__init__(node_name, **node_kwargs)
        # Read once at start: read-only, so `ros2 param set` says so instead of appearing to work.
        read_only = ParameterDescriptor(read_only=True)
        for name, default in PARAMETERS.items():
            try:
                self.declare_parameter(name, default, read_only)
            except InvalidParameterTypeException as e:
                raise LaPoseNodeError(f"parameter '{name}' must be of type {type(default).__name__} "
                                      f"like its default {default!r}: {e}") from None
        p = {name: self.get_parameter(name).value for name in PARAMETERS}
        self.params = p
        log = self.get_logger()
        check_parameters(p)

        if estimator is None:  # an estimator passed in is used as it is
            estimator = wrap_estimator(load_estimator(p["checkpoint"], p["backend"], p["device"],
                                                      p["engine_cache_dir"], log), p)
        self.estimator = estimator
        self.estimator_kind = "hybrid" if hasattr(estimator, "lapose") else "lapose"
        fps = p["model_fps"] if p["model_fps"] > 0 else float(getattr(estimator, "fps", 2.0))
        self.vo = VisualOdometry(estimator, fps=fps, max_gap_s=p["max_gap_s"],
                                 camera_to_base=camera_to_base_from_xyz_quat(p["camera_to_base"]),
                                 fallback_covariance_scale=p["fallback_covariance_scale"])
        self.vo.prepare_keyframe = self._rectify_keyframe
        self.pose_covariance = diagonal_covariance(p["pose_covariance_diagonal"], "pose_covariance_diagonal")
        self.twist_covariance = diagonal_covariance(p["twist_covariance_diagonal"],
                                                    "twist_covariance_diagonal")
        if p["invert_tf"] and not p["publish_tf"]:
            log.warning("invert_tf is set but publish_tf is false: no TF is published")

        self.convert = ImageConverter()
        if self.convert.backend != "cv_bridge":
            log.info("cv_bridge not installed: converting images with numpy (same result)")
        # received: taken off the subscription; frames: processed (the rest were dropped as stale).
        self.counters = {"received": 0, "frames": 0, "corrupt_frames": 0, "model_errors": 0,
                         "untaken_messages": 0}
        self._warned_encodings: set[str] = set()
        self._latency_ms: deque[float] = deque(maxlen=200)
        self._keyframe_latency_ms: deque[float] = deque(maxlen=200)
        self._intrinsics_from_info: Optional[tuple[float, float, float, float, int]] = None
        try:
            self._rectify = should_rectify(p["rectify"], p["image_topic"])
        except RectificationError as e:
            raise LaPoseNodeError(str(e)) from None
        self._camera_model: Optional[CameraModel] = None
        self._rectifier: Optional[Rectifier] = None
        self._rectification = "none (no CameraInfo yet)"
        self._camera_frame = ""
        # perf_counter() when the node was up (its model loaded), when the last image arrived and
        # when the last one was handled.
        self._started = time.perf_counter()
        self._last_received: Optional[float] = None
        self._last_handled: Optional[float] = None
        self._camera_to_base_source = "parameter camera_to_base"
        self._has_tracked = False  # the camera-to-base transform is taken from TF until then
        self._mount_warning = ""
        self._path = Path()
        self._path.header.frame_id = p["odom_frame"]
        self._path_poses: deque[PoseStamped] = deque(maxlen=p["path_max_length"])
        # The image stamps of recent keyframes as they came: a stamp through float seconds loses
        # its last nanoseconds (2.4e-7 s at today's epoch), and the path must carry the image's own.
        self._keyframe_stamps: OrderedDict[float, Any] = OrderedDict()

        qos = sensor_qos(p["qos_depth"])
        # image_transport's layout: <base>/compressed carries sensor_msgs/CompressedImage.
        image_type = CompressedImage if image_transport_base(p["image_topic"])[1] else Image
        self.create_subscription(image_type, p["image_topic"], self._on_image, qos)
        self.create_subscription(CameraInfo, p["camera_info_topic"], self._on_camera_info, qos)
        self.odom_pub = self.create_publisher(Odometry, p["odom_topic"], 10)
        self.path_pub = self.create_publisher(Path, p["path_topic"], 1)
        self.diag_pub = self.create_publisher(DiagnosticArray, "/diagnostics", 10)
        self.processed_pub = self.create_publisher(DiagnosticArray, PROCESSED_TOPIC, 10)
        self.create_service(Trigger, "~/reset", self._on_reset)
        self.create_timer(DIAGNOSTICS_PERIOD_S, self._publish_diagnostics)
        if p["publish_rate"] > 0:
            self.create_timer(1.0 / p["publish_rate"], self._on_publish_timer)
        self._send_transform = self._make_tf_broadcaster() if p["publish_tf"] else None
        self._tf_buffer = self._make_tf_listener()
        self._frames = NewestFrameBuffer()
        self._lock = threading.Lock()  # odometry state: processing thread, reset service, timers
        self._stopping = threading.Event()
        self._worker = threading.Thread(target=self._process_frames, name="lapose_odometry", daemon=True)
        self._worker.start()
        log.info(f"{NODE_READY_LOG} {p['image_topic']} -> {p['odom_topic']} ({p['odom_frame']} -> "
                 f"{p['base_frame']}), model {getattr(estimator, 'checkpoint_name', '?')}, backend "
                 f"{getattr(estimator, 'backend', '?')}, keyframes at {fps:g} fps")

    # ------------------------------------------------------------------ optional ROS packages
    def _make_tf_broadcaster(self):
        try:
            from tf2_ros import TransformBroadcaster

            return TransformBroadcaster(self).sendTransform
        except ImportError:
            pass
        try:
            from tf2_msgs.msg import TFMessage
        except ImportError:
            self.get_logger().warning("tf2_ros and tf2_msgs are not installed: TF is not published "
                                      "(odometry and path still are)")
            return None
        # What TransformBroadcaster does: TFMessage on /tf, reliable, depth 100.
        publisher = self.create_publisher(TFMessage, "/tf", QoSProfile(depth=100))
        self.get_logger().info("tf2_ros not installed: publishing tf2_msgs/TFMessage on /tf directly")
        return lambda transform: publisher.publish(TFMessage(transforms=[transform]))

    def _make_tf_listener(self):
        try:
            from tf2_ros.buffer import Buffer
            from tf2_ros.transform_listener import TransformListener
        except ImportError:
            self.get_logger().info("tf2_ros not installed: camera-to-base transform from parameter "
                                   "camera_to_base")
            return None
        buffer = Buffer()
        self._tf_listener = TransformListener(buffer, self)
        return buffer

    def _lookup_camera_to_base(self) -> None:
        """While first warming up, take base_frame <- camera frame from TF when it is there.

        Frozen once tracking starts: a transform that changes mid-trajectory would make it jump.
        """
        base = self.params["base_frame"]
        if self._tf_buffer is None or not self._camera_frame or self._camera_frame == base:
            return
        from tf2_ros import TransformException

        try:
            t = self._tf_buffer.lookup_transform(base, self._camera_frame, Time())
        except TransformException:
            return
        self.vo.camera_to_base = transform_to_matrix(t.transform)
        self._camera_to_base_source = f"TF {base} <- {self._camera_frame}"
        self._follow_camera_mount()

    def _follow_camera_mount(self) -> None:
        """With the road's scale taken from the camera-to-base transform (``base_height_m`` >= 0), a
        transform from TF moves the mount the road is looked for from."""
        from lapose_core.road_plane import MountError

        p = self.params
        if not hasattr(self.estimator, "set_camera_mount"):
            return
        try:
            mount = mount_from_transform(p, self.vo.camera_to_base)
        except MountError as e:
            if self._mount_warning != str(e):
                self._mount_warning = str(e)
                config = self.estimator.config
                self.get_logger().warning(
                    f"{self._camera_to_base_source} with base_height_m {p['base_height_m']:g}: {e}; the "
                    f"road's scale keeps the camera {config.camera_height_m:.3f} m above the road, "
                    f"{config.camera_pitch_deg:.2f} deg down")
            return
        if mount is None:
            return
        config = self.estimator.config
        if (config.camera_height_m, config.camera_pitch_deg) != (mount.height_m, mount.pitch_deg):
            self.estimator.set_camera_mount(mount.height_m, mount.pitch_deg)
            self.get_logger().info(f"road scale: camera {mount.height_m:.3f} m above the road, "
                                   f"{mount.pitch_deg:.2f} deg down ({self._camera_to_base_source})")

    # ------------------------------------------------------------------ callbacks
    def _on_camera_info(self, msg: CameraInfo) -> None:
        camera = CameraModel.from_camera_info(msg)  # of the images as sent (binning, ROI)
        # An image_rect topic's images are P's camera; raw images (rectified here or not) are K's.
        fx, fy, cx, cy = (camera.rectified_intrinsics if is_rectified_topic(self.params["image_topic"])
                          else camera.raw_intrinsics)
        if not (fx > 0 and fy > 0):
            return
        if camera != self._camera_model:  # CameraInfo comes with every image: maps built once
            self._camera_model = camera
            rectifier, self._rectification = self._rectifier_for(camera)
            with self._lock:  # between two frames
                if (rectifier or self._rectifier) and self.counters["frames"]:
                    # The window's frames were seen through the other camera (at start: an image
                    # taken before the first CameraInfo); they would not match the next ones.
                    self.vo.reset("camera model changed: images rectified anew")
                self._rectifier = rectifier
        if self._rectifier is not None:  # the images are remapped to P's pinhole camera
            fx, fy, cx, cy = self._rectifier.intrinsics
        self._intrinsics_from_info = (fx, fy, cx, cy, camera.width)
        self.estimator.intrinsics = (float(fx), float(fy), float(cx), float(cy))

    def _rectify_keyframe(self, image: np.ndarray) -> np.ndarray:
        """A keyframe's image as the estimator sees it: rectified when the camera is distorted."""
        rectifier = self._rectifier
        if rectifier is None:
            return image
        try:
            return rectifier(image)
        except RectificationError as e:  # a CameraInfo of another size: it does not describe it
            self.get_logger().warning(f"{self.params['image_topic']}: {e}", throttle_duration_sec=5.0)
            return image

    def _rectifier_for(self, camera: CameraModel) -> tuple[Optional[Rectifier], str]:
        """The rectifier for a camera (None: its images are used as they are) and what diagnostics say."""
        if not camera.distorted:
            return None, "none (CameraInfo without distortion)"
        if not self._rectify:
            choice = self.params["rectify"]
            return None, ("none (rectify: never)" if choice == "never" else
                          f"none ({self.params['image_topic']} is rectified already)")
        try:
            rectifier = Rectifier(camera)
        except RectificationError as e:
            self.get_logger().warning(f"{self.params['camera_info_topic']}: {e}; images are used as they "
                                      "are (distorted)", throttle_duration_sec=5.0)  # NaN: every message
            return None, f"none ({e})"
        self.get_logger().info(f"rectifying {self.params['image_topic']}: {rectifier.description}")
        return rectifier, rectifier.description

    def destroy_node(self) -> None:
        if hasattr(self, "_worker"):  # absent when the constructor failed before starting it
            self._stopping.set()
            self._frames.close()
            self._worker.join(timeout=10.0)
        super().destroy_node()

    def _on_image(self, msg: Image) -> None:
        """Camera callback: hand the frame to the processing thread, nothing else (never blocks)."""
        self.counters["received"] += 1
        due = self.vo.selector.is_due(stamp_seconds(msg.header.stamp))
        self._last_received = arrival = time.perf_counter()
        self._frames.put((arrival, msg), due_as_keyframe=due)

    def _process_frames(self) -> None:
        while not self._stopping.is_set():
            entry = self._frames.take(timeout_s=0.2)
            if entry is None:
                continue
            try:
                with self._lock:
                    self._handle_image(entry[1], arrival=entry[0])
            except Exception as e:  # noqa: BLE001 - the thread must outlive a bad frame
                self.get_logger().error(f"processing a frame failed: {type(e).__name__}: {e}",
                                        throttle_duration_sec=5.0)

    def _handle_image(self, msg: Image, arrival: float) -> None:
        self.counters["frames"] += 1
        outcome, published, reset_reason = "model_error", False, ""
        try:
            outcome, published, reset_reason = self._process_image(msg, arrival)
        finally:  # every image is acknowledged, whatever became of it
            self._last_handled = time.perf_counter()  # before: whoever waits on ~/processed sees it
            self._publish_processed(msg.header, outcome, published, reset_reason, arrival)

    def camera_silence_s(self) -> float:
        """Seconds since the last image arrived or was handled, or since the node started (a wrong
        image_topic, the commonest set-up error, then shows too): a node still working through the
        images it received is not silent, nor is a camera whose images arrive while a slow keyframe
        (a TensorRT engine's first build) holds the processing."""
        latest = max(self._started, self._last_received or 0.0, self._last_handled or 0.0)
        return time.perf_counter() - latest

    def _process_image(self, msg: Image, arrival: float) -> tuple[str, bool, str]:
        """Odometry from one image; returns (outcome, whether odometry was published, reset reason)."""
        log = self.get_logger()
        stamp, topic = stamp_seconds(msg.header.stamp), self.params["image_topic"]
        try:
            # Only keyframes (and frames that start a new window) are converted: between them the
            # stamp and the size are all that count, and decoding a 1080p frame costs about 9 ms.
            size = self.convert.frame_size(msg, topic)
            image = self.convert(msg, topic) if self.vo.needs_pixels(stamp, size) else None
        except UnsupportedEncodingError as e:
            self.counters["corrupt_frames"] += 1
            if e.encoding not in self._warned_encodings:
                self._warned_encodings.add(e.encoding)
                log.warning(f"{e}; such frames are skipped and counted in diagnostics")
            return "corrupt", False, ""
        except ImageConversionError as e:
            self.counters["corrupt_frames"] += 1
            log.warning(f"skipping corrupt frame: {e}", throttle_duration_sec=5.0)
            return "corrupt", False, ""
        self._camera_frame = msg.header.frame_id
        was_tracking = self.vo.tracking
        if not self._has_tracked:  # frozen once tracking starts (a reset before that does not freeze it)
            self._lookup_camera_to_base()
        try:
            result = self.vo.process(stamp, image, size)
        except Exception as e:  # noqa: BLE001 - a failing model must not take the robot's node down
            self.counters["model_errors"] += 1
            reason = f"model error {type(e).__name__}: {e}"
            self.vo.reset(reason)
            log.error(f"model failed on frame at {stamp:.3f}: "
                      f"{type(e).__name__}: {e}; window reset", throttle_duration_sec=5.0)
            return "model_error", False, reason
        if result.is_keyframe:
            self._keyframe_stamps[stamp] = msg.header.stamp
            while len(self._keyframe_stamps) > 2 * self.vo.num_frames:
                self._keyframe_stamps.popitem(last=False)
        if result.reset_reason:
            log.warning(f"odometry window reset: {result.reset_reason}")
        if result.restarted:
            self._path_poses.clear()  # a new trajectory: the old path would be drawn into it
        if result.model_ran:
            self._keyframe_latency_ms.append((time.perf_counter() - arrival) * 1e3)
        if result.estimate is None:
            return result.outcome, False, result.reset_reason or ""
        if not was_tracking:
            log.info(f"tracking (camera-to-base from {self._camera_to_base_source})")
            self._has_tracked = True
        published = self.params["publish_rate"] <= 0
        if published:
            self._publish_odometry(result.estimate, msg.header.stamp)
        if result.estimate.new_keyframes:
            self._publish_path(result.estimate, msg.header.stamp)
        self._latency_ms.append((time.perf_counter() - arrival) * 1e3)
        return result.outcome, published, result.reset_reason or ""

    def _publish_processed(self, image_header: Header, outcome: str, published: bool, reset_reason: str,
                           arrival: float) -> None:
        status = DiagnosticStatus()
        status.name = f"{self.get_name()}: frame"
        status.hardware_id = image_header.frame_id
        status.level = DiagnosticStatus.OK if outcome in ("keyframe", "frame") else DiagnosticStatus.WARN
        status.message = outcome
        status.values = [KeyValue(key="odometry_published", value=str(published).lower()),
                         KeyValue(key="reset_reason", value=reset_reason),
                         KeyValue(key="processing_ms", value=f"{(time.perf_counter() - arrival) * 1e3:.2f}")]
        array = DiagnosticArray()
        array.header = image_header
        array.status = [status]
        self.processed_pub.publish(array)

    def _on_publish_timer(self) -> None:
        # Never wait for a keyframe to finish here: that would stall the image callback too. A tick
        # that finds the lock taken is skipped; the next one publishes the pose at its own time.
        if not self._lock.acquire(blocking=False):
            return
        try:
            now = self.get_clock().now()
            estimate = self.vo.extrapolate(now.nanoseconds * 1e-9)
            if estimate is not None:
                self._publish_odometry(estimate, now.to_msg())
            last = self.vo.monitor.last_stamp
            if estimate is None and self.vo.tracking and last is not None \
                    and self.camera_silence_s() <= self.params["max_gap_s"] \
                    and abs(offset := now.nanoseconds * 1e-9 - last) > CLOCK_MISMATCH_S:
                # Images keep coming, yet their stamps are far from this node's clock, at which the
                # timer publishes: a bag replayed without use_sim_time (stamped in the past) or sim
                # time without /clock (a clock at 0). A silent camera is diagnostics' to report.
                self.get_logger().warning(
                    f"publish_rate: this node's clock is {offset:+.1f} s from the images' stamps, so no "
                    "odometry is published (replaying a bag? set use_sim_time and play it with --clock)",
                    throttle_duration_sec=10.0)
        finally:
            self._lock.release()

    def _on_reset(self, request: Trigger.Request, response: Trigger.Response) -> Trigger.Response:
        with self._lock:  # after the frame being processed, never in the middle of it
            self.vo.reset("reset service called", restart_trajectory=True)
            self._path_poses.clear()
        self.get_logger().warning("odometry reset by service: trajectory restarts at the origin")
        response.success = True
        response.message = "odometry reset; warming up"
        return response

    # ------------------------------------------------------------------ publishing
    def _publish_odometry(self, estimate: OdometryEstimate, stamp: Any) -> None:
        p = self.params
        odom = Odometry()
        odom.header.stamp = stamp
        odom.header.frame_id = p["odom_frame"]
        odom.child_frame_id = p["base_frame"]
        fill_pose(odom.pose.pose, estimate.pose)
        scale = estimate.covariance_scale  # > 1 while the newest step is a fallback
        odom.pose.covariance = self.pose_covariance if scale == 1 else [v * scale for v in self.pose_covariance]
        lin, ang = estimate.linear_velocity, estimate.angular_velocity
        odom.twist.twist.linear.x, odom.twist.twist.linear.y, odom.twist.twist.linear.z = map(float, lin)
        odom.twist.twist.angular.x, odom.twist.twist.angular.y, odom.twist.twist.angular.z = map(float, ang)
        odom.twist.covariance = (self.twist_covariance if scale == 1
                                 else [v * scale for v in self.twist_covariance])
        self.odom_pub.publish(odom)
        if self._send_transform is None:
            return
        t = TransformStamped()
        t.header.stamp = stamp
        pose = estimate.pose
        if p["invert_tf"]:
            t.header.frame_id, t.child_frame_id = p["base_frame"], p["odom_frame"]
            pose = np.linalg.inv(pose)
        else:
            t.header.frame_id, t.child_frame_id = p["odom_frame"], p["base_frame"]
        xyz, q = pose_to_xyz_quat(pose)
        t.transform.translation.x, t.transform.translation.y, t.transform.translation.z = map(float, xyz)
        r = t.transform.rotation
        r.x, r.y, r.z, r.w = map(float, q)
        self._send_transform(t)

    def _publish_path(self, estimate: OdometryEstimate, stamp: Any) -> None:
        for seconds, pose in estimate.new_keyframes:
            ps = PoseStamped()
            ps.header.frame_id = self.params["odom_frame"]
            image_stamp = self._keyframe_stamps.get(seconds)
            ps.header.stamp = stamp_msg(seconds) if image_stamp is None else image_stamp
            fill_pose(ps.pose, pose)
            self._path_poses.append(ps)
        self._path.header.stamp = stamp
        self._path.poses = list(self._path_poses)
        self.path_pub.publish(self._path)

    def diagnostic_values(self) -> dict[str, str]:
        # Read without the lock (a diagnostics tick must not wait for a keyframe); list() copies a
        # deque atomically.
        vo = self.vo
        lat, key = np.asarray(list(self._latency_ms)), np.asarray(list(self._keyframe_latency_ms))
        values = {
            "status": vo.status,
            "keyframes": str(len(vo.keyframes)),
            "frames": str(self.counters["frames"]),
            "dropped_frames": str(vo.monitor.dropped_frames),
            "dropped_by_node": str(self._frames.dropped),
            "corrupt_frames": str(self.counters["corrupt_frames"]),
            "untaken_messages": str(self.counters["untaken_messages"]),
            "model_errors": str(self.counters["model_errors"]),
            "resets": str(vo.resets),
            "last_reset_reason": vo.last_reset_reason,
            "seconds_since_image": f"{self.camera_silence_s():.1f}",
            "latency_ms_p50": f"{np.percentile(lat, 50):.1f}" if lat.size else "",
            "latency_ms_p95": f"{np.percentile(lat, 95):.1f}" if lat.size else "",
            "keyframe_latency_ms_p50": f"{np.percentile(key, 50):.1f}" if key.size else "",
            "keyframe_latency_ms_p95": f"{np.percentile(key, 95):.1f}" if key.size else "",
            "keyframe_latency_ms_max": f"{key.max():.1f}" if key.size else "",
            "backend": str(getattr(self.estimator, "backend", "")),
            "device": str(getattr(self.estimator, "device", "")),
            "checkpoint": str(getattr(self.estimator, "checkpoint_name", "")),
            "image_conversion": self.convert.backend,
            "camera_to_base": self._camera_to_base_source,
            "rectification": self._rectification,
            "estimator": self.estimator_kind,
        }
        if self.estimator_kind == "hybrid":
            check = vo.last_check
            values.update({
                "fallback_steps": str(vo.fallback_steps),
                "standing_steps": str(vo.standing_steps),
                "last_fallback_reason": vo.last_fallback_reason,
                "newest_step": "" if check is None else (
                    "geometry: rotation only, no translation" if check.standing
                    else "geometry" if check.ok else f"fallback to LA-Pose: {check.reason}"),
                "inliers": "" if check is None else str(check.inliers),
                "parallax_px": "" if check is None else f"{check.parallax_px:.2f}",
            })
            config = self.estimator.config
            values["metric_scale"] = (
                f"road: camera {config.camera_height_m:.3f} m above it, {config.camera_pitch_deg:.2f} deg "
                f"down" if config.scale_source == "ground" else config.scale_source)
            if vo.last_prediction is not None:
                values["intrinsics"] = vo.last_prediction.intrinsics_source
                values["window_scale"] = vo.last_prediction.scale_source  # road too rarely seen: lapose
        intrinsics = self._intrinsics_from_info
        if intrinsics is None and self.params["fx"] > 0 and vo.monitor.last_size is not None:
            intrinsics = (self.params["fx"], self.params["fy"], self.params["cx"], self.params["cy"],
                          vo.monitor.last_size[1])
        if intrinsics is not None:
            values["fov_camera_deg"] = f"{np.degrees(2 * np.arctan(intrinsics[4] / (2 * intrinsics[0]))):.1f}"
        if vo.last_prediction is not None:
            values["fov_predicted_deg"] = f"{np.degrees(vo.last_prediction.fov):.1f}"
            values["scale_m"] = f"{vo.last_prediction.scale:.3f}"
        return values

    def _publish_diagnostics(self) -> None:
        array = DiagnosticArray()
        array.header.stamp = self.get_clock().now().to_msg()
        array.status = [self.diagnostic_status()]
        self.diag_pub.publish(array)

    def diagnostic_status(self) -> DiagnosticStatus:
        """The node's status as /diagnostics publishes it each second."""
        status = DiagnosticStatus()
        status.name = f"{self.get_name()}: visual odometry"
        status.hardware_id = self._camera_frame or self.params["image_topic"]
        status.level = DiagnosticStatus.OK if self.vo.tracking else DiagnosticStatus.WARN
        status.message = self.vo.status
        # Silent for longer than max_gap_s: the next image starts a new window, the odometry has
        # stopped (a period's grace, so that a tick just after a frame never reads as silence).
        silence = self.camera_silence_s()
        if silence > self.params["max_gap_s"] + DIAGNOSTICS_PERIOD_S:
            status.level = DiagnosticStatus.WARN
            status.message = f"{status.message}; no image for {silence:.1f} s on {self.params['image_topic']}"
        status.values = [KeyValue(key=k, value=v) for k, v in self.diagnostic_values().items()]
        return status


# What rclpy raises when a received message cannot be handed to Python (seen, rarely, under load:
# ros2/rclpy#848). One message is lost; the node must not be.
UNTAKEN_MESSAGE = "Unable to convert call argument"


def spin(node: LaPoseNode, executor: Optional[SingleThreadedExecutor] = None,
         stop: Optional[threading.Event] = None) -> None:
    """``rclpy.spin`` until the context shuts down or ``stop`` is set, except that a message rclpy
    could not take is counted (diagnostics ``untaken_messages``) and logged, and the node goes on."""
    executor = executor or SingleThreadedExecutor()
    stop = stop or threading.Event()
    executor.add_node(node)
    try:
        while rclpy.ok(context=node.context) and not stop.is_set():
            try:
                executor.spin_once(timeout_sec=0.5)
            except RuntimeError as e:
                if UNTAKEN_MESSAGE not in str(e):
                    raise
                node.counters["untaken_messages"] += 1
                node.get_logger().warning(f"a message could not be taken from rclpy and is lost "
                                          f"({node.counters['untaken_messages']} so far): {e}")
    finally:
        executor.remove_node(node)


def stop_on_signals() -> threading.Event:
    """An event that SIGINT and SIGTERM set, in place of rclpy's handlers.

    rclpy's own handler shuts the context down the moment the signal arrives, while the processing
    thread may be publishing on it; a node stopped that way once died of a segmentation fault on
    its way out. With this event the spin loop ends first, then ``main`` joins the processing
    thread, destroys the node and only then shuts the context down.
    """
    stop = threading.Event()
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, lambda *_: stop.set())
    return stop


def freeze_start_up_objects() -> None:
    """Move every object alive now (torch, the model, rclpy: ~10^5 of them) out of the garbage
    collector's reach.

    A full collection walks every tracked object; with torch loaded that took ~85 ms on this 2-core
    CPU, and when it fell inside a keyframe it was that keyframe's latency p95. What is alive at
    start-up stays alive for the node's life anyway, so frozen, a full collection walks only what
    came later. Call it once, when the node is built and before it spins.
    """
    gc.collect()
    gc.freeze()


def main(args: Optional[list[str]] = None) -> int:
    logging.basicConfig(level=logging.INFO, format="[%(levelname)s] [%(name)s]: %(message)s")
    rclpy.init(args=args, signal_handler_options=SignalHandlerOptions.NO)
    stop = stop_on_signals()
    try:
        node = LaPoseNode()
    except Exception as e:  # noqa: BLE001 - report a bad start-up in one line, not a traceback
        from lapose_core.inference import InferenceError

        if not isinstance(e, (LaPoseNodeError, OdometryConfigError, InferenceError)):
            raise
        rclpy.logging.get_logger(NODE_NAME).fatal(f"cannot start: {e}")
        rclpy.try_shutdown()
        return 1
    freeze_start_up_objects()
    try:
        spin(node, stop=stop)
    except ExternalShutdownException:  # the context was shut down from elsewhere
        pass
    finally:
        node.destroy_node()
        rclpy.try_shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(main())
