"""The launch file, the parameter file and the RViz view.

Checks that run everywhere read the files (the launch file through its syntax tree, since ``launch``
may be absent; what it passes on comes from ``lapose_ros.launch_arguments``, tested here). Where ``launch_testing`` and an installed ``lapose_ros`` exist (a ROS host after
``colcon build``), the launch file is also run under ``launch_test``: this module doubles as the
launch-test file when LAPOSE_LAUNCH_TEST=1.
"""
import ast
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from lapose_ros.launch_arguments import (ARGUMENTS, FLOAT_PARAMETERS, LAUNCH_ONLY, STRING_PARAMETERS,
                                         LaunchArgumentError, help_text, is_ready_line, node_overrides)

REPO = Path(__file__).resolve().parents[1]
LAUNCH_FILE = REPO / "launch" / "lapose.launch.py"
PARAMS_FILE = REPO / "config" / "lapose.yaml"
RVIZ_FILE = REPO / "config" / "lapose.rviz"


def node_parameters() -> dict:
    return yaml.safe_load(PARAMS_FILE.read_text())["/**"]["ros__parameters"]


def test_launch_file_parses_and_takes_its_arguments_from_the_package():
    tree = ast.parse(LAUNCH_FILE.read_text(), filename=str(LAUNCH_FILE))
    assert "generate_launch_description" in {n.name for n in tree.body if isinstance(n, ast.FunctionDef)}
    imported = {alias.name for n in tree.body if isinstance(n, ast.ImportFrom)
                and n.module == "lapose_ros.launch_arguments" for alias in n.names}
    assert imported >= {"ARGUMENTS", "node_overrides", "is_ready_line"}  # a bag waits for the node
    assert set(ARGUMENTS) >= {"image_topic", "camera_info_topic", "odom_frame", "base_frame", "checkpoint",
                              "backend", "device", "use_sim_time", "params_file", "rviz", "bag"}
    assert set(LAUNCH_ONLY) == {"params_file", "rviz", "bag"}


def test_every_launch_argument_maps_to_a_parameter():
    params = node_parameters()
    for name, (default, description) in ARGUMENTS.items():
        assert description, f"launch argument '{name}' has no description"
        if name in LAUNCH_ONLY:
            assert name not in params
            continue
        assert name in params, f"launch argument '{name}' is not a parameter in {PARAMS_FILE.name}"
        value = params[name]
        assert (str(value).lower() if isinstance(value, bool) else str(value)) == default, (
            f"launch argument '{name}' says the file has {default!r} but {PARAMS_FILE.name} has {value!r}")
        assert repr(default) in help_text(name).replace('"', "'")
    # Every argument that is not a string or the launch file's own is passed on with its type.
    typed = set(STRING_PARAMETERS) | set(FLOAT_PARAMETERS) | {"use_sim_time"}
    assert typed | set(LAUNCH_ONLY) == set(ARGUMENTS)
    for name in FLOAT_PARAMETERS:
        assert isinstance(params[name], float), f"{name} is not a float in {PARAMS_FILE.name}"


def test_ready_line_is_found_in_the_nodes_output():
    assert is_ready_line(b"[INFO] [1.2] [lapose_node]: LA-Pose odometry: /camera/image_raw -> /lapose/odom")
    assert is_ready_line("[INFO] [lapose_node]: LA-Pose odometry: /cam")
    assert not is_ready_line(b"[INFO] [lapose_node]: tf2_ros not installed")


