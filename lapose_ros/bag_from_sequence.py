"""Write a rosbag2 bag from a KITTI-format sequence folder, so the node can be replayed on real data.

The bag looks like a car's recording: a camera driver's image and camera-info streams, and a ground-truth
odometry source (``/ground_truth/odom`` and its TF). Written with the pure-Python ``rosbags`` writer,
so no ROS installation is needed, in either storage format (mcap, Kilted's default, or sqlite3).

Topics (all header stamps = ``start_time`` + times.txt, recording time = header stamp):

* ``/camera/image_raw``   sensor_msgs/Image, ``mono8`` or ``rgb8`` as the image file stores it; with
  ``compressed``, ``/camera/image_raw/compressed`` sensor_msgs/CompressedImage instead, holding the
  image file's own JPEG or PNG bytes (image_transport's ``compressed``, as cars' bags are recorded)
* ``/camera/camera_info`` sensor_msgs/CameraInfo: K and P from calib.txt, plumb_bob with zero distortion
* ``/ground_truth/odom``  nav_msgs/Odometry ``odom`` -> ``base_link`` (REP-103 body frame)
* ``/tf``                 tf2_msgs/TFMessage ``odom`` -> ``gt_base_link`` (same pose)

KITTI poses are camera-to-world in the optical frame (x right, y down, z forward). The ground truth is
given in the body convention (x forward, y left, z up) the way the node reports its own odometry: the
odometry frame is the body frame at the first image, and the body sits at the camera.
"""
from __future__ import annotations

import argparse
import logging
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np

from lapose_core.data.sources import DataError, FrameReadError, KittiSequence
from lapose_ros.odometry import camera_motion_to_base, default_camera_to_base, pose_to_xyz_quat, twist_from_step

log = logging.getLogger(__name__)

IMAGE_TOPIC = "/camera/image_raw"
CAMERA_INFO_TOPIC = "/camera/camera_info"
GROUND_TRUTH_TOPIC = "/ground_truth/odom"
TF_TOPIC = "/tf"
STORAGES = ("mcap", "sqlite3")
# 2023-11-14 22:13:20 UTC: a plausible wall-clock epoch, far from zero (zero stamps mean "unset" in ROS).
DEFAULT_START_TIME = 1_700_000_000.0


class BagWriteError(DataError):
    """The bag cannot be written (bad sequence, existing output, unknown storage); the message says why."""


@dataclass
class BagSummary:
    path: Path
    storage: str
    frames: int
    duration_s: float
    topics: dict[str, int] = field(default_factory=dict)  # topic -> message count

    def __str__(self) -> str:
        lines = [f"{self.path} ({self.storage}): {self.frames} frames, {self.duration_s:.1f} s"]
        lines += [f"  {topic:<24} {count} messages" for topic, count in self.topics.items()]
        return "\n".join(lines)


def kitti_to_body_poses(camera_poses: np.ndarray) -> np.ndarray:
    """(N, 4, 4) optical-frame camera-to-world -> (N, 4, 4) body poses in the odometry frame.

    The odometry frame is the body frame at the first camera: ``B @ inv(P_0) @ P_k @ inv(B)`` with
    ``B`` the optical-to-body rotation, the same conjugation the node applies to its estimates.
    """
    relative = np.linalg.inv(camera_poses[0]) @ camera_poses
    return camera_motion_to_base(relative, default_camera_to_base())


