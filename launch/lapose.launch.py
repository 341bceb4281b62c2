"""Launch LA-Pose visual odometry, optionally with RViz and a bag to replay.

  ros2 launch lapose_ros lapose.launch.py image_topic:=/front/image_raw rviz:=true
  ros2 launch lapose_ros lapose.launch.py bag:=/data/drive_01 rviz:=true
  ros2 launch lapose_ros lapose.launch.py params_file:=/path/to/my_car.yaml

Parameters come from config/lapose.yaml (or params_file); a launch argument overrides its namesake
only when given, so an edit to the file always counts (``lapose_ros.launch_arguments``).
``bag:=PATH`` plays the bag with ``ros2 bag play PATH --clock`` once the node is up, and switches the
node to sim time.
"""
import os

from ament_index_python.packages import PackageNotFoundError, get_package_share_directory
from launch import LaunchDescription
from launch.actions import (DeclareLaunchArgument, ExecuteProcess, LogInfo, OpaqueFunction,
                            RegisterEventHandler)
from launch.event_handlers import OnProcessIO
from launch.substitutions import LaunchConfiguration
from launch_ros.actions import Node

from lapose_ros.launch_arguments import ARGUMENTS, help_text, is_ready_line, is_true, node_overrides

PACKAGE = "lapose_ros"


def share_directory() -> str:
    """The installed share/lapose_ros, or the source tree when running from a checkout."""
    try:
        return get_package_share_directory(PACKAGE)
    except PackageNotFoundError:
        return os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def launch_setup(context, *args, **kwargs):
    """The processes, once the arguments' values are known: only the given ones reach the node."""
    values = {name: LaunchConfiguration(name).perform(context) for name in ARGUMENTS}
    share = share_directory()
    params_file = values["params_file"] or os.path.join(share, "config", "lapose.yaml")
    overrides = node_overrides(values)
    sim_time = overrides.get("use_sim_time", False)
    node = Node(package=PACKAGE, executable="lapose_node", name="lapose_node", output="screen",
                emulate_tty=True, parameters=[params_file, overrides])
    actions = [LogInfo(msg=f"lapose_node: parameters {params_file}, overridden by {overrides or 'nothing'}"),
               node]
    if is_true("rviz", values["rviz"]):
        actions.append(Node(package="rviz2", executable="rviz2", name="rviz2",
                            arguments=["-d", os.path.join(share, "config", "lapose.rviz")],
                            parameters=[{"use_sim_time": sim_time}]))
    if values["bag"]:
        # Played once the node says it is up: a bag started with it would run on while the model
        # loads (or a TensorRT engine is built), unseen.
        play = ExecuteProcess(cmd=["ros2", "bag", "play", values["bag"], "--clock"], output="screen")
        started = []

        def play_once_ready(event):
            if started or not is_ready_line(event.text):
                return None
            started.append(True)
            return [LogInfo(msg=f"lapose_node is up: playing {values['bag']}"), play]

        # Registered before the node starts, so that its ready line cannot come first.
        actions.insert(0, RegisterEventHandler(OnProcessIO(target_action=node, on_stdout=play_once_ready,
                                                           on_stderr=play_once_ready)))
    return actions


def generate_launch_description() -> LaunchDescription:
    return LaunchDescription([
        *[DeclareLaunchArgument(name, default_value="", description=help_text(name))
          for name in ARGUMENTS],
        OpaqueFunction(function=launch_setup),
    ])
