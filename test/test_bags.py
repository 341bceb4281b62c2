"""rosbag2 bags: writing one from a KITTI sequence, reading it back, every image encoding, clear errors.

No ROS installation needed: everything goes through the pure-Python ``rosbags``.
"""
import argparse

import cv2
import numpy as np
import pytest
from rosbags.highlevel import AnyReader
from rosbags.rosbag2 import StoragePlugin, Writer
from rosbags.typesys import Stores, get_typestore

from lapose_core.data.rosbag_source import RosbagSource, camera_info_topic_for
from lapose_core.data.sources import DataError, KittiSequence, open_source
from lapose_ros.bag_from_sequence import (CAMERA_INFO_TOPIC, DEFAULT_START_TIME, GROUND_TRUTH_TOPIC, IMAGE_TOPIC,
                                          TF_TOPIC, BagWriteError, write_bag_from_sequence)
from lapose_ros.odometry import OPTICAL_TO_BODY

TYPESTORE = get_typestore(Stores.ROS2_KILTED)
T = TYPESTORE.types


def pose_from_msg(p, q):
    from transforms3d.quaternions import quat2mat

    M = np.eye(4)
    M[:3, :3] = quat2mat([q.w, q.x, q.y, q.z])
    M[:3, 3] = [p.x, p.y, p.z]
    return M


@pytest.fixture(scope="module")
def sequence(shared_data):
    return KittiSequence(shared_data / "kitti" / "06_head")


@pytest.mark.parametrize("storage", ["mcap", "sqlite3"])
def test_bag_round_trip(sequence, tmp_path, storage):
    out = tmp_path / f"bag_{storage}"
    summary = write_bag_from_sequence(sequence.path, out, storage=storage)
    n = len(sequence)
    assert summary.frames == n == 51
    assert summary.topics == {IMAGE_TOPIC: n, CAMERA_INFO_TOPIC: n, GROUND_TRUTH_TOPIC: n, TF_TOPIC: n}
    assert list(out.glob("*.mcap" if storage == "mcap" else "*.db3"))

    # Back through RosbagSource (the bag folder and the storage file itself).
    for path in (out, next(p for p in out.iterdir() if p.suffix in (".mcap", ".db3"))):
        source = RosbagSource(path)
        assert len(source) == n
        assert source.poses is None
        assert source.image_size == sequence.image_size
        np.testing.assert_allclose(source.intrinsics, sequence.intrinsics)
        np.testing.assert_allclose(source.timestamps, sequence.timestamps, atol=1e-9)
    for i in (0, 17, -1):
        np.testing.assert_array_equal(source.read(i), sequence.read(i))
    assert isinstance(open_source(out), RosbagSource)

    # Directly with rosbags: stamps, frames, encodings, pixels, ground truth.
    start_ns = round(DEFAULT_START_TIME * 1e9)
    expected_ns = start_ns + np.round(sequence.timestamps * 1e9).astype(np.int64)
    relative = np.linalg.inv(sequence.poses[0]) @ sequence.poses
    B = np.eye(4)
    B[:3, :3] = OPTICAL_TO_BODY
    seen = {topic: [] for topic in summary.topics}
    with AnyReader([out]) as reader:
        assert reader.topics[TF_TOPIC].msgtype == "tf2_msgs/msg/TFMessage"
        for connection, timestamp, raw in reader.messages():
            msg = reader.deserialize(raw, connection.msgtype)
            header = msg.transforms[0].header if connection.topic == TF_TOPIC else msg.header
            stamp = header.stamp.sec * 10**9 + header.stamp.nanosec
            k = len(seen[connection.topic])
            assert stamp == timestamp == expected_ns[k]
            seen[connection.topic].append(msg)
            if connection.topic == IMAGE_TOPIC:
                assert (msg.encoding, msg.header.frame_id) == ("mono8", "camera_optical")
                stored = cv2.imread(str(sequence.image_path(k)), cv2.IMREAD_UNCHANGED)
                np.testing.assert_array_equal(msg.data.reshape(msg.height, msg.step), stored)
            elif connection.topic == CAMERA_INFO_TOPIC:
                fx, fy, cx, cy = sequence.intrinsics
                np.testing.assert_allclose(msg.k, [fx, 0, cx, 0, fy, cy, 0, 0, 1])
                assert msg.distortion_model == "plumb_bob" and not np.any(msg.d)
                assert (msg.width, msg.height) == sequence.image_size
            elif connection.topic == GROUND_TRUTH_TOPIC:
                assert (msg.header.frame_id, msg.child_frame_id) == ("odom", "base_link")
                body = pose_from_msg(msg.pose.pose.position, msg.pose.pose.orientation)
                # Body -> optical again gives the KITTI pose relative to the first camera.
                np.testing.assert_allclose(np.linalg.inv(B) @ body @ B, relative[k], atol=1e-6)
            else:
                (t,) = msg.transforms
                assert (t.header.frame_id, t.child_frame_id) == ("odom", "gt_base_link")
                body = pose_from_msg(t.transform.translation, t.transform.rotation)
                np.testing.assert_allclose(np.linalg.inv(B) @ body @ B, relative[k], atol=1e-6)
    assert {topic: len(msgs) for topic, msgs in seen.items()} == summary.topics
    # The car drives forward: body x grows, and the body-frame twist says so.
    last = seen[GROUND_TRUTH_TOPIC][-1]
    assert last.pose.pose.position.x > 20 and last.twist.twist.linear.x > 5