def test_only_given_launch_arguments_override_the_parameter_file():
    """An argument left out leaves the file's value alone (editing the file must count)."""
    assert node_overrides({name: "" for name in ARGUMENTS}) == {}
    given = node_overrides({"image_topic": "/front/image_raw", "camera_height_m": "2", "rviz": "true",
                            "base_height_m": "", "use_sim_time": "False"})
    assert given == {"image_topic": "/front/image_raw", "camera_height_m": 2.0, "use_sim_time": False}
    assert type(given["camera_height_m"]) is float
    assert node_overrides({"bag": "/data/drive", "use_sim_time": "false"}) == {"use_sim_time": True}
    assert node_overrides({"use_sim_time": "TRUE"}) == {"use_sim_time": True}
    assert node_overrides({"use_sim_time": "1"}) == {"use_sim_time": True}  # as IfCondition reads it
    with pytest.raises(LaunchArgumentError, match="camera_height_m:=high is not a number"):
        node_overrides({"camera_height_m": "high"})
    with pytest.raises(LaunchArgumentError, match="use_sim_time:=yes must be true or false"):
        node_overrides({"use_sim_time": "yes"})


def test_parameter_file_matches_the_node():
    from lapose_ros.node import PARAMETERS

    params = node_parameters()
    assert set(params) == set(PARAMETERS) | {"use_sim_time"}
    for name, default in PARAMETERS.items():
        assert params[name] == default and type(params[name]) is type(default), name


def test_parameter_file_loads_into_the_node(ros_domain_id, tmp_path):
    """The real ROS parameter parser reads the file and the node accepts every value's type; the
    file reaches the node under a namespace too (a car's launch puts it in one)."""
    import rclpy
    import rclpy.context
    import rclpy.parameter
    from rclpy.parameter import parameter_dict_from_yaml_file

    from lapose_core.inference import PoseEstimator
    from lapose_ros.node import LaPoseNode

    parsed = parameter_dict_from_yaml_file(str(PARAMS_FILE), use_wildcard=True, target_nodes=["lapose_node"])
    assert set(parsed) == set(node_parameters())
    edited = tmp_path / "my_car.yaml"
    edited.write_text(PARAMS_FILE.read_text().replace("image_topic: /camera/image_raw",
                                                      "image_topic: /front/image_raw"))
    for params_file, ns, image_topic in ((PARAMS_FILE, "/", "/camera/image_raw"),
                                         (edited, "/car", "/front/image_raw")):
        context = rclpy.context.Context()
        rclpy.init(args=["--ros-args", "--params-file", str(params_file), "-p", "base_frame:=chassis",
                         "-r", f"__ns:={ns}"], context=context)
        try:
            node = LaPoseNode(estimator=PoseEstimator.random("tiny"), context=context)
            assert node.get_namespace() == ns
            assert node.params["image_topic"] == image_topic
            assert node.params["base_frame"] == "chassis"
            assert node.params["camera_to_base"] == [0.0, 0.0, 0.0, -0.5, 0.5, -0.5, 0.5]
            assert node.get_parameter("use_sim_time").value is False
            # Read once at start: changing one later is refused, not silently ignored.
            refused = node.set_parameters([rclpy.parameter.Parameter("image_topic", value="/other")])[0]
            assert not refused.successful and "read-only" in refused.reason
            node.destroy_node()
        finally:
            rclpy.shutdown(context=context)


def test_rviz_config_is_valid_and_shows_the_four_displays():
    rviz = yaml.safe_load(RVIZ_FILE.read_text())
    manager = rviz["Visualization Manager"]
    assert manager["Global Options"]["Fixed Frame"] == "odom"
    displays = {d["Class"]: d for d in manager["Displays"]}
    params = node_parameters()
    assert displays["rviz_default_plugins/Odometry"]["Topic"]["Value"] == params["odom_topic"]
    assert displays["rviz_default_plugins/Path"]["Topic"]["Value"] == params["path_topic"]
    assert displays["rviz_default_plugins/Image"]["Topic"]["Value"] == params["image_topic"]
    # The camera publishes with sensor-data QoS: RViz must subscribe best effort to see it.
    assert displays["rviz_default_plugins/Image"]["Topic"]["Reliability Policy"] == "Best Effort"
    assert displays["rviz_default_plugins/TF"]["Enabled"] is True
    assert all(d["Enabled"] is True for d in displays.values())
    assert {p["Class"] for p in rviz["Panels"]} >= {"rviz_common/Displays", "rviz_common/Views"}


