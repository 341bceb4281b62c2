"""Launch LA-Pose visual odometry, optionally with RViz and a bag to replay.

  ros2 launch lapose_ros lapose.launch.py image_topic:=/front/image_raw rviz:=true
  ros2 launch lapose_ros lapose.launch.py bag:=/data/drive_01 rviz:=true

Parameters come from config/lapose.yaml; the launch arguments below override their namesakes.
``bag:=PATH`` plays the bag with ``ros2 bag play PATH --clock`` and switches the node to sim time.
"""
import os

from ament_index_python.packages import PackageNotFoundError, get_package_share_directory
from launch import LaunchDescription
from launch.actions import DeclareLaunchArgument, ExecuteProcess, LogInfo
from launch.conditions import IfCondition
from launch.substitutions import LaunchConfiguration, PythonExpression
from launch_ros.actions import Node
from launch_ros.parameter_descriptions import ParameterValue

PACKAGE = "lapose_ros"

# name -> (default, description). Each one is also a parameter of lapose_node in config/lapose.yaml,
# except the two that only steer this file (LAUNCH_ONLY).
ARGUMENTS = {
    "image_topic": ("/camera/image_raw", "sensor_msgs/Image topic of the camera"),
    "camera_info_topic": ("/camera/camera_info", "sensor_msgs/CameraInfo topic of the camera"),
    "odom_frame": ("odom", "frame of the published odometry (REP-105)"),
    "base_frame": ("base_link", "frame of the robot body that the odometry moves"),
    "checkpoint": ("", "model checkpoint or run folder; empty = the bundled model"),
    "backend": ("auto", "auto | tensorrt | compile | eager (auto: eager on cpu, tensorrt on cuda)"),
    "device": ("cpu", "cpu | cuda (falls back to cpu when CUDA is unavailable)"),
    "estimator": ("hybrid", "hybrid (feature geometry checked against LA-Pose) | lapose (the model alone)"),
    "camera_height_m": ("0.0", "hybrid: camera height above the road in metres; > 0: metric scale "
                               "from the road (0 = unknown)"),
    "camera_pitch_deg": ("0.0", "hybrid: the camera's pitch below the road plane in degrees"),
    "base_height_m": ("-1.0", "hybrid, camera_height_m 0: base_frame's height above the road; >= 0: "
                              "the camera's height and pitch from the camera-to-base transform"),
    "use_sim_time": ("false", "use /clock (set automatically when bag is given)"),
    "rviz": ("false", "start rviz2 with config/lapose.rviz"),
    "bag": ("", "rosbag2 to replay with --clock; empty = live camera"),
}
LAUNCH_ONLY = ("rviz", "bag")
STRING_PARAMETERS = ("image_topic", "camera_info_topic", "odom_frame", "base_frame", "checkpoint",
                     "backend", "device", "estimator")
# Typed, so that camera_height_m:=2 reaches the node as the float it declares.
FLOAT_PARAMETERS = ("camera_height_m", "camera_pitch_deg", "base_height_m")


def share_directory() -> str:
    """The installed share/lapose_ros, or the source tree when running from a checkout."""
    try:
        return get_package_share_directory(PACKAGE)
    except PackageNotFoundError:
        return os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def generate_launch_description() -> LaunchDescription:
    share = share_directory()
    params_file = os.path.join(share, "config", "lapose.yaml")
    rviz_file = os.path.join(share, "config", "lapose.rviz")
    arg = LaunchConfiguration
    bag_given = PythonExpression(["'", arg("bag"), "' != ''"])
    sim_time = ParameterValue(
        PythonExpression(["'", arg("use_sim_time"), "'.lower() == 'true' or '", arg("bag"), "' != ''"]),
        value_type=bool)

    overrides = {name: ParameterValue(arg(name), value_type=str) for name in STRING_PARAMETERS}
    overrides.update({name: ParameterValue(arg(name), value_type=float) for name in FLOAT_PARAMETERS})
    overrides["use_sim_time"] = sim_time
    return LaunchDescription([
        *[DeclareLaunchArgument(name, default_value=default, description=description)
          for name, (default, description) in ARGUMENTS.items()],
        LogInfo(msg=["LA-Pose odometry from ", arg("image_topic"), ", parameters ", params_file]),
        Node(
            package=PACKAGE,
            executable="lapose_node",
            name="lapose_node",
            output="screen",
            emulate_tty=True,
            parameters=[params_file, overrides],
        ),
        Node(
            package="rviz2",
            executable="rviz2",
            name="rviz2",
            arguments=["-d", rviz_file],
            parameters=[{"use_sim_time": sim_time}],
            condition=IfCondition(arg("rviz")),
        ),
        ExecuteProcess(
            cmd=["ros2", "bag", "play", arg("bag"), "--clock"],
            output="screen",
            condition=IfCondition(bag_given),
        ),
    ])