def write_image_bag(path, frames, topic="/cam/image_raw", storage=StoragePlugin.SQLITE3, info=None):
    """A bag with one image topic; ``frames`` are (encoding, data (H, step) uint8, width) or CompressedImage."""
    with Writer(path, version=9, storage_plugin=storage) as writer:
        compressed = isinstance(frames[0], bytes)
        conn = writer.add_connection(topic, "sensor_msgs/msg/CompressedImage" if compressed
                                     else "sensor_msgs/msg/Image", typestore=TYPESTORE)
        info_conn = info and writer.add_connection(camera_info_topic_for(topic), "sensor_msgs/msg/CameraInfo",
                                                   typestore=TYPESTORE)
        for k, frame in enumerate(frames):
            ns = 1_000_000_000 + k * 50_000_000
            header = T["std_msgs/msg/Header"](stamp=T["builtin_interfaces/msg/Time"](sec=1, nanosec=k * 50_000_000),
                                              frame_id="cam")
            if compressed:
                msg = T["sensor_msgs/msg/CompressedImage"](header=header, format="png",
                                                           data=np.frombuffer(frame, np.uint8))
            else:
                encoding, data, width, bigendian = frame
                msg = T["sensor_msgs/msg/Image"](header=header, height=data.shape[0], width=width,
                                                 encoding=encoding, is_bigendian=bigendian, step=data.shape[1],
                                                 data=data.reshape(-1))
            writer.write(conn, ns, TYPESTORE.serialize_cdr(msg, msg.__msgtype__))
            if info_conn:
                writer.write(info_conn, ns, TYPESTORE.serialize_cdr(info(header), "sensor_msgs/msg/CameraInfo"))


def test_compressed_bag_holds_the_image_files_bytes(sequence, tmp_path):
    """--compressed: the images on /camera/image_raw/compressed as the files' own JPEG bytes, read back
    by RosbagSource (which finds the camera info next to the image_transport topic) pixel for pixel."""
    out = tmp_path / "compressed"
    summary = write_bag_from_sequence(sequence.path, out, compressed=True, max_frames=5)
    assert summary.topics == {f"{IMAGE_TOPIC}/compressed": 5, CAMERA_INFO_TOPIC: 5, GROUND_TRUTH_TOPIC: 5,
                              TF_TOPIC: 5}
    with AnyReader([out]) as reader:
        connection = reader.topics[f"{IMAGE_TOPIC}/compressed"]
        assert connection.msgtype == "sensor_msgs/msg/CompressedImage"
        _, _, raw = next(reader.messages(connections=reader.topics[f"{IMAGE_TOPIC}/compressed"].connections))
        msg = reader.deserialize(raw, connection.msgtype)
    assert msg.format == "mono8; jpeg compressed mono8"
    assert bytes(msg.data) == sequence.image_path(0).read_bytes()
    source = RosbagSource(out, image_topic=f"{IMAGE_TOPIC}/compressed")
    assert len(source) == 5
    np.testing.assert_allclose(source.intrinsics, sequence.intrinsics)
    for i in range(5):
        np.testing.assert_array_equal(source.read(i), sequence.read(i))