def body_twists(body_poses: np.ndarray, stamps_s: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Body-frame linear and angular velocity at each pose, from the step to the next (last: from the previous)."""
    n = len(body_poses)
    linear, angular = np.zeros((n, 3)), np.zeros((n, 3))
    if n < 2:
        return linear, angular
    for k in range(n - 1):
        step = np.linalg.inv(body_poses[k]) @ body_poses[k + 1]
        linear[k], angular[k] = twist_from_step(step, float(stamps_s[k + 1] - stamps_s[k]))
    linear[-1], angular[-1] = linear[-2], angular[-2]
    return linear, angular


def _stamp(types, ns: int):
    return types["builtin_interfaces/msg/Time"](sec=ns // 1_000_000_000, nanosec=ns % 1_000_000_000)


def _header(types, ns: int, frame_id: str):
    return types["std_msgs/msg/Header"](stamp=_stamp(types, ns), frame_id=frame_id)


def _pose_msg(types, pose: np.ndarray):
    xyz, q = pose_to_xyz_quat(pose)
    return types["geometry_msgs/msg/Pose"](
        position=types["geometry_msgs/msg/Point"](x=float(xyz[0]), y=float(xyz[1]), z=float(xyz[2])),
        orientation=types["geometry_msgs/msg/Quaternion"](x=float(q[0]), y=float(q[1]), z=float(q[2]),
                                                          w=float(q[3])))


def _vector(types, v: np.ndarray):
    return types["geometry_msgs/msg/Vector3"](x=float(v[0]), y=float(v[1]), z=float(v[2]))


def read_stored_pixels(path: Path) -> tuple[np.ndarray, str]:
    """An image file as stored: (H, W) uint8 -> mono8, colour -> (H, W, 3) rgb8."""
    data = np.fromfile(path, dtype=np.uint8) if path.is_file() else None
    image = cv2.imdecode(data, cv2.IMREAD_UNCHANGED) if data is not None and data.size else None
    if image is None:
        raise FrameReadError(f"{path}: missing or not a decodable image")
    if image.dtype != np.uint8:
        raise FrameReadError(f"{path}: {image.dtype} pixels; only 8-bit images are written")
    if image.ndim == 2:
        return image, "mono8"
    if image.shape[2] == 4:
        return cv2.cvtColor(image, cv2.COLOR_BGRA2RGB), "rgb8"
    return cv2.cvtColor(image, cv2.COLOR_BGR2RGB), "rgb8"


def compressed_image_msg(types, ns: int, frame_id: str, path: Path, encoding: str):
    """A CompressedImage of an image file's own bytes, its format named as image_transport's
    compressed plugin names it (``mono8; jpeg compressed mono8``)."""
    kind = {".jpg": "jpeg", ".jpeg": "jpeg", ".png": "png"}.get(path.suffix.lower())
    if kind is None:
        raise BagWriteError(f"{path}: only JPEG and PNG files can be written as compressed images")
    stored = "mono8" if encoding == "mono8" else "bgr8"
    return types["sensor_msgs/msg/CompressedImage"](
        header=_header(types, ns, frame_id), format=f"{stored}; {kind} compressed {stored}",
        data=np.fromfile(path, dtype=np.uint8))


def write_bag_from_sequence(sequence_dir: str | Path, out: str | Path, *, storage: str = "mcap",
                            camera_frame: str = "camera_optical", image_topic: str = IMAGE_TOPIC,
                            camera_info_topic: str = CAMERA_INFO_TOPIC,
                            start_time: float = DEFAULT_START_TIME, ground_truth: bool = True,
                            max_frames: int | None = None, compressed: bool = False) -> BagSummary:
    """Write the bag described in the module docstring; returns what was written.

    ``ground_truth=False`` leaves out ``/ground_truth/odom`` and ``/tf`` (a bag as a car without a
    reference system would record it). Frames whose image is missing are skipped with a warning.
    """
    from rosbags.rosbag2 import StoragePlugin, Writer, WriterError
    from rosbags.typesys import Stores, get_typestore

    out = Path(out)
    if storage not in STORAGES:
        raise BagWriteError(f"storage '{storage}' is not supported (choose {' or '.join(STORAGES)})")
    if out.exists():
        raise BagWriteError(f"{out}: exists already; rosbag2 bags are written to a new folder")
    if max_frames is not None and max_frames < 2:
        raise BagWriteError(f"max_frames must be at least 2, got {max_frames}")
    sequence = KittiSequence(sequence_dir)
    if ground_truth and sequence.poses is None:
        raise BagWriteError(f"{sequence.path}: no poses.txt, so there is no ground truth to write "
                            f"(write the bag without ground truth instead)")
    n = len(sequence) if max_frames is None else min(len(sequence), max_frames)
    # Integer nanoseconds throughout: float seconds since 1970 resolve only ~0.2 microseconds.
    whole = int(np.floor(start_time))
    start_ns = whole * 1_000_000_000 + int(round((start_time - whole) * 1e9))
    stamps_ns = start_ns + np.round(sequence.timestamps[:n] * 1e9).astype(np.int64)

    typestore = get_typestore(Stores.ROS2_KILTED)
    types = typestore.types
    fx, fy, cx, cy = (float(v) for v in sequence.intrinsics)
    width, height = sequence.image_size
    if ground_truth:
        body = kitti_to_body_poses(sequence.poses[:n])
        linear, angular = body_twists(body, sequence.timestamps[:n])

    image_type = "sensor_msgs/msg/CompressedImage" if compressed else "sensor_msgs/msg/Image"
    if compressed:
        image_topic = f"{image_topic.rstrip('/')}/compressed"
    counts = {image_topic: 0, camera_info_topic: 0}
    if ground_truth:
        counts.update({GROUND_TRUTH_TOPIC: 0, TF_TOPIC: 0})
    plugin = StoragePlugin.MCAP if storage == "mcap" else StoragePlugin.SQLITE3
    try:
        with Writer(out, version=Writer.VERSION_LATEST, storage_plugin=plugin) as writer:
            connections = {
                image_topic: writer.add_connection(image_topic, image_type, typestore=typestore),
                camera_info_topic: writer.add_connection(camera_info_topic, "sensor_msgs/msg/CameraInfo",
                                                         typestore=typestore),
            }
            if ground_truth:
                connections[GROUND_TRUTH_TOPIC] = writer.add_connection(
                    GROUND_TRUTH_TOPIC, "nav_msgs/msg/Odometry", typestore=typestore)
                connections[TF_TOPIC] = writer.add_connection(TF_TOPIC, "tf2_msgs/msg/TFMessage",
                                                              typestore=typestore)

            def write(topic: str, ns: int, msg) -> None:
                writer.write(connections[topic], int(ns), typestore.serialize_cdr(msg, msg.__msgtype__))
                counts[topic] += 1

            for i in range(n):
                ns = int(stamps_ns[i])
                try:
                    pixels, encoding = read_stored_pixels(sequence.image_path(i))
                except FrameReadError as e:
                    log.warning("skipping frame %d: %s", i, e)
                    continue
                if (pixels.shape[1], pixels.shape[0]) != (width, height):
                    raise BagWriteError(f"{sequence.image_path(i)}: image is {pixels.shape[1]}x"
                                        f"{pixels.shape[0]} but calib.txt says {width}x{height}")
                channels = 1 if pixels.ndim == 2 else 3
                if compressed:
                    write(image_topic, ns, compressed_image_msg(types, ns, camera_frame,
                                                                sequence.image_path(i), encoding))
                else:
                    write(image_topic, ns, types["sensor_msgs/msg/Image"](
                        header=_header(types, ns, camera_frame), height=height, width=width,
                        encoding=encoding, is_bigendian=0, step=width * channels,
                        data=np.ascontiguousarray(pixels).reshape(-1)))
                write(camera_info_topic, ns, types["sensor_msgs/msg/CameraInfo"](
                    header=_header(types, ns, camera_frame), height=height, width=width,
                    distortion_model="plumb_bob", d=np.zeros(5),
                    k=np.array([fx, 0.0, cx, 0.0, fy, cy, 0.0, 0.0, 1.0]),
                    r=np.eye(3).reshape(-1),
                    p=np.array([fx, 0.0, cx, 0.0, 0.0, fy, cy, 0.0, 0.0, 0.0, 1.0, 0.0]),
                    binning_x=0, binning_y=0,
                    roi=types["sensor_msgs/msg/RegionOfInterest"](x_offset=0, y_offset=0, height=0,
                                                                  width=0, do_rectify=False)))
                if not ground_truth:
                    continue
                write(GROUND_TRUTH_TOPIC, ns, types["nav_msgs/msg/Odometry"](
                    header=_header(types, ns, "odom"), child_frame_id="base_link",
                    pose=types["geometry_msgs/msg/PoseWithCovariance"](pose=_pose_msg(types, body[i]),
                                                                       covariance=np.zeros(36)),
                    twist=types["geometry_msgs/msg/TwistWithCovariance"](
                        twist=types["geometry_msgs/msg/Twist"](linear=_vector(types, linear[i]),
                                                               angular=_vector(types, angular[i])),
                        covariance=np.zeros(36))))
                xyz, q = pose_to_xyz_quat(body[i])
                transform = types["geometry_msgs/msg/Transform"](
                    translation=_vector(types, xyz),
                    rotation=types["geometry_msgs/msg/Quaternion"](x=float(q[0]), y=float(q[1]),
                                                                   z=float(q[2]), w=float(q[3])))
                write(TF_TOPIC, ns, types["tf2_msgs/msg/TFMessage"](transforms=[
                    types["geometry_msgs/msg/TransformStamped"](header=_header(types, ns, "odom"),
                                                                child_frame_id="gt_base_link",
                                                                transform=transform)]))
    except WriterError as e:
        raise BagWriteError(f"{out}: cannot write the bag ({e})") from None
    frames = counts[image_topic]
    if frames == 0:
        raise BagWriteError(f"{sequence.path}: no readable images; nothing was written to {out}")
    return BagSummary(path=out, storage=storage, frames=frames,
                      duration_s=float(sequence.timestamps[n - 1]), topics=counts)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("sequence", metavar="SEQ_DIR", help="KITTI-format folder (images/, poses.txt, "
                        "times.txt, calib.txt)")
    parser.add_argument("out", metavar="OUT", help="bag folder to create (must not exist)")
    parser.add_argument("--storage", choices=STORAGES, default="mcap", help="rosbag2 storage (default mcap)")
    parser.add_argument("--camera-frame", default="camera_optical",
                        help="frame_id of the image and camera-info headers (default camera_optical)")
    parser.add_argument("--image-topic", default=IMAGE_TOPIC, help=f"default {IMAGE_TOPIC}")
    parser.add_argument("--camera-info-topic", default=CAMERA_INFO_TOPIC, help=f"default {CAMERA_INFO_TOPIC}")
    parser.add_argument("--start-time", type=float, default=DEFAULT_START_TIME,
                        help="epoch seconds of the first frame (default %(default)s)")
    parser.add_argument("--no-ground-truth", action="store_true",
                        help=f"leave out {GROUND_TRUTH_TOPIC} and {TF_TOPIC}")
    parser.add_argument("--max-frames", type=int, default=None, help="write only the first N frames")
    parser.add_argument("--compressed", action="store_true",
                        help="images as sensor_msgs/CompressedImage on <image topic>/compressed (the "
                             "files' own JPEG/PNG bytes)")


def run(args: argparse.Namespace) -> int:
    summary = write_bag_from_sequence(
        args.sequence, args.out, storage=args.storage, camera_frame=args.camera_frame,
        image_topic=args.image_topic, camera_info_topic=args.camera_info_topic,
        start_time=args.start_time, ground_truth=not args.no_ground_truth, max_frames=args.max_frames,
        compressed=args.compressed)
    print(summary)
    return 0