def test_launch_file_under_launch_testing(ros_domain_id):
    pytest.importorskip("launch_testing", reason="launch_testing is not installed (no ROS 2 distribution)")
    pytest.importorskip("launch_ros", reason="launch_ros is not installed (no ROS 2 distribution)")
    from ament_index_python.packages import PackageNotFoundError, get_package_share_directory

    try:
        get_package_share_directory("lapose_ros")
    except PackageNotFoundError:
        pytest.skip("lapose_ros is not installed in the ament index (colcon build and source it first)")
    env = dict(os.environ, LAPOSE_LAUNCH_TEST="1", ROS_AUTOMATIC_DISCOVERY_RANGE="LOCALHOST",
               PYTHONPATH=os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]))
    result = subprocess.run([sys.executable, "-m", "launch_testing.launch_test", str(Path(__file__))],
                            env=env, capture_output=True, text=True, timeout=170)
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-4000:]


if os.environ.get("LAPOSE_LAUNCH_TEST") == "1":
    # The launch test proper, read by `launch_test` (never collected by plain pytest).
    import time
    import unittest

    import cv2
    import launch
    import launch_testing.actions
    import launch_testing.asserts
    import numpy as np
    import rclpy
    from launch.actions import IncludeLaunchDescription
    from launch.launch_description_sources import PythonLaunchDescriptionSource
    from nav_msgs.msg import Odometry
    from sensor_msgs.msg import Image

    from lapose_ros.image_conversion import fill_image_msg

    KITTI = Path(os.environ.get("LAPOSE_SHARED_DATA", REPO.parent / "shared" / "data")) / "kitti" / "03_head"

    def generate_test_description():
        from ament_index_python.packages import get_package_share_directory

        installed = Path(get_package_share_directory("lapose_ros")) / "launch" / "lapose.launch.py"
        include = IncludeLaunchDescription(
            PythonLaunchDescriptionSource(str(installed)),
            launch_arguments={"checkpoint": "random:tiny", "image_topic": "/launch_test/image",
                              "odom_frame": "odom_launch_test"}.items())
        return launch.LaunchDescription([include, launch_testing.actions.ReadyToTest()])

    class TestOdometryFromLaunchFile(unittest.TestCase):
        def test_node_uses_launch_arguments_and_publishes(self, proc_output):
            proc_output.assertWaitFor("LA-Pose odometry: /launch_test/image", timeout=60)
            rclpy.init()
            try:
                node = rclpy.create_node("launch_test_camera")
                odom = []
                node.create_subscription(Odometry, "/lapose/odom", odom.append, 10)
                pub = node.create_publisher(Image, "/launch_test/image", 100)
                deadline = time.monotonic() + 30
                while pub.get_subscription_count() == 0 and time.monotonic() < deadline:
                    rclpy.spin_once(node, timeout_sec=0.1)
                times = np.loadtxt(KITTI / "times.txt")
                for i in range(90):
                    gray = cv2.imread(str(KITTI / "images" / f"{i:06d}.jpg"), cv2.IMREAD_GRAYSCALE)
                    msg = fill_image_msg(Image(), gray, "mono8")
                    msg.header.stamp = rclpy.time.Time(nanoseconds=int((1e9 + times[i]) * 1e9)).to_msg()
                    pub.publish(msg)
                    rclpy.spin_once(node, timeout_sec=0.05)
                deadline = time.monotonic() + 60
                while not odom and time.monotonic() < deadline:
                    rclpy.spin_once(node, timeout_sec=0.1)
                self.assertTrue(odom, "no odometry from the launched node")
                self.assertEqual(odom[-1].header.frame_id, "odom_launch_test")
                node.destroy_node()
            finally:
                rclpy.shutdown()

    @launch_testing.post_shutdown_test()
    class TestShutdown(unittest.TestCase):
        def test_exit_codes(self, proc_info):
            launch_testing.asserts.assertExitCodes(proc_info, allowable_exit_codes=[0, -2, -15])