def test_image_encodings(tmp_path):
    rng = np.random.default_rng(0)
    rgb = rng.integers(0, 256, (6, 5, 3), dtype=np.uint8)
    gray16 = rng.integers(0, 65536, (6, 5), dtype=np.uint16)
    pad = np.zeros((6, 3), np.uint8)  # rows padded past width*channels
    cases = {
        "rgb8": (np.hstack([rgb.reshape(6, 15), pad]), 0, rgb),
        "bgr8": (rgb[..., ::-1].reshape(6, 15), 0, rgb),
        "rgba8": (np.dstack([rgb, np.full((6, 5), 7, np.uint8)]).reshape(6, 20), 0, rgb),
        "bgra8": (np.dstack([rgb[..., ::-1], np.zeros((6, 5), np.uint8)]).reshape(6, 20), 0, rgb),
        "mono8": (np.hstack([rgb[..., 0], pad]), 0, np.repeat(rgb[..., :1], 3, -1)),
        "mono16": (gray16.astype("<u2").view(np.uint8).reshape(6, 10), 0,
                   np.repeat(np.rint(gray16 * (255 / 65535)).astype(np.uint8)[..., None], 3, -1)),
    }
    cases["mono16 big-endian"] = (gray16.astype(">u2").view(np.uint8).reshape(6, 10), 1, cases["mono16"][2])
    for name, (data, bigendian, expected) in cases.items():
        bag = tmp_path / name.replace(" ", "_")
        write_image_bag(bag, [(name.split()[0], data, 5, bigendian)] * 3)
        source = RosbagSource(bag, image_topic="/cam/image_raw")
        assert len(source) == 3 and source.image_size == (5, 6)
        np.testing.assert_allclose(source.timestamps, [0, 0.05, 0.1])
        np.testing.assert_array_equal(source.read(1), expected, err_msg=name)

    _, png = cv2.imencode(".png", rgb[..., ::-1])
    bag = tmp_path / "compressed"
    write_image_bag(bag, [png.tobytes()] * 2, topic="/cam/image_raw/compressed", storage=StoragePlugin.MCAP,
                    info=lambda header: T["sensor_msgs/msg/CameraInfo"](
                        header=header, height=12, width=10, distortion_model="plumb_bob", d=np.zeros(5),
                        k=np.array([20.0, 0, 4.5, 0, 22.0, 5.5, 0, 0, 1]), r=np.eye(3).reshape(-1),
                        p=np.zeros(12), binning_x=0, binning_y=0,
                        roi=T["sensor_msgs/msg/RegionOfInterest"](x_offset=0, y_offset=0, height=0, width=0,
                                                                  do_rectify=False)))
    source = RosbagSource(bag, image_topic="/cam/image_raw/compressed")
    np.testing.assert_array_equal(source.read(0), rgb)
    # CameraInfo for 10x12 images, frames are 5x6: intrinsics rescaled by one half about pixel centres.
    np.testing.assert_allclose(source.intrinsics, [10.0, 11.0, 2.0, 2.5])


def test_missing_topic_names_bag_topic_and_image_topics(tmp_path):
    bag = tmp_path / "bag"
    write_image_bag(bag, [("mono8", np.zeros((4, 4), np.uint8), 4, 0)])
    with pytest.raises(DataError) as info:
        RosbagSource(bag, image_topic="/camera/image_raw")
    message = str(info.value)
    assert str(bag) in message and "'/camera/image_raw'" in message and "/cam/image_raw" in message


def test_unsupported_encoding_and_wrong_type(tmp_path):
    bag = tmp_path / "yuv"
    write_image_bag(bag, [("yuv422", np.zeros((4, 8), np.uint8), 4, 0)])
    with pytest.raises(DataError, match=r"/cam/image_raw.*'yuv422'.*not supported"):
        RosbagSource(bag, image_topic="/cam/image_raw")

    camera_bag = tmp_path / "info"
    write_image_bag(camera_bag, [("mono8", np.zeros((4, 4), np.uint8), 4, 0)],
                    info=lambda header: T["sensor_msgs/msg/CameraInfo"](
                        header=header, height=4, width=4, distortion_model="", d=np.zeros(0), k=np.zeros(9),
                        r=np.zeros(9), p=np.zeros(12), binning_x=0, binning_y=0,
                        roi=T["sensor_msgs/msg/RegionOfInterest"](x_offset=0, y_offset=0, height=0, width=0,
                                                                  do_rectify=False)))
    with pytest.raises(DataError, match="CameraInfo is not an image type"):
        RosbagSource(camera_bag, image_topic="/cam/camera_info")
    # A CameraInfo with K all zero means "uncalibrated": no intrinsics rather than a zero focal length.
    assert RosbagSource(camera_bag, image_topic="/cam/image_raw").intrinsics is None

    with pytest.raises(DataError, match="rosbag2 bag not found"):
        RosbagSource(tmp_path / "nothing")
    with pytest.raises(DataError, match="not a rosbag2 bag"):
        RosbagSource(tmp_path)


def test_bag_folder_named_like_a_ros1_bag(sequence, tmp_path):
    # `ros2 bag record -o drive.bag` and `lapose bag-from-sequence SEQ out/drive.bag` make a rosbag2
    # folder whose name rosbags would otherwise take for a ROS 1 bag file.
    for storage in ("mcap", "sqlite3"):
        out = tmp_path / f"drive_{storage}.bag"
        write_bag_from_sequence(sequence.path, out, storage=storage, max_frames=3)
        source = open_source(out)
        assert isinstance(source, RosbagSource) and len(source) == 3
        np.testing.assert_array_equal(source.read(2), sequence.read(2))
    split = tmp_path / "drive_mcap.bag"
    (split / "second.mcap").write_bytes(b"")
    with pytest.raises(DataError, match=r"drive_mcap\.bag: .*holds 2; rename the folder"):
        RosbagSource(split)


def test_bag_from_sequence_cli(sequence, tmp_path, capsys):
    from lapose_ros import cli

    parser = argparse.ArgumentParser(prog="lapose")
    cli.register(parser.add_subparsers(dest="command"))
    out = tmp_path / "bag"
    args = parser.parse_args(["bag-from-sequence", str(sequence.path), str(out), "--storage", "sqlite3",
                              "--no-ground-truth", "--max-frames", "5", "--camera-frame", "cam0"])
    assert args.func(args) == 0
    assert "5 frames" in capsys.readouterr().out
    with AnyReader([out]) as reader:
        assert set(reader.topics) == {IMAGE_TOPIC, CAMERA_INFO_TOPIC}
        connection, _, raw = next(reader.messages())
        assert reader.deserialize(raw, connection.msgtype).header.frame_id == "cam0"

    compressed = parser.parse_args(["bag-from-sequence", str(sequence.path), str(tmp_path / "jpeg"),
                                    "--max-frames", "2", "--compressed"])
    assert compressed.func(compressed) == 0
    with AnyReader([tmp_path / "jpeg"]) as reader:
        assert reader.topics[f"{IMAGE_TOPIC}/compressed"].msgtype == "sensor_msgs/msg/CompressedImage"

    # Writing over an existing bag is refused with a one-line error naming it.
    assert args.func(args) == 2
    assert f"{out}: exists already" in capsys.readouterr().err
    with pytest.raises(BagWriteError, match="storage 'rosbag1'"):
        write_bag_from_sequence(sequence.path, tmp_path / "x", storage="rosbag1")
    with pytest.raises(DataError, match="KITTI sequence folder not found"):
        write_bag_from_sequence(tmp_path / "no_such_sequence", tmp_path / "y")
